"""Distributed mode: one service per process (`scalper serve <service>`), each with its own FastAPI app.

This is a composition root, like scalper/embedded.py: it builds one service around the bus (RabbitMQ), the
database (PostgreSQL) and a clock every process agrees on, and mounts that service's routes beside
/healthz, /readyz and /metrics. The decision process serves the public API and forwards /symbols, /bars and
/strategies to market data and strategy over HTTP, with SCALPER_SERVICE_TOKEN: the routes of market data, strategy
and the executor answer only calls that carry it (they have no database to check a user's key). No user is made
here: a distributed install starts empty (`scalper user create`, POST /accounts, `scalper bot setup`).
"""

from __future__ import annotations

import asyncio
import importlib
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import httpx
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text
from tenacity import AsyncRetrying, stop_after_attempt, wait_exponential

from scalper.embedded import make_feed
from shared.bus import Bus, create_bus
from shared.db.engine import create_engine, session_factory, transaction, upgrade
from shared.db.patience import DatabasePatience
from shared.secrets import key_for
from shared.apidocs import add_offline_docs, describe_routes
from shared.heap import startup_frozen
from shared.http import add_ops_routes, require_service_token, service_token_headers
from shared.logging import get_logger
from shared.settings import Settings
from shared.telemetry import MetricsSampler, configure_telemetry
from shared.timeutil import Clock, TerminalClock, ensure_utc, terminal_observer, utcnow

log = get_logger(__name__)

SERVICES = ("market_data", "strategy", "decision", "executor")
DEFAULT_PORTS = {"decision": 8000, "market_data": 8001, "strategy": 8002, "executor": 8003}


# --- the shared clock ---------------------------------------------------------------------------------------


class SharedClock:
    """Simulated time that every process computes alike: `start` at the wall-clock instant `anchor`, `speed` x faster.

    Unlike AcceleratedClock (anchored at its own creation), it depends only on its settings and the wall clock,
    so market data, decision and executor started at different moments still read the same time.
    """

    def __init__(self, start: datetime, anchor: datetime, speed: float) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.start = ensure_utc(start)
        self.anchor = ensure_utc(anchor)
        self.speed = speed
        self._anchor_epoch = self.anchor.timestamp()

    def now(self) -> datetime:
        return self.start + timedelta(seconds=(time.time() - self._anchor_epoch) * self.speed)

    async def sleep_until(self, when: datetime) -> None:
        delay = (ensure_utc(when) - self.now()).total_seconds() / self.speed
        if delay > 0:
            await asyncio.sleep(delay)


def make_clock(settings: Settings, *, feed=None) -> Clock:
    """For the mt5 feed the terminal's clock (unless SCALPER_CLOCK_START and ANCHOR pin a simulator's); else the
    shared simulated clock of SCALPER_CLOCK_START/ANCHOR/SPEED.

    Without SCALPER_CLOCK_START the clock starts at the feed's start; without SCALPER_CLOCK_ANCHOR it is anchored at
    this process's start, which only one process can rely on: set both when running several.
    """
    if settings.feed == "mt5" and (settings.clock_start is None or settings.clock_anchor is None):
        return TerminalClock(speed=settings.clock_speed())  # the terminal's time, as the executor's sessions report it
    start = settings.clock_start
    if start is None:
        start = (feed if feed is not None else make_feed(settings.feed)).start_time()
    anchor = settings.clock_anchor
    if anchor is None:
        anchor = utcnow()
        log.warning(
            "SCALPER_CLOCK_ANCHOR unset: this process's simulated clock is its own; set SCALPER_CLOCK_START and "
            "SCALPER_CLOCK_ANCHOR alike in every process so their clocks agree",
            clock_start=start.isoformat(), clock_anchor=anchor.isoformat(),
        )
    # A time given without a zone (SCALPER_CLOCK_START=2026-03-25T09:00) is read as UTC.
    start, anchor = (t if t.tzinfo is not None else t.replace(tzinfo=UTC) for t in (start, anchor))
    return SharedClock(start, anchor, settings.speed)


def instance_name(prefix: str) -> str:
    """A name no other process uses (the exclusive queues of market data and the executor carry it)."""
    return f"{prefix}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


async def upgrade_database(url: str) -> None:
    """Run the migrations, retried: several processes may start at once, and the database may still be starting."""
    async for attempt in AsyncRetrying(stop=stop_after_attempt(8), wait=wait_exponential(multiplier=0.25, max=5), reraise=True):
        with attempt:
            await asyncio.to_thread(upgrade, url)


