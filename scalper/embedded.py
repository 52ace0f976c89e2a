"""The embedded stack: every service in one process on the in-memory bus, SQLite and the paper broker.

This is a composition root (it may import several services); the services themselves never import each other.
"""

from __future__ import annotations

import asyncio
import re
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from fastapi import Depends, FastAPI
from sqlalchemy import func, select, text

from services.decision.admin import mount_admin
from services.decision.alerts import Notifier
from services.decision.alerts_api import attach as attach_alerts
from services.decision.app import mount as mount_decision_api
from services.decision.accounts import create_account, seal_clear_passwords
from services.decision.bots import DEMO_USER, ensure_demo, setup_bot
from services.decision.dashboard import mount_dashboard
from services.decision.deps import current_user
from services.decision.service import DecisionService
from services.executor.build import build_executor
from services.executor.service import ExecutorService
from services.market_data.app import create_router as market_data_router
from services.market_data.feeds.mt5 import MT5Feed
from services.market_data.feeds.replay import ReplayFeed
from services.market_data.feeds.synthetic import SyntheticFeed
from services.market_data.service import MarketDataService
from services.strategy.app import create_router as strategy_router
from services.strategy.service import StrategyWorker
from shared.bus import Bus, create_bus
from shared.db.engine import create_engine, session_factory, transaction, upgrade
from shared.db.patience import DatabasePatience
from shared.secrets import key_for
from shared.db.models import Bot, BrokerAccount, SignalRow, User
from shared.apidocs import add_offline_docs, describe_routes
from shared.heap import startup_frozen
from shared.http import add_ops_routes
from shared.logging import get_logger
from shared.settings import Settings
from shared.symbols import canonical_symbol
from shared.telemetry import MetricsSampler, configure_telemetry
from shared.timeutil import AcceleratedClock, Clock, TerminalClock, floor_minute, terminal_observer

log = get_logger(__name__)
STOP_SETTLE_S = 5.0  # at stop, how long each service's consumers still running get for what is queued to them


class FeedError(ValueError):
    """A --feed value that cannot be served."""


def make_feed(feed: str, *, symbol: str | None = None, utc_offset: float | None = None, bus: Bus | None = None,
              clock: Clock | None = None, server_time: str = "utc", file_time: str | None = None, tz: str | None = None):
    """`synthetic`, `replay:PATH` (the symbol from `symbol` or the file name, e.g. XAUUSD_M1.csv -> XAUUSD), or `mt5`
    (the executors' terminal sessions over the rates RPC on `bus`: they alone hold the terminal). A replay file's clock
    is `utc_offset`, `file_time` (a server-time rule) or `tz` when given, else inferred from the file."""
    if feed == "synthetic":
        return SyntheticFeed()
    if feed.startswith("replay:"):
        path = Path(feed.removeprefix("replay:")).expanduser()
        if not path.is_file():
            raise FeedError(f"replay file {path} does not exist")
        name = symbol or symbol_from_filename(path)
        if not name:
            raise FeedError(f"cannot tell the symbol from the file name {path.name!r}: pass --symbol")
        return ReplayFeed(path, canonical_symbol(name), utc_offset_hours=utc_offset, server_time=file_time, tz=tz)
    if feed == "mt5":
        if bus is None or clock is None:
            raise FeedError("the mt5 feed reads the executors' MT5 sessions over the bus: it needs the bus and the clock")
        return MT5Feed(bus=bus, clock=clock, server_time=server_time, on_terminal_time=terminal_observer(clock))
    raise FeedError(f"unknown feed {feed!r}: use synthetic, replay:PATH or mt5")


def symbol_from_filename(path: Path) -> str | None:
    match = re.match(r"([A-Za-z]{6,7}[A-Za-z0-9.!#-]*?)(?:[_\-. ]|$)", path.stem)
    return match.group(1).upper() if match else None


@dataclass
class Startup:
    demo_api_key: str | None


