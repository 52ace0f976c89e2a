"""Routes every service serves: /healthz (process up), /readyz (bus and database reachable), /metrics (Prometheus)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from prometheus_fastapi_instrumentator import Instrumentator

Readiness = Callable[[], Awaitable[tuple[bool, dict]]]


def add_ops_routes(app: FastAPI, readiness: Readiness) -> None:
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
