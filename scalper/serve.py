"""Distributed mode: one service per process (`scalper serve <service>`), each with its own FastAPI app.

This is a composition root, like scalper/embedded.py: it builds one service around the bus (RabbitMQ), the
database (PostgreSQL) and a clock every process agrees on, and mounts that service's routes beside
/healthz, /readyz and /metrics. The decision process serves the public API and forwards /symbols, /bars and
/strategies to market data and strategy over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import httpx
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import select, text
from tenacity import AsyncRetrying, stop_after_attempt, wait_exponential

from scalper.embedded import make_feed
from shared.bus import Bus, create_bus
from shared.db.engine import create_engine, session_factory, transaction, upgrade
from shared.db.models import BrokerAccount
from shared.heap import startup_frozen
from shared.http import add_ops_routes
from shared.logging import get_logger
from shared.settings import Settings
from shared.telemetry import MetricsSampler, configure_telemetry
from shared.timeutil import Clock, SystemClock, ensure_utc, utcnow

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
    """The real clock for the mt5 feed; else the shared simulated clock of SCALPER_CLOCK_START/ANCHOR/SPEED.

    Without SCALPER_CLOCK_START the clock starts at the feed's start; without SCALPER_CLOCK_ANCHOR it is anchored at
    this process's start, which only one process can rely on: set both when running several.
    """
    if settings.feed == "mt5":
        return SystemClock()
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


# --- database outages: handlers wait for the database instead of spending their deliveries -------------------

DB_RETRY_S = 60.0  # how long a handler keeps retrying while the database is unreachable, before the bus takes over


def is_db_unreachable(exc: BaseException) -> bool:
    """A lost or refused database connection (restart, failover), as opposed to an error in the statement."""
    import asyncpg
    from sqlalchemy import exc as sa_exc

    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 10:
        if isinstance(current, ConnectionError | OSError | asyncpg.exceptions.OperatorInterventionError
                      | asyncpg.exceptions.ConnectionDoesNotExistError | asyncpg.exceptions.CannotConnectNowError):
            return True
        if isinstance(current, asyncpg.exceptions.InterfaceError) and "connection" in str(current).lower():
            return True
        if isinstance(current, sa_exc.DBAPIError) and current.connection_invalidated:
            return True
        current = getattr(current, "orig", None) or current.__cause__ or current.__context__
        seen += 1
    return False


async def retry_while_db_unreachable(call: Callable[[], Awaitable[None]], *, what: str) -> None:
    """Run `call`, again and again with back-off while the database is unreachable (bounded by DB_RETRY_S).

    The bus alone would requeue the message a few times within a second and then dead-letter it, so a database
    restart of a few seconds would dead-letter work; handlers are idempotent, so running one again is safe.
    """
    from tenacity import retry_if_exception, stop_after_delay

    async for attempt in AsyncRetrying(
        retry=retry_if_exception(is_db_unreachable), stop=stop_after_delay(DB_RETRY_S),
        wait=wait_exponential(multiplier=0.2, max=2.0), reraise=True,
        before_sleep=lambda state: log.warning(
            "database unreachable: handler retried", handler=what, attempt=state.attempt_number, error=repr(state.outcome.exception())
        ),
    ):
        with attempt:
            await call()


def _db_patient_decision():
    """DecisionService whose consumers wait out a database outage (see retry_while_db_unreachable)."""
    from services.decision.service import DecisionService

    class DbPatientDecision(DecisionService):
        async def on_signals_queue(self, message, delivery) -> None:
            await retry_while_db_unreachable(lambda: super(DbPatientDecision, self).on_signals_queue(message, delivery), what="decision.signals")

        async def on_events_queue(self, message, delivery) -> None:
            await retry_while_db_unreachable(lambda: super(DbPatientDecision, self).on_events_queue(message, delivery), what="decision.events")

    return DbPatientDecision


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

        app.include_router(create_router(self.service), prefix="/api/v1")


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

        app.include_router(create_router(), prefix="/api/v1")


class DecisionProcess(ServiceProcess):
    """The public API: decision's own /api/v1 routes, and /symbols, /bars, /strategies forwarded over HTTP."""

    name = "decision"

    def __init__(self, settings: Settings, *, bus: Bus | None = None, clock: Clock | None = None, announce=print) -> None:
        super().__init__(settings, bus=bus)
        self.clock = clock or make_clock(settings)
        self.announce = announce
        self.http: httpx.AsyncClient | None = None

    async def start(self) -> None:
        from services.decision.bots import ensure_demo

        await upgrade_database(self.settings.database_url)
        async with transaction(self.sessions) as session:
            key = await ensure_demo(session=session)
        if key:
            # Printed to the terminal once, never through the logger.
            self.announce(f"\nDemo user created. Its API key (shown once): {key}\n")
        self.http = httpx.AsyncClient(timeout=self.settings.http_timeout_s)
        self.service = _db_patient_decision()(bus=self.bus, sessions=self.sessions, clock=self.clock, settings=self.settings)
        await self.service.start()  # starts the bus too
        await self.service.refresh_plan()

    async def stop(self) -> None:
        await super().stop()
        if self.http is not None:
            await self.http.aclose()

    def mount(self, app: FastAPI) -> None:
        mount_decision_api(app, self)
        app.include_router(forwarding_router(self), prefix="/api/v1")