class EmbeddedStack:
    """Builds, starts and stops the four services around one bus, one database and one clock."""

    def __init__(self, settings: Settings, *, feed=None, clock: Clock | None = None, bus: Bus | None = None) -> None:
        self.settings = settings
        self.bus = bus or create_bus(settings.bus_url, delivery_limit=settings.delivery_limit, prefetch=settings.prefetch)
        if clock is None and settings.feed == "mt5":
            clock = TerminalClock(speed=settings.clock_speed())  # the terminal's time, as its sessions report it
        if feed is None:
            feed = make_feed(settings.feed, bus=self.bus, clock=clock, server_time=settings.mt5_server_time)
        self.feed = feed
        self.engine = create_engine(settings.database_url, sqlite_synchronous=settings.sqlite_synchronous)
        self.sessions = session_factory(self.engine)
        self._clock = clock
        self.market_data: MarketDataService | None = None
        self.strategy: StrategyWorker | None = None
        self.decision: DecisionService | None = None
        self.executor: ExecutorService | None = None
        self.sampler: MetricsSampler | None = None
        self.notifier: Notifier | None = None

    @property
    def clock(self) -> Clock:
        assert self._clock is not None, "the clock is made at start()"
        return self._clock

    async def start(self) -> Startup:
        await asyncio.to_thread(upgrade, self.settings.database_url)
        secret_key = key_for(self.settings, embedded=True)  # SCALPER_SECRET_KEY, or var/secret.key made on first start
        async with transaction(self.sessions) as session:
            await seal_clear_passwords(session=session, key=secret_key)  # rows from before passwords were sealed
            key = await ensure_demo(session=session)
            if self.settings.broker == "mt5":
                await ensure_mt5_demo(session=session, settings=self.settings)
            await self._ensure_bot_for_feed(session)
        if self._clock is None:
            self._clock = AcceleratedClock(await self._clock_start(), speed=self.settings.speed)
        await self.bus.start()
        self.executor = build_executor(settings=self.settings, bus=self.bus, sessions=self.sessions, clock=self.clock)
        self.decision = DecisionService(bus=self.bus, sessions=self.sessions, clock=self.clock, settings=self.settings,
                                        patience=DatabasePatience())
        self.notifier = attach_alerts(self.decision, self.sessions)
        self.strategy = StrategyWorker(bus=self.bus, settings=self.settings)
        self.market_data = MarketDataService(bus=self.bus, feed=self.feed, clock=self.clock, settings=self.settings)
        # Downstream first, so nothing is published to a queue before its consumer exists.
        configure_telemetry(self.settings, service_name="scalper-embedded")
        for service in (self.executor, self.decision, self.strategy, self.market_data):
            await service.start()
        await self.decision.refresh_plan()
        self.sampler = MetricsSampler(
            bus=self.bus, queues=self._sampled_queues(await self._active_accounts()), sessions=self.sessions, clock=self.clock,
            broker_healthy=self._broker_healthy,
        )
        self.sampler.start()
        return Startup(demo_api_key=key)

    @staticmethod
    def _sampled_queues(account_ids) -> list[str]:
        from shared.bus import topology
        from shared.bus.memory import WORK_QUEUES

        out = [spec.name for spec in WORK_QUEUES]
        for account_id in account_ids:
            out += [topology.executor_orders_queue(account_id).name, topology.executor_commands_queue(account_id).name]
        return out

    async def _broker_healthy(self) -> bool:
        if self.executor is None:
            return False
        _, details = await self.executor.readiness()
        return bool(details.get("broker"))

    async def stop(self) -> None:
        if self.sampler is not None:
            await self.sampler.stop()
        # Decision last, after what is on its way has settled: the in-memory bus is not durable, so an event the
        # executor publishes while it stops (a position its last bars closed) is lost if decision no longer consumes,
        # and the decision would count that closed position as open for ever. An intent decided after the executor
        # stopped is lost the same way; decision re-sends it at the next start (services/decision/resend.py).
        for service in (self.market_data, self.strategy, self.executor, self.decision):
            if service is not None:
                await service.stop()
                await self._settle_bus()
        if self.notifier is not None:
            await self.notifier.stop()
        if isinstance(self.feed, MT5Feed):
            await self.feed.close()
        await self.bus.close()
        await self.engine.dispose()

    async def _settle_bus(self, timeout: float = STOP_SETTLE_S) -> None:
        """Let the consumers still running handle what is queued for them (bounded: a stop never hangs on it)."""
        try:
            await self.bus.idle(timeout=timeout)
        except TimeoutError as exc:
            log.warning("messages still queued at stop", error=str(exc))

    async def readiness(self) -> tuple[bool, dict]:
        details: dict = {"bus": await self.bus.healthy()}
        try:
            async with self.sessions() as session:
                await session.execute(text("SELECT 1"))
            details["database"] = True
        except Exception as exc:  # noqa: BLE001  readiness reports, it does not raise
            details["database"] = False
            details["database_error"] = str(exc)
        ready = details["bus"] and details["database"]
        for name in ("market_data", "decision", "executor"):
            service = getattr(self, name)
            if service is not None:
                ok, info = await _maybe_await(service.readiness())
                details[name] = info
                ready = ready and ok
        return ready, details

    async def bars(self, symbol: str, count: int) -> list[dict]:
        """The dashboard's candles and mark prices: market data's closed M1 bars of `symbol`, oldest first."""
        from services.market_data.schemas import BarsPublic

        assert self.market_data is not None
        name = self.market_data.resolve_symbol(symbol)
        return [bar.model_dump() for bar in BarsPublic.from_bars(name, await self.market_data.recent_bars(symbol=name, count=count)).data]

    async def served_symbols(self) -> list[str] | None:
        """The symbols a bot may trade: the feed's (None with the mt5 feed, whose broker sessions serve what bots ask)."""
        return None if isinstance(self.feed, MT5Feed) else list(self.feed.symbols())

    async def _active_accounts(self) -> list[int]:
        async with self.sessions() as session:
            return list((await session.execute(select(BrokerAccount.id).where(BrokerAccount.is_active))).scalars())

    async def _ensure_bot_for_feed(self, session) -> None:
        """A replay of another symbol gets a demo bot of its own, so `make run --feed replay:EURUSD...` trades too."""
        served = set(self.feed.symbols())
        bots = (await session.execute(select(Bot, BrokerAccount).join(BrokerAccount, Bot.account_id == BrokerAccount.id))).all()
        if any(canonical_symbol(bot.symbol, account.symbol_suffix) in served for bot, account in bots):
            return
        demo = (await session.execute(select(User).where(User.name == "demo"))).scalar_one_or_none()
        account = (await session.execute(select(BrokerAccount).where(BrokerAccount.user_id == demo.id))).scalars().first()
        for symbol in sorted(served):
            await setup_bot(session=session, user_id=demo.id, account_id=account.id, symbol=f"{symbol}{account.symbol_suffix}", auto_trade=True, strategies=None)

    async def _clock_start(self) -> datetime:
        """Start where the feed has a full window of history, but after any bar already traded in this database,
        so that a second `make run` trades new bars instead of re-deciding old ones."""
        start = self.feed.start_time()
        async with self.sessions() as session:
            last = (await session.execute(select(func.max(SignalRow.bar_time)))).scalar_one_or_none()
        if last is not None and last + timedelta(minutes=2) > start:
            later = floor_minute(last) + timedelta(minutes=2)
            if getattr(self.feed, "ends_at", None) is None or later < self.feed.ends_at():
                start = later
        return start


