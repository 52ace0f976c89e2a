"""M1 bars as columns of numpy arrays (oldest first), and the checks every bar passes before it is used."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from shared.timeutil import from_epoch

FIELDS = ("time", "open", "high", "low", "close", "tick_volume", "spread")


@dataclass(frozen=True, slots=True)
class Bars:
    """Closed bars, oldest first. `time` is the bar's open time in UTC epoch seconds; `spread` in points."""

    time: np.ndarray  # int64
    open: np.ndarray  # float64
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    tick_volume: np.ndarray  # int64
    spread: np.ndarray  # int64

    @classmethod
    def from_columns(cls, **columns) -> Bars:
        n = len(columns["time"])
        spread = columns.get("spread")
        volume = columns.get("tick_volume")
        return cls(
            time=np.asarray(columns["time"], dtype=np.int64),
            open=np.asarray(columns["open"], dtype=np.float64),
            high=np.asarray(columns["high"], dtype=np.float64),
            low=np.asarray(columns["low"], dtype=np.float64),
            close=np.asarray(columns["close"], dtype=np.float64),
            tick_volume=np.zeros(n, np.int64) if volume is None else np.asarray(volume, dtype=np.int64),
            spread=np.zeros(n, np.int64) if spread is None else np.asarray(spread, dtype=np.int64),
        )

    @classmethod
    def empty(cls) -> Bars:
        return cls.from_columns(time=[], open=[], high=[], low=[], close=[])

    def __len__(self) -> int:
        return len(self.time)

    def __getitem__(self, index: slice) -> Bars:
        if not isinstance(index, slice):
            raise TypeError("index Bars with a slice; use .row(i) for one bar")
        return Bars(*(getattr(self, f)[index] for f in FIELDS))

    def row(self, i: int) -> dict:
        return {
            "time": from_epoch(int(self.time[i])),
            "open": float(self.open[i]),
            "high": float(self.high[i]),
            "low": float(self.low[i]),
            "close": float(self.close[i]),
            "tick_volume": int(self.tick_volume[i]),
            "spread": int(self.spread[i]),
        }

    def columns(self) -> dict[str, list]:
        return {f: getattr(self, f).tolist() for f in FIELDS}

    def concat(self, other: Bars) -> Bars:
        return Bars(*(np.concatenate([getattr(self, f), getattr(other, f)]) for f in FIELDS))


def bar_problem(*, time: int, open: float, high: float, low: float, close: float, previous_time: int | None) -> str | None:
    """Why a bar must be rejected, or None when it is sound."""
    prices = (open, high, low, close)
    if any(math.isnan(p) or math.isinf(p) for p in prices):
        return "nan_price"
    if any(p <= 0 for p in prices):
        return "non_positive_price"
    if high < low:
        return "high_below_low"
    if high < max(open, close) or low > min(open, close):
        return "open_close_outside_range"
    if previous_time is not None and time <= previous_time:
        return "time_not_increasing"
    return None
