"""The executor's shell: its lifecycle, bus handlers (thin), leadership and the accounts it serves.

The logic is in plain-function modules over one `ExecutorState` (state.py): orders.py (order intents, exactly once:
architecture.md, "Idempotency chain"), commands.py (close, kill switch, move stop, resume), positions.py (the monitor,
trailing and time stops, the broker sync, the paper book after a restart) and events.py (the events it publishes).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.executor import commands, events, orders, positions, store
from services.executor.brokers.base import Broker
from services.executor.commands import close_reason_for
from services.executor.leadership import Leadership, SoleLeader
from services.executor.rules import PositionRules
from services.executor.starting import SessionStarts, Unstarted
from services.executor.state import ExecutorState
from shared.bus import topology
from shared.bus.base import Bus, Consumer, Delivery, Unroutable
from shared.db.models import AccountSnapshotRow, BrokerAccount, Position
from shared.db.patience import NO_PATIENCE, Patience
from shared.logging import get_logger
from shared.messages import BarColumns, BarWindow, ExecutorCommand, InvalidMessage, Message, OrderIntent, RatesReply, RatesRequest
from shared.rates import RATES, executor_rates_queue
from shared.settings import Settings
from shared.symbols import canonical_symbol
from shared.timeutil import Clock

log = get_logger(__name__)

__all__ = ["AccountSource", "ExecutorService", "close_reason_for"]


class AccountSource(Protocol):
    """Where an executor learns of the accounts to serve while it runs (an account created or activated later)."""

    async def active_accounts(self) -> list[BrokerAccount]: ...

    async def broker_for(self, account: BrokerAccount) -> Broker: ...


class ExecutorService:
    """One executor instance: the only holder of its accounts' broker sessions.

    Every handler, the monitor cycle and the start-up reconciliation run one at a time (one lock): the broker
    session is single-threaded anyway, and it makes "is this order already in flight?" a question with one answer.
    Events are published only after the transaction that recorded them has committed.

    Collaborators: `leadership` says whether this process leads its accounts (restores the paper book, settles orders
    left in `sending`, runs the monitor) or is a standby; `patience` how a handler meets an unreachable database;
    `accounts` (optional) the source of accounts created or activated while it runs, looked at every scan interval;
    `on_terminal_time` is told the terminal's time when a session reports it (a terminal-following clock).
    """

    def __init__(
        self,
        *,
        bus: Bus,
        sessions: async_sessionmaker[AsyncSession],
        clock: Clock,
        settings: Settings,
        broker: Broker | Mapping[int, Broker] | None = None,
        account_ids: list[int] | None = None,
        instance: str = "ex-1",
        rules: PositionRules | None = None,
        leadership: Leadership | None = None,
        patience: Patience | None = None,
        accounts: AccountSource | None = None,
        on_terminal_time: Callable[[datetime], None] | None = None,
    ) -> None:
        self._bus = bus
        self._clock = clock
        self._settings = settings
        self._instance = instance
        self._log = log.bind(instance=instance)
        self.state = ExecutorState.create(bus=bus, sessions=sessions, clock=clock, settings=settings, instance=instance,
                                          log=self._log, rules=rules or PositionRules())
        self.state.add_brokers(self._brokers_of(broker, list(dict.fromkeys(account_ids or []))))
        self._leadership: Leadership = leadership or SoleLeader()
        self._patience: Patience = patience or NO_PATIENCE
        self._account_source = accounts
        self._on_terminal_time = on_terminal_time
        self._lock = asyncio.Lock()
        self._consumers: list[Consumer] = []
        self._bars_consumer: Consumer | None = None
        self._tasks: list[asyncio.Task] = []
        self._started = False
        self._led: set[int] = set()  # accounts whose paper book was restored and orders settled since this process leads
        self._starts = SessionStarts(first=timedelta(seconds=settings.scan_interval_s))  # sessions that would not open

    @staticmethod
    def _brokers_of(broker: Broker | Mapping[int, Broker] | None, account_ids: list[int]) -> dict[int, Broker]:
        """One broker session per trading account; a single broker given for several accounts serves them all."""
        if broker is None:
            if account_ids:
                raise ValueError(f"no broker for accounts {account_ids}")
            return {}
        brokers = dict(broker) if isinstance(broker, Mapping) else {a: broker for a in account_ids}
        missing = [a for a in account_ids if a not in brokers]
        if missing:
            raise ValueError(f"no broker for accounts {missing}")
        return {a: brokers[a] for a in (account_ids or list(brokers))}

    @property
    def leading(self) -> bool:
        return self.state.leading

    @property
    def accounts(self) -> list[int]:
        return list(self.state.account_ids)

    # --- lifecycle ---------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the sessions, lead if no other process does (rebuild the paper book, settle orders left in `sending`),
        then consume, start the monitor and look for new accounts."""
        if self._started:
            return
        self._started = True
        ex = self.state
        if self._account_source is not None:
            await self._discover_accounts(start_consuming=False)
        await self._open_sessions(list(ex.account_ids))
        await self._observe_terminal_time()
        async with self._lock:
            await self._ensure_leading()
            await events.publish_closed_events(ex)  # closes committed by a process that died before publishing them
            for account_id in ex.account_ids:
                try:
                    await positions.sync_broker(ex, account_id=account_id)
                except Exception as exc:  # noqa: BLE001  the monitor tries again
                    self._log.warning("start-up reconciliation with the broker failed", account_id=account_id, error=repr(exc))
        await self._consume(ex.account_ids)
        self._tasks.append(asyncio.create_task(self._monitor_loop(), name=f"executor-monitor:{self._instance}"))
        if self._account_source is not None or self._starts:
            self._tasks.append(asyncio.create_task(self._discovery_loop(), name=f"executor-accounts:{self._instance}"))
        self._log.info("executor started", accounts=ex.account_ids, paper=bool(ex.paper), leading=ex.leading,
                       not_open=sorted(self._starts.waiting()))

    async def stop(self) -> None:
        """Stop gracefully (SIGTERM): the broker call in flight finishes and its outcome is recorded; no order is left
        in `sending` that the broker can answer for."""
        # Graceful cancel: a handler in progress (broker call + its record) finishes first, nothing new starts.
        for consumer in self._consumers:
            await consumer.cancel()
        self._consumers.clear()
        self._bars_consumer = None
        async with self._lock:
            # A monitor cycle in progress has finished (we hold the lock): the tasks now only sleep or wait for it.
            for task in self._tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._tasks.clear()
            if self.state.leading:
                await orders.settle_without_sending(self.state)
        for live in _unique([*self.state.live.values(), *self._starts.brokers()]):
            try:
                await live.aclose()
            except Exception as exc:  # noqa: BLE001  stopping anyway; the terminal drops a dead session itself
                self._log.warning("closing a broker session failed", error=repr(exc))
        await self._leadership.release()
        self.state.leading = False
        self._led.clear()
        self._started = False
        self._log.info("executor stopped")

    async def readiness(self) -> tuple[bool, dict]:
        """Ready when every broker session answers healthy and the database answers a query."""
        ex = self.state
        broker_ok = True
        for b, _ in ex.broker_groups:
            try:
                async with asyncio.timeout(5):
                    broker_ok = broker_ok and bool(await b.healthy())
            except Exception:  # noqa: BLE001  readiness reports, it does not raise
                broker_ok = False
        try:
            async with ex.sessions() as session, asyncio.timeout(5):
                await session.execute(text("SELECT 1"))
            db_ok = True
        except Exception:  # noqa: BLE001
            db_ok = False
        details = {
            "broker": broker_ok,
            "broker_sessions": [live.health_details() for live in _unique(ex.live.values())],
            "database": db_ok,
            "accounts": ex.account_ids,
            "leader": ex.leading,
            "closes_not_recorded": len(ex.pending_closes),
            "events_not_published": len(ex.outbox),
        }
        if self._starts:
            broker_ok = details["broker"] = False
            details["sessions_not_open"] = self._starts.details()
        return broker_ok and db_ok, details

    # --- accounts and leadership -------------------------------------------------------------------------------

    async def _consume(self, account_ids: list[int]) -> None:
        prefetch = self._settings.prefetch
        for account_id in account_ids:
            self._consumers.append(await self._bus.consume(topology.executor_orders_queue(account_id), self.handle_intent, prefetch=prefetch))
            self._consumers.append(
                await self._bus.consume(topology.executor_commands_queue(account_id), self.handle_command, prefetch=prefetch)
            )
            if account_id in self.state.live:
                # The rates RPC: market data's feed `mt5` asks the holder of the terminal session for bars.
                self._consumers.append(await self._bus.consume(executor_rates_queue(account_id), self.handle_rates, prefetch=prefetch))
        if self.state.paper and self._bars_consumer is None:
            self._bars_consumer = await self._bus.consume(topology.executor_bars_queue(self._instance), self.handle_bars, prefetch=prefetch)
            self._consumers.append(self._bars_consumer)

    async def _open_sessions(self, account_ids: list[int]) -> list[int]:
        """Open the terminal sessions of these accounts (MT5: a live account without allow_live refuses here) and return
        the accounts served; an account whose session will not open is taken out of service and tried again later
        (starting.py), so it stops neither the start nor the other accounts."""
        ex = self.state
        failed: list[int] = []
        for live in _unique(ex.live[a] for a in account_ids if a in ex.live):
            try:
                await live.start()
            except Exception as exc:  # noqa: BLE001  recorded, logged, retried; readiness names the account
                accounts = ex.session_accounts[next(a for a in account_ids if ex.live.get(a) is live)]
                self._session_failed(accounts, live, exc)
                failed += accounts
        if failed:
            ex.remove_brokers(failed)
            self._led.difference_update(failed)
        served = [a for a in account_ids if a not in failed]
        self._starts.started(served)
        return served

    def _session_failed(self, accounts: tuple[int, ...], broker: Broker | None, exc: BaseException) -> None:
        entry = self._starts.failed(accounts, broker, exc, self._clock.now())
        self._log.error("broker session failed to open", accounts=list(accounts), failures=entry.failures,
                        retry_at=entry.retry_at.isoformat(), error=repr(exc))

    async def _discover_accounts(self, *, start_consuming: bool = True) -> list[int]:
        """Serve the accounts created or activated since the last look (at most one scan interval late), and try again
        the sessions whose wait is over."""
        retry = self._starts.due(self._clock.now())
        added = await (self._fresh_brokers(retry) if self._account_source is not None else self._same_brokers(retry))
        if not added:
            return []
        self.state.add_brokers(added)
        served = list(added)
        if start_consuming:
            served = await self._open_sessions(served)
            if served:
                async with self._lock:
                    await self._ensure_leading()
                await self._consume(served)
                self._log.info("executor serves new accounts", accounts=served)
        return served

    async def _fresh_brokers(self, retry: list[Unstarted]) -> dict[int, Broker]:
        """A broker for each active account not served yet, built anew from its row (a retry sees fixed credentials);
        an account deactivated while its session would not open is tried no more."""
        assert self._account_source is not None
        active = await self._account_source.active_accounts()
        active_ids = {a.id for a in active}
        retried = {a for e in retry for a in e.accounts}
        unused = [e.broker for e in retry] + self._starts.forget((self._starts.waiting() | retried) - active_ids)
        for broker in {id(b): b for b in unused if b is not None}.values():
            await self._close_quietly(broker)
        waiting = self._starts.waiting()
        added: dict[int, Broker] = {}
        for account in active:
            if account.id in self.state.brokers or account.id in waiting:
                continue
            try:
                added[account.id] = await self._account_source.broker_for(account)
            except Exception as exc:  # noqa: BLE001  e.g. credentials that do not decrypt: retried like a failed start
                self._session_failed((account.id,), None, exc)
        return added

    @staticmethod
    async def _same_brokers(retry: list[Unstarted]) -> dict[int, Broker]:
        """Without an account source the accounts are fixed: a retry reopens the same broker."""
        return {a: e.broker for e in retry if e.broker is not None for a in e.accounts}

    async def _close_quietly(self, broker: Broker) -> None:
        try:
            await broker.aclose()  # type: ignore[attr-defined]  only terminal brokers fail to open
        except Exception as exc:  # noqa: BLE001  the session never opened; its thread is what is freed here
            self._log.warning("closing a broker session failed", error=repr(exc))

    async def _discovery_loop(self) -> None:
        interval = timedelta(seconds=self._settings.scan_interval_s)
        while True:
            await self._clock.sleep_until(self._clock.now() + interval)
            try:
                await self._patience.run(self._discover_accounts, what="executor.accounts")
            except Exception as exc:  # noqa: BLE001  looked for again next interval
                self._log.warning("looking for new accounts failed", error=repr(exc))

    async def _observe_terminal_time(self) -> None:
        """Set a terminal-following clock from the sessions before anything schedules by it."""
        if self._on_terminal_time is None:
            return
        for live in _unique(self.state.live.values()):
            try:
                at = await live.terminal_time()
            except Exception as exc:  # noqa: BLE001  the rates replies set it later
                self._log.warning("terminal time not read at start", error=repr(exc))
                continue
            if at is not None:
                self._on_terminal_time(at)
                self._log.info("clock set from the terminal", terminal_time=at.isoformat())
                return

    async def _ensure_leading(self) -> bool:
        """Whether this process leads all its accounts; on taking the lead of an account, rebuild its paper book and
        settle its orders left in `sending` (call with the lock held)."""
        ex = self.state
        if not await self._leadership.try_acquire(ex.account_ids):
            return False
        if not ex.leading:
            ex.leading = True
            self._log.info("executor leads its accounts", accounts=ex.account_ids)
        new = [a for a in ex.account_ids if a not in self._led]
        if new:
            await positions.restore_paper_brokers(ex, account_ids=set(new))
            await orders.reconcile_unsettled(ex, account_ids=new)
            self._led.update(new)
        return True

    async def _take_over(self) -> None:
        """A delivery on a single-active-consumer queue means this process is the active one now (call with the lock)."""
        if self.state.leading and len(self._led) == len(self.state.account_ids):
            return
        for _ in range(20):  # the dead process's connection may take a moment to be seen closed
            if await self._ensure_leading():
                return
            await asyncio.sleep(0.25)
        self._log.warning("active on the queue without the leader lock: handling anyway")

    # --- bus handlers (thin: check the type, take the lock, call the logic) -------------------------------------

    def _check_served(self, message: Message, kind: type[Message], queue: str) -> None:
        """Refuse (dead-letter) a message of the wrong type or for an account this executor does not serve."""
        if not isinstance(message, kind):
            raise InvalidMessage(f"executor {queue} queue got a {type(message).__name__}, not an {kind.__name__}")
        if message.account_id not in self.state.brokers:
            raise InvalidMessage(f"account {message.account_id} is not served by executor {self._instance}")

    async def handle_intent(self, message: Message, delivery: Delivery) -> None:
        self._check_served(message, OrderIntent, "orders")

        async def run() -> None:
            async with self._lock:
                await self._take_over()
                await orders.process_intent(self.state, message)

        await self._patience.run(run, what="executor.orders")

    async def handle_command(self, message: Message, delivery: Delivery) -> None:
        self._check_served(message, ExecutorCommand, "commands")

        async def run() -> None:
            async with self._lock:
                await self._take_over()
                await commands.process_command(self.state, message)

        await self._patience.run(run, what="executor.commands")

    async def handle_rates(self, message: Message, delivery: Delivery) -> None:
        """Answer a rates request with the broker's closed M1 bars in UTC (no lock: it reads, it never trades)."""
        if not isinstance(message, RatesRequest):
            raise InvalidMessage(f"executor rates queue got a {type(message).__name__}, not a RatesRequest")
        live = self.state.live.get(message.account_id)
        bars, error, server_time, spec = None, "", None, None
        if live is None:
            error = f"account {message.account_id} has no terminal session in executor {self._instance}"
        elif message.timeframe != "1m":
            error = f"only 1m bars are served, not {message.timeframe}"
        else:
            try:
                bars = BarColumns.from_bars(await live.rates(message.symbol, message.count))
                server_time = await live.terminal_time(message.symbol)
                spec = await live.spec(message.symbol)
            except Exception as exc:  # noqa: BLE001  the asker gets the reason instead of a time-out
                error = f"rates of {message.symbol} failed: {exc}"
        if server_time is not None and self._on_terminal_time is not None:
            self._on_terminal_time(server_time)
        reply = RatesReply(correlation_id=message.correlation_id, account_id=message.account_id, symbol=message.symbol,
                           timeframe=message.timeframe, bars=bars, error=error, server_time=server_time, spec=spec)
        try:
            await self._bus.publish(reply, exchange=RATES, routing_key=message.reply_to)
        except Unroutable:
            self._log.info("rates reply dropped: the asker is gone", reply_to=message.reply_to)

    async def handle_bars(self, message: Message, delivery: Delivery) -> None:
        if not isinstance(message, BarWindow):
            raise InvalidMessage(f"executor bars queue got a {type(message).__name__}, not a BarWindow")
        await self._patience.run(lambda: self._on_bars(message), what="executor.bars")

    async def _on_bars(self, message: BarWindow) -> None:
        """Feed a closed-bar window to the paper broker and record the positions its stops and targets closed."""
        if message.timeframe != "1m" or not self.state.paper:
            return
        bars = message.bars.to_bars()
        self.state.windows[canonical_symbol(message.symbol)] = bars
        async with self._lock:
            await positions.feed_bars(self.state, message.symbol, bars)

    # --- the monitor and start-up settling ---------------------------------------------------------------------

    async def monitor_once(self) -> None:
        """One monitor cycle (positions.monitor_cycle); a standby (not leading) only asks for the lead."""
        async with self._lock:
            if await self._ensure_leading():
                await positions.monitor_cycle(self.state)

    async def _monitor_loop(self) -> None:
        interval = timedelta(seconds=self._settings.monitor_interval_s)
        next_at = self._clock.now()
        while True:
            await self._clock.sleep_until(next_at)
            try:
                await self.monitor_once()
            except Exception as exc:  # noqa: BLE001  the loop outlives any one cycle
                self._log.error("monitor cycle raised", error=repr(exc))
            next_at += interval
            now = self._clock.now()
            if next_at <= now - interval:
                next_at = now  # fell more than a cycle behind (slow broker, clock jump): do not run a burst of cycles
            elif next_at > now + interval:
                next_at = now  # the clock was set back (a terminal's first reading behind the guess): plan from now

    async def reconcile_unsettled(self) -> None:
        """Settle every order left in `sending` (start-up, or an intent whose deliveries ran out): ask the broker first.
        A standby asks for the lead instead (and settles them once it has it)."""
        async with self._lock:
            if self.state.leading:
                await orders.reconcile_unsettled(self.state)
            else:
                await self._ensure_leading()

    # --- reads for the internal routes -------------------------------------------------------------------------

    def _accounts(self, account_id: int | None) -> list[int]:
        if account_id is None:
            return self.state.account_ids
        return [account_id] if account_id in self.state.brokers else []

    async def open_positions(self, *, account_id: int | None = None, bot_id: int | None = None) -> list[Position]:
        async with self.state.sessions() as session:
            return await store.open_positions(session=session, account_ids=self._accounts(account_id), bot_id=bot_id)

    async def latest_snapshots(self, *, account_id: int | None = None) -> list[AccountSnapshotRow]:
        async with self.state.sessions() as session:
            return await store.latest_snapshots(session=session, account_ids=self._accounts(account_id))


def _unique(items):
    return list({id(item): item for item in items}.values())
