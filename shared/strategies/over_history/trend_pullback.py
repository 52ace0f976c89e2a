"""trend_pullback over a whole history (shared/strategies/trend_pullback.py is the definition; the package's
docstring says what is proved)."""

from __future__ import annotations

from typing import Any

import numpy as np

from shared.bars import Bars
from shared.strategies.over_history.bounds import (ROUNDING, SCORE_REL, HistorySignals, atr_seed_bound, decided, ema_bound, empty,
                                                   engulfing, hammer, quotient_error, ramp, rolling_max, rolling_min)


def over_history(bars: Bars, p: Any, *, lookback: int, first: int, end: int, **_: Any) -> HistorySignals:
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
    atr_all, e_atr = atr_seed_bound(h_all, l_all, c_all, p.atr_period, lookback)
    e_atr = e_atr + ROUNDING * np.abs(atr_all)
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
        extreme = np.where(bull, rolling_min(l_all, k)[i], rolling_max(h_all, k)[i])
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