async def _database_ready(sessions) -> tuple[bool, str | None]:
    try:
        async with sessions() as session, asyncio.timeout(5):
            await session.execute(text("SELECT 1"))
        return True, None
    except Exception as exc:  # noqa: BLE001  readiness reports, it does not raise
        return False, repr(exc)


async def _maybe_await(value):
    if asyncio.iscoroutine(value):
        return await value
    return value


# --- one service per process ------------------------------------------------------------------------------


class ServiceProcess:
    """What every `scalper serve` process has: a bus, perhaps a database, start/stop, readiness and its routes."""

    name: str = ""
    uses_database: bool = True

    def __init__(self, settings: Settings, *, bus: Bus | None = None) -> None:
        self.settings = settings
        self.bus = bus or create_bus(settings.bus_url, delivery_limit=settings.delivery_limit, prefetch=settings.prefetch)
        self.engine = create_engine(settings.database_url, sqlite_synchronous=settings.sqlite_synchronous) if self.uses_database else None
        self.sessions = session_factory(self.engine) if self.engine is not None else None
        self.service = None

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stop()
        await self.bus.close()
        if self.engine is not None:
            await self.engine.dispose()

    def mount(self, app: FastAPI) -> None:
        """Mount this service's routers (called once it has started)."""

    def internal(self) -> list:
        """The dependencies of routes only another service calls: the service token."""
        return [Depends(require_service_token(self.settings))]

    async def readiness(self) -> tuple[bool, dict]:
        details: dict = {"service": self.name, "bus": await self.bus.healthy()}
        ready = details["bus"]
        if self.sessions is not None:
            details["database"], error = await _database_ready(self.sessions)
            if error:
                details["database_error"] = error
            ready = ready and details["database"]
        if self.service is not None and hasattr(self.service, "readiness"):
            ok, info = await _maybe_await(self.service.readiness())
            details[self.name] = info
            ready = ready and ok
        else:
            ready = ready and self.service is not None
        return ready, details


class MarketDataProcess(ServiceProcess):
    name = "market_data"
    uses_database = False

    def __init__(self, settings: Settings, *, bus: Bus | None = None, feed=None, clock: Clock | None = None) -> None:
        super().__init__(settings, bus=bus)
        if settings.feed == "mt5":
            self.clock = clock or make_clock(settings)
            self.feed = feed if feed is not None else make_feed("mt5", bus=self.bus, clock=self.clock, server_time=settings.mt5_server_time)
        else:
            self.feed = feed if feed is not None else make_feed(settings.feed)
            self.clock = clock or make_clock(settings, feed=self.feed)

    async def start(self) -> None:
        from services.market_data.service import MarketDataService

        await self.bus.start()
        self.service = MarketDataService(
            bus=self.bus, feed=self.feed, clock=self.clock, settings=self.settings, instance=instance_name("md")
        )
        await self.service.start()

    def mount(self, app: FastAPI) -> None:
        from services.market_data.app import create_router

        app.include_router(create_router(self.service), prefix="/api/v1", dependencies=self.internal())


class StrategyProcess(ServiceProcess):
    name = "strategy"
    uses_database = False

    async def start(self) -> None:
        from services.strategy.service import StrategyWorker

        await self.bus.start()
        self.service = StrategyWorker(bus=self.bus, settings=self.settings)
        await self.service.start()

    async def readiness(self) -> tuple[bool, dict]:
        healthy = await self.bus.healthy()
        return healthy and self.service is not None, {"service": self.name, "bus": healthy}

    def mount(self, app: FastAPI) -> None:
        from services.strategy.app import create_router

        app.include_router(create_router(), prefix="/api/v1", dependencies=self.internal())


