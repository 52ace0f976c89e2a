"""range_reversion: in a tight, trendless range (ADX and Donchian width), fade a bar that tags the range's edge (or
the Bollinger band) and closes back inside with RSI or Stochastic stretched; strategies.md, "range_reversion"."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.bars import Bars
from shared.strategies.base import EvalContext, Feature, Match, StrategyDef, cached, ramp
from shared.strategies.indicators import adx, atr, atr_warmup, bollinger, rsi, stochastic, wilder_warmup

NAME = "range_reversion"
MIN_LOOKBACK = 100
# Oscillators (RSI, ADX) agree with their full-history value within this many points at the declared lookback, so
# scores built from them agree within 1e-9 relative (architecture.md asks 1e-4 points of the indicators alone).
OSCILLATOR_AGREEMENT = 1e-10
OSCILLATOR_SEED_ERROR = 100.0  # a 0-100 oscillator cannot be off by more


class RangeReversionParams(BaseModel):
    """Defaults are strategies.md's suggestions; `min_reward_r` is ours (a fade whose target, the range's middle, is
    under half the stop distance away is not worth taking). They fire on 0.30 % (gold) and 0.24 % (EURUSD) of bars."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    atr_period: int = Field(14, ge=2, le=100, description="ATR (Wilder) period")
    adx_period: int = Field(14, ge=2, le=100, description="ADX (Wilder) period")
    adx_max: float = Field(20.0, ge=0.0, le=100.0, description="range regime while ADX is below this")
    channel_bars: int = Field(20, ge=3, le=200, description="Donchian channel of this many bars before the judged bar")
    max_width_atr: float = Field(3.0, gt=0.0, le=20.0, description="channel width at most this many ATRs")
    edge_zone: float = Field(0.1, ge=0.0, le=0.5, description="a high (low) in the top (bottom) share of the channel tags it")
    use_bollinger: bool = Field(True, description="a tag of the Bollinger band counts too")
    bb_period: int = Field(20, ge=2, le=200)
    bb_k: float = Field(2.0, gt=0.0, le=5.0)
    rsi_period: int = Field(14, ge=2, le=100)
    rsi_high: float = Field(70.0, ge=50.0, le=100.0, description="sell when RSI is above this (buy below 100 minus it)")
    stoch_k: int = Field(14, ge=2, le=100)
    stoch_slow: int = Field(3, ge=1, le=20)
    stoch_d: int = Field(3, ge=1, le=20)
    stoch_high: float = Field(80.0, ge=50.0, le=100.0, description="...or Stochastic %K above this (below 100 minus it)")
    stop_buffer_atr: float = Field(0.25, ge=0.0, le=3.0, description="stop beyond the range edge by this many ATRs")
    min_reward_r: float = Field(0.5, ge=0.0, le=10.0, description="the middle of the range at least this many R away")
    adx_exit: float = Field(25.0, ge=0.0, le=100.0, description="an open trade's setup is invalid once ADX is above this "
                            "(strategies.md: 25; never below adx_max); so is a close outside the signal's channel")
    weight_regime: float = Field(0.25, ge=0.0, le=1.0)
    weight_stretch: float = Field(0.25, ge=0.0, le=1.0)
    weight_tag: float = Field(0.25, ge=0.0, le=1.0)
    weight_reward: float = Field(0.25, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _consistent(self) -> RangeReversionParams:
        total = self.weight_regime + self.weight_stretch + self.weight_tag + self.weight_reward
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"the four weights must sum to 1, not {total:g}")
        return self


def lookback(params: RangeReversionParams) -> int:
    """ADX and RSI within 1e-10 points of their full-history values (ADX(14): 431 bars), ATR within 1e-10."""
    adx_need = wilder_warmup(params.adx_period, agreement=OSCILLATOR_AGREEMENT, seed_error=OSCILLATOR_SEED_ERROR, stages=2)
    rsi_need = wilder_warmup(params.rsi_period, agreement=OSCILLATOR_AGREEMENT, seed_error=OSCILLATOR_SEED_ERROR)
    return max(MIN_LOOKBACK, adx_need, rsi_need, atr_warmup(params.atr_period), params.channel_bars + 1,
               params.bb_period, params.stoch_k + params.stoch_slow + params.stoch_d - 2)


def _min_bars(params: RangeReversionParams) -> int:
    return max(2 * params.adx_period + 1, params.rsi_period + 1, params.atr_period + 1, params.channel_bars + 1,
               params.bb_period, params.stoch_k + params.stoch_slow + params.stoch_d - 2)