def mount_decision_api(app: FastAPI, process: DecisionProcess) -> bool:
    """Mount the decision service's own /api/v1 routes (services/decision/app.py `mount`), when it offers them."""
    try:
        module = importlib.import_module("services.decision.app")
    except ModuleNotFoundError as exc:
        if exc.name != "services.decision.app":
            raise
        log.warning("services.decision.app absent: the decision process serves only the forwarded routes")
        return False
    module.mount(app, process.service)
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
            upstream = await process.http.get(url, params=request.query_params)
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
    """The broker sessions of all active accounts, or of one (`--account-id`).

    A second process for the same account is a standby: RabbitMQ gives the single-active-consumer queues to one
    consumer at a time, so its handlers only run once the active process is gone. Its position monitor (snapshots,
    settling orders left in `sending`) waits until it holds the account's leader lock (PostgreSQL advisory lock,
    released when the active process's connection dies), and its paper broker is rebuilt from the tables then.
    """

    name = "executor"

    def __init__(
        self, settings: Settings, *, bus: Bus | None = None, clock: Clock | None = None, account_id: int | None = None,
        account_wait_s: float = 60.0,
    ) -> None:
        super().__init__(settings, bus=bus)
        self.clock = clock or make_clock(settings)
        self.account_id = account_id
        self.account_wait_s = account_wait_s
        self.instance = instance_name("ex")
        self.leader: LeaderLock | None = None

    async def start(self) -> None:
        from services.executor.brokers.paper import paper_brokers

        if self.settings.broker != "paper":
            raise RuntimeError("scalper serve executor runs the paper broker here; the MT5 session is not wired yet")
        await upgrade_database(self.settings.database_url)
        accounts = await self._accounts()
        await self.bus.start()
        brokers = paper_brokers(
            accounts, clock=self.clock, balance=self.settings.paper_balance,
            commission_per_lot=self.settings.paper_commission_per_lot,
        )
        self.leader = LeaderLock(self.settings.database_url, list(brokers))
        self.service = _standby_aware_executor()(
            bus=self.bus, sessions=self.sessions, clock=self.clock, settings=self.settings, broker=brokers,
            account_ids=list(brokers), instance=self.instance, leader=self.leader,
        )
        await self.service.start()

    async def stop(self) -> None:
        await super().stop()
        if self.leader is not None:
            await self.leader.release()

    async def _accounts(self) -> list[BrokerAccount]:
        """The active paper accounts (or the one asked for); waits for decision to create them on a first start."""
        deadline = time.monotonic() + self.account_wait_s
        while True:
            async with self.sessions() as session:
                query = select(BrokerAccount).where(BrokerAccount.is_active, BrokerAccount.broker == "paper")
                if self.account_id is not None:
                    query = query.where(BrokerAccount.id == self.account_id)
                accounts = list((await session.execute(query.order_by(BrokerAccount.id))).scalars())
            if accounts:
                return accounts
            if time.monotonic() > deadline:
                which = f"account {self.account_id}" if self.account_id is not None else "any account"
                raise RuntimeError(f"no active paper broker account ({which}) in the database: start decision first")
            await asyncio.sleep(0.5)

    def mount(self, app: FastAPI) -> None:
        from services.executor.app import create_router

        app.include_router(create_router(self.service), prefix="/internal/executor")

    async def readiness(self) -> tuple[bool, dict]:
        ready, details = await super().readiness()
        details["leader"] = bool(self.leader and self.leader.held)
        return ready, details


