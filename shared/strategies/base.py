"""What a strategy is: a parameter model, the closed bars it needs, and a pure function from a window to a Match or None."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

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


@dataclass(frozen=True, slots=True)
class EvalContext:
    """What a strategy knows beside the bars: the symbol's spec and the previous broker day's levels (if sent)."""

    spec: SymbolSpec
    levels: Levels | None = None


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