class DecisionProcess(ServiceProcess):
    """The public API: decision's own /api/v1 routes, and /symbols, /bars, /strategies forwarded over HTTP."""

    name = "decision"

    def __init__(self, settings: Settings, *, bus: Bus | None = None, clock: Clock | None = None, announce=print) -> None:
        super().__init__(settings, bus=bus)
        self.clock = clock or make_clock(settings)
        self.announce = announce
        self.http: httpx.AsyncClient | None = None
        self.notifier = None  # the alert sender, made at start (services/decision/alerts_api.py attach)

    async def start(self) -> None:
        from services.decision.accounts import seal_clear_passwords
        from services.decision.service import DecisionService

        await upgrade_database(self.settings.database_url)
        secret_key = key_for(self.settings, embedded=False)  # SCALPER_SECRET_KEY: required in distributed mode
        async with transaction(self.sessions) as session:
            await seal_clear_passwords(session=session, key=secret_key)  # rows from before passwords were sealed
        self.http = httpx.AsyncClient(timeout=self.settings.http_timeout_s)
        self.service = DecisionService(bus=self.bus, sessions=self.sessions, clock=self.clock, settings=self.settings,
                                       patience=DatabasePatience(), on_terminal_time=terminal_observer(self.clock))
        await self.service.start()  # starts the bus too
        await self.service.refresh_plan()
        from services.decision.alerts_api import attach as attach_alerts

        self.notifier = attach_alerts(self.service, self.sessions)

    async def stop(self) -> None:
        await super().stop()
        if self.notifier is not None:
            await self.notifier.stop()
        if self.http is not None:
            await self.http.aclose()

    def mount(self, app: FastAPI) -> None:
        if mount_decision_api(app, self):
            from services.decision.dashboard import mount_dashboard

            mount_dashboard(app, self.service, bars=self.bars)
        app.include_router(forwarding_router(self), prefix="/api/v1")

    async def bars(self, symbol: str, count: int) -> list[dict]:
        """The dashboard's candles and mark prices, from market data's /bars (with the service token)."""
        assert self.http is not None
        url = f"{self.settings.market_data_url.rstrip('/')}/api/v1/bars/{symbol}"
        answer = await self.http.get(url, params={"count": count}, headers=service_token_headers(self.settings))
        answer.raise_for_status()
        return answer.json()["data"]

    async def served_symbols(self):
        """The symbols market data's feed serves (None with the mt5 feed: its broker sessions serve what bots ask for)."""
        from services.decision.app import SymbolsUnavailable

        if self.settings.feed == "mt5":
            return None
        assert self.http is not None
        url = f"{self.settings.market_data_url.rstrip('/')}/api/v1/symbols"
        try:
            answer = await self.http.get(url, headers=service_token_headers(self.settings))
            answer.raise_for_status()
            return {row["name"] for row in answer.json()["data"]}
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise SymbolsUnavailable(f"market data at {url} did not list its symbols ({type(exc).__name__})") from None


def mount_decision_api(app: FastAPI, process: DecisionProcess) -> bool:
    """Mount the decision service's own /api/v1 routes (services/decision/app.py `mount`), when it offers them."""
    try:
        module = importlib.import_module("services.decision.app")
    except ModuleNotFoundError as exc:
        if exc.name != "services.decision.app":
            raise
        log.warning("services.decision.app absent: the decision process serves only the forwarded routes")
        return False
    module.mount(app, process.service, served_symbols=process.served_symbols)
    return True


def _api_user_dependency():
    """The decision API's X-API-Key check, for the forwarded routes too (every /api/v1 route is authenticated)."""
    try:
        from services.decision.deps import current_user
    except ImportError:
        return []
    from fastapi import Depends

    return [Depends(current_user)]


def forwarding_router(process: DecisionProcess) -> APIRouter:
    """/symbols and /bars from market data, /strategies from strategy: the upstream answer, status and body as is."""
    router = APIRouter(tags=["forwarded"], dependencies=_api_user_dependency())
    settings = process.settings

    async def forward(request: Request, base: str, path: str) -> Response:
        assert process.http is not None
        url = f"{base.rstrip('/')}/api/v1{path}"
        try:
            upstream = await process.http.get(url, params=request.query_params, headers=service_token_headers(settings))
        except httpx.HTTPError as exc:
            return JSONResponse({"detail": f"upstream {url} unreachable: {type(exc).__name__}"}, status_code=503)
        return Response(upstream.content, status_code=upstream.status_code, media_type=upstream.headers.get("content-type"))

    @router.get("/symbols")
    async def symbols(request: Request) -> Response:
        return await forward(request, settings.market_data_url, "/symbols")

    @router.get("/bars/{symbol}")
    async def bars(symbol: str, request: Request) -> Response:
        return await forward(request, settings.market_data_url, f"/bars/{symbol}")

    @router.get("/strategies")
    async def strategies(request: Request) -> Response:
        return await forward(request, settings.strategy_url, "/strategies")

    return router


