"""The previous broker day's high, low, close and floor pivots: one pure function for market data and the backtester."""

from __future__ import annotations

from datetime import datetime, time, timedelta

import numpy as np

from shared.bars import Bars
from shared.messages import Levels
from shared.timeutil import broker_day_start, from_epoch, server_offset, server_to_utc, to_epoch


def trading_day_start(at: datetime, server_time: str = "utc") -> datetime:
    """UTC start of the trading day holding `at`: 00:00 server time, a Saturday or Sunday folded into Monday.

    Folding keeps a few weekend bars (a UTC server sees Sunday 22:00-24:00) from making a day of their own, so
    Monday's previous day is Friday and Tuesday's is Monday including its Sunday-evening open.
    """
    start = broker_day_start(server_time, at)
    wall_date = (start + server_offset(server_time, start)).date()
    weekday = wall_date.weekday()
    if weekday in (5, 6, 0):  # Saturday, Sunday and Monday share one day that begins Saturday 00:00
        saturday = wall_date - timedelta(days=(weekday - 5) % 7)
        return server_to_utc(server_time, datetime.combine(saturday, time()))
    return start


def previous_day_levels(bars: Bars, at: datetime, server_time: str = "utc") -> Levels | None:
    """Levels from the last trading day before the one holding `at` that has bars; None when `bars` hold none.

    `day_start` of the result is the start of the trading day they serve (`trading_day_start(at)`): a Monday's
    levels carry Saturday 00:00 server time. Market data passes the open time of the window's newest bar as `at`.

    `bars` must be oldest first and reach back to the start of that previous day (two trading days of M1 bars do).
    Cost: two `searchsorted` and one pass over that day's bars.
    """
    if len(bars) == 0:
        return None
    day_start = trading_day_start(at, server_time)
    end = int(np.searchsorted(bars.time, to_epoch(day_start), side="left"))
    if end == 0:
        return None
    prev_start = trading_day_start(from_epoch(int(bars.time[end - 1])), server_time)
    begin = int(np.searchsorted(bars.time, to_epoch(prev_start), side="left"))
    high = float(bars.high[begin:end].max())
    low = float(bars.low[begin:end].min())
    close = float(bars.close[end - 1])
    pivot = (high + low + close) / 3.0
    return Levels(
        day_start=day_start,
        prev_high=high,
        prev_low=low,
        prev_close=close,
        pivot=pivot,
        r1=2 * pivot - low,
        s1=2 * pivot - high,
        r2=pivot + (high - low),
        s2=pivot - (high - low),
    )
