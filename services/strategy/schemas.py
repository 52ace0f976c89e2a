"""Response models of the strategy service's REST routes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel


class StrategyPublic(BaseModel):
    name: str
    engine: Literal["scalper", "harami"]
    timeframe: Literal["1m", "5m"]
    lookback: int
    summary: str
    defaults: dict[str, Any]
    params_schema: dict[str, Any]


class StrategiesPublic(BaseModel):
    """architecture.md, "JSON answers": every list is `{"data": [...], "count": N, "next_cursor": ...}`."""

    data: list[StrategyPublic]
    count: int
    next_cursor: str | None = None
