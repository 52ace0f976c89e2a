"""The simulated price feed: M1 bid bars of one symbol, stamped in broker server time, walked as four ticks a bar."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mt5sim.records import RATES_DTYPE
from shared.timeutil import from_epoch, server_offset

BAR_S = 60
TICK_OFFSETS_S = (0, 15, 30, 45)
# A pause in the bars longer than this is the market being closed (daily break, weekend): orders get 10018.
CLOSED_GAP_S = 30 * 60


@dataclass(frozen=True, slots=True)
class Tick:
    """One bid tick of the path. `gap` is True for a bar's open tick: price jumped there, it did not pass through."""

    time: float  # UTC epoch seconds
    bid: float
    spread_points: int
    gap: bool


def _offsets(rule: str, utc: np.ndarray) -> np.ndarray:
    """The server's UTC offset in seconds at each UTC epoch (shared.timeutil.server_offset, vectorised)."""
    utc = np.asarray(utc, dtype=np.int64)
    if len(utc) == 0:
        return utc.copy()
    hours = utc // 3600
    unique = np.unique(hours)
    # The rules change only on whole UTC hours: one lookup per distinct hour.
    offsets = np.array([server_offset(rule, from_epoch(int(h) * 3600)).total_seconds() for h in unique], dtype=np.int64)
    return offsets[np.searchsorted(unique, hours)]


def server_epochs(rule: str, utc: np.ndarray) -> np.ndarray:
    """Stamp UTC epochs with the broker's wall clock (e.g. `us_dst`: 12:00 UTC in July is 15:00 server)."""
    return np.asarray(utc, dtype=np.int64) + _offsets(rule, utc)


def utc_epochs(rule: str, wall: np.ndarray) -> np.ndarray:
    """The inverse of `server_epochs`, as shared.timeutil.server_to_utc does it (guess, then correct)."""
    wall = np.asarray(wall, dtype=np.int64)
    return wall - _offsets(rule, wall - _offsets(rule, wall))


def as_columns(bars) -> dict[str, np.ndarray]:
    """Columns of M1 bars (UTC epoch `time`) from a structured array, a shared.bars.Bars, or a mapping."""
    if isinstance(bars, np.ndarray):
        names = bars.dtype.names or ()
        get = lambda f: bars[f] if f in names else None  # noqa: E731
    elif isinstance(bars, dict):
        get = bars.get
    else:
        get = lambda f: getattr(bars, f, None)  # noqa: E731
    time = np.asarray(get("time"), dtype=np.int64)
    n = len(time)
    cols = {"time": time}
    for f in ("open", "high", "low", "close"):
        cols[f] = np.asarray(get(f), dtype=np.float64)
    for f in ("tick_volume", "spread"):
        v = get(f)
        cols[f] = np.zeros(n, np.int64) if v is None else np.asarray(v, dtype=np.int64)
    if n and np.any(np.diff(time) <= 0):
        raise ValueError("bar times must be strictly increasing")
    return cols


