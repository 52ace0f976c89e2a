"""price_action_pinbar: a pin bar whose tail rejects a key level (strategies.md); buy at support, sell at resistance.

Shape, location (confirmed swing, previous broker day's levels, round number) and an ATR gate decide; the score grades.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.bars import Bars
from shared.strategies.base import EvalContext, Match, StrategyDef, cached
from shared.strategies.indicators import atr, atr_warmup, round_levels, swing_points

NAME = "price_action_pinbar"
MIN_LOOKBACK = 100  # architecture.md: the scan never publishes fewer than 100 closed bars

# Score ramps (strategies.md, "From a pattern to a score"): shape quality maps tail/range 0.6 -> 1.0 onto 0 -> 1;
# volatility is sane while range/ATR stays inside 0.5-3, and we let it fall to 0 at twice that top (a news spike).
SHAPE_RAMP = (0.6, 1.0)
VOL_SANE_MAX = 3.0
VOL_ZERO_AT = 6.0
# Levels serve the trading day that starts at their day_start: 24 h, or 72 h when Saturday to Monday fold into one
# day (shared.levels.trading_day_start), plus an hour for a DST switch. Older levels are stale, later ones lookahead.
DAY_LEVELS_VALID_S = 73 * 3600


class PinbarParams(BaseModel):
    """Defaults are strategies.md's suggestions. The swing filters (`swing_horizon`, `swing_min_age`, `swing_intact`)
    are ours, tuned on the gold M1 file to 1.67 % of bars firing (strategies.md: tradable is 0.1-2 %)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tail_min_ratio: float = Field(2 / 3, ge=0.5, le=0.95, description="tail (the long shadow) at least this share of the range")
    tail_body_min: float = Field(2.5, ge=1.0, le=20.0, description="tail at least this many bodies")
    body_max_ratio: float = Field(1 / 3, gt=0.0, le=0.5, description="body at most this share of the range")
    body_zone: float = Field(0.4, gt=0.0, le=0.5, description="body within this top (bull) or bottom (bear) share of range")
    nose_max_ratio: float = Field(0.2, ge=0.0, le=0.5, description="the opposite wick at most this share of the range")
    protrusion_min: float = Field(0.5, ge=0.0, le=3.0, description="tail beyond the previous bar's extreme, in pin ranges")
    extreme_bars: int = Field(10, ge=2, le=100, description="...or the pin's extreme is the extreme of this many bars")
    atr_period: int = Field(14, ge=2, le=100, description="ATR (Wilder) period")
    min_range_atr: float = Field(0.5, ge=0.0, le=5.0, description="pin range at least this many ATRs (a dead market is noise)")
    level_atr: float = Field(0.3, gt=0.0, le=2.0, description="k: a level counts within k x ATR of the tail's tip")
    swing_n: int = Field(2, ge=1, le=10, description="fractal swing: N lower highs (higher lows) each side")
    swing_horizon: int = Field(120, ge=5, le=1000, description="bars back in which confirmed swing points count as levels")
    swing_min_age: int = Field(10, ge=2, le=500, description="a swing counts from this many bars before the pin")
    swing_intact: bool = Field(True, description="a swing counts only while no bar since has traded beyond it")
    use_swings: bool = True
    use_day_levels: bool = Field(True, description="previous broker day's high, low, pivot, R1, S1 (when the window has them)")
    use_round_numbers: bool = Field(True, description="multiples of the symbol's round_number_step")
    stop_buffer_atr: float = Field(0.1, ge=0.0, le=2.0, description="stop beyond the tail by this many ATRs")
    target_r: float = Field(2.0, gt=0.0, le=10.0, description="target at this multiple of the stop distance")
    weight_shape: float = Field(0.4, ge=0.0, le=1.0)
    weight_location: float = Field(0.4, ge=0.0, le=1.0)
    weight_volatility: float = Field(0.2, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _consistent(self) -> PinbarParams:
        if self.swing_min_age < self.swing_n:
            raise ValueError(
                f"swing_min_age ({self.swing_min_age}) cannot be below swing_n ({self.swing_n}): "
                "a swing is confirmed swing_n bars later"
            )
        if self.swing_min_age > self.swing_horizon:
            raise ValueError(f"swing_min_age ({self.swing_min_age}) cannot exceed swing_horizon ({self.swing_horizon})")
        total = self.weight_shape + self.weight_location + self.weight_volatility
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"weight_shape + weight_location + weight_volatility must sum to 1, not {total:g}")
        return self


def lookback(params: PinbarParams) -> int:
    """Closed bars the window needs: ATR agreeing with its full-history value within 1e-10 (357 bars for ATR(14))."""
    return max(MIN_LOOKBACK, atr_warmup(params.atr_period), params.swing_horizon + params.swing_n + 1, params.extreme_bars)


def _min_bars(params: PinbarParams) -> int:
    """Fewest bars that can be judged at all (a backtest's first hours); below `lookback` the ATR is less settled."""
    return max(params.atr_period + 1, params.swing_horizon + params.swing_n + 1, params.extreme_bars)


def _ramp(x: float, x0: float, x1: float) -> float:
    return min(1.0, max(0.0, (x - x0) / (x1 - x0)))


