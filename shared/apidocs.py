"""The API's documentation, offline: Swagger UI at /docs and ReDoc at /redoc from the files the fastapi-offline
package ships (Swagger UI 5, which reads FastAPI's OpenAPI 3.1; no CDN), and a
summary and a description on every operation (`describe_routes`, applied by each composition root once its routes
are mounted; a route's own summary or docstring wins). The texts are filled into the generated schema rather than set
on the routes: FastAPI copies included routes into routers of its own."""

from __future__ import annotations

import re

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_STATIC = "/static/docs"
# The docs pages may load nothing from elsewhere (ReDoc's footer would fetch its logo from its CDN): a machine without
# internet sees the same page as one with it. Inline scripts and styles are the pages' own (FastAPI writes them).
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'"
)

# route name -> (summary, description)
ROUTE_DOCS: dict[str, tuple[str, str]] = {
    "healthz": ("Liveness", "200 while the process runs; says nothing of its dependencies (see /readyz)."),
    "readyz": ("Readiness", "200 when the bus, the database and the services are up; 503 with what is not, otherwise."),
    "list_symbols": ("List symbols", "The symbols the feed serves, with their specs (digits, pip size, volume step)."),
    "symbols": ("List symbols", "The symbols market data's feed serves, with their specs (forwarded to market data)."),
    "get_bars": ("Closed M1 bars", "The last `count` closed M1 bars of a symbol, oldest first."),
    "bars": ("Closed M1 bars", "The last `count` closed M1 bars of a symbol, oldest first (forwarded to market data)."),
    "list_strategies": ("List strategies", "The strategy catalog: each strategy's name, description and parameters with defaults."),
    "strategies": ("List strategies", "The strategy catalog (forwarded to the strategy service)."),
    "me": ("Who am I", "The user the API key (or the dashboard session) belongs to."),
    "list_keys": ("List your API keys", "Your keys, live and revoked: prefix and dates only, never the key."),
    "issue_key": ("Issue an API key", "A new key for you, shown once in `api_key`; only its hash is stored."),
    "revoke_key": ("Revoke an API key", "The key stops working at once, its dashboard sessions too; revoking again is a no-op."),
    "list_accounts": ("List your broker accounts", "Your paper and MT5 accounts (the password is write-only, never shown)."),
    "create_account": ("Add a broker account", "A paper or MT5 account; an MT5 password is sealed at rest or given as env:NAME."),
    "get_account": ("Get a broker account", "One of your accounts."),
    "update_account": ("Change a broker account", "Change the fields given; the scan plan follows is_active and the symbol suffix."),
    "list_bots": ("List your bots", "Your bots (deleted ones left out), paged by id."),
    "create_bot": ("Create a bot", "A bot on one of your accounts and a symbol the feed serves; its strategies from GET /strategies."),
    "get_bot": ("Get a bot", "One of your bots with every setting."),
    "update_bot": ("Change a bot's settings", "Change the fields given, checked as at creation; the scan plan picks the change up."),
    "delete_bot": ("Delete a bot", "Refused (409) while it has open positions or orders in flight."),
    "pause_bot": ("Pause a bot", "No new orders; open positions stay. A killed bot stays killed."),
    "resume_bot": ("Resume a bot", "Trading again; a killed bot's kill-switch block is lifted at the executor and its loss counts from now."),
    "kill_bot": ("Kill a bot", "Flatten the bot's positions (close_all through the outbox) and stop it until a person resumes it."),
    "kill_all": ("Kill every bot of yours", "Flatten and stop all your bots at once."),
    "list_signals": ("List signals", "Your bots' signals, newest first, with the decision taken on each; filter by bot, symbol, strategy, since."),
    "get_signal": ("Get a signal", "One signal with its decision."),
    "list_decisions": ("List decisions", "Each signal's decision (open or ignore) with every check's name, value, limit and result."),
    "list_orders": ("List orders", "The decisions that sent an order, with the executor's report (filled, rejected, expired)."),
    "list_positions": ("List positions", "The orders that filled, open or closed, with the close price, reason and P&L."),
    "list_audit": ("List audit rows", "Every change to your things and who made it, newest first."),
    "stats": ("Trading statistics", "Closed trades per bot and strategy: win rate, profit factor, expectancy, drawdown, net P&L."),
    "close_position": ("Close one open position", "Ask the executor to close this position at the market now."),
}


def _operation_id(name: str, path: str, method: str) -> str:
    """FastAPI's default operation id (fastapi.utils.generate_unique_id) of a route named `name`."""
    return re.sub(r"\W", "_", f"{name}{path}") + f"_{method.lower()}"


def document(schema: dict) -> dict:
    """Fill in each operation's summary (where it is FastAPI's title-cased route name) and description (where it
    has none) from ROUTE_DOCS, matched by the operation id FastAPI gave the route."""
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            if not isinstance(operation, dict):
                continue
            for name, (summary, description) in ROUTE_DOCS.items():
                if operation.get("operationId") != _operation_id(name, path, method):
                    continue
                if operation.get("summary") in (None, "", name.replace("_", " ").title()):
                    operation["summary"] = summary
                if not operation.get("description"):
                    operation["description"] = description
                break
    return schema


def describe_routes(app: FastAPI) -> None:
    """Have `app.openapi()` carry ROUTE_DOCS' summaries and descriptions (call once the routes are mounted)."""
    if not getattr(app, "_described", False):
        plain = app.openapi

        def openapi() -> dict:
            if app.openapi_schema is None:
                app.openapi_schema = document(plain())
            return app.openapi_schema

        app.openapi = openapi
        app._described = True
    app.openapi_schema = None


def add_offline_docs(app: FastAPI) -> None:
    """Swagger UI at /docs and ReDoc at /redoc with their JavaScript and CSS served from the installed fastapi-offline
    package. The app must be made with `docs_url=None, redoc_url=None` (FastAPI's own pages load them from a CDN)."""
    from pathlib import Path

    import fastapi_offline

    static = Path(fastapi_offline.__file__).resolve().parent / "static"
    app.mount(DOCS_STATIC, StaticFiles(directory=static), name="docs-static")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        return _offline(get_swagger_ui_html(
            openapi_url=openapi_url, title=f"{app.title} API", swagger_js_url=f"{DOCS_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_STATIC}/swagger-ui.css", swagger_favicon_url=f"{DOCS_STATIC}/favicon.png",
            oauth2_redirect_url="/docs/oauth2-redirect",
        ))

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return _offline(get_redoc_html(
            openapi_url=openapi_url, title=f"{app.title} API", redoc_js_url=f"{DOCS_STATIC}/redoc.standalone.js",
            redoc_favicon_url=f"{DOCS_STATIC}/favicon.png", with_google_fonts=False,
        ))


def _offline(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = DOCS_CSP
    return page
