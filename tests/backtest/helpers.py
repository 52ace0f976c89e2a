"""A scripted strategy for backtester tests: it fires where a bar's tick_volume says so (901 buy, 902 sell)."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict

from shared.bars import Bars
from shared.strategies.base import EvalContext, Match, StrategyDef
from shared.strategies.catalog import Catalog

BUY, SELL = 901, 902


class ScriptParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    stop: float = 2.0
    target: float = 4.0
    score: float = 0.8


def _evaluate(bars: Bars, ctx: EvalContext, p: ScriptParams) -> Match | None:
    mark = int(bars.tick_volume[-1])
    close = float(bars.close[-1])
    if mark == BUY:
        return Match(side="buy", entry=close, stop=close - p.stop, target=close + p.target, score=p.score)
    if mark == SELL:
        return Match(side="sell", entry=close, stop=close + p.stop, target=close - p.target, score=p.score)
    return None


SCRIPT = StrategyDef(name="scripted", engine="scalper", timeframe="1m", Params=ScriptParams, lookback=lambda p: 100,
                     evaluate=_evaluate, summary="test")
CATALOG = Catalog([SCRIPT])


def flat_bars(n: int, price: float = 2000.0, *, start: int = 1_775_000_000 // 86400 * 86400, spread: int = 0) -> Bars:
    """n quiet M1 bars around `price` (range 0.2), one a minute from a UTC midnight."""
    t = start + 60 * np.arange(n, dtype=np.int64)
    o = np.full(n, price)
    return Bars.from_columns(time=t, open=o, high=o + 0.1, low=o - 0.1, close=o.copy(), tick_volume=np.ones(n, np.int64),
                             spread=np.full(n, spread, np.int64))


def set_bar(bars: Bars, i: int, *, open=None, high=None, low=None, close=None, mark=None) -> None:  # noqa: A002
    for name, value in (("open", open), ("high", high), ("low", low), ("close", close)):
        if value is not None:
            getattr(bars, name)[i] = value
    if mark is not None:
        bars.tick_volume[i] = mark