class LeaderLock:
    """Which executor process leads an account's monitor: a PostgreSQL session advisory lock per account.

    The lock lives as long as one dedicated connection: a process that dies loses it, and a standby takes it.
    On SQLite (one process) every process leads.
    """

    NAMESPACE = 0x5CA1  # advisory lock key: (namespace, account id)

    def __init__(self, url: str, account_ids: list[int]) -> None:
        self._url = url
        self._account_ids = account_ids
        self._conn = None
        self.held = not url.startswith("postgresql")

    async def try_acquire(self) -> bool:
        if self.held:
            return True
        import asyncpg
        from sqlalchemy.engine import make_url

        try:
            if self._conn is None or self._conn.is_closed():
                dsn = make_url(self._url).set(drivername="postgresql").render_as_string(hide_password=False)
                self._conn = await asyncpg.connect(dsn, timeout=5)
            got = []
            for account_id in self._account_ids:
                got.append(await self._conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", self.NAMESPACE, account_id))
            if all(got):
                self.held = True
            else:
                for account_id, ok in zip(self._account_ids, got, strict=True):
                    if ok:
                        await self._conn.execute("SELECT pg_advisory_unlock($1, $2)", self.NAMESPACE, account_id)
        except Exception as exc:  # noqa: BLE001  not leading yet; asked again next cycle
            log.info("executor leader lock not taken", error=repr(exc))
            await self.release()
        return self.held

    async def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()
        if self._url.startswith("postgresql"):
            self.held = False


def _standby_aware_executor():
    """ExecutorService whose monitor and paper-broker rebuild wait until this process leads its accounts."""
    from services.executor.service import ExecutorService

    class StandbyAwareExecutor(ExecutorService):
        def __init__(self, *, leader: LeaderLock, **kwargs) -> None:
            super().__init__(**kwargs)
            self._leader = leader
            self._leading = False

        async def _ensure_leading(self) -> bool:
            if self._leading:
                return True
            if await self._leader.try_acquire():
                self._leading = True
                self._log.info("executor leads its accounts", accounts=self._account_ids)
                await self._restore_paper_brokers()
                await self._reconcile_unsettled()
            return self._leading

        async def handle_intent(self, message, delivery) -> None:
            async with self._lock:
                await self._take_over()
            await retry_while_db_unreachable(lambda: super(StandbyAwareExecutor, self).handle_intent(message, delivery), what="executor.orders")

        async def handle_command(self, message, delivery) -> None:
            async with self._lock:
                await self._take_over()
            await retry_while_db_unreachable(lambda: super(StandbyAwareExecutor, self).handle_command(message, delivery), what="executor.commands")

        async def handle_bars(self, message, delivery) -> None:
            await retry_while_db_unreachable(lambda: super(StandbyAwareExecutor, self).handle_bars(message, delivery), what="executor.bars")

        async def _take_over(self) -> None:
            """A delivery on a single-active-consumer queue means this process is the active one now."""
            if self._leading:
                return
            for _ in range(20):  # the dead process's connection may take a moment to be seen closed
                if await self._ensure_leading():
                    return
                await asyncio.sleep(0.25)
            self._log.warning("active on the queue without the leader lock: handling anyway")

        async def _sync_broker(self, *, account_id: int) -> None:
            if self._leading:
                await super()._sync_broker(account_id=account_id)

        async def _restore_paper_brokers(self) -> None:
            if self._leading:  # a standby's paper broker is rebuilt when it takes over, not while the active one runs
                await super()._restore_paper_brokers()

        async def reconcile_unsettled(self) -> None:
            async with self._lock:
                if self._leading:
                    await self._reconcile_unsettled()
                else:
                    await self._ensure_leading()  # settles what it finds once it leads

        async def monitor_once(self) -> None:
            async with self._lock:
                leading = await self._ensure_leading()
            if leading:
                await super().monitor_once()

    return StandbyAwareExecutor


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
        app.openapi_schema = None
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

    app = FastAPI(title=f"Scalper {process.name} service", version="0.1.0", lifespan=lifespan)
    add_ops_routes(app, process.readiness)

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
