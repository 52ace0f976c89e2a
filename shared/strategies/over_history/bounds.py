"""What the array forms share: the bound on a window indicator against the full history's, comparisons decided
within a bound, and the candle rules and ramps element by element (the same arithmetic as the live code)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import talib


# Float rounding between the window's recursion and the full history's once the seed's error has decayed, relative
# to the value: measured at most 9.4e-16 (gold) and 6.4e-16 (EURUSD) for EMA(50), 0 for EMA(20) and ATR(14), on 3,000
# random windows of each shipped file; 16 ulps (3.6e-15) is four times that. tests/backtest/test_over_history.py
# holds the measured rounding under half of it on 1,500 sampled windows of each file and of generated bars.
ROUNDING = 16 * np.finfo(float).eps
# The seed's error is estimated with TA-Lib's running SMA, whose sum drifts by rounding over a long history: a
# relative 1e-9 of the largest input covers 1e7 bars of drift many times over (it is then multiplied by the decay).
SEED_SLACK = 1e-9
# A score's bound must be within this share of the score (the equality test demands 1e-9 relative: 4x margin).
SCORE_REL = 2.5e-10


@dataclass(slots=True)
class HistorySignals:
    index: np.ndarray  # int64: bars the arrays decide match
    side: np.ndarray  # "buy" / "sell" per match
    entry: np.ndarray
    stop: np.ndarray
    target: np.ndarray
    score: np.ndarray
    features: list[dict[str, Any]]
    unsure: np.ndarray  # int64: bars only `evaluate` can judge
    proved_none: int = 0  # bars proved not to match (counted for the scan's stats)
    bar_time: np.ndarray | None = None  # int64 per match: the judged bar's open time when not bar `index`'s (harami's 5m bar)


OverHistory = Callable[..., HistorySignals]


def ema_bound(close: np.ndarray, n: int, lookback: int, back: int) -> tuple[np.ndarray, np.ndarray]:
    """(EMA(n) over the whole history, the bound on |window EMA - it|) at every bar i judged on the window
    close[i+1-lookback : i+1], for the values at i-back..i (the bound at i-back, the largest). NaN where unknown."""
    m = len(close)
    full = talib.EMA(close, timeperiod=n)
    bound = np.full(m, np.nan)
    steps = lookback - n - back  # recursion steps from the window's seed (position n-1) to position lookback-1-back
    if steps < 0 or m < lookback:
        return full, bound
    seed = talib.SMA(close, timeperiod=n)  # seed[w+n-1]: the mean of close[w : w+n]
    i = np.arange(lookback - 1, m)
    at_seed = i + 1 - lookback + n - 1
    decay = (1.0 - 2.0 / (n + 1)) ** steps
    # An EMA is a weighted mean of the closes: no value exceeds the largest close in size.
    with np.errstate(invalid="ignore"):
        top = float(np.nanmax(np.abs(close)))
        bound[i] = (np.abs(seed[at_seed] - full[at_seed]) + SEED_SLACK * top) * decay + ROUNDING * top
    return full, bound


def atr_seed_bound(high: np.ndarray, low: np.ndarray, close: np.ndarray, n: int, lookback: int,
                   back: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(ATR(n) over the whole history, the seed's part of the bound on |window ATR - it|) for each bar i judged on
    the window ending at i, valid for the window's ATR at i-back..i (the seed's error is largest at i-back). The
    caller adds ROUNDING x |ATR| at the bar it reads."""
    m = len(close)
    full = talib.ATR(high, low, close, timeperiod=n)
    bound = np.full(m, np.nan)
    steps = lookback - 1 - n - back
    if steps < 0 or m < lookback:
        return full, bound
    tr = talib.TRANGE(high, low, close)  # tr[k] for k >= 1 uses close[k-1]: the window's own true range from its bar 1
    seed = talib.SMA(tr, timeperiod=n)  # seed[w+n]: the mean of tr[w+1 : w+n+1]
    i = np.arange(lookback - 1, m)
    at_seed = i + 1 - lookback + n
    with np.errstate(invalid="ignore"):
        slack = SEED_SLACK * float(np.nanmax(tr[1:])) if m > 1 else 0.0
        bound[i] = (np.abs(seed[at_seed] - full[at_seed]) + slack) * ((n - 1) / n) ** steps
    return full, bound