def evaluate(bars: Bars, ctx: EvalContext, params: RangeReversionParams) -> Match | None:
    """Judge the last bar of `bars` (closed bars, oldest first)."""
    p = params
    if len(bars) < _min_bars(p):
        return None
    o, h, lo, c = float(bars.open[-1]), float(bars.high[-1]), float(bars.low[-1]), float(bars.close[-1])
    highs, lows, closes = bars.high, bars.low, bars.close
    # The channel of the bars before this one: the bar must tag its edge and close back inside it.
    top = max(highs[-p.channel_bars - 1 : -1].tolist())
    bottom = min(lows[-p.channel_bars - 1 : -1].tolist())
    width = top - bottom
    if not width > 0.0:
        return None
    if not bottom < c < top:
        return None  # a close outside the range breaks it
    zone = p.edge_zone * width
    tag_top, tag_bottom = h >= top - zone, lo <= bottom + zone
    bb_up = bb_low = None
    if p.use_bollinger:
        # Finite-window indicators are computed on the bars they need only (the same slice on a window and on the
        # whole history, so the same value): the last bb_period closes.
        bb_up, _, bb_low = bollinger(closes[-p.bb_period :], p.bb_period, p.bb_k)
        bb_up, bb_low = float(bb_up[-1]), float(bb_low[-1])
        tag_top, tag_bottom = tag_top or h >= bb_up, tag_bottom or lo <= bb_low
    if tag_top == tag_bottom:
        return None  # no tag, or a bar spanning the whole range: nothing to fade
    sell = tag_top
    if bb_up is not None and ((c >= bb_up) if sell else (c <= bb_low)):
        return None  # still outside the band it tagged
    a = float(cached(ctx, bars, ("atr", p.atr_period), lambda: atr(highs, lows, closes, p.atr_period))[-1])
    if not a > 0.0 or width > p.max_width_atr * a:
        return None  # not a tight range
    mid = 0.5 * (top + bottom)
    if (c <= mid) if sell else (c >= mid):
        return None  # already past the middle: no room to the target
    stop = (max(top, h) + p.stop_buffer_atr * a) if sell else (min(bottom, lo) - p.stop_buffer_atr * a)
    risk = (stop - c) if sell else (c - stop)
    reward = (c - mid) if sell else (mid - c)
    reward_r = reward / risk
    if reward_r < p.min_reward_r:
        return None

    x = float(cached(ctx, bars, ("adx", p.adx_period), lambda: adx(highs, lows, closes, p.adx_period))[-1])
    if not x < p.adx_max:
        return None
    r = float(cached(ctx, bars, ("rsi", p.rsi_period), lambda: rsi(closes, p.rsi_period))[-1])
    m = p.stoch_k + p.stoch_slow + p.stoch_d - 2  # the bars the last %K needs (TA-Lib starts %K where %D starts)
    k, _ = stochastic(highs[-m:], lows[-m:], closes[-m:], p.stoch_k, p.stoch_slow, p.stoch_d)
    k = float(k[-1])
    rsi_hit = r > p.rsi_high if sell else r < 100.0 - p.rsi_high
    stoch_hit = k > p.stoch_high if sell else k < 100.0 - p.stoch_high
    if not (rsi_hit or stoch_hit):
        return None

    regime_q = ramp(x, p.adx_max, p.adx_max / 2)  # 1 at half the ADX limit, 0 at the limit
    rsi_ext = (r - p.rsi_high) if sell else (100.0 - p.rsi_high - r)
    stoch_ext = (k - p.stoch_high) if sell else (100.0 - p.stoch_high - k)
    stretch_q = max(ramp(rsi_ext, 0.0, 15.0), ramp(stoch_ext, 0.0, 100.0 - p.stoch_high))
    reach = ((h - (top - zone)) if sell else ((bottom + zone) - lo)) / a  # how far into (or through) the edge zone
    tag_q = ramp(reach, 0.0, 0.5)
    reward_q = ramp(reward_r, p.min_reward_r, 2.0) if p.min_reward_r < 2.0 else 1.0
    score = p.weight_regime * regime_q + p.weight_stretch * stretch_q + p.weight_tag * tag_q + p.weight_reward * reward_q
    return Match(
        side="sell" if sell else "buy",
        entry=c,
        stop=stop,
        target=mid,
        score=min(1.0, max(0.0, score)),
        features={
            "adx": x,
            "rsi": r,
            "stoch_k": k,
            "channel_high": top,
            "channel_low": bottom,
            "width_atr": width / a,
            "atr": a,
            "reward_r": reward_r,
            "bar_direction": "up" if c > o else "down" if c < o else "flat",
            "score_regime": regime_q,
            "score_stretch": stretch_q,
            "score_tag": tag_q,
            "score_reward": reward_q,
        },
    )


def invalidation(bars: Bars, ctx: EvalContext, params: RangeReversionParams, features: Mapping[str, Feature]) -> np.ndarray:
    """Per bar of `bars`, whether the setup a signal saw (its `channel_high` / `channel_low` features) no longer holds
    at that bar's close: strategies.md's "invalid once ADX > 25 or a close outside the range".

    Pure and vectorised: the executor asks it of the window's last bar, the backtester of every bar a trade is open,
    so both exit on the same bar. A close on the channel's edge is outside it (evaluate() needs bottom < close < top).
    """
    top, bottom = float(features["channel_high"]), float(features["channel_low"])
    close = bars.close
    x = cached(ctx, bars, ("adx", params.adx_period), lambda: adx(bars.high, bars.low, close, params.adx_period))
    # A bot with adx_max above adx_exit entered at an ADX over the exit level: its setup breaks only above both.
    limit = max(params.adx_exit, params.adx_max)
    with np.errstate(invalid="ignore"):  # NaN ADX (not enough bars yet) is not above the limit
        return (x > limit) | (close >= top) | (close <= bottom)


STRATEGY = StrategyDef(
    name=NAME,
    engine="scalper",
    timeframe="1m",
    Params=RangeReversionParams,
    lookback=lookback,
    evaluate=evaluate,
    summary="In a tight ADX<20 range, fade a tag of the channel edge or Bollinger band with RSI/Stochastic stretched; "
            "target the range's middle; exits early once ADX > 25 or a close leaves the range.",
    invalidation=invalidation,
)
