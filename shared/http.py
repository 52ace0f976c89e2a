"""What every service's HTTP app has: /healthz (process up), /readyz (bus and database reachable), /metrics
(Prometheus), its requests' SQLite statements kept off the event loop's thread, and the service token that guards
the internal routes of distributed mode."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, HTTPException, Request, status
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


# /readyz is open (probes and load balancers call it without a key): what says who the account is, or what it holds,
# stays out of it (an MT5 session's health names its login).
ACCOUNT_FIELDS = frozenset({"login", "server", "password", "password_ref", "balance", "equity", "margin", "margin_free"})


def without_account_data(value):
    """`value` with every ACCOUNT_FIELDS key dropped, at any depth."""
    if isinstance(value, dict):
        return {k: without_account_data(v) for k, v in value.items() if k not in ACCOUNT_FIELDS}
    if isinstance(value, list):
        return [without_account_data(v) for v in value]
    return value


def add_ops_routes(app: FastAPI, readiness: Readiness) -> None:
    """The ops routes, the Prometheus instrumentation and SQLiteOffloaded."""
    app.add_middleware(SQLiteOffloaded)
    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    async def readyz() -> JSONResponse:
        ready, details = await readiness()
        return JSONResponse({"ready": ready, **without_account_data(details)}, status_code=200 if ready else 503)

    Instrumentator(excluded_handlers=["/metrics", "/healthz", "/readyz"]).instrument(app).expose(
        app, endpoint="/metrics", include_in_schema=False
    )


SERVICE_TOKEN_HEADER = "X-Service-Token"


def service_token_headers(settings) -> dict[str, str]:
    """The header a service sends on its calls to another (none when SCALPER_SERVICE_TOKEN is unset)."""
    token = settings.service_token
    return {SERVICE_TOKEN_HEADER: token.get_secret_value()} if token is not None and token.get_secret_value() else {}


def require_service_token(settings):
    """A dependency: the call carries SCALPER_SERVICE_TOKEN in X-Service-Token, or it is refused with a 401.

    For the internal routes of distributed mode (market data's and strategy's /api/v1, the executor's
    /internal/executor), which have no database to check a user's key: only another service of this install calls
    them. Without a token configured every call is refused, so an unset token never leaves them open."""
    expected = settings.service_token.get_secret_value() if settings.service_token is not None else ""

    async def check(request: Request) -> None:
        if not expected:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "internal route: set SCALPER_SERVICE_TOKEN on every service to call it")
        given = request.headers.get(SERVICE_TOKEN_HEADER, "")
        if not secrets.compare_digest(given.encode(), expected.encode()):
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, f"internal route: send the service token in the {SERVICE_TOKEN_HEADER} header")

    return check