async def ensure_mt5_demo(*, session, settings: Settings) -> BrokerAccount | None:
    """With SCALPER_BROKER=mt5: when no `mt5` account has the login SCALPER_MT5_LOGIN, create it for the demo user (its
    password a reference to SCALPER_MT5_PASSWORD, never the value) with an auto-trading XAUUSD bot, as for paper."""
    if settings.mt5_login is None or not settings.mt5_server:
        raise FeedError("SCALPER_BROKER=mt5 needs SCALPER_MT5_LOGIN and SCALPER_MT5_SERVER (and SCALPER_MT5_PASSWORD)")
    login = str(settings.mt5_login)
    found = (await session.execute(select(BrokerAccount).where(BrokerAccount.broker == "mt5", BrokerAccount.login == login))).scalars().first()
    if found is not None:
        return None
    demo = (await session.execute(select(User).where(User.name == DEMO_USER))).scalar_one()
    account = await create_account(
        session=session, owner_id=demo.id, actor="startup",
        values={"broker": "mt5", "login": login, "server": settings.mt5_server, "server_time": settings.mt5_server_time,
                "symbol_suffix": settings.mt5_suffix, "is_demo": True,
                "password": "env:SCALPER_MT5_PASSWORD" if settings.mt5_password is not None else None},
    )
    await setup_bot(session=session, user_id=demo.id, account_id=account.id, symbol=f"XAUUSD{settings.mt5_suffix}",
                    auto_trade=True, strategies=None)
    log.info("mt5 demo account created", account_id=account.id, login=login, server=settings.mt5_server)
    return account


async def _maybe_await(value):
    if asyncio.iscoroutine(value):
        return await value
    return value


def create_app(stack: EmbeddedStack, *, announce=print) -> FastAPI:
    """The embedded HTTP app: the stack starts and stops with the app; every router is mounted once it has started."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        startup = await stack.start()
        # Every /api/v1 route takes a user's key, as decision's own do; the executor's internal routes (every
        # account's positions and balance) are not mounted: GET /api/v1/positions shows a user their own.
        user_only = [Depends(current_user)]
        app.include_router(market_data_router(stack.market_data), prefix="/api/v1", dependencies=user_only)
        app.include_router(strategy_router(), prefix="/api/v1", dependencies=user_only)
        mount_decision_api(app, stack.decision, served_symbols=stack.served_symbols)
        mount_admin(app, engine=stack.engine, sessions=stack.sessions, settings=stack.settings)
        mount_dashboard(app, stack.decision, bars=stack.bars)
        describe_routes(app)
        if startup.demo_api_key:
            # Printed to the terminal once, never through the logger.
            announce(f"\nDemo user created. Its API key (shown once): {startup.demo_api_key}\n")
        with startup_frozen():  # no 100 ms collection of start-up's objects in the middle of an order (shared/heap.py)
            yield
        await stack.stop()

    app = FastAPI(title="Scalper signal engine (embedded)", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    add_ops_routes(app, stack.readiness)
    add_offline_docs(app)  # `/` is the dashboard, mounted with the API once the stack has started
    return app