class ExecutorProcess(ServiceProcess):
    """The broker sessions of all active accounts (paper and mt5), or of one (`--account-id`), including accounts
    created while it runs.

    A second process for the same account is a standby: RabbitMQ gives the single-active-consumer queues to one
    consumer at a time, so its handlers only run once the active process is gone; its monitor, its paper book and the
    settling of orders left in `sending` wait until it holds the account's leader lock (services/executor/leadership.py).
    """

    name = "executor"

    def __init__(self, settings: Settings, *, bus: Bus | None = None, clock: Clock | None = None, account_id: int | None = None) -> None:
        super().__init__(settings, bus=bus)
        self.clock = clock or make_clock(settings)
        self.account_id = account_id
        self.instance = instance_name("ex")

    async def start(self) -> None:
        from services.executor.build import build_executor

        key_for(self.settings, embedded=False)  # fails fast without SCALPER_SECRET_KEY; opens the accounts' passwords
        await upgrade_database(self.settings.database_url)
        await self.bus.start()
        self.service = build_executor(
            settings=self.settings, bus=self.bus, sessions=self.sessions, clock=self.clock, instance=self.instance,
            account_id=self.account_id,
        )
        await self.service.start()
        if not self.service.accounts:
            which = f"account {self.account_id}" if self.account_id is not None else "any active account"
            log.warning(f"no {which} yet: the executor serves it once it is created (looked for every scan interval)")

    def mount(self, app: FastAPI) -> None:
        from services.executor.app import create_router

        app.include_router(create_router(self.service), prefix="/internal/executor", dependencies=self.internal())

    async def readiness(self) -> tuple[bool, dict]:
        ready, details = await super().readiness()
        details["leader"] = bool(self.service is not None and self.service.leading)
        return ready, details


PROCESSES: dict[str, Callable[..., ServiceProcess]] = {
    "market_data": MarketDataProcess,
    "strategy": StrategyProcess,
    "decision": DecisionProcess,
    "executor": ExecutorProcess,
}


def build_process(name: str, settings: Settings, *, account_id: int | None = None) -> ServiceProcess:
    if name not in PROCESSES:
        raise ValueError(f"unknown service {name!r}: use one of {', '.join(SERVICES)}")
    if name == "executor":
        return ExecutorProcess(settings, account_id=account_id)
    if account_id is not None:
        raise ValueError("--account-id is an executor option")
    return PROCESSES[name](settings)


def metrics_sampler(process: ServiceProcess) -> MetricsSampler | None:
    """The periodic gauges a process owns: decision the queue depths and the per-bot gauges (it has the tables),
    the executor its broker connection (shared/telemetry.py)."""
    if process.name == "decision":
        from shared.bus.memory import WORK_QUEUES

        return MetricsSampler(
            bus=process.bus, queues=[spec.name for spec in WORK_QUEUES], sessions=process.sessions, clock=getattr(process, "clock", None)
        )
    if process.name == "executor":
        async def broker_healthy() -> bool:
            if process.service is None:
                return False
            _, details = await process.service.readiness()
            return bool(details.get("broker"))

        return MetricsSampler(broker_healthy=broker_healthy)
    return None


def create_service_app(process: ServiceProcess, *, on_started: Callable[[], Awaitable[None]] | None = None) -> FastAPI:
    """The process's HTTP app: the service starts and stops with it; its routes are mounted once it has started."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        configure_telemetry(process.settings, service_name=f"scalper-{process.name}")
        await process.start()
        process.mount(app)
        describe_routes(app)
        sampler = metrics_sampler(process)
        if sampler is not None:
            sampler.start()
        log.info("service started", service=process.name)
        if on_started is not None:
            await on_started()
        with startup_frozen():  # no 100 ms collection of start-up's objects in the middle of an order (shared/heap.py)
            yield
        if sampler is not None:
            await sampler.stop()
        await process.stop()

    if process.settings.service_token is None:
        log.warning("SCALPER_SERVICE_TOKEN unset: the internal routes refuse every call (and decision cannot forward /symbols, /bars, /strategies); set it alike in every service")
    app = FastAPI(title=f"Scalper {process.name} service", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    add_ops_routes(app, process.readiness)
    add_offline_docs(app)

    if process.name != "decision":  # decision's `/` is the dashboard, mounted with its API
        @app.get("/", include_in_schema=False)
        async def index() -> dict:
            return {"service": process.name, "health": "/healthz", "ready": "/readyz", "metrics": "/metrics"}

    return app


__all__ = [
    "DEFAULT_PORTS",
    "SERVICES",
    "SharedClock",
    "build_process",
    "create_service_app",
    "make_clock",
]
