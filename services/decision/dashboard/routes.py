"""The dashboard's pages, its login and logout, the live stream (`GET /events`) and its static files.

Pages are server-rendered (Jinja2); the buttons and the settings form call the public API itself (/api/v1/...)
with the session cookie and the CSRF header, so an edit is checked by exactly the API's validation.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import plotly
from fastapi import APIRouter, FastAPI, Form, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import select

from services.decision import queries
from services.decision.dashboard import auth, charts, views
from services.decision.dashboard.views import BarSource, Marks
from services.decision.schemas import BotSettings
from shared.db.models import Bot, Decision, SignalRow
from shared.logging import get_logger
from shared.stats import compute_stats
from shared.symbols import UnknownSymbol, get_spec

log = get_logger(__name__)

HERE = Path(__file__).resolve().parent
PLOTLY_JS = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
PAGE_ROWS = 50
CHART_BARS = 240

templates = Jinja2Templates(directory=str(HERE / "templates"))

# Scripts from this server only (the figures' JSON blocks are data, never run); no page of ours inside another's
# frame (a hidden Close or Kill button under a click); plotly sets inline styles and draws images from data: URLs.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}


def _digits(symbol: str) -> int:
    try:
        return get_spec(symbol).digits
    except UnknownSymbol:
        return 5


def _price(value, symbol: str = "") -> str:
    return "—" if value is None else f"{float(value):.{_digits(symbol)}f}"


def _money(value) -> str:
    return "—" if value is None else f"{float(value):,.2f}"


def _when(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.strftime("%Y-%m-%d %H:%M:%S")


def _cell(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(_cell(v) for v in value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


templates.env.filters.update(price=_price, money=_money, when=_when, cell=_cell)

# The settings a person edits on the bot page, in BotSettings' order, with the input each needs.
SETTINGS_FORM = [
    (name, {bool: "bool", int: "int", float: "float"}.get(next((t for t in (bool, int, float) if t in _args), str), "text"))
    for name, info in BotSettings.model_fields.items()
    if name not in ("strategy_params",)
    for _args in [getattr(info.annotation, "__args__", (info.annotation,))]
]


def mount_dashboard(app: FastAPI, service, *, bars: BarSource | None = None, refresh_s: float = 1.0) -> None:
    """Mount the dashboard on `app` (every user's, at `/`). `bars(symbol, count)` gives a symbol's closed M1 bars
    (the chart and the positions' mark prices); without it the chart is empty and P&L comes from the snapshots."""
    app.include_router(create_router(service, bars=bars, refresh_s=refresh_s))
    app.mount("/static/dashboard", StaticFiles(directory=str(HERE / "static")), name="dashboard-static")


def create_router(service, *, bars: BarSource | None, refresh_s: float) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    marks = Marks(bars)

    def page(request: Request, name: str, login: auth.Login | None, **context) -> HTMLResponse:
        response = templates.TemplateResponse(
            request, name, {"user": None if login is None else login.user, "csrf": "" if login is None else login.csrf, **context}
        )
        response.headers.update(PAGE_HEADERS)
        return response

    async def login_or_redirect(request: Request, session):
        login = await auth.session_login(request, session)
        return login, (None if login is not None else RedirectResponse("/login", status_code=303))

    @router.get("/login")
    async def login_form(request: Request) -> Response:
        return page(request, "login.html", None, error=None)

    @router.post("/login")
    async def login_submit(
        request: Request, name: Annotated[str, Form(max_length=100)], api_key: Annotated[str, Form(max_length=200)]
    ) -> Response:
        async with service.sessions() as session:
            found = await auth.log_in(session, name=name, api_key=api_key)
        if found is None:
            log.info("dashboard login refused", user=name[:100])  # never the key
            response = page(request, "login.html", None, error="That name and API key do not match a live key.")
            response.status_code = 401
            return response
        user, key_id = found
        response = RedirectResponse("/", status_code=303)
        auth.set_session(response, request, user_id=user.id, key_id=key_id)
        log.info("dashboard login", user_id=user.id)
        return response

    @router.post("/logout")
    async def logout(request: Request, csrf_token: Annotated[str | None, Form()] = None) -> Response:
        async with service.sessions() as session:
            login = await auth.session_login(request, session)
        if login is not None:
            auth.check_csrf(request, login, form_token=csrf_token)
        response = RedirectResponse("/login", status_code=303)
        auth.clear_session(response)
        return response

    @router.get("/")
    async def overview_page(request: Request) -> Response:
        async with service.sessions() as session:
            login, redirect = await login_or_redirect(request, session)
            if redirect:
                return redirect
            data = await views.overview(session=session, service=service, user_id=login.user.id, marks=marks)
        return page(request, "overview.html", login, data=data, live=True)

    def fragments(request: Request, data: views.Overview) -> dict[str, str]:
        out = {}
        for part in ("accounts", "positions", "bots"):
            out[part] = templates.get_template(f"_{part}.html").render(data=data, request=request)
        return out

    @router.get("/events")
    async def events(request: Request) -> Response:
        """Server-sent events: `overview` (the accounts, positions and bots as HTML fragments) whenever they change."""
        async with service.sessions() as session:
            login = await auth.session_login(request, session)
        if login is None:
            raise HTTPException(401, "log in first")
        user_id = login.user.id

        async def stream():
            last = None
            yield "retry: 2000\n\n"
            idle = 0.0
            while not await request.is_disconnected():
                async with service.sessions() as session:
                    data = await views.overview(session=session, service=service, user_id=user_id, marks=marks)
                state = data.as_dict()
                if state != last:
                    last = state
                    payload = json.dumps({"html": fragments(request, data), "open_positions": [p["id"] for p in state["positions"]]})
                    yield f"event: overview\ndata: {payload}\n\n"
                    idle = 0.0
                else:
                    idle += refresh_s
                    if idle >= 15:  # a comment keeps proxies from closing an idle stream
                        yield ": keep-alive\n\n"
                        idle = 0.0
                await asyncio.sleep(refresh_s)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @router.get("/bots/{bot_id}")
    async def bot_page(request: Request, bot_id: int) -> Response:
        async with service.sessions() as session:
            login, redirect = await login_or_redirect(request, session)
            if redirect:
                return redirect
            bot = await session.get(Bot, bot_id)
            if bot is None or bot.user_id != login.user.id or bot.deleted_at is not None:
                raise HTTPException(404, f"bot {bot_id} not found")
            trades = await queries.closed_trades(session=session, owner_id=login.user.id, bot_id=bot_id)
        stats = compute_stats(trades)
        figure = charts.equity_curve(trades)
        settings = [(name, kind, getattr(bot, name, None)) for name, kind in SETTINGS_FORM]
        return page(request, "bot.html", login, bot=bot, stats=stats, settings=settings, figure=_json(figure))

    @router.get("/signals")
    async def signals_page(
        request: Request, bot_id: Annotated[int | None, Query(ge=1)] = None, symbol: Annotated[str | None, Query(max_length=32)] = None,
        strategy: Annotated[str | None, Query(max_length=64)] = None, since: Annotated[str | None, Query(max_length=64)] = None,
        cursor: Annotated[str | None, Query(max_length=512)] = None,
    ) -> Response:
        async with service.sessions() as session:
            login, redirect = await login_or_redirect(request, session)
            if redirect:
                return redirect
            rows, next_cursor, bots = await _listing(queries.list_signals, session, login, bot_id=bot_id, symbol=symbol,
                                                     strategy=strategy, since=since, cursor=cursor)
        return page(request, "signals.html", login, rows=rows, next_cursor=next_cursor, bots=bots,
                    f=dict(bot_id=bot_id, symbol=symbol or "", strategy=strategy or "", since=since or ""))

    @router.get("/decisions")
    async def decisions_page(
        request: Request, bot_id: Annotated[int | None, Query(ge=1)] = None, symbol: Annotated[str | None, Query(max_length=32)] = None,
        strategy: Annotated[str | None, Query(max_length=64)] = None, since: Annotated[str | None, Query(max_length=64)] = None,
        action: Annotated[str | None, Query(pattern="^(|open|ignore)$")] = None, cursor: Annotated[str | None, Query(max_length=512)] = None,
    ) -> Response:
        async with service.sessions() as session:
            login, redirect = await login_or_redirect(request, session)
            if redirect:
                return redirect
            rows, next_cursor, bots = await _listing(queries.list_decisions, session, login, bot_id=bot_id, symbol=symbol,
                                                     strategy=strategy, since=since, cursor=cursor)
        if action:
            rows = [r for r in rows if r[0].action == action]
        decisions = [(d, strategy_name, views.check_rows(d.checks)) for d, strategy_name in rows]
        return page(request, "decisions.html", login, decisions=decisions, next_cursor=next_cursor, bots=bots,
                    f=dict(bot_id=bot_id, symbol=symbol or "", strategy=strategy or "", since=since or "", action=action or ""))

    @router.get("/chart/{symbol}")
    async def chart_page(request: Request, symbol: str, bot_id: Annotated[int | None, Query(ge=1)] = None) -> Response:
        async with service.sessions() as session:
            login, redirect = await login_or_redirect(request, session)
            if redirect:
                return redirect
            bots = [b for b in await views.user_bots(session, login.user.id) if b.symbol == symbol and (bot_id is None or b.id == bot_id)]
            if not bots:
                raise HTTPException(404, f"no bot of yours trades {symbol}")
            error = None
            rows: list[dict[str, Any]] = []
            if bars is not None:
                try:
                    rows = await bars(symbol, CHART_BARS)
                except Exception as exc:  # noqa: BLE001  the page says why it has no candles
                    error = f"no candles from market data: {type(exc).__name__}: {exc}"[:300]
                    log.warning("dashboard chart without candles", symbol=symbol, error=error)
            else:
                error = "this process has no market data to draw candles from"
            start = _bar_time(rows[0]["time"]) if rows else None
            ids = [b.id for b in bots]
            stmt = select(SignalRow).where(SignalRow.bot_id.in_(ids))
            trades_stmt = select(Decision).where(Decision.bot_id.in_(ids), Decision.fill_price.is_not(None))
            if start is not None:
                stmt = stmt.where(SignalRow.bar_time >= start)
                trades_stmt = trades_stmt.where((Decision.closed_at.is_(None)) | (Decision.closed_at >= start))
            signals = list((await session.execute(stmt.order_by(SignalRow.bar_time).limit(2000))).scalars())
            trades = list((await session.execute(trades_stmt.order_by(Decision.id).limit(2000))).scalars())
        positions = [t for t in trades if t.position_status == "open"]
        figure = charts.candles(symbol=symbol, bars=rows, signals=signals, trades=trades, positions=positions)
        return page(request, "chart.html", login, symbol=symbol, figure=_json(figure), error=error,
                    counts=dict(bars=len(rows), signals=len(signals), trades=len(trades), positions=len(positions)))

    @router.get("/static/plotly.min.js")
    async def plotly_js() -> Response:
        """plotly.js exactly as the pinned plotly package ships it: no CDN."""
        return FileResponse(PLOTLY_JS, media_type="text/javascript", headers={"Cache-Control": "public, max-age=86400"})

    return router


def _since(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return views_utc(value)
    except ValueError:
        raise HTTPException(422, "since: write an ISO time such as 2024-03-01T10:00") from None


async def _listing(lister, session, login, *, bot_id, symbol, strategy, since, cursor):
    """One page of the user's signals or decisions (`queries.list_signals` / `list_decisions`) under the page's
    filters, and the user's bots for the filter form; a bad cursor is the 422 the API answers."""
    filters = queries.Filters(bot_id=bot_id, symbol=symbol or None, strategy=strategy or None, since=_since(since))
    try:
        rows, next_cursor = await lister(session=session, owner_id=login.user.id, filters=filters, limit=PAGE_ROWS, cursor=cursor)
    except queries.BadCursor as exc:
        raise HTTPException(422, str(exc)) from None
    return rows, next_cursor, await views.user_bots(session, login.user.id)


def _json(figure) -> str:
    """The figure's JSON, safe inside a <script> element (no `</` can end it early)."""
    return figure.to_json().replace("</", "<\\/")


def _bar_time(value) -> datetime:
    return value if isinstance(value, datetime) else views_utc(str(value))


def views_utc(text: str) -> datetime:
    from datetime import UTC

    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

