"""Strategies stated over a whole history at once, as arrays, for the backtester (issue 18): what `evaluate` would
answer on every bar's live window, where that is proved, and the bars where it is not.

The live `evaluate` stays the one definition. A function here returns, for the judged bars [first, end):
- `index` and the match's values (side, entry, stop, target, score, features) for the bars the arrays decide match;
- `unsure`: the bars the arrays cannot decide; the backtester runs `evaluate` on their windows;
every other bar is a proved no-match.

Why a full-history indicator may stand in for the window's: EMA and Wilder's smoothing are linear recursions, so the
window's value differs from the full history's only by its seed's error times the decay since the seed:
    EMA(n):  |seed_w - E[w+n-1]| * (1 - 2/(n+1)) ** (p - (n-1))   (seed_w: the mean of the window's first n closes)
    ATR(n):  |seed_w - A[w+n]| * ((n-1)/n) ** (p - n)               (seed_w: the mean of the window's true ranges 1..n)
at window position p (w: the window's first bar), plus float rounding (ROUNDING below). Each bar gets that bound;
a comparison whose two sides are nearer than it is not decided here (the bar is unsure), and a bar whose score the
bound cannot hold within SCORE_REL is unsure too. Everything else in a strategy is the same float arithmetic on the
same bar values as `evaluate`, element by element, so it is bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import talib

from shared.bars import Bars

# Float rounding between the window's recursion and the full history's once the seed's error has decayed, relative
# to the value: measured at most 9.4e-16 (gold) and 6.4e-16 (EURUSD) for EMA(50), 0 for EMA(20) and ATR(14), on 3,000
# random windows of each shipped file; 16 ulps (3.6e-15) is four times that. tests/backtest/test_over_history.py
# holds the measured rounding under it on every window of both files.
ROUNDING = 16 * np.finfo(float).eps
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
        bound[i] = np.abs(seed[at_seed] - full[at_seed]) * decay + ROUNDING * float(np.nanmax(np.abs(close)))
    return full, bound


def atr_bound(high: np.ndarray, low: np.ndarray, close: np.ndarray, n: int, lookback: int) -> tuple[np.ndarray, np.ndarray]:
    """(ATR(n) over the whole history, the bound on |window ATR - it|) at the judged bar of each window."""
    m = len(close)
    full = talib.ATR(high, low, close, timeperiod=n)
    bound = np.full(m, np.nan)
    steps = lookback - 1 - n
    if steps < 0 or m < lookback:
        return full, bound
    tr = talib.TRANGE(high, low, close)  # tr[k] for k >= 1 uses close[k-1]: the window's own true range from its bar 1
    seed = talib.SMA(tr, timeperiod=n)  # seed[w+n]: the mean of tr[w+1 : w+n+1]
    i = np.arange(lookback - 1, m)
    at_seed = i + 1 - lookback + n
    decay = ((n - 1) / n) ** steps
    with np.errstate(invalid="ignore"):
        bound[i] = np.abs(seed[at_seed] - full[at_seed]) * decay + ROUNDING * np.abs(full[i])
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


def _mean_before(x: np.ndarray, i: np.ndarray, period: int) -> np.ndarray:
    """indicators._avg_range/_avg_body at bars i: x over the `period` bars before, summed in the same order from 0.0
    and divided the same way (the same IEEE operations, so the same bits)."""
    total = np.zeros(len(i))
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
    ok = body < _mean_before(bodies, i, BODY_SHORT_PERIOD)
    ok &= np.minimum(o, c) - lo > body
    ok &= h - np.maximum(o, c) < SHADOW_VERY_SHORT_FACTOR * _mean_before(ranges, i, SHADOW_VERY_SHORT_PERIOD)
    ok &= np.minimum(o, c) <= low[i - 1] + NEAR_FACTOR * _mean_before(ranges, i - 1, NEAR_PERIOD)
    return ok


def rolling(x: np.ndarray, width: int, fn, i: np.ndarray) -> np.ndarray:
    """fn(x[j-width+1 .. j]) at each j in i (exact: min and max only)."""
    stack = np.stack([x[i - k] for k in range(width)])
    return fn(stack, axis=0)


def empty(unsure: np.ndarray, proved_none: int = 0) -> HistorySignals:
    z = np.empty(0)
    return HistorySignals(np.empty(0, np.int64), np.empty(0, "<U4"), z, z, z, z, [], unsure.astype(np.int64), proved_none)


def trend_pullback_over(bars: Bars, p: Any, *, lookback: int, first: int, end: int) -> HistorySignals:
    """shared/strategies/trend_pullback.evaluate on every window bars[i+1-lookback : i+1], i in [first, end)."""
    from shared.strategies.trend_pullback import VOL_SANE, VOL_ZERO_AT, _min_bars

    first = max(first, lookback - 1, 11)
    if end <= first:
        return empty(np.empty(0, np.int64))
    if lookback < _min_bars(p):  # evaluate answers None on every window; let it say so
        return empty(np.arange(first, end))
    o_all, h_all, l_all, c_all = bars.open, bars.high, bars.low, bars.close
    k = p.pullback_bars
    back = max(p.slope_bars, k - 1)
    fast, e_fast = ema_bound(c_all, p.fast_ema, lookback, back)
    slow, e_slow = ema_bound(c_all, p.slow_ema, lookback, back)
    atr_all, e_atr = atr_bound(h_all, l_all, c_all, p.atr_period, lookback)
    # First over every judged bar, the tests that need only this bar and the indicators (most bars end here).
    sl = slice(first, end)
    o, h, lo, c = o_all[sl], h_all[sl], l_all[sl], c_all[sl]
    f, s, a, ef, es, ea = fast[sl], slow[sl], atr_all[sl], e_fast[sl], e_slow[sl], e_atr[sl]
    bull = c > o
    sign = np.where(bull, 1.0, -1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        a_pos, a_not = decided(a, ea, strict=True)
        gap = sign * (f - s) / a
        e_gap = quotient_error(f - s, ef + es, a, ea)
        s_back = slow[first - p.slope_bars : end - p.slope_bars]
        slope = sign * (s - s_back) / a
        e_slope = quotient_error(s - s_back, 2 * es, a, ea)
        tests = [decided(gap - p.min_gap_atr, e_gap, strict=False), decided(slope - p.min_slope_atr, e_slope, strict=False),
                 decided(slope, e_slope, strict=True), decided(sign * (c - f), ef, strict=True)]
    maybe = (h - lo > 0.0) & (c != o) & ~a_not
    for _, false in tests:
        maybe &= ~false
    sel = np.flatnonzero(maybe)
    i = sel + first
    sure = a_pos[sel]
    for true, _ in tests:
        sure = sure & true[sel]
    o, h, lo, c, f, s, a, ef, es, ea = (x[sel] for x in (o, h, lo, c, f, s, a, ef, es, ea))
    bull, sign, gap, e_gap, slope, e_slope = (x[sel] for x in (bull, sign, gap, e_gap, slope, e_slope))
    rng = h - lo
    # Confirmation: exact comparisons of bar prices (and TA-Lib's candle rules, the same arithmetic as evaluate's).
    beyond = np.where(bull, c > h_all[i - 1], c < l_all[i - 1])
    engulfs = hammers = np.zeros(len(i), bool)
    if p.use_patterns:
        eng_bull, eng_bear = engulfing(o_all, c_all, i)
        engulfs = ~beyond & np.where(bull, eng_bull, eng_bear)
        hammers = ~beyond & ~engulfs & bull & hammer(o_all, h_all, l_all, c_all, i)
    confirmed = beyond | engulfs | hammers
    maybe = confirmed.copy()
    sure &= confirmed
    with np.errstate(invalid="ignore", divide="ignore"):
        # The last k bars: every close on the trend side of the slow EMA; the deepest touch of the fast EMA.
        dists, e_dists = [], []
        for j in range(k):
            g = i - (k - 1 - j)
            true, false = decided(sign * (c_all[g] - slow[g]), es, strict=True)
            sure &= true
            maybe &= ~false
            x = np.where(bull, l_all[g] - fast[g], fast[g] - h_all[g])
            dists.append(x / a)
            e_dists.append(quotient_error(x, ef, a, ea))
        best = np.min(dists, axis=0)
        e_best = np.max(e_dists, axis=0)
        true, false = decided(p.pullback_atr - best, e_best, strict=False)
        sure &= true
        maybe &= ~false
        extreme = np.where(bull, rolling(l_all, k, np.min, i), rolling(h_all, k, np.max, i))
        risk = sign * (c - extreme) + p.stop_buffer_atr * a
        risk = np.minimum(np.maximum(risk, p.min_stop_atr * a), p.max_stop_atr * a)
        stop = c - sign * risk
        target = c + sign * p.target_r * risk
        range_atr = rng / a
        trend_q = 0.5 * ramp(gap, p.min_gap_atr, p.min_gap_atr + 1.0) + 0.5 * ramp(slope, p.min_slope_atr, p.min_slope_atr + 1.0)
        pullback_q = np.where(best >= 0.0, 1.0 - ramp(best, 0.0, p.pullback_atr), 1.0 - ramp(-best, 0.0, 1.0))
        confirm_q = ramp(sign * (c - o) / rng, 0.3, 0.9)
        volatility_q = ramp(range_atr, 0.0, VOL_SANE[0]) * (1.0 - ramp(range_atr, VOL_SANE[1], VOL_ZERO_AT))
        score = (p.weight_trend * trend_q + p.weight_pullback * pullback_q + p.weight_confirmation * confirm_q
                 + p.weight_volatility * volatility_q)
        score = np.minimum(1.0, np.maximum(0.0, score))
        # The score's bound: each ramp moves at most its slope times its input's error.
        e_range = quotient_error(rng, np.zeros_like(rng), a, ea)
        e_score = (p.weight_trend * 0.5 * (e_gap + e_slope) + p.weight_pullback * e_best * max(1.0 / p.pullback_atr, 1.0)
                   + p.weight_volatility * e_range * (1.0 / VOL_SANE[0] + 1.0 / (VOL_ZERO_AT - VOL_SANE[1])) + ROUNDING)
        sure &= e_score <= SCORE_REL * score
    unsure = maybe & ~sure
    m = np.flatnonzero(sure)
    conf = np.where(beyond[m], "beyond_prev_bar", np.where(engulfs[m], "engulfing", "hammer")).tolist()
    cols = (f, s, a, gap, slope, best, range_atr, risk / a, trend_q, pullback_q, confirm_q, volatility_q)
    names = ("ema_fast", "ema_slow", "atr", "gap_atr", "slope_atr", "pullback_dist_atr", "confirmation", "range_atr", "risk_atr",
             "score_trend", "score_pullback", "score_confirmation", "score_volatility")
    values = [x[m].tolist() for x in cols]
    values.insert(6, conf)
    features = [dict(zip(names, row)) for row in zip(*values)]
    return HistorySignals(index=i[m], side=np.where(bull[m], "buy", "sell"), entry=c[m], stop=stop[m], target=target[m],
                          score=score[m], features=features, unsure=i[unsure], proved_none=int((end - first) - len(m) - unsure.sum()))


def for_strategy(strategy: Any) -> OverHistory | None:
    """The array form of a catalog strategy, when it has one: keyed by its `evaluate`, so a strategy whose evaluate is
    another function (a test's, a fork's) never gets arrays that are not its own."""
    from shared.strategies import trend_pullback

    table: dict[Any, OverHistory] = {trend_pullback.evaluate: trend_pullback_over}
    return table.get(getattr(strategy, "evaluate", None))
