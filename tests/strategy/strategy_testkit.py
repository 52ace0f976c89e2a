"""Helpers of the strategy tests (a plain module: test files import it, pytest does not collect it).

Tiny readers of the two real M1 formats (shared/loaders.py is written concurrently), the previous broker day's levels,
a synthetic gold-like series with pins, and a Match comparison within 1e-9 relative.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from shared.bars import Bars
from shared.messages import Levels
from shared.strategies.base import Match

T0 = int(datetime(2026, 3, 2, 8, 0, tzinfo=UTC).timestamp())
Row = tuple[float, float, float, float]  # open, high, low, close

# Hand-built pins. Quiet background: every bar 2002.0-2003.0 (range 1.0, so ATR 1.0) with equal highs and lows
# (ties make no swing); the round numbers 2000 and 2005 are 1.1+ from the pins' tips, beyond 0.3 ATR.
FLAT: Row = (2002.4, 2003.0, 2002.0, 2002.6)
BULL_PIN: Row = (2002.75, 2003.1, 2001.1, 2002.95)  # range 2.0, lower tail 1.65, body 0.2, nose 0.15
BEAR_PIN: Row = (2002.25, 2003.9, 2001.9, 2002.05)  # range 2.0, upper tail 1.65, body 0.2, nose 0.15
SWING_LOW_2001: Row = (2002.4, 2003.0, 2001.0, 2002.6)  # in the background: a swing low 0.1 under BULL_PIN's tip


def make_bars(rows: list[Row]) -> Bars:
    opens, highs, lows, closes = (list(col) for col in zip(*rows, strict=True))
    return Bars.from_columns(time=[T0 + 60 * i for i in range(len(rows))], open=opens, high=highs, low=lows, close=closes)


def background(n: int = 400, bar: Row = FLAT) -> list[Row]:
    return [bar] * n


def with_bar(rows: list[Row], age: int, bar: Row) -> list[Row]:
    """Put `bar` `age` bars before the pin that will follow `rows` (age 1: the bar just before the pin)."""
    rows = list(rows)
    rows[-age] = bar
    return rows


def pin_at_swing_low() -> Bars:
    """A clean bullish pin whose tail tip is 0.1 above a swing low 30 bars back: price_action_pinbar buys it."""
    return make_bars(with_bar(background(), 30, SWING_LOW_2001) + [BULL_PIN])


def read_mt5_rates_csv(path: Path) -> Bars:
    """`time,open,high,low,close,tick_volume,spread,real_volume`; the file's server time is read as UTC (the default)."""
    rows = np.genfromtxt(path, delimiter=",", names=True, dtype=None, encoding="ascii")
    times = [int(datetime.fromisoformat(t).replace(tzinfo=UTC).timestamp()) for t in rows["time"]]
    return Bars.from_columns(time=times, open=rows["open"], high=rows["high"], low=rows["low"], close=rows["close"],
                             tick_volume=rows["tick_volume"], spread=rows["spread"])


def read_mt5_export_tsv(path: Path) -> Bars:
    """`date time open high low close tickvolume volume spread`, `YYYY.MM.DD`, tab-separated, CRLF; read as UTC."""
    rows = np.genfromtxt(path, delimiter="\t", names=True, dtype=None, encoding="ascii")
    times = [int(datetime.strptime(f"{d} {t}", "%Y.%m.%d %H:%M:%S").replace(tzinfo=UTC).timestamp())
             for d, t in zip(rows["date"], rows["time"], strict=True)]
    return Bars.from_columns(time=times, open=rows["open"], high=rows["high"], low=rows["low"], close=rows["close"],
                             tick_volume=rows["tickvolume"], spread=rows["spread"])


def previous_day_levels(bars: Bars) -> dict[int, Levels]:
    """Levels of each broker day (key: UTC day number) from the day before it in the file; broker days start at 00:00.

    A stand-in for shared/levels.py (written concurrently): floor pivots P = (H+L+C)/3, R1 = 2P-L, S1 = 2P-H.
    """
    day = bars.time // 86400
    days, starts = np.unique(day, return_index=True)
    ends = np.append(starts[1:], len(day))
    out: dict[int, Levels] = {}
    for k in range(1, len(days)):
        s, e = starts[k - 1], ends[k - 1]
        high, low, close = float(bars.high[s:e].max()), float(bars.low[s:e].min()), float(bars.close[e - 1])
        pivot = (high + low + close) / 3
        out[int(days[k])] = Levels(
            day_start=datetime.fromtimestamp(int(days[k]) * 86400, UTC),
            prev_high=high, prev_low=low, prev_close=close, pivot=pivot,
            r1=2 * pivot - low, s1=2 * pivot - high, r2=pivot + (high - low), s2=pivot - (high - low),
        )
    return out


