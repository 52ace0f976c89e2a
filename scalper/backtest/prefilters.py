"""Vectorised necessary conditions ("candidates") that let the backtester skip bars a strategy cannot match.

A prefilter never decides a signal: it only rules out bars on which the strategy's own `evaluate` would surely return
None, so the backtester calls `evaluate` (the live code, on the live window) on every remaining bar and emits exactly
the live signals. Each condition is a copy of an early test of the strategy, loosened by a relative slack so float
rounding can only let more bars through, never fewer. A strategy without a prefilter is evaluated on every bar
(exact, slower). A strategy may also carry its own `candidates(bars, params) -> bool mask` attribute; it wins.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from pydantic import BaseModel

from shared.bars import Bars
from shared.strategies.indicators import adx, atr, bollinger, ema, rsi, stochastic
from shared.ta import talib

Prefilter = Callable[[Bars, BaseModel], np.ndarray]
SLACK = 1e-9  # relative slack on every threshold (a looser test keeps a superset of the bars)
ATR_SLACK = 1e-3  # the full-history ATR stands in for the window's (they agree within 1e-10 at the lookback)
ATR_TOL = 1e-3  # ATRs of slack on an EMA distance (window and full-history EMAs agree within 1e-6 ATR at the lookback)
ADX_TOL = 0.05  # points of slack on ADX, RSI, %K (they agree within 1e-4 points at the lookback)


def _shift(x: np.ndarray, k: int) -> np.ndarray:
    """x[i - k] at i (NaN where there is none)."""
    out = np.full(len(x), np.nan)
    if k < len(x):
        out[k:] = x[: len(x) - k]
    return out


def _rolling(x: np.ndarray, width: int, fn) -> np.ndarray:
    """fn over x[i - width + 1 .. i] at i (NaN for the first width - 1)."""
    if width >= 2 and len(x) >= width and (fn is np.max or fn is np.min):  # TA-Lib's running max/min: exact, and faster
        return (talib.MAX if fn is np.max else talib.MIN)(np.ascontiguousarray(x, dtype=np.float64), timeperiod=width)
    out = np.full(len(x), np.nan)
    if len(x) >= width:
        out[width - 1 :] = fn(np.lib.stride_tricks.sliding_window_view(x, width), axis=1)
    return out


def _maybe(cond: np.ndarray, *inputs: np.ndarray) -> np.ndarray:
    """`cond`, but True wherever an input is NaN (an unknown never rules a bar out)."""
    unknown = np.zeros(len(cond), bool)
    for x in inputs:
        unknown |= np.isnan(x)
    return cond | unknown


def _pinbar(bars: Bars, p: BaseModel) -> np.ndarray:
    o, h, lo, c = bars.open, bars.high, bars.low, bars.close
    rng = h - lo
    top, bottom = np.maximum(o, c), np.minimum(o, c)
    body = top - bottom
    lower, upper = bottom - lo, h - top
    bullish = lower > upper
    tail = np.where(bullish, lower, upper)
    nose = np.where(bullish, upper, lower)
    eps = SLACK * np.abs(rng) + 1e-12
    ok = (rng > 0) & (tail >= p.tail_min_ratio * rng - eps) & (tail >= p.tail_body_min * body - eps)
    ok &= (body <= p.body_max_ratio * rng + eps) & (nose <= p.nose_max_ratio * rng + eps)
    # Body in the top (bull) or bottom (bear) share of the range.
    ok &= np.where(bullish, bottom >= lo + (1.0 - p.body_zone) * rng - eps, top <= h - (1.0 - p.body_zone) * rng + eps)
    # The tail beyond the previous bar's extreme, or the extreme of the last extreme_bars bars.
    prev_low, prev_high = _shift(lo, 1), _shift(h, 1)
    min_before = _shift(_rolling(lo, p.extreme_bars - 1, np.min), 1)
    max_before = _shift(_rolling(h, p.extreme_bars - 1, np.max), 1)
    with np.errstate(invalid="ignore"):
        beyond = np.where(bullish, prev_low - lo >= p.protrusion_min * rng - eps, h - prev_high >= p.protrusion_min * rng - eps)
        extreme = np.where(bullish, lo <= min_before, h >= max_before)
    ok &= _maybe(beyond | extreme, prev_low, min_before)
    # The ATR gate: range >= min_range_atr x ATR(window), with the full-history ATR and a slack.
    a = atr(h, lo, c, p.atr_period)
    with np.errstate(invalid="ignore"):
        ok &= ~(rng < p.min_range_atr * a * (1.0 - ATR_SLACK))
    return ok


def _trend_pullback(bars: Bars, p: BaseModel) -> np.ndarray:
    o, h, lo, c = bars.open, bars.high, bars.low, bars.close
    rng = h - lo
    a = atr(h, lo, c, p.atr_period)
    fast, slow = ema(c, p.fast_ema), ema(c, p.slow_ema)
    sign = np.where(c > o, 1.0, -1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = sign * (fast - slow) / a
        slope = sign * (slow - _shift(slow, p.slope_bars)) / a
        trend = _maybe((gap >= p.min_gap_atr - ATR_TOL) & (slope >= max(p.min_slope_atr, 0.0) - ATR_TOL), gap, slope)
        # A touch of the fast EMA among the last pullback_bars bars, and the close back beyond it.
        # (distances in the judged bar's ATR, as the strategy measures them)
        dist_up = _rolling(lo - fast, p.pullback_bars, np.min) / a
        dist_down = _rolling(fast - h, p.pullback_bars, np.min) / a
        dist = np.where(sign > 0, dist_up, dist_down)
        touch = _maybe(dist <= p.pullback_atr + ATR_TOL, dist)
        beyond = _maybe(sign * (c - fast) > -ATR_TOL * a, fast, a)
    return (rng > 0) & (c != o) & trend & touch & beyond


def _doji_breakout(bars: Bars, p: BaseModel) -> np.ndarray:
    o, h, lo, c = bars.open, bars.high, bars.low, bars.close
    rng = h - lo
    body = np.abs(c - o)
    eps = SLACK * np.abs(rng) + 1e-12
    a = atr(h, lo, c, p.atr_period)
    # TA-Lib BodyDoji: body <= 0.1 x the average range of the 10 bars before (indicators.is_doji).
    avg10 = _shift(_rolling(rng, 10, np.mean), 1)
    doji = _maybe(body <= 0.1 * avg10 * (1 + SLACK) + 1e-12, avg10)
    box_h, box_l = _rolling(h, p.box_bars, np.max), _rolling(lo, p.box_bars, np.min)
    any_setup = np.zeros(len(c), bool)
    with np.errstate(invalid="ignore"):
        for age in range(1, p.setup_bars + 1):
            d_doji = np.concatenate((np.zeros(min(age, len(c)), bool), doji[: max(0, len(c) - age)]))
            top, bottom, a_d = _shift(box_h, age), _shift(box_l, age), _shift(a, age)
            tight = _maybe(top - bottom <= p.box_max_atr * a_d * (1 + ATR_SLACK), top, bottom, a_d)
            need = p.breakout_atr * a * (1 - ATR_SLACK) - eps
            up = (c > o) & _maybe(c - top >= need, top, a)
            down = (c < o) & _maybe(bottom - c >= need, bottom, a)
            any_setup |= d_doji & tight & (up | down)
    return (rng > 0) & (body >= p.min_body_ratio * rng - eps) & any_setup


def _range_reversion(bars: Bars, p: BaseModel) -> np.ndarray:
    h, lo, c = bars.high, bars.low, bars.close
    top = _shift(_rolling(h, p.channel_bars, np.max), 1)
    bottom = _shift(_rolling(lo, p.channel_bars, np.min), 1)
    width = top - bottom
    a = atr(h, lo, c, p.atr_period)
    x = adx(h, lo, c, p.adx_period)
    eps = SLACK * np.abs(c)
    with np.errstate(invalid="ignore"):
        inside = _maybe((width > 0) & (c > bottom - eps) & (c < top + eps), top, bottom)
        tight = _maybe(width <= p.max_width_atr * a * (1 + ATR_SLACK), width, a)
        calm = _maybe(x < p.adx_max + ADX_TOL, x)
        # A tag of the channel's edge zone (or of the Bollinger band), and an overbought or oversold oscillator.
        zone = p.edge_zone * width
        tag = _maybe((h >= top - zone - eps) | (lo <= bottom + zone + eps), top, bottom)
        if p.use_bollinger:
            up, _, low_band = bollinger(c, p.bb_period, p.bb_k)
            tag |= _maybe((h >= up - eps) | (lo <= low_band + eps), up, low_band)
        r = rsi(c, p.rsi_period)
        k, _ = stochastic(h, lo, c, p.stoch_k, p.stoch_slow, p.stoch_d)
        stretched = (r > p.rsi_high - ADX_TOL) | (r < 100.0 - p.rsi_high + ADX_TOL)
        stretched |= (k > p.stoch_high - ADX_TOL) | (k < 100.0 - p.stoch_high + ADX_TOL)
        stretched = _maybe(stretched, r, k)
    return inside & tight & calm & tag & stretched


def _closes_5m_bucket(bars: Bars, p: BaseModel) -> np.ndarray:
    """resample.may_close_bucket over every bar: a 5-minute boundary falls after the previous M1 close and at or
    before this one's (integer arithmetic: exact)."""
    t = bars.time
    ok = np.zeros(len(t), bool)
    if len(t) >= 2:
        close = t[1:] + 60
        ok[1:] = (close // 300) * 300 > t[:-1] + 60
    return ok


PREFILTERS: dict[str, Prefilter] = {
    "harami": _closes_5m_bucket,
    "price_action_pinbar": _pinbar,
    "trend_pullback": _trend_pullback,
    "doji_breakout": _doji_breakout,
    "range_reversion": _range_reversion,
}


def candidates(name: str, strategy: object, bars: Bars, params: BaseModel) -> np.ndarray | None:
    """Bool mask of the bars worth evaluating, or None when every bar must be evaluated."""
    own = getattr(strategy, "candidates", None)
    if callable(own):
        return np.asarray(own(bars, params), bool)
    fn = PREFILTERS.get(name)
    return None if fn is None else fn(bars, params)
