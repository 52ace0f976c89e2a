"""The live path's signals over a whole history: each bar's window (the last `lookback` closed bars, as market data
publishes it), the previous trading day's levels (as market data computes them, once per day), and the catalog's
own `evaluate` on it. Vectorised prefilters only skip bars a strategy cannot match (scalper/backtest/prefilters.py).

A strategy with an array form (shared/strategies/over_history.py) is judged over the whole history at once: its
arrays give the matches they prove and the bars they prove do not match, and `evaluate` judges the rest on their
windows. A proved match the risk rules would judge near one of their own thresholds (a price near a rounding step,
the score near the bot's minimum, a stop near the ATR limit) is handed to `evaluate` too, so the trades are the live
path's to the cent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from datetime import UTC, datetime
from datetime import time as dtime
from typing import Any

import numpy as np
from pydantic import BaseModel

from scalper.backtest.prefilters import candidates
from shared.bars import FIELDS, Bars
from shared.levels import previous_day_levels, trading_day_start
from shared.messages import Levels, StrategyConfig
from shared.strategies.base import EvalContext, Match, StrategyDef, WindowCache
from shared.strategies.catalog import CATALOG, MIN_LOOKBACK, Catalog
from shared.strategies.over_history import HistorySignals, for_strategy
from shared.symbols import SymbolSpec
from shared.timeutil import from_epoch, nth_sunday, server_offset

# services/market_data/service.py: the levels are computed from the last 5 days of M1 bars up to the window's newest
# bar. Kept equal here so a backtest's levels are the live ones even where the history is short.
LEVELS_HISTORY_BARS = 5 * 1440

Progress = Callable[[int, int], None]


@dataclass(slots=True)
class SignalEvent:
    """A match on bar `index` (the signal bar) of the history, with what the live Signal would carry. Treated as
    immutable (dataclasses.replace makes a changed copy) but not frozen: a frozen dataclass's __init__ sets each
    field through object.__setattr__, five times the cost of plain slots, and a year's scan builds 17,000 of them."""

    index: int  # the window's last M1 bar: the order fills at the open of the bar after it
    bar_time: int  # the judged bar's open time, UTC epoch seconds (a 5m strategy's: its 5-minute bar's)
    strategy: str
    timeframe: str
    side: str
    entry: float
    stop: float
    target: float
    score: float
    features: dict[str, Any] = field(default_factory=dict)
    p_win: float | None = None  # issue 19: set by a calibration (scalper/calibrate), as the live worker sets it
    expected_r_net: float | None = None  # issue 19


@dataclass(slots=True)
class ScanStats:
    evaluated: dict[str, int] = field(default_factory=dict)  # evaluate() calls per strategy
    errors: list[str] = field(default_factory=list)  # "strategy at time: error", as the live worker logs them
    lookback: int = 0
    windows: int = 0  # bars that had a full window (what live would publish)
    from_arrays: dict[str, int] = field(default_factory=dict)  # matches proved by a strategy's array form
    proved_none: dict[str, int] = field(default_factory=dict)  # bars its arrays proved do not match


@dataclass(frozen=True, slots=True)
class _Resolved:
    name: str
    strategy: StrategyDef
    params: BaseModel


def _us_dst_offset(x: np.ndarray) -> np.ndarray:
    """shared.timeutil.server_offset("us_dst", x) in seconds, element by element: UTC+3 from the second Sunday of
    March 07:00 UTC to the first Sunday of November 06:00 UTC of x's year, else UTC+2 (the same comparisons)."""
    first, last = from_epoch(int(x.min())).year - 1, from_epoch(int(x.max())).year + 1
    bounds = []
    for year in range(first, last + 1):
        bounds.append(int(datetime.combine(nth_sunday(year, 3, 2), dtime(), UTC).timestamp()) + 7 * 3600)
        bounds.append(int(datetime.combine(nth_sunday(year, 11, 1), dtime(), UTC).timestamp()) + 6 * 3600)
    inside = np.searchsorted(np.array(bounds, np.int64), x, side="right") % 2 == 1  # start <= x < end
    return np.where(inside, 3 * 3600, 2 * 3600)