def synthetic_bars(seed: int, n: int, *, pin_rate: float, start: float = 2000.0) -> Bars:
    """A gold-like random walk (ATR about 1.5) with pins whose tails reach the round number below or above."""
    rng = np.random.default_rng(seed)
    rows = []
    close = start + rng.uniform(0, 5)
    for _ in range(n):
        op = close
        cl = op + rng.normal(0, 1.0)
        hi = max(op, cl) + rng.exponential(0.4)
        lo = min(op, cl) - rng.exponential(0.4)
        if rng.random() < pin_rate:
            body = abs(rng.normal(0, 0.1))
            if rng.random() < 0.5:  # bullish: the tail tests the round number under the open
                lo = math.floor((op - 0.8) / 5.0) * 5.0 + rng.uniform(-0.3, 0.3)
                cl = op + body
                hi = cl + rng.uniform(0, 0.1) * (cl - lo)
            else:
                hi = math.ceil((op + 0.8) / 5.0) * 5.0 + rng.uniform(-0.3, 0.3)
                cl = op - body
                lo = cl - rng.uniform(0, 0.1) * (hi - cl)
        rows.append((op, hi, lo, cl))
        close = cl
    return make_bars(rows)


def assert_same(a: Match | None, b: Match | None, where: str) -> None:
    assert (a is None) == (b is None), f"{where}: {a} vs {b}"
    if a is None or b is None:
        return
    assert a.side == b.side, where
    for field in ("entry", "stop", "target", "score"):
        x, y = getattr(a, field), getattr(b, field)
        assert math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12), f"{where}: {field} {x} vs {y}"
    assert a.features["level_kind"] == b.features["level_kind"], where


def regime_bars(seed: int, n: int, *, start: float = 2000.0, t0: int = T0) -> Bars:
    """A gold-like M1 walk that switches between trends, tight ranges and quiet dojis every few dozen bars, with the
    odd missing minute: every strategy of the catalog fires on it (test_strategy_properties.py checks so)."""
    rng = np.random.default_rng(seed)
    rows, times = [], []
    close, t = start + rng.uniform(0, 5), t0
    drift, vol, left = 0.0, 1.0, 0
    for _ in range(n):
        if left == 0:
            kind = rng.choice(["trend", "range", "quiet"], p=[0.45, 0.35, 0.2])
            drift = rng.choice([-1, 1]) * rng.uniform(0.2, 0.6) if kind == "trend" else 0.0
            vol = {"trend": 1.0, "range": 0.8, "quiet": 0.35}[kind] * rng.uniform(0.7, 1.3)
            left = int(rng.integers(20, 120))
        left -= 1
        op = close
        cl = op + drift + rng.normal(0, vol)
        if drift == 0.0:
            cl += 0.05 * (start - cl)  # ranges revert
        if rng.random() < 0.12:
            cl = op + rng.normal(0, 0.02)  # a doji
        hi = max(op, cl) + rng.exponential(0.3 * vol)
        lo = min(op, cl) - rng.exponential(0.3 * vol)
        rows.append((op, hi, lo, cl))
        times.append(t)
        close = cl
        t += 120 if rng.random() < 0.02 else 60  # now and then a missing minute
    opens, highs, lows, closes = (list(col) for col in zip(*rows, strict=True))
    return Bars.from_columns(time=times, open=opens, high=highs, low=lows, close=closes)


def m1_from_5m(rows: list[Row], t0: int = T0) -> Bars:
    """Five M1 bars per 5m row (t0 must be on a 5-minute boundary) that aggregate back to exactly that row."""
    assert t0 % 300 == 0
    m1: list[Row] = []
    for o, h, lo, c in rows:
        m1 += [(o, h, lo, o), (o, o, o, o), (o, o, o, o), (o, o, o, o), (o, max(o, c), min(o, c), c)]
    opens, highs, lows, closes = (list(col) for col in zip(*m1, strict=True))
    return Bars.from_columns(time=[t0 + 60 * i for i in range(len(m1))], open=opens, high=highs, low=lows, close=closes)


def harami_after_a_fall(background_bars: int = 380) -> list[Row]:
    """5m rows: a quiet background (range 1.0), a fall of five black bars, a long black mother, a small white baby
    inside its body: TA-Lib's CDLHARAMI says +100 and the fall is well over 3 ATR."""
    rows = [FLAT, (2002.6, 2003.0, 2002.0, 2002.4)] * (background_bars // 2)
    level = 2002.6
    for _ in range(5):
        rows.append((level, level + 0.1, level - 1.1, level - 1.0))
        level -= 1.0
    rows.append((level, level + 0.1, level - 2.6, level - 2.5))  # the mother: body 2.5
    rows.append((level - 1.6, level - 1.3, level - 1.9, level - 1.5))  # the baby: body 0.1, inside 2.5 below the open
    return rows


def assert_same_match(a: Match | None, b: Match | None, where: str) -> None:
    """Same side, judged bar and text features; prices, scores and numeric features within 1e-9 relative."""
    assert (a is None) == (b is None), f"{where}: {a} vs {b}"
    if a is None or b is None:
        return
    assert (a.side, a.bar_time) == (b.side, b.bar_time), where
    for field in ("entry", "stop", "target", "score"):
        x, y = getattr(a, field), getattr(b, field)
        assert math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12), f"{where}: {field} {x} vs {y}"
    assert a.features.keys() == b.features.keys(), where
    for key, x in a.features.items():
        y = b.features[key]
        if isinstance(x, float) and isinstance(y, float):
            # score components live in [0, 1]: one near 0 (1 minus a ratio near 1) is held to 1e-9 absolute
            floor = 1e-9 if key.startswith("score_") else 1e-12
            assert math.isclose(x, y, rel_tol=1e-9, abs_tol=floor), f"{where}: feature {key} {x} vs {y}"
        else:
            assert x == y, f"{where}: feature {key} {x!r} vs {y!r}"