def evaluate(bars: Bars, ctx: EvalContext, params: PinbarParams) -> Match | None:
    """Judge the last bar of `bars` (closed bars, oldest first)."""
    p = params
    if len(bars) < _min_bars(p):
        return None
    open_, high, low, close = float(bars.open[-1]), float(bars.high[-1]), float(bars.low[-1]), float(bars.close[-1])
    rng = high - low
    if not rng > 0.0:
        return None
    body_top, body_bottom = (close, open_) if close >= open_ else (open_, close)
    body = body_top - body_bottom
    lower, upper = body_bottom - low, high - body_top

    # Shape first, in plain floats: nine bars in ten stop here.
    bullish = lower > upper
    tail, nose = (lower, upper) if bullish else (upper, lower)
    if tail < p.tail_min_ratio * rng or tail < p.tail_body_min * body:
        return None
    if body > p.body_max_ratio * rng or nose > p.nose_max_ratio * rng:
        return None
    if (body_bottom < low + (1.0 - p.body_zone) * rng) if bullish else (body_top > high - (1.0 - p.body_zone) * rng):
        return None
    if bullish:
        beyond_prev = float(bars.low[-2]) - low >= p.protrusion_min * rng
        extreme = low <= float(bars.low[-p.extreme_bars : -1].min())
    else:
        beyond_prev = high - float(bars.high[-2]) >= p.protrusion_min * rng
        extreme = high >= float(bars.high[-p.extreme_bars : -1].max())
    if not (beyond_prev or extreme):
        return None

    a = float(cached(ctx, bars, ("atr", p.atr_period), lambda: atr(bars.high, bars.low, bars.close, p.atr_period))[-1])
    if not a > 0.0:
        return None
    range_atr = rng / a
    if range_atr < p.min_range_atr:
        return None

    # Location: the nearest level within k x ATR of the tail's tip, on the far side of the body (support under a
    # bullish pin's body, resistance over a bearish one's).
    tip = low if bullish else high
    tolerance = p.level_atr * a
    best_kind, best_level, best_dist = "", 0.0, math.inf

    def consider(kind: str, level: float) -> None:
        nonlocal best_kind, best_level, best_dist
        if (level <= body_bottom) if bullish else (level >= body_top):
            dist = abs(tip - level)
            if dist <= tolerance and dist < best_dist:
                best_kind, best_level, best_dist = kind, level, dist

    if p.use_swings:
        # Swings from swing_horizon bars back to swing_min_age bars before the pin: structure that was there before
        # the move into the pin. The slice stops swing_min_age - swing_n bars short of the pin, so its last confirmed
        # swing is swing_min_age bars old.
        span = p.swing_horizon + p.swing_n + 1
        prices = bars.low[-span:] if bullish else bars.high[-span:]
        kind = "swing_low" if bullish else "swing_high"
        idx = swing_points(prices[: span - p.swing_min_age + p.swing_n], p.swing_n, kind="low" if bullish else "high")
        if p.swing_intact and len(idx):
            # A swing holds as support (resistance) only while no bar between it and the pin has traded through it.
            if bullish:
                after = np.minimum.accumulate(prices[-2::-1])[::-1]  # after[k]: the lowest low of bars k .. pin-1
                idx = idx[prices[idx] < after[idx + 1]]
            else:
                after = np.maximum.accumulate(prices[-2::-1])[::-1]
                idx = idx[prices[idx] > after[idx + 1]]
        for level in prices[idx].tolist():
            consider(kind, level)
    day_levels = "absent"
    lv = ctx.levels
    if p.use_day_levels and lv is not None:
        if 0 <= int(bars.time[-1]) - lv.day_start.timestamp() < DAY_LEVELS_VALID_S:
            day_levels = "used"
            consider("prev_high", lv.prev_high)
            consider("prev_low", lv.prev_low)
            consider("pivot", lv.pivot)
            consider("r1", lv.r1)
            consider("s1", lv.s1)
        else:
            day_levels = "stale"  # another broker day's levels: never used (a later day's would be lookahead)
    if p.use_round_numbers:
        below, above = round_levels(tip, ctx.spec.round_number_step)
        consider("round", below)
        consider("round", above)
    if not best_kind:
        return None

    shape_q = _ramp(tail / rng, *SHAPE_RAMP)
    location_q = 1.0 - best_dist / tolerance
    volatility_q = 1.0 - _ramp(range_atr, VOL_SANE_MAX, VOL_ZERO_AT)
    score = p.weight_shape * shape_q + p.weight_location * location_q + p.weight_volatility * volatility_q
    score = min(1.0, max(0.0, score))

    buffer = p.stop_buffer_atr * a
    if bullish:
        stop = low - buffer
        target = close + p.target_r * (close - stop)
    else:
        stop = high + buffer
        target = close - p.target_r * (stop - close)
    return Match(
        side="buy" if bullish else "sell",
        entry=close,
        stop=stop,
        target=target,
        score=score,
        features={
            "tail_ratio": tail / rng,
            "body_ratio": body / rng,
            "nose_ratio": nose / rng,
            "range_atr": range_atr,
            "atr": a,
            "beyond_prev_bar": beyond_prev,
            "extreme_of_bars": extreme,
            "level_kind": best_kind,
            "level_price": best_level,
            "level_dist_atr": best_dist / a,
            "day_levels": day_levels,
            "score_shape": shape_q,
            "score_location": location_q,
            "score_volatility": volatility_q,
        },
    )


STRATEGY = StrategyDef(
    name=NAME,
    engine="scalper",
    timeframe="1m",
    Params=PinbarParams,
    lookback=lookback,
    evaluate=evaluate,
    summary="Pin bar rejecting a key level (confirmed swing, previous day's high/low/pivot/R1/S1, round number); 2R target.",
)
