"""M1 bars aggregated into longer bars aligned to UTC boundaries (5-minute bars for the harami engine)."""

from __future__ import annotations

import numpy as np

from shared.bars import Bars

M1_S = 60


def aggregate(bars: Bars, seconds: int = 300) -> Bars:
    """The complete `seconds` buckets of `bars` (UTC-aligned: a 5m bucket starts at hh:00, hh:05, ...), oldest first.

    A bucket is complete when its whole span has closed by the end of the last M1 bar; a bucket with missing minutes
    inside it (a quiet market) is still complete once its span has passed. The first bucket is dropped unless the
    window starts on its boundary: earlier minutes of it may lie before the window, so a window and the whole history
    always build the same bars. time: the bucket's open time; open: its first M1 open; high/low: extremes; close: its
    last M1 close; tick_volume: the sum; spread: the largest.
    """
    n = len(bars)
    if n == 0:
        return bars
    t = bars.time
    bucket = t // seconds
    starts = np.flatnonzero(np.concatenate(([True], bucket[1:] != bucket[:-1])))
    ends = np.concatenate((starts[1:], [n]))  # exclusive
    first = 0 if t[0] % seconds == 0 else 1
    last = len(starts)
    if int(t[-1]) + M1_S < (int(bucket[-1]) + 1) * seconds:
        last -= 1  # the newest bucket is still open
    if last <= first:
        return Bars.empty()
    s, e = starts[first:last], ends[first:last]
    return Bars(
        time=bucket[s] * seconds,
        open=bars.open[s],
        high=np.maximum.reduceat(bars.high[s[0] : e[-1]], s - s[0]),
        low=np.minimum.reduceat(bars.low[s[0] : e[-1]], s - s[0]),
        close=bars.close[e - 1],
        tick_volume=np.add.reduceat(bars.tick_volume[s[0] : e[-1]], s - s[0]),
        spread=np.maximum.reduceat(bars.spread[s[0] : e[-1]], s - s[0]),
    )


def may_close_bucket(bars: Bars, seconds: int = 300) -> bool:
    """Cheap pre-check: does a bucket boundary fall after the previous M1 bar's close and at or before the last one's?
    When not, no `seconds` bar completed with the window's last M1 bar."""
    if len(bars) < 2:
        return False
    last_close = int(bars.time[-1]) + M1_S
    return (last_close // seconds) * seconds > int(bars.time[-2]) + M1_S


def newly_complete(bars: Bars, longer: Bars, seconds: int = 300) -> bool:
    """True when `longer` (= aggregate(bars, seconds)) ends with a bar that completed with the window's last M1 bar:
    each longer bar is judged on exactly one window of the live path, and a backtest finds it at the same M1 bar."""
    return len(bars) >= 2 and len(longer) > 0 and int(longer.time[-1]) + seconds > int(bars.time[-2]) + M1_S
