"""doji_breakout: a doji (TA-Lib BodyDoji rule) that closes a tight box, then the first strong close beyond the box
within the next bars; strategies.md, "doji_breakout".

The pending setup is derived from the window every time (the doji and the bars after it are all in the window), so
nothing is held between windows and a backtest over the whole history finds exactly the same setups.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.bars import Bars
from shared.strategies.base import EvalContext, Match, StrategyDef, cached, ramp
from shared.strategies.indicators import (
    BODY_DOJI_PERIOD,
    atr,
    atr_warmup,
    bollinger,
    ema_warmup,
    is_doji,
    keltner,
)

NAME = "doji_breakout"
MIN_LOOKBACK = 100


class DojiBreakoutParams(BaseModel):
    """Defaults are strategies.md's suggestions; as they stand they fire on 1.3 % (gold) and 1.6 % (EURUSD) of M1
    bars (docs/strategies.md), so none needed tuning."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    atr_period: int = Field(14, ge=2, le=100, description="ATR (Wilder) period")
    box_bars: int = Field(5, ge=2, le=30, description="the box: this many bars ending with the doji")
    box_max_atr: float = Field(1.5, gt=0.0, le=10.0, description="box height at most this many ATRs (at the doji)")
    consolidation: Literal["box", "inside_or_nr"] = Field(
        "box", description="box: the tight box alone; inside_or_nr: the doji must also be an inside bar or an NR4/NR7 bar")
    setup_bars: int = Field(5, ge=1, le=30, description="the breakout must come within this many bars after the doji")
    breakout_atr: float = Field(0.1, ge=0.0, le=3.0, description="the close beyond the box edge by at least this many ATRs")
    min_body_ratio: float = Field(0.5, ge=0.0, le=1.0, description="the breakout bar's body at least this share of its range")
    squeeze: bool = Field(False, description="require Bollinger(20, 2) inside Keltner(20, 1.5 ATR) at the doji")
    squeeze_period: int = Field(20, ge=2, le=100)
    bb_k: float = Field(2.0, gt=0.0, le=5.0)
    keltner_k: float = Field(1.5, gt=0.0, le=5.0)
    stop_at: Literal["edge", "mid"] = Field("edge", description="stop at the box's opposite edge or at its midpoint")
    target_r: float = Field(2.0, gt=0.0, le=10.0, description="target at this multiple of the stop distance")
    weight_box: float = Field(0.3, ge=0.0, le=1.0)
    weight_breakout: float = Field(0.3, ge=0.0, le=1.0)
    weight_body: float = Field(0.2, ge=0.0, le=1.0)
    weight_freshness: float = Field(0.2, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _consistent(self) -> DojiBreakoutParams:
        total = self.weight_box + self.weight_breakout + self.weight_body + self.weight_freshness
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"the four weights must sum to 1, not {total:g}")
        return self


def lookback(params: DojiBreakoutParams) -> int:
    """ATR within 1e-10 of its full-history value (357 bars for ATR(14)); with the squeeze, its EMA too."""
    need = max(MIN_LOOKBACK, atr_warmup(params.atr_period),
               params.setup_bars + params.box_bars + BODY_DOJI_PERIOD + 7)
    if params.squeeze:
        need = max(need, ema_warmup(params.squeeze_period), atr_warmup(params.squeeze_period))
    return need


def _min_bars(params: DojiBreakoutParams) -> int:
    return max(params.atr_period + 1, params.setup_bars + params.box_bars + BODY_DOJI_PERIOD + 7)


def _trigger(o: float, h: float, lo: float, c: float, top: float, bottom: float, a: float, p: DojiBreakoutParams) -> int:
    """+1 (-1): a close at least breakout_atr x ATR above (below) the box, in a bar whose body is >= min_body_ratio of
    its range and points the same way; 0 otherwise."""
    rng = h - lo
    if not rng > 0.0 or abs(c - o) < p.min_body_ratio * rng:
        return 0
    if c > o and c - top >= p.breakout_atr * a:
        return 1
    if c < o and bottom - c >= p.breakout_atr * a:
        return -1
    return 0


