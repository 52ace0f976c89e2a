"""trend_pullback: buy a pullback to EMA(20) in an EMA(20) > EMA(50) uptrend once a bar closes back above the
previous bar's high (mirror for sells); strategies.md, "trend_pullback"."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.bars import Bars
from shared.strategies.base import EvalContext, Match, StrategyDef, cached, ramp
from shared.strategies.indicators import CANDLE_TAIL, atr, atr_warmup, ema, ema_warmup, engulfing_sign, is_hammer

NAME = "trend_pullback"
MIN_LOOKBACK = 100
VOL_SANE = (0.5, 3.0)  # strategies.md: range/ATR inside 0.5-3 is sane; we let it fall to 0 at twice the top
VOL_ZERO_AT = 6.0


class TrendPullbackParams(BaseModel):
    """Defaults are strategies.md's suggestions; `min_slope_atr`, `pullback_bars` and `min_gap_atr` are ours, tuned on
    the real M1 files to a tradable rate (docs/strategies.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fast_ema: int = Field(20, ge=2, le=200, description="the EMA price pulls back to")
    slow_ema: int = Field(50, ge=3, le=400, description="the trend EMA: fast above slow is an uptrend")
    atr_period: int = Field(14, ge=2, le=100, description="ATR (Wilder) period")
    slope_bars: int = Field(10, ge=1, le=100, description="the slow EMA must have risen (fallen) over this many bars")
    min_slope_atr: float = Field(1.0, ge=0.0, le=5.0, description="...by at least this many ATRs")
    min_gap_atr: float = Field(0.5, ge=0.0, le=5.0, description="fast EMA at least this many ATRs beyond the slow one")
    pullback_atr: float = Field(0.25, ge=0.0, le=2.0, description="a low within this many ATRs of the fast EMA (or through it) is a pullback")
    pullback_bars: int = Field(2, ge=1, le=20, description="the pullback is this bar or one of the bars just before it")
    use_patterns: bool = Field(True, description="a bullish engulfing or hammer (TA-Lib rules) also confirms")
    stop_buffer_atr: float = Field(0.1, ge=0.0, le=2.0, description="stop beyond the pullback extreme by this many ATRs")
    min_stop_atr: float = Field(0.5, gt=0.0, le=5.0, description="the stop at least this many ATRs away")
    max_stop_atr: float = Field(1.5, gt=0.0, le=10.0, description="...and at most this many (strategies.md: 1.5 x ATR)")
    target_r: float = Field(2.0, gt=0.0, le=10.0, description="target at this multiple of the stop distance")
    weight_trend: float = Field(0.3, ge=0.0, le=1.0)
    weight_pullback: float = Field(0.3, ge=0.0, le=1.0)
    weight_confirmation: float = Field(0.2, ge=0.0, le=1.0)
    weight_volatility: float = Field(0.2, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _consistent(self) -> TrendPullbackParams:
        if self.fast_ema >= self.slow_ema:
            raise ValueError(f"fast_ema ({self.fast_ema}) must be shorter than slow_ema ({self.slow_ema})")
        if self.min_stop_atr > self.max_stop_atr:
            raise ValueError(f"min_stop_atr ({self.min_stop_atr}) cannot exceed max_stop_atr ({self.max_stop_atr})")
        total = self.weight_trend + self.weight_pullback + self.weight_confirmation + self.weight_volatility
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"the four weights must sum to 1, not {total:g}")
        return self


def lookback(params: TrendPullbackParams) -> int:
    """The slow EMA within 1e-10 ATR of its full-history value (741 bars for EMA(50)), and ATR within 1e-10."""
    return max(MIN_LOOKBACK, ema_warmup(params.slow_ema), atr_warmup(params.atr_period),
               params.slow_ema + params.slope_bars + params.pullback_bars + 1)


def _min_bars(params: TrendPullbackParams) -> int:
    return max(params.slow_ema + params.slope_bars, params.atr_period + 1, params.pullback_bars + 1, 12)


def evaluate(bars: Bars, ctx: EvalContext, params: TrendPullbackParams) -> Match | None:
    """Judge the last bar of `bars` (closed bars, oldest first)."""
    p = params
    if len(bars) < _min_bars(p):
        return None
    o, h, lo, c = float(bars.open[-1]), float(bars.high[-1]), float(bars.low[-1]), float(bars.close[-1])
    rng = h - lo
    if not rng > 0.0 or c == o:
        return None
    bullish = c > o
    # Confirmation first (plain floats): the bar closes in its direction beyond the previous bar's extreme, or is a
    # bullish (bearish) engulfing, or a hammer for a buy.
    beyond_prev = c > float(bars.high[-2]) if bullish else c < float(bars.low[-2])
    pattern = ""
    if not beyond_prev and p.use_patterns:
        tail_o, tail_c = bars.open[-2:].tolist(), bars.close[-2:].tolist()
        eng = engulfing_sign(tail_o, tail_c)
        if (eng > 0) if bullish else (eng < 0):
            pattern = "engulfing"
        elif bullish and is_hammer(*(x[-CANDLE_TAIL:].tolist() for x in (bars.open, bars.high, bars.low, bars.close))):
            pattern = "hammer"
    if not (beyond_prev or pattern):
        return None

    close = bars.close
    fast = cached(ctx, bars, ("ema", p.fast_ema), lambda: ema(close, p.fast_ema))
    slow = cached(ctx, bars, ("ema", p.slow_ema), lambda: ema(close, p.slow_ema))
    f, s = float(fast[-1]), float(slow[-1])
    a = float(cached(ctx, bars, ("atr", p.atr_period), lambda: atr(bars.high, bars.low, close, p.atr_period))[-1])
    if not a > 0.0:
        return None
    sign = 1.0 if bullish else -1.0
    gap_atr = sign * (f - s) / a
    slope_atr = sign * (s - float(slow[-1 - p.slope_bars])) / a
    if gap_atr < p.min_gap_atr or slope_atr < p.min_slope_atr or not slope_atr > 0.0:
        return None

    # The pullback: a bar among the last `pullback_bars` whose low came within pullback_atr x ATR of the fast EMA (or
    # pierced it), with every close of those bars still on the trend side of the slow EMA.
    k = p.pullback_bars
    lows, highs, closes, fasts, slows = (bars.low[-k:].tolist(), bars.high[-k:].tolist(), close[-k:].tolist(),
                                         fast[-k:].tolist(), slow[-k:].tolist())
    best = None  # distance (ATRs) from the fast EMA of the deepest touch; negative when it pierced
    for j in range(k):
        if (closes[j] <= slows[j]) if bullish else (closes[j] >= slows[j]):
            return None
        dist = ((lows[j] - fasts[j]) if bullish else (fasts[j] - highs[j])) / a
        if dist <= p.pullback_atr and (best is None or dist < best):
            best = dist
    if best is None:
        return None
    if (c <= f) if bullish else (c >= f):
        return None  # the confirming close must be back on the trend side of the fast EMA

    extreme = min(lows) if bullish else max(highs)
    risk = sign * (c - extreme) + p.stop_buffer_atr * a
    risk = min(max(risk, p.min_stop_atr * a), p.max_stop_atr * a)
    stop = c - sign * risk
    target = c + sign * p.target_r * risk

    range_atr = rng / a
    trend_q = 0.5 * ramp(gap_atr, p.min_gap_atr, p.min_gap_atr + 1.0) + 0.5 * ramp(slope_atr, p.min_slope_atr, p.min_slope_atr + 1.0)
    # A touch right at the EMA scores 1; one pullback_atr short of it, or a full ATR through it, scores 0.
    pullback_q = 1.0 - ramp(best, 0.0, p.pullback_atr) if best >= 0.0 else 1.0 - ramp(-best, 0.0, 1.0)
    confirm_q = ramp(sign * (c - o) / rng, 0.3, 0.9)
    volatility_q = ramp(range_atr, 0.0, VOL_SANE[0]) * (1.0 - ramp(range_atr, VOL_SANE[1], VOL_ZERO_AT))
    score = (p.weight_trend * trend_q + p.weight_pullback * pullback_q + p.weight_confirmation * confirm_q
             + p.weight_volatility * volatility_q)
    return Match(
        side="buy" if bullish else "sell",
        entry=c,
        stop=stop,
        target=target,
        score=min(1.0, max(0.0, score)),
        features={
            "ema_fast": f,
            "ema_slow": s,
            "atr": a,
            "gap_atr": gap_atr,
            "slope_atr": slope_atr,
            "pullback_dist_atr": best,
            "confirmation": "beyond_prev_bar" if beyond_prev else pattern,
            "range_atr": range_atr,
            "risk_atr": risk / a,
            "score_trend": trend_q,
            "score_pullback": pullback_q,
            "score_confirmation": confirm_q,
            "score_volatility": volatility_q,
        },
    )


STRATEGY = StrategyDef(
    name=NAME,
    engine="scalper",
    timeframe="1m",
    Params=TrendPullbackParams,
    lookback=lookback,
    evaluate=evaluate,
    summary="Pullback to EMA(20) in an EMA(20)/EMA(50) trend, confirmed by a close beyond the previous bar; 2R target.",
)
