"""What every service's HTTP app has: /healthz (process up), /readyz (bus and database reachable), /metrics
(Prometheus), and its requests' SQLite statements kept off the event loop's thread."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from prometheus_fastapi_instrumentator import Instrumentator
from starlette.types import ASGIApp, Receive, Scope, Send

from shared.db import sqlite

Readiness = Callable[[], Awaitable[tuple[bool, dict]]]


class SQLiteOffloaded:
    """ASGI middleware: an HTTP request's SQLite statements run on their connection's thread (shared/db/sqlite.py).

    A listing or an admin page may scan a large table; on the event loop's thread it would hold up the bus handlers
    that share it (the trading path). The lifespan is left alone: the consumers it starts keep their statements on
    the loop's thread."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        with sqlite.offloaded():
            await self.app(scope, receive, send)


def add_ops_routes(app: FastAPI, readiness: Readiness) -> None:
    """The ops routes, the Prometheus instrumentation and SQLiteOffloaded."""
    app.add_middleware(SQLiteOffloaded)
    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    async def readyz() -> JSONResponse:
        ready, details = await readiness()
        return JSONResponse({"ready": ready, **details}, status_code=200 if ready else 503)

    Instrumentator(excluded_handlers=["/metrics", "/healthz", "/readyz"]).instrument(app).expose(
        app, endpoint="/metrics", include_in_schema=False
    )
