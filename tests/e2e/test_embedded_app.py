"""The embedded app as a newcomer starts it: synthetic feed on the accelerated clock, demo user and bot, orders within a minute."""

from __future__ import annotations

import gc
import time
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from scalper.embedded import EmbeddedStack, create_app
from shared.settings import Settings


def _settings(tmp_path: Path) -> Settings:
    return Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'app.db'}", bus_url="memory://", feed="synthetic", speed=600)


def _count(tmp_path: Path, table: str) -> int:
    engine = create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    with engine.connect() as conn:
        n = conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
    engine.dispose()
    return n


def test_make_run_shows_signals_and_paper_orders_within_a_minute(tmp_path):
    printed: list[str] = []
    app = create_app(EmbeddedStack(_settings(tmp_path)), announce=printed.append)
    with TestClient(app) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert len(printed) == 1 and "API key" in printed[0], "the demo key is printed once to the terminal"

        deadline = time.monotonic() + 60
        while _count(tmp_path, "orders") == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _count(tmp_path, "orders") >= 1, "no paper order within a minute of start"

        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["ready"] is True
        key = {"X-API-Key": printed[0].rsplit(": ", 1)[1].strip()}
        for path in ("/api/v1/symbols", "/api/v1/strategies", "/api/v1/bars/XAUUSD"):
            assert client.get(path).status_code == 401, f"{path} takes a key, as every /api/v1 route"
        for path in ("/internal/executor/positions", "/internal/executor/account"):
            assert client.get(path).status_code == 404, f"{path} is not mounted in the embedded app"
        symbols = client.get("/api/v1/symbols", headers=key).json()
        assert "XAUUSD" in str(symbols)
        names = [s["name"] for s in client.get("/api/v1/strategies", headers=key).json()["data"]]
        assert "price_action_pinbar" in names
        bars = client.get("/api/v1/bars/XAUUSD", params={"count": 5}, headers=key).json()
        assert len(bars["data"]) == 5
        metrics = client.get("/metrics").text
        for name in ("signals_ingested_total", "orders_placed_total", "decision_ignored_total"):
            assert name in metrics
        assert gc.get_freeze_count() > 0, "start-up's objects are out of the collector's way while it runs (shared/heap.py)"
    assert gc.get_freeze_count() == 0, "and back in once it has stopped"

    # A second start finds the demo and prints no key again.
    printed.clear()
    with TestClient(create_app(EmbeddedStack(_settings(tmp_path)), announce=printed.append)) as client:
        assert client.get("/healthz").status_code == 200
    assert printed == []