def evaluate(bars: Bars, ctx: EvalContext, params: DojiBreakoutParams) -> Match | None:
    """Judge the last bar of `bars`: is it the first breakout of a doji setup made within the last setup_bars bars?"""
    p = params
    n = len(bars)
    if n < _min_bars(p):
        return None
    o, h, lo, c = float(bars.open[-1]), float(bars.high[-1]), float(bars.low[-1]), float(bars.close[-1])
    rng = h - lo
    if not rng > 0.0 or abs(c - o) < p.min_body_ratio * rng:
        return None  # not a breakout bar: about half of all bars stop here

    opens, highs, lows, closes = bars.open, bars.high, bars.low, bars.close
    span = p.setup_bars + p.box_bars
    # The last bars as plain lists (cheap to index): the judged bar, the setup window, and the doji rule's 10 bars.
    k = span + 1 + BODY_DOJI_PERIOD
    tail_o, tail_h, tail_l, tail_c = (x[-k:].tolist() for x in (opens, highs, lows, closes))
    t = k - 1  # index of the judged bar in the tail lists
    dojis = [age for age in range(1, p.setup_bars + 1) if is_doji(tail_o, tail_h, tail_l, tail_c, t - age)]
    if not dojis:
        return None
    atrs = cached(ctx, bars, ("atr", p.atr_period), lambda: atr(highs, lows, closes, p.atr_period))
    tail_atr = [0.0] * (k - span - 1) + atrs[-span - 1 :].tolist()
    a_t = tail_atr[t]
    if not a_t > 0.0:
        return None

    for age in dojis:  # the most recent setup first
        d = t - age
        box_h = max(tail_h[d - p.box_bars + 1 : d + 1])
        box_l = min(tail_l[d - p.box_bars + 1 : d + 1])
        a_d = tail_atr[d]
        height = box_h - box_l
        if not a_d > 0.0 or height > p.box_max_atr * a_d:
            continue
        if p.consolidation == "inside_or_nr":
            inside = tail_h[d] <= tail_h[d - 1] and tail_l[d] >= tail_l[d - 1]
            r = tail_h[d] - tail_l[d]
            nr4 = r < min(tail_h[d - j] - tail_l[d - j] for j in range(1, 4))
            if not (inside or nr4):
                continue
        if p.squeeze:
            i = n - 1 - age
            up_bb, _, low_bb = cached(ctx, bars, ("bbands", p.squeeze_period, p.bb_k),
                                      lambda: bollinger(closes, p.squeeze_period, p.bb_k))
            up_kc, _, low_kc = cached(ctx, bars, ("keltner", p.squeeze_period, p.keltner_k),
                                      lambda: keltner(highs, lows, closes, p.squeeze_period, p.keltner_k))
            if not (up_bb[i] < up_kc[i] and low_bb[i] > low_kc[i]):
                continue
        # Pending: no bar between the doji and this one triggered it (its first trigger consumes the setup).
        if any(_trigger(tail_o[j], tail_h[j], tail_l[j], tail_c[j], box_h, box_l, tail_atr[j], p) for j in range(d + 1, t)):
            continue
        direction = _trigger(o, h, lo, c, box_h, box_l, a_t, p)
        if direction == 0:
            continue
        bullish = direction > 0
        mid = 0.5 * (box_h + box_l)
        stop = (box_l if bullish else box_h) if p.stop_at == "edge" else mid
        risk = (c - stop) if bullish else (stop - c)
        if not risk > 0.0:
            continue
        target = c + p.target_r * risk if bullish else c - p.target_r * risk
        excess_atr = ((c - box_h) if bullish else (box_l - c)) / a_t
        body_ratio = abs(c - o) / rng
        box_q = 1.0 - ramp(height / a_d, 0.0, p.box_max_atr)
        breakout_q = ramp(excess_atr, p.breakout_atr, p.breakout_atr + 0.5)
        body_q = ramp(body_ratio, p.min_body_ratio, 1.0) if p.min_body_ratio < 1.0 else 1.0
        fresh_q = 1.0 - (age - 1) / p.setup_bars
        score = (p.weight_box * box_q + p.weight_breakout * breakout_q + p.weight_body * body_q
                 + p.weight_freshness * fresh_q)
        return Match(
            side="buy" if bullish else "sell",
            entry=c,
            stop=stop,
            target=target,
            score=min(1.0, max(0.0, score)),
            features={
                "doji_age": age,
                "box_high": box_h,
                "box_low": box_l,
                "box_height_atr": height / a_d,
                "breakout_atr": excess_atr,
                "body_ratio": body_ratio,
                "atr": a_t,
                "risk_atr": risk / a_t,
                "score_box": box_q,
                "score_breakout": breakout_q,
                "score_body": body_q,
                "score_freshness": fresh_q,
            },
        )
    return None


STRATEGY = StrategyDef(
    name=NAME,
    engine="scalper",
    timeframe="1m",
    Params=DojiBreakoutParams,
    lookback=lookback,
    evaluate=evaluate,
    summary="A doji closing a tight 5-bar box, then the first strong close beyond the box within 5 bars; 2R target.",
)
