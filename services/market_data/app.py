"""The market-data routes: GET /symbols and GET /bars/{symbol} (mounted under /api/v1 by the app that serves them)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query

from services.market_data.schemas import BarsPublic, SymbolPublic, SymbolsPublic
from services.market_data.service import MarketDataService
from shared.rates import RatesUnavailable
from shared.symbols import DEFAULT_SPECS, UnknownSymbol

MAX_BARS = 5000


def create_router(service: MarketDataService) -> APIRouter:
    router = APIRouter(tags=["market data"])

    @router.get("/symbols", response_model=SymbolsPublic)
    async def list_symbols() -> SymbolsPublic:
        data = [SymbolPublic.from_spec(name, DEFAULT_SPECS.get(name)) for name in service.feed.symbols()]
        return SymbolsPublic(data=data, count=len(data))

    @router.get("/bars/{symbol}", response_model=BarsPublic)
    async def get_bars(
        symbol: str,
        timeframe: Annotated[Literal["1m"], Query(description="only 1m: M1 bars")] = "1m",
        count: Annotated[int, Query(ge=1, le=MAX_BARS, description="closed bars to return, newest last")] = 100,
    ) -> BarsPublic:
        try:
            name = service.resolve_symbol(symbol)
        except UnknownSymbol as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from None
        try:
            bars = await service.recent_bars(symbol=name, count=count)
        except RatesUnavailable as exc:  # the mt5 feed: no executor session answered
            raise HTTPException(status_code=503, detail=str(exc)) from None
        return BarsPublic.from_bars(name, bars)

    return router
