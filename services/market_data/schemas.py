"""Response models of the market-data routes."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel

from shared.bars import Bars
from shared.symbols import SymbolSpec
from shared.timeutil import from_epoch


class SymbolPublic(BaseModel):
    """A served instrument and its spec (spec fields are null for an instrument without a shipped spec)."""

    name: str
    digits: int | None = None
    point: float | None = None
    pip_size: float | None = None
    contract_size: float | None = None
    volume_min: float | None = None
    volume_step: float | None = None
    volume_max: float | None = None
    stops_level: int | None = None
    freeze_level: int | None = None
    base_currency: str | None = None
    quote_currency: str | None = None
    round_number_step: float | None = None
    typical_spread_points: int | None = None

    @classmethod
    def from_spec(cls, name: str, spec: SymbolSpec | None) -> SymbolPublic:
        return cls(name=name) if spec is None else cls(**spec.model_dump())


class SymbolsPublic(BaseModel):
    data: list[SymbolPublic]
    count: int
    next_cursor: str | None = None


class BarPublic(BaseModel):
    time: AwareDatetime  # open time, UTC
    open: float
    high: float
    low: float
    close: float
    tick_volume: int
    spread: int  # points


class BarsPublic(BaseModel):
    symbol: str
    timeframe: Literal["1m"]
    data: list[BarPublic]  # oldest first, closed bars only
    count: int
    next_cursor: str | None = None

    @classmethod
    def from_bars(cls, symbol: str, bars: Bars) -> BarsPublic:
        rows = [
            BarPublic(time=from_epoch(t), open=o, high=h, low=lo, close=c, tick_volume=v, spread=s)
            for t, o, h, lo, c, v, s in zip(
                bars.time.tolist(), bars.open.tolist(), bars.high.tolist(), bars.low.tolist(), bars.close.tolist(),
                bars.tick_volume.tolist(), bars.spread.tolist(),
            )
        ]
        return cls(symbol=symbol, timeframe="1m", data=rows, count=len(rows))
