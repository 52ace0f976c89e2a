"""What a strategy is: a parameter model, the closed bars it needs, and a pure function from a window to a Match or None."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel

from shared.bars import Bars
from shared.messages import Levels
from shared.symbols import SymbolSpec

Engine = Literal["scalper", "harami"]
Feature = float | int | str | bool


@dataclass(frozen=True, slots=True)
class Match:
    """A setup found on the window's last bar: the trade it proposes and what the strategy saw."""

    side: Literal["buy", "sell"]
    entry: float
    stop: float
    target: float
    score: float
    features: dict[str, Feature] = field(default_factory=dict)
    # Open time (UTC epoch seconds) of the bar judged when it is not the window's last M1 bar: the harami engine
    # judges a 5-minute bar built from the window. None: the window's last bar.
    bar_time: int | None = None

    def __post_init__(self) -> None:
        if self.side == "buy":
            ordered = self.stop < self.entry < self.target
        elif self.side == "sell":
            ordered = self.target < self.entry < self.stop
        else:
            raise ValueError(f"side must be buy or sell, not {self.side!r}")
        if not ordered:
            raise ValueError(f"{self.side} needs stop, entry and target in trade order: {self.stop}, {self.entry}, {self.target}")
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"score {self.score} is outside [0, 1]")


class WindowCache:
    """Indicator arrays of one window, computed once and shared by every strategy that judges it.

    Pure: a value is a function of the bars and the key only, and it is served only for the very Bars object the cache
    was made for (any other bars, e.g. a strategy's own 5-minute bars, are computed afresh). The worker makes one per
    window; evaluate() with no cache computes everything itself and gives the same answer.
    """

    __slots__ = ("_bars", "_values")

    def __init__(self, bars: Bars) -> None:
        self._bars = bars
        self._values: dict[tuple, Any] = {}

    def get(self, bars: Bars, key: tuple, compute: Callable[[], Any]) -> Any:
        if bars is not self._bars:
            return compute()
        try:
            return self._values[key]
        except KeyError:
            value = self._values[key] = compute()
            return value


@dataclass(frozen=True, slots=True)
class EvalContext:
    """What a strategy knows beside the bars: the symbol's spec, the previous broker day's levels (if sent), and the
    window's indicator cache (if the caller keeps one)."""

    spec: SymbolSpec
    levels: Levels | None = None
    cache: WindowCache | None = field(default=None, compare=False)


def cached(ctx: EvalContext, bars: Bars, key: tuple, compute: Callable[[], Any]) -> Any:
    """`compute()`, or the window's cached value of `key` when `bars` is the window the context's cache serves."""
    cache = ctx.cache
    return compute() if cache is None else cache.get(bars, key, compute)


def ramp(x: float, x0: float, x1: float) -> float:
    """The clipped linear ramp: 0 at x0, 1 at x1 (x1 < x0 gives a falling ramp)."""
    t = (x - x0) / (x1 - x0)
    return 0.0 if t <= 0.0 else 1.0 if t >= 1.0 else t


@dataclass(frozen=True, slots=True)
class StrategyDef:
    """One catalog entry. `evaluate` judges the last bar of `bars` only, from closed bars only, with no I/O or clock."""

    name: str
    engine: Engine
    timeframe: Literal["1m", "5m"]
    Params: type[BaseModel]
    lookback: Callable[[BaseModel], int]
    evaluate: Callable[[Bars, EvalContext, BaseModel], Match | None]
    summary: str = ""
    # When an open trade's setup stops holding: (bars, ctx, params, the signal's features) -> a bool per bar, True
    # where the setup is invalid at that bar's close. The executor's early exit and the backtester both call it.
    invalidation: Callable[[Bars, EvalContext, BaseModel, Mapping[str, Feature]], np.ndarray] | None = None
