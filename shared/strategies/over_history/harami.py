"""harami over a whole history (shared/strategies/harami.py is the definition; the package's docstring says what is
proved).

The 5-minute bars: the history's M1 bars grouped as `resample.aggregate` groups a window's (a new group wherever the
bucket t // 300 changes from the bar before). Bar i's window [w, i] judges a 5m bar only when
`may_close_bucket` and `newly_complete` hold; its 5m bars are then the history's groups F .. J, where F is the group of
bar w when bar w opens its bucket (t % 300 == 0) and the next group otherwise, and J is bar i's group when that bucket
has closed by bar i's close and the group before otherwise. Those groups are the window's own 5m bars, value for
value (first open, extreme high and low, last close), when each lies wholly inside the window: F starting at w (when
it is w's group) and J ending at i (when it is i's). Where either fails (times out of order, bars of one bucket less
than a minute apart) the bar is left to evaluate.

What is then exact: the harami rule (indicators.harami_sign's comparisons and sums, in its order), the move's bar
extremes, the entry, the pattern's extreme, the baby's ratio. What carries a bound: the 5m ATR at the mother bar
(the window's is seeded at its own 5m bar F + atr_period: the seed's error decays by (n-1)/n a 5m bar to position
J - 1 - F, bounds.atr_seed_bound's argument with a window whose length in 5m bars varies bar to bar), hence the move
in ATRs, the stop, the risk, the target and the score's move part; and the mother's body over the average body,
whose 10 bodies evaluate sums with numpy (its own order) and this module in another: two orders of ten non-negative
terms differ by at most 20 units of rounding of the sum, within ROUNDING.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import talib

from shared.bars import Bars
from shared.strategies.over_history.bounds import (ROUNDING, SCORE_REL, SEED_SLACK, HistorySignals, decided, empty,
                                                   mean_before, quotient_error, ramp, rolling_max, rolling_min)

FEATURES = ("talib_harami", "move_atr", "mother_body_x_avg", "baby_body_ratio", "atr_5m", "mother_time", "score_move",
            "score_mother", "score_containment", "score_baby")


def _groups(t: np.ndarray, seconds: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(bucket of each bar, group of each bar, each group's first bar, each group's end (exclusive)): resample.aggregate's
    grouping of consecutive bars with one bucket, over the whole history."""
    bucket = t // seconds
    is_start = np.concatenate(([True], bucket[1:] != bucket[:-1]))
    starts = np.flatnonzero(is_start)
    ends = np.concatenate((starts[1:], [len(t)]))
    return bucket, np.cumsum(is_start) - 1, starts, ends


def _harami_sign(o: np.ndarray, c: np.ndarray, j: np.ndarray) -> np.ndarray:
    """indicators.harami_sign at 5m bars j (j >= BODY_LONG_PERIOD + 1), element by element: the same comparisons on
    the same sums (bounds.mean_before adds in _avg_body's order), so exact."""
    from shared.strategies.indicators import BODY_LONG_PERIOD, BODY_SHORT_PERIOD

    body = np.abs(c - o)
    o1, c1, o2, c2 = o[j - 1], c[j - 1], o[j], c[j]
    ok = np.abs(c1 - o1) > mean_before(body, j - 1, BODY_LONG_PERIOD)
    ok &= np.abs(c2 - o2) <= mean_before(body, j, BODY_SHORT_PERIOD)
    top1, bot1, top2, bot2 = np.maximum(o1, c1), np.minimum(o1, c1), np.maximum(o2, c2), np.minimum(o2, c2)
    sign = np.where(c1 >= o1, -1, 1)
    size = np.where((top2 < top1) & (bot2 > bot1), 100, np.where((top2 <= top1) & (bot2 >= bot1), 80, 0))
    return np.where(ok, size * sign, 0)


