"""Indicators as pure functions over float64 numpy arrays (oldest first), shared by live strategies and the backtester.

EMA and ATR are TA-Lib's (its SMA-seeding convention is the project's); what TA-Lib lacks is written here in numpy.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from shared.ta import talib  # TA-Lib without its pandas import (shared/ta.py)

# Relative agreement the windowed ATR must reach with its full-history value. Scores divide by ATR and must match
# the backtester's full-history run within 1e-9 relative (architecture.md, "Lookback"), so ATR needs a tenth of that.
ATR_AGREEMENT = 1e-10
# The seed's error (SMA seed - full-history ATR) in units of the ATR at the judged bar, fitted to the measured
# agreement: 2.3 at 213 bars and 5.0 at 348 bars on the gold M1 file, 3.8 at 357 on EURUSD (the seed itself is off by
# at most 0.84 ATR, but the ATR may have fallen a lot since the window's start). Twice the worst seen.
ATR_SEED_ERROR_MAX = 10.0


def ema(x: np.ndarray, n: int) -> np.ndarray:
    """EMA with alpha 2/(n+1), seeded with the SMA of the first n values (TA-Lib); NaN before index n-1."""
    return talib.EMA(x, timeperiod=n)


def atr(high: np.ndarray, low: np.ndarray, close: np.ndarray, n: int = 14) -> np.ndarray:
    """Wilder's ATR: the SMA of true ranges 1..n seeds index n, then atr = (atr_prev*(n-1) + tr)/n (TA-Lib); NaN before n."""
    return talib.ATR(high, low, close, timeperiod=n)