def quotient_error(x: np.ndarray, ex: np.ndarray, a: np.ndarray, ea: np.ndarray) -> np.ndarray:
    """A bound on |x'/a' - x/a| for |x' - x| <= ex, |a' - a| <= ea < a (inf where ea >= a)."""
    lo = a - ea
    with np.errstate(invalid="ignore", divide="ignore"):
        q = np.abs(x / a)
        err = (ex + q * ea) / lo + ROUNDING * q
    return np.where(lo > 0, err, np.inf)


def decided(margin: np.ndarray, err: np.ndarray, *, strict: bool) -> tuple[np.ndarray, np.ndarray]:
    """(surely true, surely false) for `margin > 0` (strict) or `margin >= 0`, the margin known within err;
    neither within err of 0, or where it is NaN."""
    with np.errstate(invalid="ignore"):
        if strict:
            return margin - err > 0, margin + err <= 0
        return margin - err >= 0, margin + err < 0


def ramp(x: np.ndarray, x0: float, x1: float) -> np.ndarray:
    """shared.strategies.base.ramp, element by element (the same arithmetic)."""
    t = (x - x0) / (x1 - x0)
    return np.where(t <= 0.0, 0.0, np.where(t >= 1.0, 1.0, t))


def engulfing(open_: np.ndarray, close: np.ndarray, i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bullish, bearish) TA-Lib engulfing at bars i (indicators.engulfing_sign's comparisons: exact)."""
    o1, c1, o2, c2 = open_[i - 1], close[i - 1], open_[i], close[i]
    white2, white1 = c2 >= o2, c1 >= o1
    bull = white2 & ~white1 & (((c2 >= o1) & (o2 < c1)) | ((c2 > o1) & (o2 <= c1)))
    bear = white1 & ~white2 & (((o2 >= c1) & (c2 < o1)) | ((o2 > c1) & (c2 <= o1)))
    return bull, bear


def mean_before(x: np.ndarray, i: np.ndarray, period: int) -> np.ndarray:
    """indicators._avg_range/_avg_body at bars i (ascending): x over the `period` bars before, summed in the same order from 0.0
    and divided the same way (the same IEEE operations, so the same bits)."""
    total = np.zeros(len(i))
    if len(i) and int(i[-1]) - int(i[0]) == len(i) - 1:  # a run of bars: slices, not gathers
        a = int(i[0])
        for k in range(period, 0, -1):
            total = total + x[a - k : a - k + len(i)]
    else:
        for k in range(period, 0, -1):
            total = total + x[i - k]
    return total / period


def hammer(open_: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray, i: np.ndarray) -> np.ndarray:
    """indicators.is_hammer at bars i (i >= 11), element by element: exact."""
    from shared.strategies.indicators import (BODY_SHORT_PERIOD, NEAR_FACTOR, NEAR_PERIOD, SHADOW_VERY_SHORT_FACTOR,
                                              SHADOW_VERY_SHORT_PERIOD)

    o, h, lo, c = open_[i], high[i], low[i], close[i]
    body = np.abs(c - o)
    ranges, bodies = high - low, np.abs(close - open_)
    ok = body < mean_before(bodies, i, BODY_SHORT_PERIOD)
    ok &= np.minimum(o, c) - lo > body
    ok &= h - np.maximum(o, c) < SHADOW_VERY_SHORT_FACTOR * mean_before(ranges, i, SHADOW_VERY_SHORT_PERIOD)
    ok &= np.minimum(o, c) <= low[i - 1] + NEAR_FACTOR * mean_before(ranges, i - 1, NEAR_PERIOD)
    return ok


def rolling_max(x: np.ndarray, width: int) -> np.ndarray:
    """The largest of x[j-width+1 .. j] at every j (exact: TA-Lib's running MAX; NaN before width - 1)."""
    return talib.MAX(x, timeperiod=width) if width >= 2 else x.astype(np.float64, copy=True)


def rolling_min(x: np.ndarray, width: int) -> np.ndarray:
    """The smallest of x[j-width+1 .. j] at every j (exact: TA-Lib's running MIN)."""
    return talib.MIN(x, timeperiod=width) if width >= 2 else x.astype(np.float64, copy=True)


def empty(unsure: np.ndarray, proved_none: int = 0) -> HistorySignals:
    z = np.empty(0)
    return HistorySignals(np.empty(0, np.int64), np.empty(0, "<U4"), z, z, z, z, [], unsure.astype(np.int64), proved_none)
