"""doji_breakout over a whole history (shared/strategies/doji_breakout.py is the definition; the package's
docstring says what is proved). The box and its edges, the doji rule and the stop and target are bar prices and
exact sums; only the ATR (the box's height limit, the breakout's size, the score) carries the window's bound."""

from __future__ import annotations

from typing import Any

import numpy as np

from shared.bars import Bars
from shared.strategies.over_history.bounds import (ROUNDING, SCORE_REL, HistorySignals, atr_seed_bound, decided, empty,
                                                   mean_before, quotient_error, ramp, rolling_max, rolling_min)


def covers(p: Any) -> bool:
    """The array form covers the plain box setup; the inside-bar/NR4 and squeeze variants stay with evaluate."""
    return p is not None and p.consolidation == "box" and not p.squeeze


def over_history(bars: Bars, p: Any, *, lookback: int, first: int, end: int, **_: Any) -> HistorySignals:
    """shared/strategies/doji_breakout.evaluate on every window bars[i+1-lookback : i+1], i in [first, end)."""
    from shared.strategies.doji_breakout import _min_bars
    from shared.strategies.indicators import BODY_DOJI_FACTOR, BODY_DOJI_PERIOD

    span = p.setup_bars + p.box_bars
    first = max(first, lookback - 1, span + BODY_DOJI_PERIOD + 1)
    if end <= first:
        return empty(np.empty(0, np.int64))
    if lookback < _min_bars(p):
        return empty(np.arange(first, end))
    o_all, h_all, l_all, c_all = bars.open, bars.high, bars.low, bars.close
    # The ATR back to the oldest doji the setup allows: the bound there covers every bar after it.
    atr_all, seed_e = atr_seed_bound(h_all, l_all, c_all, p.atr_period, lookback, back=p.setup_bars)
    rounding = ROUNDING * np.abs(atr_all)
    ranges = h_all - l_all
    box_high, box_low = rolling_max(h_all, p.box_bars), rolling_min(l_all, p.box_bars)
    body_all = np.abs(c_all - o_all)
    # The judged bar: a breakout-shaped bar (exact), with a doji among the setup bars before it (exact sums).
    sl = slice(first, end)
    rng = ranges[sl]
    shaped = (rng > 0.0) & ~(body_all[sl] < p.min_body_ratio * rng)
    i = np.flatnonzero(shaped) + first
    # The doji rule at every bar that can be one (once over the history, then read at each age).
    doji_at = np.zeros(len(c_all), bool)
    can = np.arange(max(BODY_DOJI_PERIOD, first - p.setup_bars), end)
    doji_at[can] = body_all[can] <= BODY_DOJI_FACTOR * mean_before(ranges, can, BODY_DOJI_PERIOD)
    dojis = [doji_at[i - age] for age in range(1, p.setup_bars + 1)]
    any_doji = np.logical_or.reduce(dojis)
    keep = np.flatnonzero(any_doji)
    i = i[keep]
    dojis = [x[keep] for x in dojis]
    o, h, lo, c = o_all[i], h_all[i], l_all[i], c_all[i]
    rng = h - lo
    seed_i = seed_e[i]  # every ATR this bar's window reads is at most setup_bars back: this bounds its seed's part
    a_t, ea = atr_all[i], seed_i + rounding[i]
    t_true, t_false = decided(a_t, ea, strict=True)
    # Walk the ages as evaluate does (the most recent doji first): the first age that qualifies gives the match. A bar
    # stays pending while every age so far was surely refused; an age that may or may not qualify leaves it to evaluate.
    pending = t_true.copy()
    unsure_mask = ~t_true & ~t_false
    chosen = np.zeros(len(i), np.int64)
    up = c > o
    with np.errstate(invalid="ignore", divide="ignore"):
        for age, doji in zip(range(1, p.setup_bars + 1), dojis, strict=True):
            # Only the pending bars with a doji at this age: every other pending bar is surely refused at it.
            rows = np.flatnonzero(pending & doji)
            if not len(rows):
                continue
            ii, si = i[rows], seed_i[rows]
            d = ii - age
            box_h, box_l = box_high[d], box_low[d]
            a_d, ea_d = atr_all[d], si + rounding[d]
            height = box_h - box_l
            d_true, d_false = decided(a_d, ea_d, strict=True)
            tight = decided(p.box_max_atr * a_d - height, p.box_max_atr * ea_d + ROUNDING * p.box_max_atr * a_d, strict=False)
            yes, no = d_true & tight[0], d_false | tight[1]
            # Pending: no bar between the doji and the judged one triggered it.
            for back in range(1, age):
                j = ii - back
                trig_yes, trig_no = _trigger(o_all[j], h_all[j], l_all[j], c_all[j], box_h, box_l, atr_all[j], si + rounding[j], p)
                yes &= trig_no
                no |= trig_yes
            trig_yes, trig_no = _trigger(o[rows], h[rows], lo[rows], c[rows], box_h, box_l, a_t[rows], ea[rows], p)
            yes &= trig_yes
            no |= trig_no
            rising = up[rows]
            stop = np.where(rising, box_l, box_h) if p.stop_at == "edge" else 0.5 * (box_h + box_l)
            positive = np.where(rising, c[rows] - stop, stop - c[rows]) > 0.0
            yes &= positive
            no |= ~positive
            chosen[rows[yes]] = age
            unsure_mask[rows[~yes & ~no]] = True
            pending[rows[~no]] = False
    decided_match = chosen > 0
    m = np.flatnonzero(decided_match)
    age = chosen[m]
    im, om, hm, lm, cm = i[m], o[m], h[m], lo[m], c[m]
    d = im - age
    box_h = np.max([h_all[d - k] for k in range(p.box_bars)], axis=0)
    box_l = np.min([l_all[d - k] for k in range(p.box_bars)], axis=0)
    bull = cm > om
    a_t, ea_t, a_d, ea_d = atr_all[im], seed_i[m] + rounding[im], atr_all[d], seed_i[m] + rounding[d]
    rngm = hm - lm
    with np.errstate(invalid="ignore", divide="ignore"):
        mid = 0.5 * (box_h + box_l)
        stop = np.where(bull, box_l, box_h) if p.stop_at == "edge" else mid
        risk = np.where(bull, cm - stop, stop - cm)
        target = np.where(bull, cm + p.target_r * risk, cm - p.target_r * risk)
        excess = np.where(bull, cm - box_h, box_l - cm)
        excess_atr = excess / a_t
        body_ratio = np.abs(cm - om) / rngm
        height = box_h - box_l
        box_q = 1.0 - ramp(height / a_d, 0.0, p.box_max_atr)
        breakout_q = ramp(excess_atr, p.breakout_atr, p.breakout_atr + 0.5)
        body_q = ramp(body_ratio, p.min_body_ratio, 1.0) if p.min_body_ratio < 1.0 else np.ones(len(m))
        fresh_q = 1.0 - (age - 1) / p.setup_bars
        score = (p.weight_box * box_q + p.weight_breakout * breakout_q + p.weight_body * body_q
                 + p.weight_freshness * fresh_q)
        score = np.minimum(1.0, np.maximum(0.0, score))
        e_score = (p.weight_box * quotient_error(height, np.zeros(len(m)), a_d, ea_d) / p.box_max_atr
                   + p.weight_breakout * quotient_error(excess, np.zeros(len(m)), a_t, ea_t) / 0.5 + ROUNDING)
    fine = e_score <= SCORE_REL * score
    unsure_mask[m[~fine]] = True
    m = m[fine]
    sel = fine
    features = []
    cols = (age[sel], box_h[sel], box_l[sel], (height / a_d)[sel], excess_atr[sel], body_ratio[sel], a_t[sel], (risk / a_t)[sel],
            box_q[sel], breakout_q[sel], body_q[sel], fresh_q[sel])
    names = ("doji_age", "box_high", "box_low", "box_height_atr", "breakout_atr", "body_ratio", "atr", "risk_atr", "score_box",
             "score_breakout", "score_body", "score_freshness")
    features = [dict(zip(names, row)) for row in zip(*(x.tolist() for x in cols))]
    unsure = i[unsure_mask]
    return HistorySignals(index=i[m], side=np.where(bull[sel], "buy", "sell"), entry=cm[sel], stop=stop[sel], target=target[sel],
                          score=score[sel], features=features, unsure=unsure, proved_none=int((end - first) - len(m) - len(unsure)))


def _trigger(o, h, lo, c, top, bottom, a, ea, p) -> tuple[np.ndarray, np.ndarray]:
    """(surely triggers, surely does not) for doji_breakout._trigger with the ATR known within ea."""
    rng = h - lo
    shaped = (rng > 0.0) & ~(np.abs(c - o) < p.min_body_ratio * rng)
    need, e_need = p.breakout_atr * a, p.breakout_atr * ea + ROUNDING * p.breakout_atr * np.abs(a)
    up_yes, up_no = decided(c - top - need, e_need, strict=False)
    down_yes, down_no = decided(bottom - c - need, e_need, strict=False)
    rising, falling = c > o, c < o
    yes = shaped & ((rising & up_yes) | (falling & down_yes))
    no = ~shaped | ((~rising | up_no) & (~falling | down_no))
    return yes, no
