"""GET /symbols and GET /bars/{symbol} over HTTP (the router mounted as the embedded app mounts it)."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest
from fastapi import FastAPI

from services.market_data.app import create_router
from services.market_data.feeds.synthetic import SyntheticFeed
from services.market_data.service import MarketDataService
from shared.timeutil import ManualClock
from tests.market_data.md_helpers import RecordingBus, settings

NOW = datetime(2025, 3, 12, 10, 0, 30, tzinfo=UTC)


@pytest.fixture
async def client():
    service = MarketDataService(bus=RecordingBus(), feed=SyntheticFeed(), clock=ManualClock(NOW), settings=settings())
    app = FastAPI()
    app.include_router(create_router(service), prefix="/api/v1")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
        yield c


async def test_symbols_with_their_specs(client):
    response = await client.get("/api/v1/symbols")
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 2
    by_name = {s["name"]: s for s in body["data"]}
    assert by_name["XAUUSD"]["digits"] == 2 and by_name["XAUUSD"]["pip_size"] == 0.1
    assert by_name["EURUSD"]["digits"] == 5 and by_name["EURUSD"]["point"] == 0.00001


async def test_last_closed_bars_with_utc_times(client):
    response = await client.get("/api/v1/bars/XAUUSDm", params={"timeframe": "1m", "count": 3})
    assert response.status_code == 200
    body = response.json()
    assert body["symbol"] == "XAUUSD" and body["count"] == 3
    times = [datetime.fromisoformat(b["time"].replace("Z", "+00:00")) for b in body["data"]]
    assert times == [datetime(2025, 3, 12, 9, m, tzinfo=UTC) for m in (57, 58, 59)]  # 10:00 is still forming
    bar = body["data"][-1]
    assert bar["low"] <= min(bar["open"], bar["close"]) <= max(bar["open"], bar["close"]) <= bar["high"]
    assert set(bar) == {"time", "open", "high", "low", "close", "tick_volume", "spread"}


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/api/v1/bars/BTCUSD", {}, 404),
        ("/api/v1/bars/XAUUSD", {"count": 0}, 422),
        ("/api/v1/bars/XAUUSD", {"count": 5001}, 422),
        ("/api/v1/bars/XAUUSD", {"timeframe": "5m"}, 422),
        ("/api/v1/bars/XAUUSD", {"count": 5000}, 200),
    ],
)
async def test_bad_requests(client, path, params, status):
    response = await client.get(path, params=params)
    assert response.status_code == status, response.text
    if status == 404:
        assert "XAUUSD" in response.json()["detail"]  # says what is served
    if status == 200:
        assert response.json()["count"] == 5000