def _us_dst_day_starts(at: np.ndarray) -> np.ndarray:
    """shared.levels.trading_day_start(at, "us_dst") element by element: broker_day_start, then a Saturday, Sunday
    or Monday folded to Saturday 00:00 server time, each step with timeutil's own conversions."""
    def to_utc(wall: np.ndarray) -> np.ndarray:  # timeutil.server_to_utc
        return wall - _us_dst_offset(wall - _us_dst_offset(wall))

    start = to_utc((at + _us_dst_offset(at)) // 86_400 * 86_400)
    day = (start + _us_dst_offset(start)) // 86_400
    weekday = (day + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    fold = (weekday >= 5) | (weekday == 0)
    return np.where(fold, to_utc((day - (weekday - 5) % 7) * 86_400), start)


def day_keys(times: np.ndarray, server_time: str = "utc") -> np.ndarray:
    """trading_day_start (epoch) of every bar: vectorised for a fixed-offset clock and for us_dst (at each bar's
    hour, as the general path), else once per distinct hour."""
    if len(times) == 0:
        return times
    rule = server_time.strip().lower()
    if rule == "us_dst":
        return _us_dst_day_starts(times // 3600 * 3600)
    try:
        offset = int(server_offset(server_time, from_epoch(0)).total_seconds())
    except ValueError:
        offset = None
    if offset is not None:
        day = (times + offset) // 86_400
        weekday = (day + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
        folded = np.where((weekday >= 5) | (weekday == 0), day - (weekday - 5) % 7, day)  # Sat, Sun, Mon -> Sat
        return folded * 86_400 - offset
    return day_keys_by_hour(times, server_time)


def day_keys_by_hour(times: np.ndarray, server_time: str) -> np.ndarray:
    """trading_day_start itself once per distinct hour (the definition the vectorised paths are tested against)."""
    hours, inverse = np.unique(times // 3600, return_inverse=True)
    starts = np.array([int(trading_day_start(from_epoch(int(h) * 3600), server_time).timestamp()) for h in hours], np.int64)
    return starts[inverse]


class LevelsByDay:
    """The levels market data attaches to the window of bar i: computed at the first window of each trading day."""

    def __init__(self, bars: Bars, first: int, server_time: str = "utc") -> None:
        self._bars = bars
        self._server_time = server_time
        keys = day_keys(bars.time, server_time)
        self._keys = keys
        # The first bar (from `first` on) of each trading day: where live computes that day's levels.
        idx = np.arange(len(keys))
        self._first_of_day = {}
        tail_keys = keys[first:]
        if len(tail_keys):
            change = np.flatnonzero(np.concatenate(([True], tail_keys[1:] != tail_keys[:-1]))) + first
            self._first_of_day = {int(keys[i]): int(i) for i in change}
        del idx
        self._cache: dict[int, Levels | None] = {}

    def day_of(self, idx: np.ndarray) -> np.ndarray:
        """The trading day (its start, epoch seconds) of bars idx: bars of one day share their levels."""
        return self._keys[idx]

    def at(self, i: int) -> Levels | None:
        key = int(self._keys[i])
        try:
            return self._cache[key]
        except KeyError:
            pass
        f = self._first_of_day.get(key, i)
        history = self._bars[max(0, f + 1 - LEVELS_HISTORY_BARS) : f + 1]
        levels = previous_day_levels(history, from_epoch(int(self._bars.time[f])), self._server_time)
        self._cache[key] = levels
        return levels


def resolve(configs: Sequence[StrategyConfig], catalog: Catalog = CATALOG) -> list[_Resolved]:
    return [_Resolved(c.name, catalog.get(c.name), catalog.parse_params(c.name, c.params)) for c in configs]


# How near (relative) a value from the arrays may come to a threshold of the risk rules before evaluate decides: the
# arrays agree with evaluate within 1e-11 relative (over_history.SCORE_REL and its price bounds), so 1e-9 is a margin.
NEAR = 1e-9


def _near_rounding(price: np.ndarray, digits: int) -> np.ndarray:
    x = price * 10.0**digits
    return np.abs(x - np.floor(x) - 0.5) <= NEAR * np.abs(x) + 1e-12


def _atr_feature(features: dict[str, Any]) -> float:
    """The ATR the risk rules read from a signal's features (services.decision.risk.signal_atr's keys, in its
    order), NaN when none."""
    from services.decision.risk import ATR_FEATURES

    for key in ATR_FEATURES:
        value = features.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return float(value)
    return np.nan


def _fragile(hs: HistorySignals, spec: SymbolSpec, score_marks: Sequence[float], stop_atr_marks: Sequence[float]) -> np.ndarray:
    """Matches from arrays the risk rules would judge near one of their thresholds, or that Match would refuse (stop,
    entry and target out of trade order, a score outside [0, 1]): evaluate decides them."""
    out = _near_rounding(hs.stop, spec.digits) | _near_rounding(hs.target, spec.digits)
    buy = hs.side == "buy"
    ordered = np.where(buy, (hs.stop < hs.entry) & (hs.entry < hs.target), (hs.target < hs.entry) & (hs.entry < hs.stop))
    out |= ~ordered | ~((hs.score >= 0.0) & (hs.score <= 1.0))
    for mark in score_marks:
        out |= np.abs(hs.score - mark) <= NEAR * max(abs(mark), 1e-3)
    if stop_atr_marks and len(hs.index):
        atr = np.array([_atr_feature(f) for f in hs.features])
        with np.errstate(invalid="ignore", divide="ignore"):
            far = np.maximum(np.abs(hs.stop - hs.entry), np.abs(hs.target - hs.entry)) / atr
            for mark in stop_atr_marks:
                out |= (atr > 0) & (np.abs(far - mark) <= NEAR * abs(mark))
    return out


def scan_history(
    bars: Bars,
    *,
    spec: SymbolSpec,
    configs: Sequence[StrategyConfig],
    catalog: Catalog = CATALOG,
    server_time: str = "utc",
    min_lookback: int = MIN_LOOKBACK,
    start: int = 0,
    end: int | None = None,
    prefilter: bool = True,
    arrays: bool = True,
    score_marks: Sequence[float] | None = None,
    stop_atr_marks: Sequence[float] | None = None,
    progress: Progress | None = None,
    stats: ScanStats | None = None,
) -> list[SignalEvent]:
    """Every signal the live strategy worker would emit for bars[start:end], oldest first, in config order per bar.

    Bar i is judged on bars[i+1-L : i+1] with L = the scan's lookback (the largest the configs declare, at least
    `min_lookback`); bars with fewer than L bars before them are not judged (market data is still warming up).
    `prefilter` and `arrays` off: `evaluate` judges every window. `score_marks` and `stop_atr_marks` are the risk
    rules' thresholds (min score, max stop ATR) near which a match from arrays is judged by `evaluate` instead; None:
    a default bot's minimum score and SCALPER_MAX_STOP_ATR (pass the bot's own when they differ).
    """
    if score_marks is None:
        from services.decision.risk import BotRules

        score_marks = (BotRules().decision_min_score,)
    if stop_atr_marks is None:
        from shared.settings import get_settings

        stop_atr_marks = (get_settings().max_stop_atr,)
    resolved = resolve(configs, catalog)
    lookback = catalog.lookback_for(configs, minimum=max(MIN_LOOKBACK, min_lookback))
    stats = stats if stats is not None else ScanStats()
    stats.lookback = lookback
    n = len(bars)
    end = n if end is None else min(end, n)
    first = max(start, lookback - 1)
    if first >= end:
        return []
    stats.windows = end - first
    levels = LevelsByDay(bars, first, server_time)
    masks: list[np.ndarray | None] = []
    proved: list[tuple[int, int, SignalEvent]] = []  # (bar, config position, event) from arrays
    for pos, r in enumerate(resolved):
        over = for_strategy(r.strategy, r.params) if (arrays and prefilter) else None
        if over is not None:
            hs = over(bars, r.params, lookback=lookback, first=first, end=end, spec=spec, levels=levels)
            mask = np.zeros(end - first, bool)
            mask[hs.unsure - first] = True
            fragile = _fragile(hs, spec, score_marks, stop_atr_marks)
            mask[hs.index[fragile] - first] = True
            good = np.flatnonzero(~fragile)
            times = (bars.time[hs.index[good]] if hs.bar_time is None else hs.bar_time[good]).tolist()
            for k, i, t, side, entry, stop, target, score in zip(
                    good.tolist(), hs.index[good].tolist(), times, hs.side[good].tolist(), hs.entry[good].tolist(),
                    hs.stop[good].tolist(), hs.target[good].tolist(), hs.score[good].tolist(), strict=True):
                proved.append((i, pos, SignalEvent(index=i, bar_time=t, strategy=r.name, timeframe=r.strategy.timeframe, side=side,
                                                   entry=entry, stop=stop, target=target, score=score, features=hs.features[k])))
            stats.from_arrays[r.name] = len(good)
            stats.proved_none[r.name] = hs.proved_none
            masks.append(mask)
            continue
        mask = candidates(r.name, r.strategy, bars, r.params) if prefilter else None
        masks.append(None if mask is None else mask[first:end])
    if any(m is None for m in masks):
        todo = np.arange(first, end)
    else:
        union = np.zeros(end - first, bool)
        for m in masks:
            union |= m
        todo = np.flatnonzero(union) + first
    out: list[tuple[int, int, SignalEvent]] = []
    total = len(todo)
    step = max(1, total // 200)
    cols = tuple(getattr(bars, f) for f in FIELDS)
    for count, i in enumerate(todo.tolist()):
        if progress is not None and count % step == 0:
            progress(count, total)
        a, b = i + 1 - lookback, i + 1
        window = Bars(*(c[a:b] for c in cols))  # views, as bars[a:b]
        ctx = EvalContext(spec=spec, levels=levels.at(i), cache=WindowCache(window))  # as the worker builds it
        for pos, (r, mask) in enumerate(zip(resolved, masks, strict=True)):
            if mask is not None and not mask[i - first]:
                continue
            stats.evaluated[r.name] = stats.evaluated.get(r.name, 0) + 1
            try:
                match = r.strategy.evaluate(window, ctx, r.params)
                if match is not None and not isinstance(match, Match):
                    raise TypeError(f"evaluate returned {type(match).__name__}, not Match or None")
            except Exception as exc:  # noqa: BLE001  live counts it and runs the others (conventions.md)
                stats.errors.append(f"{r.name} at {from_epoch(int(bars.time[i])).isoformat()}: {type(exc).__name__}: {exc}")
                continue
            if match is None:
                continue
            out.append((i, pos, SignalEvent(
                index=i, bar_time=int(bars.time[i]) if match.bar_time is None else int(match.bar_time), strategy=r.name,
                timeframe=r.strategy.timeframe, side=match.side, entry=match.entry, stop=match.stop, target=match.target,
                score=match.score, features=dict(match.features),
            )))
    if progress is not None:
        progress(total, total)
    if proved:
        out = sorted(out + proved, key=itemgetter(0, 1))  # bar, then config order, as the live worker emits them
    return [e for _, _, e in out]
