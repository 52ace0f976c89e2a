"""A seeded synthetic M1 feed: believable bars, generated lazily and identically per (seed, symbol, UTC day).

Each day's close path is pinned to a slow daily anchor path (mean-reverting, bounded), so any day can be made on
its own and still join its neighbours; inside the day, GARCH(1,1) volatility with Student-t shocks, a session
rhythm (quiet Asia, busy London/New York overlap), occasional trend episodes, and Brownian-bridge wicks with an
occasional long tail (pin bars).
"""

from __future__ import annotations

import math
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np

from services.market_data.feeds.base import BAR_SECONDS, weekend_closed
from shared.bars import FIELDS, Bars
from shared.loaders import validate_bars
from shared.logging import get_logger
from shared.symbols import UnknownSymbol, get_spec
from shared.timeutil import ensure_utc, to_epoch

log = get_logger(__name__)

ORIGIN = date(2000, 1, 1)  # the anchor path covers ORIGIN .. END
END = date(2100, 1, 1)
DEFAULT_START = datetime(2025, 1, 6, 7, 0, tzinfo=UTC)  # a Monday, London open


@dataclass(frozen=True, slots=True)
class Profile:
    center: float  # price the daily path reverts to
    band: float  # log half-width of the band the daily path stays in
    daily_vol: float  # log volatility of one daily anchor step
    minute_vol: float  # log volatility of one minute at session weight 1
    spread_points: float
    ticks: float  # mean tick volume of a minute at session weight 1


# minute_vol calibrated so the median M1 range matches the shipped files at the centre price:
# gold about 2.0 (file median 2.08), EURUSD about 0.00016.
PROFILES: dict[str, Profile] = {
    "XAUUSD": Profile(center=3500.0, band=0.25, daily_vol=0.011, minute_vol=5.1e-4, spread_points=12, ticks=450),
    "EURUSD": Profile(center=1.10, band=0.08, daily_vol=0.005, minute_vol=1.37e-4, spread_points=13, ticks=70),
    "GBPUSD": Profile(center=1.27, band=0.09, daily_vol=0.006, minute_vol=1.55e-4, spread_points=16, ticks=80),
    "USDJPY": Profile(center=148.0, band=0.10, daily_vol=0.006, minute_vol=1.45e-4, spread_points=15, ticks=90),
}

# Activity by UTC hour: Asia quiet, London busy, London/New York overlap busiest, rollover (21:00) dead.
_SESSION = np.array(
    [0.55, 0.6, 0.6, 0.55, 0.5, 0.55, 0.7, 1.0, 1.15, 1.05, 0.95, 1.0, 1.25, 1.6, 1.7, 1.45, 1.1, 0.9, 0.85, 0.8, 0.7, 0.4, 0.45, 0.5]
)
_MINUTE = np.arange(1440)
_WEIGHT = np.interp(_MINUTE, np.arange(24) * 60 + 30, _SESSION, period=1440)
# Spreads widen at the 21:00-22:00 UTC rollover and just after it.
_SPREAD_MULT = np.where((_MINUTE >= 21 * 60) & (_MINUTE < 22 * 60), 2.5, np.where((_MINUTE >= 22 * 60) & (_MINUTE < 23 * 60), 1.5, 1.0))

GARCH_ALPHA = 0.06
GARCH_BETA = 0.92
T_DF = 5  # Student-t degrees of freedom of the shocks (heavy-ish tails)
PIN_PROB = 0.09  # share of bars given one long rejection wick
_CACHE_DAYS = 256


