"""Every signal followed to the first touch of its own stop or target, vectorised over all signals at once.

The touch rule is the backtester's fill model (architecture.md, "Fills"): the trade would fill at the open of the bar
after the signal bar; bars are bid prices and ask = bid + spread; a long's stop and target trigger on the bid (low <=
stop, high >= target), a short's on the ask (high + spread >= stop, low + spread <= target); a bar touching both counts
as the stop. "open": neither was touched by the end of the bars.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shared.bars import Bars

FIRST_WINDOW = 32  # bars examined per signal in the first pass; the window doubles for the signals still open (most touch within it)


@dataclass(frozen=True, slots=True)
class Outcomes:
    outcome: np.ndarray  # "tp" | "sl" | "open" per signal
    touch_index: np.ndarray  # bar of the first touch, -1 when open


def first_touch(
    bars: Bars, spread_price: np.ndarray, *, index: np.ndarray, buy: np.ndarray, stop: np.ndarray, target: np.ndarray,
    max_cells: int = 4_000_000,
) -> Outcomes:
    """Outcome per signal (signal bar `index`, side `buy`, `stop`, `target`), searching from the bar after its signal
    bar. All signals still open are examined together, over a window that doubles each pass (each pass is one 2D array
    of at most `max_cells` cells per batch of signals)."""
    n, m = len(bars), len(index)
    hi, lo = bars.high, bars.low
    outcome = np.full(m, "open", dtype=object)
    touch = np.full(m, -1, np.int64)
    start = np.asarray(index, np.int64) + 1
    todo = np.flatnonzero(start < n)
    offset, width = 0, FIRST_WINDOW
    while len(todo):
        batch = max(1, max_cells // width)
        still = []
        for a in range(0, len(todo), batch):
            sel = todo[a : a + batch]
            cols = start[sel, None] + offset + np.arange(width)[None, :]
            valid = cols < n
            cols = np.minimum(cols, n - 1)
            is_buy = buy[sel, None]
            add = np.where(is_buy, 0.0, spread_price[cols])  # a short's stop and target are on the ask
            h, low = hi[cols] + add, lo[cols] + add
            stop_hit = np.where(is_buy, low <= stop[sel, None], h >= stop[sel, None]) & valid
            target_hit = np.where(is_buy, h >= target[sel, None], low <= target[sel, None]) & valid
            any_hit = stop_hit | target_hit
            found = any_hit.any(axis=1)
            first = any_hit.argmax(axis=1)
            rows = np.flatnonzero(found)
            k = first[rows]
            outcome[sel[rows]] = np.where(stop_hit[rows, k], "sl", "tp")  # both on one bar: the stop
            touch[sel[rows]] = cols[rows, k]
            unresolved = sel[~found]
            still.append(unresolved[start[unresolved] + offset + width < n])
        todo = np.concatenate(still) if still else np.empty(0, np.int64)
        offset += width
        width *= 2
    return Outcomes(outcome=outcome, touch_index=touch)


def outcomes_of(bars: Bars, spread_points: np.ndarray, point: float, signals: Sequence) -> Outcomes:
    """first_touch for SignalEvent-like objects (index, side, stop, target)."""
    if not signals:
        return Outcomes(np.empty(0, dtype=object), np.empty(0, np.int64))
    return first_touch(
        bars, np.asarray(spread_points, np.float64) * point,
        index=np.array([s.index for s in signals], np.int64), buy=np.array([s.side == "buy" for s in signals]),
        stop=np.array([s.stop for s in signals], np.float64), target=np.array([s.target for s in signals], np.float64),
    )