def over_history(bars: Bars, p: Any, *, lookback: int, first: int, end: int, **_: Any) -> HistorySignals:
    """shared/strategies/harami.evaluate on every window bars[i+1-lookback : i+1], i in [first, end). The matches
    carry `bar_time`, the judged 5m bar's open time (evaluate's Match.bar_time)."""
    from shared.strategies.harami import BAR_S
    from shared.strategies.indicators import BODY_LONG_PERIOD
    from shared.strategies.resample import M1_S

    first = max(first, lookback - 1)
    if end <= first:
        return empty(np.empty(0, np.int64))
    if lookback < 2:  # a one-bar window closes no bucket (may_close_bucket); let evaluate say so
        return empty(np.arange(first, end))
    t = bars.time.astype(np.int64, copy=False)
    # resample.may_close_bucket at every judged bar (integer arithmetic: exact); the other bars are proved None.
    i = np.arange(first, end)
    i = i[(t[i] + M1_S) // BAR_S * BAR_S > t[i - 1] + M1_S]
    bucket, group, starts, ends = _groups(t, BAR_S)
    o5, c5 = bars.open[starts], bars.close[ends - 1]
    h5 = np.maximum.reduceat(bars.high, starts) if len(starts) else np.empty(0)
    l5 = np.minimum.reduceat(bars.low, starts) if len(starts) else np.empty(0)
    time5 = bucket[starts] * BAR_S
    # Each window's 5m bars as groups F .. J (the module's docstring), and the bars where that is not the window's own.
    w = i + 1 - lookback
    w_opens = t[w] % BAR_S == 0
    f = np.where(w_opens, group[w], group[w] + 1)
    gi = group[i]
    closed = t[i] + M1_S >= (bucket[i] + 1) * BAR_S
    j = np.where(closed, gi, gi - 1)
    mismatch = (w_opens & (starts[group[w]] != w)) | (closed & (ends[gi] != i + 1))
    n5 = j - f + 1
    jj = np.maximum(j, 0)
    newly = (n5 > 0) & (time5[jj] + BAR_S > t[i - 1] + M1_S)  # resample.newly_complete
    unsure = [i[mismatch]]  # the window's own grouping differs: evaluate judges it (never on well-formed M1)
    keep = newly & ~mismatch & (n5 >= max(p.atr_period + 1, p.trend_bars + 1, BODY_LONG_PERIOD + 2))  # evaluate_5m's size test
    # The window's ATR at the mother bar (position n5 - 2) exists from position atr_period on (TA-Lib's NaN before).
    keep &= n5 - 2 >= p.atr_period
    i, f, j = i[keep], f[keep], j[keep]
    # harami_sign reads the last indicators.CANDLE_TAIL (12) 5m bars, j - 11 .. j: all in the window by the size test.
    sign = _harami_sign(o5, c5, j)
    keep = (sign != 0) & ((np.abs(sign) == 100) | (not p.strict_only))
    i, f, j, sign = i[keep], f[keep], j[keep], sign[keep]
    bullish = sign > 0
    # The 5m ATR at the mother bar, with the bound of the window's (seeded at its position atr_period: 5m bar f + n).
    n = p.atr_period
    a_all = talib.ATR(h5, l5, c5, timeperiod=n)
    tr = talib.TRANGE(h5, l5, c5)
    seed = talib.SMA(tr, timeperiod=n)  # seed[f + n]: the mean of tr[f + 1 .. f + n], the window's own true ranges
    a = a_all[j - 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        slack = SEED_SLACK * float(np.nanmax(tr[1:])) if len(tr) > 1 else 0.0
        steps = (j - 1 - f) - n
        ea = (np.abs(seed[f + n] - a_all[f + n]) + slack) * ((n - 1) / n) ** steps + ROUNDING * np.abs(a)
        a_true, a_false = decided(a, ea, strict=True)
        m_close = c5[j - 1]
        hi = rolling_max(h5, p.trend_bars)[j - 1]  # the trend_bars 5m bars up to and including the mother
        lo = rolling_min(l5, p.trend_bars)[j - 1]
        move = np.where(bullish, hi - m_close, m_close - lo)
        move_atr = move / a
        e_move = quotient_error(move, np.zeros(len(j)), a, ea)
        move_true, move_false = decided(move_atr - p.move_atr, e_move, strict=False)
        entry = c5[j]
        extreme = np.where(bullish, np.minimum(l5[j], l5[j - 1]), np.maximum(h5[j], h5[j - 1]))
        buffer = p.stop_buffer_atr * a
        stop = np.where(bullish, extreme - buffer, extreme + buffer)
        e_stop = p.stop_buffer_atr * ea + ROUNDING * np.abs(stop)
        risk = np.where(bullish, entry - stop, stop - entry)
        e_risk = e_stop + ROUNDING * np.abs(risk)
        risk_true, risk_false = decided(risk, e_risk, strict=True)
        target = np.where(bullish, entry + p.target_r * risk, entry - p.target_r * risk)
        e_target = p.target_r * e_risk + ROUNDING * np.abs(target)
        # The score's parts; evaluate's average body is numpy's sum of the same ten bodies (another order: ROUNDING).
        mother_body = np.abs(c5[j - 1] - o5[j - 1])
        bodies = np.abs(c5 - o5)
        avg_body = mean_before(bodies, j - 1, BODY_LONG_PERIOD)
        e_avg = ROUNDING * avg_body
        mother_x = np.where(avg_body > 0.0, mother_body / avg_body, 3.0)
        e_mx = np.where(avg_body > 0.0, quotient_error(mother_body, np.zeros(len(j)), avg_body, e_avg), 0.0)
        baby_ratio = np.abs(entry - o5[j]) / mother_body
        move_q = ramp(move_atr, p.move_atr, p.move_atr + 2.0)
        mother_q = ramp(mother_x, 1.0, 3.0)
        containment_q = np.where(np.abs(sign) == 100, 1.0, 0.5)
        baby_q = 1.0 - ramp(baby_ratio, 0.0, 0.5)
        score = (p.weight_move * move_q + p.weight_mother * mother_q + p.weight_containment * containment_q
                 + p.weight_baby * baby_q)
        score = np.minimum(1.0, np.maximum(0.0, score))
        # Each ramp moves at most its slope (1/2) times its input's error.
        e_score = p.weight_move * e_move / 2.0 + p.weight_mother * e_mx / 2.0 + ROUNDING
        maybe = ~a_false & ~move_false & ~risk_false
        sure = a_true & move_true & risk_true
        sure &= e_score <= SCORE_REL * score
        # Prices within the equality test's 1e-9 (4x margin), and the reported features within it too.
        sure &= (e_stop <= SCORE_REL * np.abs(stop)) & (e_target <= SCORE_REL * np.abs(target))
        sure &= (ea <= SCORE_REL * a) & (e_move <= SCORE_REL * move_atr) & (e_move / 2.0 <= SCORE_REL)
        sure &= (e_mx <= SCORE_REL * mother_x) & (e_mx / 2.0 <= SCORE_REL)
    sure &= maybe
    unsure.append(i[maybe & ~sure])
    unsure_all = np.sort(np.concatenate(unsure)).astype(np.int64)
    m = np.flatnonzero(sure)
    cols = (sign[m], move_atr[m], mother_x[m], baby_ratio[m], a[m], time5[j[m] - 1], move_q[m], mother_q[m],
            containment_q[m], baby_q[m])
    features = [dict(zip(FEATURES, row)) for row in zip(*(x.tolist() for x in cols))]
    return HistorySignals(index=i[m], side=np.where(bullish[m], "buy", "sell"), entry=entry[m], stop=stop[m], target=target[m],
                          score=score[m], features=features, unsure=unsure_all,
                          proved_none=int((end - first) - len(m) - len(unsure_all)), bar_time=time5[j[m]])