class SyntheticFeed:
    name = "synthetic"
    server_time = "utc"

    def __init__(self, symbols: tuple[str, ...] | list[str] = ("XAUUSD", "EURUSD"), seed: int = 7, *, start: datetime | None = None) -> None:
        unknown = [s for s in symbols if s not in PROFILES]
        if unknown:
            raise ValueError(f"no synthetic profile for {unknown}; available: {', '.join(sorted(PROFILES))}")
        self._symbols = list(symbols)
        self._seed = seed
        self._start = ensure_utc(start) if start is not None else DEFAULT_START
        self._anchors = {s: self._anchor_path(s) for s in self._symbols}
        self._days: OrderedDict[tuple[str, date], Bars] = OrderedDict()

    def symbols(self) -> list[str]:
        return list(self._symbols)

    def start_time(self) -> datetime:
        return self._start

    def market_open(self, symbol: str, at: datetime) -> bool:
        return not weekend_closed(at)

    def closed_bars(self, symbol: str, *, until: datetime, count: int) -> Bars:
        if symbol not in self._anchors:
            raise UnknownSymbol(f"the synthetic feed serves {', '.join(self._symbols)}, not {symbol!r}")
        last_open = to_epoch(until) - BAR_SECONDS
        day = datetime.fromtimestamp(last_open, UTC).date()
        chunks: list[Bars] = []
        total = 0
        for _ in range(count // 1000 + 10):  # a day holds up to 1440 bars; weekends hold fewer
            if total >= count or day < ORIGIN:
                break
            bars = self._day(symbol, day)
            if not chunks:
                bars = bars[: int(np.searchsorted(bars.time, last_open, side="right"))]
            chunks.append(bars)
            total += len(bars)
            day -= timedelta(days=1)
        if not chunks:
            return Bars.empty()
        joined = Bars(*(np.concatenate([getattr(b, f) for b in reversed(chunks)]) for f in FIELDS))
        return joined[max(0, len(joined) - count):]

    # --- generation ------------------------------------------------------------------------------------

    def _rng(self, symbol: str, *key: int) -> np.random.Generator:
        return np.random.default_rng([self._seed, zlib.crc32(symbol.encode()), *key])

    def _anchor_path(self, symbol: str) -> np.ndarray:
        """Price at 00:00 UTC of each day from ORIGIN: a bounded, mean-reverting log walk."""
        p = PROFILES[symbol]
        sd = 0.6 * p.band
        phi = math.sqrt(max(0.0, 1.0 - (p.daily_vol / sd) ** 2))
        eps = self._rng(symbol, 0).standard_normal((END - ORIGIN).days + 2)
        x = np.empty_like(eps)
        x[0] = sd * eps[0]
        for i in range(1, len(x)):
            x[i] = phi * x[i - 1] + p.daily_vol * eps[i]
        return p.center * np.exp(p.band * np.tanh(x / p.band))

    def _day(self, symbol: str, day: date) -> Bars:
        key = (symbol, day)
        bars = self._days.get(key)
        if bars is None:
            bars = self._generate(symbol, day)
            self._days[key] = bars
            if len(self._days) > _CACHE_DAYS:
                self._days.popitem(last=False)
        else:
            self._days.move_to_end(key)
        return bars

    def _generate(self, symbol: str, day: date) -> Bars:
        if not ORIGIN <= day < END:
            return Bars.empty()
        weekday = day.weekday()
        if weekday == 5:
            return Bars.empty()
        minutes = _MINUTE[_MINUTE < 21 * 60] if weekday == 4 else _MINUTE[_MINUTE >= 22 * 60] if weekday == 6 else _MINUTE
        n = len(minutes)
        p, spec = PROFILES[symbol], get_spec(symbol)
        rng = self._rng(symbol, day.toordinal())
        index = (day - ORIGIN).days
        open_price, target = self._anchors[symbol][index], self._anchors[symbol][index + 1]
        weight = _WEIGHT[minutes]

        # GARCH(1,1) on standardised Student-t shocks (unit unconditional variance).
        z = rng.standard_t(T_DF, n) / math.sqrt(T_DF / (T_DF - 2))
        h = np.empty(n)
        e = np.empty(n)
        var = 1.0
        omega = 1.0 - GARCH_ALPHA - GARCH_BETA
        for i in range(n):
            h[i] = var
            e[i] = math.sqrt(var) * z[i]
            var = omega + GARCH_ALPHA * e[i] * e[i] + GARCH_BETA * var
        sigma = p.minute_vol * weight * np.sqrt(h)  # log vol of each minute
        returns = sigma * z

        # Occasional trend episodes: a steady drift for 20-180 minutes.
        for _ in range(rng.poisson(1.0)):
            first = int(rng.integers(0, n))
            length = int(rng.integers(20, 181))
            returns[first:first + length] += rng.choice((-1.0, 1.0)) * rng.uniform(0.08, 0.25) * p.minute_vol * weight[first:first + length]

        # Close path pinned to the next day's anchor (a tiny linear correction spread over the day).
        path = math.log(open_price) + np.cumsum(returns)
        path += np.arange(1, n + 1) / n * (math.log(target) - path[-1])
        close = np.exp(path)
        price = np.concatenate(([open_price], close[:-1]))
        opens = price + rng.normal(0.0, 0.03, n) * sigma * price  # the first tick of a minute sits near the last close

        # Wicks: the exact maximum/minimum of a Brownian bridge from open to close; some bars get a long tail.
        scale = sigma * price
        body = close - opens
        up_scale = scale.copy()
        down_scale = scale.copy()
        pins = rng.random(n) < PIN_PROB
        tail = rng.uniform(1.8, 3.5, n)
        upper = rng.random(n) < 0.5
        up_scale[pins & upper] *= tail[pins & upper]
        down_scale[pins & ~upper] *= tail[pins & ~upper]
        high = opens + (body + np.sqrt(body**2 - 2 * up_scale**2 * np.log1p(-rng.random(n)))) / 2
        low = opens + (body - np.sqrt(body**2 - 2 * down_scale**2 * np.log1p(-rng.random(n)))) / 2

        d = spec.digits
        opens, close = np.round(opens, d), np.round(close, d)
        high = np.maximum(np.round(high, d), np.maximum(opens, close))
        low = np.minimum(np.round(low, d), np.minimum(opens, close))

        ticks = np.maximum(1, (p.ticks * weight * (0.4 + 0.6 * np.abs(e)) * rng.lognormal(0.0, 0.25, n)).astype(np.int64))
        spread_mult = _SPREAD_MULT[minutes].copy()
        if weekday == 6:  # the Sunday reopen is thin for its first hour
            spread_mult[minutes < 23 * 60] *= 2.0
        spread = np.maximum(1, np.round(p.spread_points * spread_mult * rng.lognormal(0.0, 0.12, n))).astype(np.int64)

        day_epoch = to_epoch(datetime(day.year, day.month, day.day, tzinfo=UTC))
        bars = Bars.from_columns(
            time=day_epoch + minutes * BAR_SECONDS, open=opens, high=high, low=low, close=close, tick_volume=ticks, spread=spread
        )
        bars, rejected = validate_bars(bars)
        if rejected:  # never expected: the construction keeps high >= max(open, close) >= min(open, close) >= low > 0
            log.warning("synthetic bars rejected", symbol=symbol, day=day.isoformat(), count=len(rejected), first=rejected[0][1])
        return bars
