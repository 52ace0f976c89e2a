"""The decision service's shell: bus consumers (thin), the scan-plan loop and readiness; the logic is in the modules beside it."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import suppress
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prometheus_client import Counter

from services.decision import alerts, events, killswitch, outgoing, plan, reporting
from services.decision.batch import decide_account
from services.decision.decisions import SignalOutcome, handle_signal
from services.decision.plan import LookbackFor
from services.decision.resend import IntentResender
from services.decision.scanline import ScanLine, ScanLog, scan_lines
from shared.bus import topology
from shared.bus.base import Bus, Consumer, Delivery, TransientError
from shared.db.engine import transaction
from shared.db.patience import NO_PATIENCE, Patience
from shared.logging import get_logger
from shared.messages import (
    AccountSnapshot,
    ExecutionReport,
    InvalidMessage,
    Message,
    PositionEvent,
    ScanPlan,
    ScanReport,
    ScanResult,
    Signal,
    StrategyConfig,
)
from shared.db.models import BrokerAccount
from shared.metrics import kill_switch_trips_total
from shared.outbox import OutboxRelay, Pending
from shared.settings import Settings
from shared.rates import RatesClient, RatesUnavailable
from shared.symbols import learn_spec
from shared.timeutil import Clock

log_name = reporting.LOG_NAME
log = get_logger(log_name)

# How many (window, bot) scan lines to remember, so a redelivered ScanReport does not log its lines twice.
LOGGED_LINES_KEPT = 10_000
# Windows decided at once (PostgreSQL): accounts of different windows in parallel; one account's signals stay in turn.
WINDOWS_AT_ONCE = 8
# Account transactions open at once, all windows together: below the pool's size, so a wide window waits here rather
# than timing out on a pool checkout.
ACCOUNTS_AT_ONCE = 16

signals_refused_total = Counter(
    "decision_signals_refused_total", "Signals of a ScanResult refused alone (another account's bot, another symbol)", ["reason"]
)
# What this process decided, for scan lines made without a query: windows' tallies, and signal ids decided.
WINDOWS_KEPT = 2_000
DECIDED_KEPT = 100_000


def _catalog_lookback(settings: Settings):
    try:
        from shared.strategies import catalog
    except ModuleNotFoundError as exc:
        if exc.name != "shared.strategies.catalog":
            raise
        log.warning("strategy catalog absent: the scan plan asks for the minimum lookback")
        return lambda configs: settings.lookback_bars
    return catalog.lookback_for


class DecisionService:
    """Consumes Signals, ScanReports and the executor's events; publishes the ScanPlan, and OrderIntents and
    ExecutorCommands through its outbox relay (written in the transaction that decides them, published after it)."""

    def __init__(
        self,
        *,
        bus: Bus,
        sessions: async_sessionmaker[AsyncSession],
        clock: Clock,
        settings: Settings,
        lookback_for: LookbackFor | None = None,
        outbox: OutboxRelay | None = None,
        patience: Patience | None = None,
        on_terminal_time: Callable[[datetime], None] | None = None,
    ) -> None:
        self._bus = bus
        # Told the time an executor's terminal showed when it took a snapshot (a terminal-following clock, mt5 feed).
        self._on_terminal_time = on_terminal_time
        self._rates: RatesClient | None = None  # made on first use: asks a terminal to describe a symbol
        self._patience: Patience = patience or NO_PATIENCE  # how the consumers meet an unreachable database
        self.outbox = outbox or OutboxRelay(bus=bus, sessions=sessions)
        # Real seconds, like the order's life: multiplied by the clock's speed.
        self.resender = IntentResender(
            sessions=sessions, clock=clock, grace_s=settings.intent_resend_grace_s * clock.speed, kick=self.send_committed,
        )
        self._sessions = sessions
        self._clock = clock
        self._settings = settings
        self._lookback_for = lookback_for
        self._consumers: list[Consumer] = []
        self._plan_task: asyncio.Task | None = None
        self._plan_lock = asyncio.Lock()
        self._account_locks: dict[int, asyncio.Lock] = {}
        self._open_accounts = asyncio.Semaphore(ACCOUNTS_AT_ONCE)
        self._logged: OrderedDict[tuple[str, int], None] = OrderedDict()
        # window id -> bot id -> [new signals, decided open, orders sent]; and the signal ids decided here.
        self._tallies: OrderedDict[str, dict[int, list[int]]] = OrderedDict()
        self._decided: OrderedDict[str, None] = OrderedDict()
        self._plan_symbols: dict[int, str] | None = None  # bot id -> symbol, of the last plan
        self.snapshots: dict[int, AccountSnapshot] = {}
        self.last_plan: ScanPlan | None = None
        self.alerts: alerts.AlertSink = alerts.NO_ALERTS  # people's notifications, sent off this path (alerts.py)
        self._scan_log = ScanLog(log, name=log_name)  # info when a scan found a signal, debug otherwise, a summary a minute

    # --- life cycle ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._lookback_for is None:
            self._lookback_for = _catalog_lookback(self._settings)
        await self._bus.start()
        await self.outbox.start()  # what a crashed process committed and never published goes out first
        prefetch = self._settings.prefetch
        # SQLite has one writer: windows one at a time there; PostgreSQL decides a few windows side by side.
        windows = 1 if self._sqlite else WINDOWS_AT_ONCE
        self._consumers.append(await self._bus.consume(
            topology.DECISION_SIGNALS, self.on_signals_queue, prefetch=max(prefetch, windows), concurrency=windows,
        ))
        self._consumers.append(await self._bus.consume(topology.DECISION_EVENTS, self.on_events_queue, prefetch=prefetch))
        self._plan_task = asyncio.create_task(self._plan_loop(), name="decision:plan")
        self.resender.start()  # decisions left `sent` past their expiry: their intents go out again (resend.py)

    async def stop(self) -> None:
        await self.resender.stop()
        if self._plan_task is not None:
            self._plan_task.cancel()
            with suppress(asyncio.CancelledError):
                await self._plan_task
            self._plan_task = None
        for consumer in self._consumers:
            await consumer.cancel()
        self._consumers.clear()
        if self._rates is not None:
            await self._rates.close()
            self._rates = None
        await self.outbox.stop()

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        details: dict[str, Any] = {}
        try:
            async with self._sessions() as session:
                await session.execute(text("SELECT 1"))
            details["database"] = True
        except Exception as exc:  # noqa: BLE001  readiness reports, it does not raise
            details["database"] = False
            details["database_error"] = str(exc)
        details["plan_symbols"] = None if self.last_plan is None else len(self.last_plan.symbols)
        details["outbox_unpublished"] = self.outbox.unpublished  # waiting for the broker's confirm; retried
        return details["database"], details

    @property
    def settings(self) -> Settings:
        return self._settings

    def latest_snapshot(self, account_id: int) -> AccountSnapshot | None:
        return self.snapshots.get(account_id)

    @property
    def sessions(self) -> async_sessionmaker[AsyncSession]:
        return self._sessions

    @property
    def clock(self) -> Clock:
        return self._clock

    async def send_committed(self, rows: Sequence[Pending]) -> None:
        """Kick the outbox relay with the rows a transaction wrote, once it has committed (never raises: a publish
        that fails is retried by the relay until the broker confirms)."""
        if rows:
            await self.outbox.kick(rows)

    # --- scan plan ----------------------------------------------------------------------------------------

    def _lookback(self, configs: Sequence[StrategyConfig]) -> int:
        lookback_for = self._lookback_for or _catalog_lookback(self._settings)
        return lookback_for(configs)

    async def refresh_plan(self) -> ScanPlan:
        """Rebuild the ScanPlan from the tables and publish it now (call after a bot changes)."""
        async with self._plan_lock:
            async with self._sessions() as session:
                scan_plan = await plan.build_plan(session=session, lookback_for=self._lookback, min_lookback=self._settings.lookback_bars)
            await self._bus.publish(scan_plan, exchange=topology.CONTROL_PLAN, routing_key="")
            if self.last_plan is None or self.last_plan.symbols != scan_plan.symbols:
                log.info(
                    "scan plan changed",
                    symbols={s.symbol: [sub.bot_id for sub in s.subscriptions] for s in scan_plan.symbols},
                )
            self.last_plan = scan_plan
            self._plan_symbols = {sub.bot_id: sub.symbol for entry in scan_plan.symbols for sub in entry.subscriptions}
            return scan_plan

    async def _plan_loop(self) -> None:
        interval = timedelta(seconds=self._settings.scan_interval_s)
        while True:
            try:
                await self.refresh_plan()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001  a failed refresh is retried next interval; the last plan stands
                log.warning("scan plan refresh failed", error=repr(exc))
            await self._clock.sleep_until(self._clock.now() + interval)

    # --- consumers ----------------------------------------------------------------------------------------

    @property
    def _sqlite(self) -> bool:
        bind = self._sessions.kw.get("bind")
        return bind is not None and bind.dialect.name == "sqlite"

    async def on_signals_queue(self, message: Message, delivery: Delivery) -> None:
        if isinstance(message, ScanResult):
            await self._patience.run(lambda: self.decide_scan(message.signals, message.report, delivery), what="decision.signals")
        elif isinstance(message, Signal):
            await self._patience.run(lambda: self.handle_signal(message, delivery), what="decision.signals")
        elif isinstance(message, ScanReport):
            await self._patience.run(lambda: self.handle_scan_report(message, delivery), what="decision.signals")
        else:
            raise InvalidMessage(f"{type(message).__name__} does not belong on {topology.DECISION_SIGNALS.name}")

    async def on_events_queue(self, message: Message, delivery: Delivery) -> None:
        if isinstance(message, ExecutionReport):
            handler = self.handle_execution_report
        elif isinstance(message, PositionEvent):
            handler = self.handle_position_event
        elif isinstance(message, AccountSnapshot):
            handler = self.handle_account_snapshot
        else:
            raise InvalidMessage(f"{type(message).__name__} does not belong on {topology.DECISION_EVENTS.name}")
        await self._patience.run(lambda: handler(message, delivery), what="decision.events")

    def _account_lock(self, account_id: int) -> asyncio.Lock:
        return self._account_locks.setdefault(account_id, asyncio.Lock())

    async def handle_signal(self, signal: Signal, delivery: Delivery | None = None) -> None:
        # One decision at a time per account, so two signals of one window cannot both pass a limit of 1: this lock
        # in the process, the account row's lock (PostgreSQL) or the database's write lock (SQLite) across processes.
        async with self._account_lock(signal.account_id), transaction(self._sessions) as session:
            snapshot = self.snapshots.get(signal.account_id)
            outcome = await handle_signal(
                session=session,
                signal=signal,
                now=self._clock.now(),
                # The order life is real time: on a replay's accelerated clock it spans `speed` times more feed seconds.
                order_ttl_s=self._settings.order_ttl_s * self._clock.speed,
                margin_free=None if snapshot is None else snapshot.margin_free,
            )
        await self._after(signal, outcome)

    async def decide_scan(self, signals: Sequence[Signal], report: ScanReport | None = None, delivery: Delivery | None = None) -> None:
        """Decide a window's signals, each account's together in one transaction (accounts side by side on
        PostgreSQL), the same decisions as one at a time in the order given; kick the outbox once with every intent,
        then log the report's scan lines. An account that fails is retried with the message (the accounts that
        committed find their decisions again); the intents that committed go out first."""
        by_account: dict[int, list[Signal]] = {}
        for signal in signals:
            by_account.setdefault(signal.account_id, []).append(signal)
        if self._sqlite or len(by_account) == 1:
            results = []
            for group in by_account.values():
                try:
                    results.append(await self._decide_account(group))
                except Exception as exc:  # noqa: BLE001  raised below, once the other accounts are decided
                    results.append(exc)
        else:
            results = await asyncio.gather(*(self._decide_account(group) for group in by_account.values()), return_exceptions=True)
        rows: list[Pending] = []
        failures: list[BaseException] = []
        refused: set[str] = set()
        for group, outcomes in zip(by_account.values(), results, strict=True):
            if isinstance(outcomes, BaseException):
                failures.append(outcomes)
                continue
            for signal, outcome in zip(group, outcomes, strict=True):
                if isinstance(outcome, InvalidMessage):
                    signals_refused_total.labels(reason="invalid_signal").inc()
                    log.warning("signal refused", signal_id=str(signal.signal_id), bot_id=signal.bot_id, reason=str(outcome))
                    refused.add(str(signal.signal_id))
                    continue
                rows.extend(outcome.outbox)
        if rows:
            await self.outbox.kick(rows)  # every committed intent at once: one batch and its confirms per account
        self._after_scan([
            (signal, outcome)
            for group, outcomes in zip(by_account.values(), results, strict=True) if not isinstance(outcomes, BaseException)
            for signal, outcome in zip(group, outcomes, strict=True) if not isinstance(outcome, InvalidMessage)
        ])
        if failures:
            raise failures[0]
        if report is not None:
            await self.handle_scan_report(report, delivery, refused=frozenset(refused))

    async def _decide_account(self, signals: list[Signal]) -> list[SignalOutcome | InvalidMessage]:
        account_id = signals[0].account_id
        async with self._account_lock(account_id), self._open_accounts, transaction(self._sessions) as session:
            snapshot = self.snapshots.get(account_id)
            return await decide_account(
                session=session,
                signals=signals,
                now=self._clock.now(),
                order_ttl_s=self._settings.order_ttl_s * self._clock.speed,
                margin_free=None if snapshot is None else snapshot.margin_free,
            )

    async def _after(self, signal: Signal, outcome: SignalOutcome) -> None:
        """What follows a committed decision: metrics, tally, its intent kicked, log."""
        self._after_scan([(signal, outcome)], log_lines=False)
        if outcome.outbox:
            # The intent's outbox row committed with the decision; the relay publishes it now (a crash before it does
            # leaves the row, published at the next start). Before the log line, not on the way.
            await self.outbox.kick(outcome.outbox)
        reporting.log_lines([(signal, outcome)])

    def _after_scan(self, decided: Sequence[tuple[Signal, SignalOutcome]], *, log_lines: bool = True) -> None:
        """Tallies, metrics and (unless told) log lines of committed decisions whose intents were kicked."""
        for signal, outcome in decided:
            if outcome.bot_found:
                self._tally(signal, outcome)
        reporting.count(decided)
        if log_lines:
            reporting.log_lines(decided)

    def _tally(self, signal: Signal, outcome: SignalOutcome) -> None:
        """Note a committed decision for the scan line of its window (the counts `scan_lines` would query)."""
        self._decided[str(signal.signal_id)] = None
        while len(self._decided) > DECIDED_KEPT:
            self._decided.popitem(last=False)
        if not outcome.signal_new or signal.window_id is None:
            return  # a signal stored before counts in the window that first made it
        window = str(signal.window_id)
        if window not in self._tallies:
            self._tallies[window] = {}
            while len(self._tallies) > WINDOWS_KEPT:
                self._tallies.popitem(last=False)
        counts = self._tallies[window].setdefault(signal.bot_id, [0, 0, 0])
        counts[0] += 1
        if outcome.decision.action == "open":
            counts[1] += 1
            counts[2] += outcome.decision.client_order_id is not None

    def _lines_from_memory(self, report: ScanReport) -> list[ScanLine] | None:
        """The report's scan lines from what this process decided, or None when that does not cover the report (a
        signal decided elsewhere or before a restart, a bot the last plan does not know): then the tables answer."""
        symbols = self._plan_symbols
        if symbols is None:
            return None
        tallies = self._tallies.get(str(report.window_id))
        if tallies is None:
            if any(scan.signal_ids for scan in report.bots):
                return None  # its tally is gone (a backlog of over WINDOWS_KEPT windows), or none of its signals was new
            tallies = {}
        lines = []
        for scan in report.bots:
            if scan.bot_id not in symbols or any(str(s) not in self._decided for s in scan.signal_ids):
                return None
            signals, decisions, orders = tallies.get(scan.bot_id, (0, 0, 0))
            lines.append(ScanLine(bot=scan.bot_id, symbol=symbols[scan.bot_id], strategies=len(scan.strategies),
                                  signals=signals, decisions=decisions, orders=orders))
        return lines

    async def handle_scan_report(self, report: ScanReport, delivery: Delivery | None = None, *, refused: frozenset[str] = frozenset()) -> None:
        """Log the report's scan lines once its signals are decided; `refused`: signal ids refused for good (never
        decided), which are not waited for."""
        lines = self._lines_from_memory(report)
        if lines is None:
            async with self._sessions() as session:
                lines = await scan_lines(session=session, report=report)
        undecided = [s for line in lines for s in line.undecided if s not in refused]
        if undecided:
            attempts = 1 if delivery is None else delivery.delivery_count
            if attempts < self._settings.delivery_limit:
                raise TransientError(f"scan report {report.window_id}: {len(undecided)} of its signals have no decision yet")
            log.warning("scan line logged with signals still undecided", window_id=str(report.window_id), undecided=undecided)
        window = str(report.window_id)
        fresh = []
        for line in lines:
            if (window, line.bot) not in self._logged:
                self._logged[(window, line.bot)] = None
                fresh.append(line)
        self._scan_log.lines(fresh)
        while len(self._logged) > LOGGED_LINES_KEPT:
            self._logged.popitem(last=False)

    async def handle_execution_report(self, report: ExecutionReport, delivery: Delivery | None = None) -> None:
        async with transaction(self._sessions) as session:
            decision = await events.apply_execution_report(session=session, report=report, now=self._clock.now())
        if decision is None:
            log.warning("execution report for no decision of ours", client_order_id=report.client_order_id, account_id=report.account_id)
        elif report.status == "filled":
            self.alerts.emit(alerts.order_filled(decision, report))

    async def handle_position_event(self, event: PositionEvent, delivery: Delivery | None = None) -> None:
        async with transaction(self._sessions) as session:
            decision = await events.apply_position_event(session=session, event=event, now=self._clock.now())
        if decision is None:
            log.info("position event for no decision of ours", ticket=event.ticket, account_id=event.account_id, kind=event.kind)
            return
        if event.kind == "closed":
            self.alerts.emit(alerts.position_closed(decision, event))
            await self.check_kill_switch(event.account_id, bot_ids=[decision.bot_id])

    async def handle_account_snapshot(self, snapshot: AccountSnapshot, delivery: Delivery | None = None) -> None:
        """Keep the newest snapshot per account (margin check, kill switch), roll the day-start balance, check the kill switch."""
        current = self.snapshots.get(snapshot.account_id)
        if current is not None and snapshot.taken_at < current.taken_at:
            return
        self.snapshots[snapshot.account_id] = snapshot
        if self._on_terminal_time is not None:
            self._on_terminal_time(snapshot.taken_at)
        for spec in snapshot.specs:
            learn_spec(spec)  # the broker's own specs size, round and convert this account's orders from now on
        async with transaction(self._sessions) as session:
            account = await session.get(BrokerAccount, snapshot.account_id)
            if account is None:
                log.info("snapshot for an unknown account", account_id=snapshot.account_id)
                return
            await killswitch.roll_day_start(session=session, account=account, snapshot=snapshot)
            pending = await killswitch.still_to_flatten(session=session, account=account)
            rows = await outgoing.enqueue_commands(session=session, commands=pending)
        if pending:
            log.info("killed bots not flat yet: close_all again", account_id=snapshot.account_id, bots=[c.bot_id for c in pending])
            await self.send_committed(rows)
        await self.check_kill_switch(snapshot.account_id)

    async def check_kill_switch(self, account_id: int, *, bot_ids: list[int] | None = None) -> list[int]:
        """Kill the account's bots whose loss today passed their limit: status, reason, audit, close_all, metric, plan."""
        async with self._account_lock(account_id), transaction(self._sessions) as session:
            account = await session.get(BrokerAccount, account_id)
            if account is None:
                return []
            tripped = await killswitch.check_kill_switch(
                session=session, account=account, snapshot=self.snapshots.get(account_id), now=self._clock.now(), bot_ids=bot_ids
            )
            rows = await outgoing.enqueue_commands(session=session, commands=[command for _, command in tripped])
        if not tripped:
            return []
        for bot, _ in tripped:
            kill_switch_trips_total.inc()
            log.warning("kill switch tripped", bot_id=bot.id, account_id=account_id, reason=bot.status_reason)
            self.alerts.emit(alerts.kill_switch(bot))
        await self.send_committed(rows)
        await self.refresh_plan_quietly()
        return [bot.id for bot, _ in tripped]

    async def ask_broker_for_symbol(self, *, account_id: int, symbol: str) -> str | None:
        """Have the account's terminal describe `symbol` over the rates RPC (its spec is learnt from the reply, and
        sizes the bot's orders from then on); None when it did, else the broker's (or the bus's) reason."""
        if self._rates is None:
            self._rates = RatesClient(self._bus, timeout_s=self._settings.http_timeout_s)
        try:
            await self._rates.fetch(account_id=account_id, symbol=symbol, count=1)
        except RatesUnavailable as exc:
            return str(exc)
        return None

    async def refresh_plan_quietly(self) -> None:
        """refresh_plan after a change that has committed already: a failure is logged, and the plan loop retries."""
        try:
            await self.refresh_plan()
        except Exception as exc:  # noqa: BLE001  the change stands; the next interval publishes the plan
            log.warning("scan plan refresh after a change failed", error=repr(exc))