def true_range(high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
    """max(high-low, |high-prev close|, |low-prev close|); the first bar, with no previous close, gets high-low."""
    tr = high - low
    if len(tr) > 1:
        prev = close[:-1]
        np.maximum(tr[1:], np.abs(high[1:] - prev), out=tr[1:])
        np.maximum(tr[1:], np.abs(low[1:] - prev), out=tr[1:])
    return tr


def atr_warmup(n: int = 14, *, agreement: float = ATR_AGREEMENT, seed_error: float = ATR_SEED_ERROR_MAX) -> int:
    """Bars an ATR(n) window needs so its last value agrees with the full-history ATR within `agreement` (relative).

    Wilder's smoothing shrinks the seed's error by (n-1)/n a bar: n+1 bars build the seed, then k bars with
    seed_error * ((n-1)/n)**k <= agreement. Measured for ATR(14) on the gold M1 file: 213 bars are the fewest that
    reach 1e-6 at every bar, 348 the fewest that reach 1e-10; this gives 233 and 357.
    """
    decay = math.log(1.0 - 1.0 / n)
    return n + 1 + math.ceil(math.log(agreement / seed_error) / decay)


def swing_points(x: np.ndarray, n: int = 2, *, kind: Literal["high", "low"]) -> np.ndarray:
    """Indices of fractal swing highs of `x` (strictly above the n values on each side), or swing lows (strictly below).

    A swing at index i is confirmed only when bar i+n has closed, so the last n bars are never swings: every index
    returned is final and no later bar can change it (no lookahead).
    """
    m = len(x)
    if m < 2 * n + 1:
        return np.empty(0, dtype=np.int64)
    extreme = np.maximum if kind == "high" else np.minimum
    mid = x[n : m - n]
    neighbours = x[n - 1 : m - n - 1]
    for k in range(1, n + 1):
        if k > 1:
            neighbours = extreme(neighbours, x[n - k : m - n - k])
        neighbours = extreme(neighbours, x[n + k : m - n + k])
    beyond = mid > neighbours if kind == "high" else mid < neighbours
    return beyond.nonzero()[0] + n


def confirmed_swings(high: np.ndarray, low: np.ndarray, n: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(swing high indices, swing low indices): fractals with n lower highs (higher lows) on each side, confirmed n bars later."""
    return swing_points(high, n, kind="high"), swing_points(low, n, kind="low")


def round_levels(price: float, step: float) -> tuple[float, float]:
    """The round numbers (multiples of `step`) just below and just above `price`; both equal `price` when it is one."""
    q = price / step
    r = round(q)
    if abs(q - r) <= 1e-9 * max(1.0, abs(q)):
        return r * step, r * step
    return math.floor(q) * step, math.ceil(q) * step


# --- oscillators and bands (TA-Lib where it computes the same thing; its conventions are the project's) ----------


def ema_warmup(n: int, *, agreement: float = ATR_AGREEMENT, seed_error: float = 100.0) -> int:
    """Bars an EMA(n) window needs so its last value agrees with the full-history EMA within `agreement` ATRs.

    The SMA seed's error (in ATRs at the judged bar; bounded by `seed_error`) shrinks by (n-1)/(n+1) a bar. Measured
    on the gold M1 file (tests/strategy/test_strategy_lookback.py) the EMA(50) seed is off by up to ~60 ATR at the
    judged bar, so 100 ATR covers it.
    """
    decay = math.log((n - 1) / (n + 1))
    return n + math.ceil(math.log(agreement / seed_error) / decay)


def wilder_warmup(n: int, *, agreement: float, seed_error: float, stages: int = 1) -> int:
    """Bars a Wilder-smoothed value (RSI, ADX) needs so its windowed value agrees with the full history.

    Each smoothing stage shrinks the seed's error by (n-1)/n a bar; a second stage (ADX smooths DX, itself made of
    smoothed sums) adds n bars of seed and a factor k (the error of stage one convolved with stage two), covered here
    by 2n more bars per extra stage.
    """
    decay = math.log(1.0 - 1.0 / n)
    return stages * (n + 1) + 2 * n * (stages - 1) + math.ceil(math.log(agreement / seed_error) / decay)


def rsi(close: np.ndarray, n: int = 14) -> np.ndarray:
    """Wilder's RSI (TA-Lib): average gain and loss seeded with the SMA of the first n changes, then Wilder-smoothed."""
    return talib.RSI(close, timeperiod=n)


def adx(high: np.ndarray, low: np.ndarray, close: np.ndarray, n: int = 14) -> np.ndarray:
    """Wilder's ADX (TA-Lib): Wilder sums of +DM, -DM and TR make +DI/-DI, DX = 100|+DI - -DI|/(+DI + -DI), and ADX
    is DX Wilder-smoothed (seeded with the mean of the first n DX); NaN before index 2n-1."""
    return talib.ADX(high, low, close, timeperiod=n)


def bollinger(close: np.ndarray, n: int = 20, k: float = 2.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(upper, middle, lower): SMA(n) ± k population standard deviations of the last n closes (TA-Lib BBANDS)."""
    return talib.BBANDS(close, timeperiod=n, nbdevup=k, nbdevdn=k, matype=0)


def keltner(high: np.ndarray, low: np.ndarray, close: np.ndarray, n: int = 20, k: float = 1.5,
            atr_n: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(upper, middle, lower): EMA(n) of the close ± k × ATR (Wilder, period `atr_n`, default n)."""
    mid = ema(close, n)
    band = k * atr(high, low, close, atr_n or n)
    return mid + band, mid, mid - band


def donchian(high: np.ndarray, low: np.ndarray, n: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """(upper, lower): the highest high and lowest low of the last n bars, this bar included (TA-Lib MAX/MIN)."""
    return talib.MAX(high, timeperiod=n), talib.MIN(low, timeperiod=n)


def stochastic(high: np.ndarray, low: np.ndarray, close: np.ndarray, k_n: int = 14, k_slow: int = 3,
               d_n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Slow stochastic (%K, %D) (TA-Lib STOCH, SMA smoothing): fast %K = 100 (close - lowest low) / (highest high -
    lowest low) over k_n bars, %K its SMA(k_slow), %D the SMA(d_n) of %K. Finite windows: no warm-up error."""
    return talib.STOCH(high, low, close, fastk_period=k_n, slowk_period=k_slow, slowk_matype=0,
                       slowd_period=d_n, slowd_matype=0)


# --- TA-Lib's candle rules, judged at one bar in plain floats (the live path judges one bar a window) ----------
# Candle settings (TA-Lib's defaults, strategies.md): the average is over the `period` bars *before* the bar tested.
BODY_LONG_PERIOD = BODY_SHORT_PERIOD = BODY_DOJI_PERIOD = SHADOW_VERY_SHORT_PERIOD = 10
NEAR_PERIOD = 5
CANDLE_TAIL = 12  # bars any of the four rules needs to judge its last bar (harami: bar 1's 10-bar average, then bar 2)
BODY_DOJI_FACTOR = 0.1  # BodyDoji: 0.1 x average high-low range
SHADOW_VERY_SHORT_FACTOR = 0.1  # ShadowVeryShort: 0.1 x average high-low range
NEAR_FACTOR = 0.2  # Near: 0.2 x average high-low range


# The candle rules take numpy arrays or plain lists (the live path passes the window's last bars as lists: indexing a
# list is ten times cheaper than a numpy array) and sum in one fixed order, so both give bit-identical answers.
def _avg_range(high, low, i: int, period: int) -> float:
    total = 0.0
    for k in range(i - period, i):
        total += high[k] - low[k]
    return float(total) / period


def _avg_body(open_, close, i: int, period: int) -> float:
    total = 0.0
    for k in range(i - period, i):
        total += abs(close[k] - open_[k])
    return float(total) / period


def is_doji(open_, high, low, close, i: int = -1) -> bool:
    """TA-Lib CDLDOJI at bar i: body <= 0.1 x the average range of the 10 bars before it."""
    i = i % len(close)
    if i < BODY_DOJI_PERIOD:
        return False
    return abs(float(close[i]) - float(open_[i])) <= BODY_DOJI_FACTOR * _avg_range(high, low, i, BODY_DOJI_PERIOD)


def is_hammer(open_, high, low, close, i: int = -1) -> bool:
    """TA-Lib CDLHAMMER at bar i: body < average body (10 bars before), lower shadow > body, upper shadow < 0.1 x
    average range (10 bars before), and the body's low <= the previous low + 0.2 x the average range of the 5 bars
    before the previous bar."""
    i = i % len(close)
    if i < BODY_SHORT_PERIOD + 1:
        return False
    o, h, lo, c = float(open_[i]), float(high[i]), float(low[i]), float(close[i])
    body = abs(c - o)
    if not body < _avg_body(open_, close, i, BODY_SHORT_PERIOD):
        return False
    if not min(o, c) - lo > body:
        return False
    if not h - max(o, c) < SHADOW_VERY_SHORT_FACTOR * _avg_range(high, low, i, SHADOW_VERY_SHORT_PERIOD):
        return False
    return min(o, c) <= float(low[i - 1]) + NEAR_FACTOR * _avg_range(high, low, i - 1, NEAR_PERIOD)


def harami_sign(open_, high, low, close, i: int = -1) -> int:
    """TA-Lib CDLHARAMI at bar i: +100/-100 (body strictly inside), +80/-80 (inside with an equal edge) or 0.

    Bar i-1 has a long body (> its 10-bar average body), bar i a short one (<= its 10-bar average body) inside bar
    i-1's body; the sign is the opposite of bar i-1's colour (white when close >= open).
    """
    i = i % len(close)
    if i < BODY_LONG_PERIOD + 1:
        return 0
    o1, c1, o2, c2 = float(open_[i - 1]), float(close[i - 1]), float(open_[i]), float(close[i])
    if not abs(c1 - o1) > _avg_body(open_, close, i - 1, BODY_LONG_PERIOD):
        return 0
    if not abs(c2 - o2) <= _avg_body(open_, close, i, BODY_SHORT_PERIOD):
        return 0
    top1, bot1, top2, bot2 = max(o1, c1), min(o1, c1), max(o2, c2), min(o2, c2)
    sign = -1 if c1 >= o1 else 1
    if top2 < top1 and bot2 > bot1:
        return 100 * sign
    if top2 <= top1 and bot2 >= bot1:
        return 80 * sign
    return 0


def engulfing_sign(open_, close, i: int = -1) -> int:
    """TA-Lib CDLENGULFING at bar i: opposite colours and body i covers body i-1 (one edge may be equal); +-100, or
    +-80 when the open of i equals the close of i-1 or the close of i equals the open of i-1; no size test."""
    i = i % len(close)
    if i < 1:
        return 0
    o1, c1, o2, c2 = float(open_[i - 1]), float(close[i - 1]), float(open_[i]), float(close[i])
    white2, white1 = c2 >= o2, c1 >= o1
    if white2 and not white1:
        hit = (c2 >= o1 and o2 < c1) or (c2 > o1 and o2 <= c1)
    elif white1 and not white2:
        hit = (o2 >= c1 and c2 < o1) or (o2 > c1 and c2 <= o1)
    else:
        return 0
    if not hit:
        return 0
    sign = 1 if white2 else -1
    return sign * (100 if (o2 != c1 and c2 != o1) else 80)
