"""The strategy service's REST routes: `GET /strategies` lists the catalog (names, parameter schemas, defaults)."""

from __future__ import annotations

from fastapi import APIRouter

from services.strategy.schemas import StrategiesPublic, StrategyPublic
from shared.strategies import catalog


def create_router() -> APIRouter:
    router = APIRouter(tags=["strategies"])

    @router.get("/strategies", response_model=StrategiesPublic)
    def list_strategies() -> StrategiesPublic:
        data = [StrategyPublic(**entry) for entry in catalog.describe()]
        return StrategiesPublic(data=data, count=len(data))

    return router