class SymbolFeed:
    """Bars of one symbol and what the clock sees of them: the current tick, the forming bar, history.

    Tick model (kept simple on purpose): each M1 bar is four bid ticks at seconds 0, 15, 30 and 45 of its minute,
    open -> low -> high -> close when the bar closed up (close >= open), open -> high -> low -> close otherwise.
    The forming bar shows the ticks seen so far; ask = bid + the bar's spread in points (arch, Fills).
    """

    def __init__(self, bars, *, server_time: str, default_spread_points: int, digits: int) -> None:
        cols = as_columns(bars)
        self.utc = cols["time"]
        self.server = server_epochs(server_time, self.utc)
        # A broker quotes in the symbol's digits: prices are rounded once, here.
        self.open, self.high, self.low, self.close = (np.round(cols[f], digits) for f in ("open", "high", "low", "close"))
        self.tick_volume = cols["tick_volume"]
        self.spread = np.where(cols["spread"] > 0, cols["spread"], default_spread_points).astype(np.int64)

    def __len__(self) -> int:
        return len(self.utc)

    def path(self, i: int) -> tuple[float, float, float, float]:
        o, h, lo, c = float(self.open[i]), float(self.high[i]), float(self.low[i]), float(self.close[i])
        return (o, lo, h, c) if c >= o else (o, h, lo, c)

    def index_at(self, now: float) -> int:
        """Index of the last bar opened at or before `now`, -1 before the first bar."""
        return int(np.searchsorted(self.utc, now, side="right")) - 1

    def tick_at(self, now: float) -> Tick | None:
        """The latest tick at `now`, None before the first bar (no prices yet)."""
        i = self.index_at(now)
        if i < 0:
            return None
        k = min(3, int((now - self.utc[i]) // TICK_OFFSETS_S[1]))
        return Tick(float(self.utc[i] + TICK_OFFSETS_S[k]), self.path(i)[k], int(self.spread[i]), k == 0)

    def is_open(self, now: float) -> bool:
        """Whether the market trades at `now`: inside a bar, or in a pause of the bars no longer than CLOSED_GAP_S."""
        i = self.index_at(now)
        if i < 0:
            return False
        if now < self.utc[i] + BAR_S:
            return True
        return i + 1 < len(self.utc) and self.utc[i + 1] - (self.utc[i] + BAR_S) <= CLOSED_GAP_S

    def ticks_between(self, after: float, until: float) -> Iterator[Tick]:
        """The ticks with `after < time <= until`, oldest first."""
        j = max(0, self.index_at(after))
        while j < len(self.utc) and self.utc[j] <= until:
            path = self.path(j)
            for k, off in enumerate(TICK_OFFSETS_S):
                t = float(self.utc[j] + off)
                if after < t <= until:
                    yield Tick(t, path[k], int(self.spread[j]), k == 0)
            j += 1

    def m1_rates(self, now: float, maxbars: int) -> np.ndarray:
        """M1 rows visible at `now` (server-time stamps, oldest first); the last row is the forming bar."""
        i = self.index_at(now)
        lo = max(0, i + 1 - maxbars)
        out = np.zeros(i + 1 - lo, dtype=RATES_DTYPE)
        if len(out) == 0:
            return out
        sl = slice(lo, i + 1)
        out["time"] = self.server[sl]
        out["open"], out["high"], out["low"], out["close"] = self.open[sl], self.high[sl], self.low[sl], self.close[sl]
        out["tick_volume"] = self.tick_volume[sl]
        out["spread"] = self.spread[sl]
        k = int((now - self.utc[i]) // TICK_OFFSETS_S[1])
        if k < 3:
            # Still forming: only the ticks seen so far (the bar's open, then the first extremes).
            seen = self.path(i)[: k + 1]
            out["high"][-1], out["low"][-1], out["close"][-1] = max(seen), min(seen), seen[-1]
            out["tick_volume"][-1] = max(1, int(self.tick_volume[i]) * (k + 1) // 4)
        return out


def aggregate(m1: np.ndarray, period_s: int) -> np.ndarray:
    """Bars of a longer timeframe from M1 rows, buckets aligned on the server wall clock (D1 starts 00:00 server)."""
    if len(m1) == 0:
        return m1.copy()
    keys = m1["time"] // period_s * period_s
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    ends = np.r_[starts[1:], len(m1)] - 1
    out = np.zeros(len(starts), dtype=RATES_DTYPE)
    out["time"] = keys[starts]
    out["open"] = m1["open"][starts]
    out["close"] = m1["close"][ends]
    out["high"] = np.maximum.reduceat(m1["high"], starts)
    out["low"] = np.minimum.reduceat(m1["low"], starts)
    out["tick_volume"] = np.add.reduceat(m1["tick_volume"], starts)
    out["spread"] = np.minimum.reduceat(m1["spread"], starts)
    return out


def load_m1(path: str | Path, *, file_time: str = "utc") -> np.ndarray:
    """Read an M1 file (MT5 rates CSV `time,open,...` or MT5 export `date time open ...`, comma or tab) into a
    structured array with UTC epochs; `file_time` is the rule of the file's clock (`utc`, `+2`, `us_dst`)."""
    text = Path(path).read_text(encoding="utf-8-sig")
    dialect = "excel-tab" if "\t" in text.split("\n", 1)[0] else "excel"
    rows = list(csv.reader(text.splitlines(), dialect=dialect))
    header = [h.strip().strip("<>").lower() for h in rows[0]]
    body = [r for r in rows[1:] if r]
    col = {name: i for i, name in enumerate(header)}
    if "date" in col:
        stamps = [f"{r[col['date']]} {r[col['time']]}" for r in body]
    else:
        stamps = [r[col["time"]] for r in body]
    iso = np.array([s.strip().replace(".", "-").replace(" ", "T") for s in stamps])
    wall = iso.astype("datetime64[s]").astype(np.int64)
    utc = utc_epochs(file_time, wall)
    out = np.zeros(len(body), dtype=[("time", "<i8"), ("open", "<f8"), ("high", "<f8"), ("low", "<f8"),
                                     ("close", "<f8"), ("tick_volume", "<i8"), ("spread", "<i8")])
    out["time"] = utc
    for f in ("open", "high", "low", "close"):
        out[f] = [float(r[col[f]]) for r in body]
    volume = col.get("tick_volume", col.get("tickvol", col.get("tickvolume")))
    if volume is not None:
        out["tick_volume"] = [int(float(r[volume])) for r in body]
    if "spread" in col:
        out["spread"] = [int(float(r[col["spread"]])) for r in body]
    return out
