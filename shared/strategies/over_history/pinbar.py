"""price_action_pinbar over a whole history (shared/strategies/pinbar.py is the definition; the package's docstring
says what is proved). The shape, the swings (fractals and whether price has traded through them since), the previous
day's levels and the round numbers are bar prices and exact arithmetic; the ATR (the range gate, the level
tolerance, the stop's buffer, the score) carries the window's bound. The nearest level is exact: only whether it
lies within the tolerance depends on the ATR."""

from __future__ import annotations

from typing import Any

import numpy as np

from shared.bars import Bars
from shared.strategies.indicators import swing_points
from shared.strategies.over_history.bounds import (ROUNDING, SCORE_REL, HistorySignals, atr_seed_bound, decided, empty,
                                                   quotient_error)

DAY_KINDS = ("prev_high", "prev_low", "pivot", "r1", "s1")
SWING_ROWS = 2048  # pins per block of the swing search (a block holds a few arrays of SWING_ROWS x swing_horizon)
KINDS = ("swing_low", "swing_high", *DAY_KINDS, "round")


def _ramp(x: np.ndarray, x0: float, x1: float) -> np.ndarray:
    """pinbar._ramp element by element."""
    return np.minimum(1.0, np.maximum(0.0, (x - x0) / (x1 - x0)))


