"""/docs and /redoc work without internet (Swagger UI and ReDoc from the fastapi-offline package; the browser test
shows Swagger UI rendering the schema), and every operation of the public
app, embedded and distributed, has a summary of its own and a description."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import httpx
from fastapi import FastAPI

from scalper.embedded import EmbeddedStack, create_app
from scalper.serve import forwarding_router
from services.decision.app import mount
from shared.apidocs import add_offline_docs, describe_routes
from shared.http import add_ops_routes
from shared.settings import Settings
from shared.timeutil import ManualClock


def _undocumented(schema: dict) -> list[str]:
    missing = []
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            auto = operation["operationId"].split("_api_")[0].split(f"_{path.strip('/').split('/')[0]}")[0]
            summary = operation.get("summary") or ""
            if not summary or summary == auto.replace("_", " ").title() or not operation.get("description"):
                missing.append(f"{method.upper()} {path}: summary={summary!r} description={operation.get('description')!r}")
    return missing


async def test_the_embedded_app_documents_every_operation_and_serves_swagger_ui_offline(tmp_path):
    settings = Settings(_env_file=None, database_url=f"sqlite+aiosqlite:///{tmp_path / 'docs.db'}", bus_url="memory://",
                        feed="synthetic", scan_mode="interval", scan_interval_s=10**9, monitor_interval_s=3600)
    stack = EmbeddedStack(settings, clock=ManualClock(datetime(2024, 3, 1, 10, 0, tzinfo=UTC)))
    app = create_app(stack, announce=lambda _: None)
    async with app.router.lifespan_context(app):
        schema = app.openapi()
        assert len(schema["paths"]) > 20
        assert _undocumented(schema) == []
        assert schema["paths"]["/api/v1/bots/{bot_id}/kill"]["post"]["summary"] == "Kill a bot"
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            docs = await client.get("/docs")
            assert docs.status_code == 200
            assert "/static/docs/swagger-ui-bundle.js" in docs.text and "/static/docs/swagger-ui.css" in docs.text
            assert "cdn" not in docs.text.lower() and "https://" not in docs.text
            assert "default-src 'self'" in docs.headers["content-security-policy"]
            js = await client.get("/static/docs/swagger-ui-bundle.js")
            assert js.status_code == 200 and len(js.content) > 100_000
            assert (await client.get("/static/docs/swagger-ui.css")).status_code == 200
            redoc = await client.get("/redoc")
            assert redoc.status_code == 200 and "/static/docs/redoc.standalone.js" in redoc.text and "https://" not in redoc.text
            assert (await client.get("/static/docs/redoc.standalone.js")).status_code == 200


async def test_the_distributed_decision_routes_are_documented_too(api):
    app = FastAPI(docs_url=None)
    add_ops_routes(app, lambda: (True, {}))
    mount(app, api.service)
    app.include_router(forwarding_router(SimpleNamespace(settings=Settings(_env_file=None))), prefix="/api/v1")
    add_offline_docs(app)
    describe_routes(app)
    schema = app.openapi()
    assert {"/api/v1/symbols", "/api/v1/bars/{symbol}", "/api/v1/strategies", "/api/v1/positions/{decision_id}/close"} <= set(schema["paths"])
    assert _undocumented(schema) == []