def _round_levels(price: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """indicators.round_levels element by element (Python's round and numpy's both round half to even)."""
    q = price / step
    r = np.round(q)
    on = np.abs(q - r) <= 1e-9 * np.maximum(1.0, np.abs(q))
    return np.where(on, r * step, np.floor(q) * step), np.where(on, r * step, np.ceil(q) * step)


def _nearest_swing(l_all, h_all, lows_at, highs_at, i, bullish, tip, body_bottom, body_top, p) -> tuple[np.ndarray, np.ndarray]:
    """(distance, price) of the nearest swing evaluate would consider for pins at bars i (inf where none), the
    oldest among equals (evaluate walks them oldest first and keeps a strictly nearer one). A bullish pin looks at
    swing lows, a bearish one at swing highs: each side is gathered on its own rows only."""
    n = p.swing_n
    span = p.swing_horizon + n + 1
    count = p.swing_horizon + 1 - p.swing_min_age  # candidate swings, oldest first: i-span+1+n .. i-min_age
    if count <= 0:
        return np.full(len(i), np.inf), np.zeros(len(i))
    dist_out, price_out = np.full(len(i), np.inf), np.zeros(len(i))
    for bull in (True, False):
        rows = np.flatnonzero(bullish == bull)
        if not len(rows):
            continue
        at = i[rows]
        g = (at - span + 1 + n)[:, None] + np.arange(count)[None, :]
        prices = (l_all if bull else h_all)[g]
        valid = (lows_at if bull else highs_at)[g]
        if p.swing_intact:
            # after[:, k]: the lowest low (highest high) from candidate k's next bar to the bar before the pin.
            seq = (at - span + 2 + n)[:, None] + np.arange(span - n - 2)[None, :]
            if bull:
                after = np.minimum.accumulate(l_all[seq][:, ::-1], axis=1)[:, ::-1][:, :count]
                valid &= prices < after
            else:
                after = np.maximum.accumulate(h_all[seq][:, ::-1], axis=1)[:, ::-1][:, :count]
                valid &= prices > after
        valid &= (prices <= body_bottom[rows, None]) if bull else (prices >= body_top[rows, None])
        dist = np.where(valid, np.abs(tip[rows, None] - prices), np.inf)
        k = np.argmin(dist, axis=1)
        r = np.arange(len(rows))
        dist_out[rows], price_out[rows] = dist[r, k], prices[r, k]
    return dist_out, price_out


def over_history(bars: Bars, p: Any, *, lookback: int, first: int, end: int, spec: Any = None, levels: Any = None) -> HistorySignals:
    """shared/strategies/pinbar.evaluate on every window bars[i+1-lookback : i+1], i in [first, end); `levels.at(i)`
    gives the window's previous-day levels (as the scan attaches them), `spec` the round-number step."""
    from shared.strategies.pinbar import DAY_LEVELS_VALID_S, SHAPE_RAMP, VOL_SANE_MAX, VOL_ZERO_AT, _min_bars

    first = max(first, lookback - 1)
    if end <= first:
        return empty(np.empty(0, np.int64))
    if lookback < _min_bars(p) or (p.use_round_numbers and spec is None):
        return empty(np.arange(first, end))
    o_all, h_all, l_all, c_all = bars.open, bars.high, bars.low, bars.close
    sl = slice(first, end)
    o, h, lo, c = o_all[sl], h_all[sl], l_all[sl], c_all[sl]
    # The shape, in evaluate's order and arithmetic (exact).
    rng = h - lo
    up = c >= o
    body_top, body_bottom = np.where(up, c, o), np.where(up, o, c)
    body = body_top - body_bottom
    lower, upper = body_bottom - lo, h - body_top
    bullish = lower > upper
    tail, nose = np.where(bullish, lower, upper), np.where(bullish, upper, lower)
    ok = rng > 0.0
    ok &= ~((tail < p.tail_min_ratio * rng) | (tail < p.tail_body_min * body))
    ok &= ~((body > p.body_max_ratio * rng) | (nose > p.nose_max_ratio * rng))
    ok &= ~np.where(bullish, body_bottom < lo + (1.0 - p.body_zone) * rng, body_top > h - (1.0 - p.body_zone) * rng)
    sel = np.flatnonzero(ok)
    i = sel + first
    o, h, lo, c, rng, body_top, body_bottom, body, tail, nose, bullish = (
        x[sel] for x in (o, h, lo, c, rng, body_top, body_bottom, body, tail, nose, bullish))
    before = [i - k for k in range(1, p.extreme_bars)]
    beyond = np.where(bullish, l_all[i - 1] - lo >= p.protrusion_min * rng, h - h_all[i - 1] >= p.protrusion_min * rng)
    extreme = np.where(bullish, lo <= np.min([l_all[b] for b in before], axis=0), h >= np.max([h_all[b] for b in before], axis=0))
    keep = beyond | extreme
    i, o, h, lo, c, rng, body_top, body_bottom, body, tail, nose, bullish, beyond, extreme = (
        x[keep] for x in (i, o, h, lo, c, rng, body_top, body_bottom, body, tail, nose, bullish, beyond, extreme))
    atr_all, seed_e = atr_seed_bound(h_all, l_all, c_all, p.atr_period, lookback)
    a = atr_all[i]
    ea = seed_e[i] + ROUNDING * np.abs(a)
    with np.errstate(invalid="ignore", divide="ignore"):
        a_true, a_false = decided(a, ea, strict=True)
        range_atr = rng / a
        e_range = quotient_error(rng, np.zeros(len(i)), a, ea)
        gate_true, gate_false = decided(range_atr - p.min_range_atr, e_range, strict=False)
    keep = ~a_false & ~gate_false  # the rest surely fail the ATR gate: no location to look for
    i, o, h, lo, c, rng, body_top, body_bottom, body, tail, nose, bullish, beyond, extreme, a, ea, range_atr, e_range, a_true, gate_true = (
        x[keep] for x in (i, o, h, lo, c, rng, body_top, body_bottom, body, tail, nose, bullish, beyond, extreme, a, ea, range_atr,
                          e_range, a_true, gate_true))
    sure, maybe = a_true & gate_true, np.ones(len(i), bool)
    # Location: the nearest level on the far side of the body; first in evaluate's order among equals.
    tip = np.where(bullish, lo, h)
    best = np.full(len(i), np.inf)
    level = np.zeros(len(i))
    kind = np.full(len(i), -1)  # index into KINDS

    def consider(name: str, price: np.ndarray, valid: np.ndarray) -> None:
        side_ok = valid & np.where(bullish, price <= body_bottom, price >= body_top)
        dist = np.abs(tip - price)
        better = side_ok & (dist < best)
        best[better], level[better], kind[better] = dist[better], price[better], KINDS.index(name)

    if p.use_swings and len(i):
        lows_at, highs_at = np.zeros(len(l_all), bool), np.zeros(len(h_all), bool)
        lows_at[swing_points(l_all, p.swing_n, kind="low")] = True
        highs_at[swing_points(h_all, p.swing_n, kind="high")] = True
        for a0 in range(0, len(i), SWING_ROWS):  # in blocks of rows: the block's arrays stay small
            rows = slice(a0, a0 + SWING_ROWS)
            dist, price = _nearest_swing(l_all, h_all, lows_at, highs_at, i[rows], bullish[rows], tip[rows],
                                         body_bottom[rows], body_top[rows], p)
            found = np.isfinite(dist)
            best[rows][found], level[rows][found] = dist[found], price[found]
            kind[rows][found] = np.where(bullish[rows][found], KINDS.index("swing_low"), KINDS.index("swing_high"))
    day_levels = np.full(len(i), "absent", dtype=object)
    if p.use_day_levels and levels is not None and len(i):
        # The window's levels are one Levels a trading day: look each day up once.
        days, first_of, inverse = np.unique(levels.day_of(i), return_index=True, return_inverse=True)
        per_day = [levels.at(int(bar)) for bar in i[first_of]]
        present = np.array([lv is not None for lv in per_day], bool)
        start = np.array([lv.day_start.timestamp() if lv is not None else np.nan for lv in per_day])
        table = np.array([(lv.prev_high, lv.prev_low, lv.pivot, lv.r1, lv.s1) if lv is not None else (np.nan,) * 5
                          for lv in per_day], float).reshape(len(per_day), len(DAY_KINDS))
        age = bars.time[i] - start[inverse]
        with np.errstate(invalid="ignore"):
            used = present[inverse] & (age >= 0) & (age < DAY_LEVELS_VALID_S)
        day_levels[present[inverse] & ~used] = "stale"
        values = table[inverse].T
        day_levels[used] = "used"
        for name, price in zip(DAY_KINDS, values, strict=True):
            consider(name, np.where(used, price, 0.0), used)
    if p.use_round_numbers and len(i):
        below, above = _round_levels(tip, spec.round_number_step)
        everywhere = np.ones(len(i), bool)
        consider("round", below, everywhere)
        consider("round", above, everywhere)
    with np.errstate(invalid="ignore", divide="ignore"):
        tolerance = p.level_atr * a
        e_tol = p.level_atr * ea + ROUNDING * tolerance
        near_true, near_false = decided(tolerance - best, e_tol, strict=False)
        has = np.isfinite(best)
        sure &= has & near_true
        maybe &= has & ~near_false
        shape_q = _ramp(tail / rng, *SHAPE_RAMP)
        location_q = 1.0 - best / tolerance
        volatility_q = 1.0 - _ramp(range_atr, VOL_SANE_MAX, VOL_ZERO_AT)
        score = p.weight_shape * shape_q + p.weight_location * location_q + p.weight_volatility * volatility_q
        score = np.minimum(1.0, np.maximum(0.0, score))
        e_score = (p.weight_location * quotient_error(best, np.zeros(len(i)), tolerance, e_tol)
                   + p.weight_volatility * e_range / (VOL_ZERO_AT - VOL_SANE_MAX) + ROUNDING)
        sure &= e_score <= SCORE_REL * score
        buffer = p.stop_buffer_atr * a
        stop = np.where(bullish, lo - buffer, h + buffer)
        target = np.where(bullish, c + p.target_r * (c - stop), c - p.target_r * (stop - c))
    unsure = maybe & ~sure
    m = np.flatnonzero(sure)
    kinds = np.array(KINDS, dtype=object)[kind[m]]
    cols = [(tail / rng)[m], (body / rng)[m], (nose / rng)[m], range_atr[m], a[m], beyond[m], extreme[m], kinds, level[m],
            (best / a)[m], day_levels[m], shape_q[m], location_q[m], volatility_q[m]]
    names = ("tail_ratio", "body_ratio", "nose_ratio", "range_atr", "atr", "beyond_prev_bar", "extreme_of_bars", "level_kind",
             "level_price", "level_dist_atr", "day_levels", "score_shape", "score_location", "score_volatility")
    features = [dict(zip(names, row)) for row in zip(*(x.tolist() for x in cols))]
    return HistorySignals(index=i[m], side=np.where(bullish[m], "buy", "sell"), entry=c[m], stop=stop[m], target=target[m],
                          score=score[m], features=features, unsure=i[unsure],
                          proved_none=int((end - first) - len(m) - int(unsure.sum())))
