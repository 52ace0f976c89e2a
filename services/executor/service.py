"""The executor: order intents to broker orders without duplicates (architecture.md, "Idempotency chain"),
commands (close, kill switch, move stop), stop/target closes from the paper broker, and account snapshots.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.executor import store, trailing
from services.executor.brokers.base import (
    RETRYABLE_RETCODES,
    BarFedBroker,
    Broker,
    BrokerPosition,
    BrokerUnavailable,
    ClosedPosition,
    CloseReason,
    OrderRequest,
    PlaceResult,
    TerminalBroker,
)
from services.executor.leadership import Leadership, SoleLeader
from services.executor.rules import PositionRules
from shared.bars import Bars
from shared.bus import topology
from shared.bus.base import Bus, Consumer, Delivery, TransientError, Unroutable
from shared.db.engine import transaction
from shared.db.models import AccountSnapshotRow, BrokerAccount, Order, Position
from shared.db.patience import NO_PATIENCE, Patience
from shared.logging import get_logger
from shared.messages import (
    AccountSnapshot,
    BarColumns,
    BarWindow,
    ExecutorCommand,
    InvalidMessage,
    Message,
    OrderIntent,
    RatesReply,
    RatesRequest,
)
from shared.rates import RATES, executor_rates_queue
from shared.metrics import executor_state_conflicts_total, fills_total, orders_placed_total, signal_to_order_seconds
from shared.settings import Settings
from shared.strategies.indicators import atr as atr_series
from shared.symbols import SymbolSpec, UnknownSymbol, canonical_symbol, get_spec
from shared.timeutil import Clock

log = get_logger(__name__)

CLOSE_REASONS: frozenset[str] = frozenset({"tp", "sl", "trail", "early_exit", "kill_switch", "manual"})
DEFAULT_DEVIATION = 20  # points; what an order resent from its row (no intent at hand) accepts
# The monitor settles only orders untouched this long: a younger one may be in flight in another executor process
# (a standby taking over); within this process the lock already keeps the monitor and the handlers apart.
STUCK_AFTER = timedelta(seconds=30)
# A snapshot row is stored when the account changed, or at least this often (wall clock: an accelerated demo runs
# the monitor many times a real second, and the table must not grow by rows that say nothing new).
SNAPSHOT_EVERY_S = 60.0
BOT_KILLED = "bot_killed"
ACCOUNT_WIDE = 0  # bot_blocks.bot_id of a kill for every bot of the account (close_all without a bot_id)


def close_reason_for(reason: str) -> CloseReason:
    """A command's free-text reason as a PositionEvent close_reason: kill_switch when it says so, else manual."""
    word = reason.strip().lower()
    if word in CLOSE_REASONS:
        return word  # type: ignore[return-value]
    return "kill_switch" if "kill" in word else "manual"


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
    `accounts` (optional) the source of accounts created or activated while it runs, looked at every scan interval.
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
        self._sessions = sessions
        self._clock = clock
        self._settings = settings
        self._instance = instance
        self._leadership: Leadership = leadership or SoleLeader()
        self._patience: Patience = patience or NO_PATIENCE
        self._account_source = accounts
        self._on_terminal_time = on_terminal_time
        self._account_ids: list[int] = []
        self._brokers: dict[int, Broker] = {}
        self._live: dict[int, TerminalBroker] = {}  # accounts whose broker has a terminal session (MT5)
        self._broker_groups: list[tuple[Broker, tuple[int, ...]]] = []
        # The accounts that share each account's broker session (a ticket is unique within a session).
        self._session_accounts: dict[int, tuple[int, ...]] = {}
        # Simulated brokers (the paper broker) are fed the bars queue and rebuilt from the tables on start.
        self._paper: list[tuple[BarFedBroker, tuple[int, ...]]] = []
        self._add_brokers(self._brokers_of(broker, list(dict.fromkeys(account_ids or []))))
        self._lock = asyncio.Lock()
        self._pending_closes: list[tuple[tuple[int, ...], ClosedPosition]] = []
        self._outbox: list[tuple[str, Message]] = []
        # Whether a closed position may still lack its published `closed` event (true at start: a crash may have left one).
        self._closes_to_publish = True
        self._consumers: list[Consumer] = []
        self._bars_consumer: Consumer | None = None
        self._tasks: list[asyncio.Task] = []
        self._started = False
        self._leading = False
        self._led: set[int] = set()  # accounts whose paper book was restored and orders settled since this process leads
        self._log = log.bind(instance=instance)
        rules = rules or PositionRules()
        self._trail_rule = rules.trail()
        self._exit_rule = rules.exits()
        self._windows: dict[str, Bars] = {}  # latest closed bars per canonical symbol (paper: trailing prices and ATR)
        self._stored_snapshots: dict[int, tuple[tuple[float, ...], float]] = {}
        self._stopping = False

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

    def _add_brokers(self, brokers: Mapping[int, Broker]) -> None:
        """Serve these accounts too: the one place that tells a broker's capabilities from the protocols it states."""
        for account_id, b in brokers.items():
            if account_id not in self._brokers:
                self._account_ids.append(account_id)
            self._brokers[account_id] = b
            if isinstance(b, TerminalBroker):
                self._live[account_id] = b
        groups: dict[int, tuple[Broker, list[int]]] = {}
        for account_id, b in self._brokers.items():
            groups.setdefault(id(b), (b, []))[1].append(account_id)
        self._broker_groups = [(b, tuple(ids)) for b, ids in groups.values()]
        self._session_accounts = {a: ids for _, ids in self._broker_groups for a in ids}
        self._paper = [(b, ids) for b, ids in self._broker_groups if isinstance(b, BarFedBroker)]

    # --- lifecycle ---------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the sessions, lead if no other process does (rebuild the paper book, settle orders left in `sending`),
        then consume, start the monitor and look for new accounts."""
        if self._started:
            return
        self._started = True
        self._stopping = False
        if self._account_source is not None:
            await self._discover_accounts(start_consuming=False)
        for live in self._unique(self._live.values()):
            await live.start()  # MT5: opens the session; a live account without allow_live refuses to start here
        await self._observe_terminal_time()
        async with self._lock:
            await self._ensure_leading()
            await self._publish_closed_events()  # closes committed by a process that died before publishing them
            for account_id in self._account_ids:
                try:
                    await self._sync_broker(account_id=account_id)
                except Exception as exc:  # noqa: BLE001  the monitor tries again
                    self._log.warning("start-up reconciliation with the broker failed", account_id=account_id, error=repr(exc))
        await self._consume(self._account_ids)
        self._tasks.append(asyncio.create_task(self._monitor_loop(), name=f"executor-monitor:{self._instance}"))
        if self._account_source is not None:
            self._tasks.append(asyncio.create_task(self._discovery_loop(), name=f"executor-accounts:{self._instance}"))
        self._log.info("executor started", accounts=self._account_ids, paper=bool(self._paper), leading=self._leading)

    async def _observe_terminal_time(self) -> None:
        """Set a terminal-following clock from the sessions before anything schedules by it."""
        if self._on_terminal_time is None:
            return
        for live in self._unique(self._live.values()):
            try:
                at = await live.terminal_time()
            except Exception as exc:  # noqa: BLE001  the rates replies set it later
                self._log.warning("terminal time not read at start", error=repr(exc))
                continue
            if at is not None:
                self._on_terminal_time(at)
                self._log.info("clock set from the terminal", terminal_time=at.isoformat())
                return

    @staticmethod
    def _unique(items):
        return list({id(item): item for item in items}.values())

    async def _consume(self, account_ids: list[int]) -> None:
        prefetch = self._settings.prefetch
        for account_id in account_ids:
            self._consumers.append(await self._bus.consume(topology.executor_orders_queue(account_id), self.handle_intent, prefetch=prefetch))
            self._consumers.append(
                await self._bus.consume(topology.executor_commands_queue(account_id), self.handle_command, prefetch=prefetch)
            )
            if account_id in self._live:
                # The rates RPC: market data's feed `mt5` asks the holder of the terminal session for bars.
                self._consumers.append(await self._bus.consume(executor_rates_queue(account_id), self.handle_rates, prefetch=prefetch))
        if self._paper and self._bars_consumer is None:
            self._bars_consumer = await self._bus.consume(topology.executor_bars_queue(self._instance), self.handle_bars, prefetch=prefetch)
            self._consumers.append(self._bars_consumer)

    async def _discover_accounts(self, *, start_consuming: bool = True) -> list[int]:
        """Serve the accounts created or activated since the last look (at most one scan interval late)."""
        assert self._account_source is not None
        fresh = [a for a in await self._account_source.active_accounts() if a.id not in self._brokers]
        if not fresh:
            return []
        added = {a.id: await self._account_source.broker_for(a) for a in fresh}
        self._add_brokers(added)
        if start_consuming:
            for live in self._unique(self._live[a] for a in added if a in self._live):
                await live.start()
            async with self._lock:
                await self._ensure_leading()
            await self._consume(list(added))
            self._log.info("executor serves new accounts", accounts=list(added))
        return list(added)

    async def _discovery_loop(self) -> None:
        interval = timedelta(seconds=self._settings.scan_interval_s)
        while True:
            await self._clock.sleep_until(self._clock.now() + interval)
            try:
                await self._patience.run(self._discover_accounts, what="executor.accounts")
            except Exception as exc:  # noqa: BLE001  looked for again next interval
                self._log.warning("looking for new accounts failed", error=repr(exc))

    async def _ensure_leading(self) -> bool:
        """Whether this process leads all its accounts; on taking the lead of an account, rebuild its paper book and
        settle its orders left in `sending` (call with the lock held)."""
        if not await self._leadership.try_acquire(self._account_ids):
            return False
        if not self._leading:
            self._leading = True
            self._log.info("executor leads its accounts", accounts=self._account_ids)
        new = [a for a in self._account_ids if a not in self._led]
        if new:
            await self._restore_paper_brokers(account_ids=set(new))
            await self._reconcile_unsettled(account_ids=new)
            self._led.update(new)
        return True

    async def _take_over(self) -> None:
        """A delivery on a single-active-consumer queue means this process is the active one now (call with the lock)."""
        if self._leading and not [a for a in self._account_ids if a not in self._led]:
            return
        for _ in range(20):  # the dead process's connection may take a moment to be seen closed
            if await self._ensure_leading():
                return
            await asyncio.sleep(0.25)
        self._log.warning("active on the queue without the leader lock: handling anyway")

    async def stop(self) -> None:
        """Stop gracefully (SIGTERM): the broker call in flight finishes and its outcome is recorded; no order is left
        in `sending` that the broker can answer for."""
        self._stopping = True
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
            if self._leading:
                await self._settle_without_sending()
        for live in self._unique(self._live.values()):
            try:
                await live.aclose()
            except Exception as exc:  # noqa: BLE001  stopping anyway; the terminal drops a dead session itself
                self._log.warning("closing a broker session failed", error=repr(exc))
        await self._leadership.release()
        self._leading = False
        self._led.clear()
        self._started = False
        self._log.info("executor stopped")

    async def _settle_without_sending(self) -> None:
        """On the way out: record what the broker says of each order still `sending`, expire the stale; never send."""
        async with self._sessions() as session:
            orders = await store.unsettled_orders(session=session, account_ids=self._account_ids)
        for order in orders:
            try:
                found = await self._brokers[order.account_id].find_order(order.client_order_id, order.magic)
                if found is not None and found.status == "filled":
                    await self._record(order, found)
                elif self._clock.now() >= order.expires_at:
                    await self._expire(order)
                else:
                    self._log.error("order left in sending at stop: the broker does not know it yet", client_order_id=order.client_order_id)
            except Exception as exc:  # noqa: BLE001  the next start reconciles it
                self._log.error("order left in sending at stop", client_order_id=order.client_order_id, error=repr(exc))

    @property
    def leading(self) -> bool:
        return self._leading

    @property
    def accounts(self) -> list[int]:
        return list(self._account_ids)

    async def readiness(self) -> tuple[bool, dict]:
        """Ready when every broker session answers healthy and the database answers a query."""
        broker_ok = True
        for b, _ in self._broker_groups:
            try:
                async with asyncio.timeout(5):
                    broker_ok = broker_ok and bool(await b.healthy())
            except Exception:  # noqa: BLE001  readiness reports, it does not raise
                broker_ok = False
        try:
            async with self._sessions() as session, asyncio.timeout(5):
                await session.execute(text("SELECT 1"))
            db_ok = True
        except Exception:  # noqa: BLE001
            db_ok = False
        details = {
            "broker": broker_ok,
            "broker_sessions": [live.health_details() for live in self._unique(self._live.values())],
            "database": db_ok,
            "accounts": self._account_ids,
            "leader": self._leading,
            "closes_not_recorded": len(self._pending_closes),
            "events_not_published": len(self._outbox),
        }
        return broker_ok and db_ok, details

    # --- bus handlers (thin: check the type, take the lock, call the logic) -------------------------------------

    def _check_served(self, message: Message, kind: type[Message], queue: str) -> None:
        """Refuse (dead-letter) a message of the wrong type or for an account this executor does not serve."""
        if not isinstance(message, kind):
            raise InvalidMessage(f"executor {queue} queue got a {type(message).__name__}, not an {kind.__name__}")
        if message.account_id not in self._brokers:
            raise InvalidMessage(f"account {message.account_id} is not served by executor {self._instance}")

    async def handle_intent(self, message: Message, delivery: Delivery) -> None:
        self._check_served(message, OrderIntent, "orders")

        async def run() -> None:
            async with self._lock:
                await self._take_over()
                await self._process_intent(message)

        await self._patience.run(run, what="executor.orders")

    async def handle_command(self, message: Message, delivery: Delivery) -> None:
        self._check_served(message, ExecutorCommand, "commands")

        async def run() -> None:
            async with self._lock:
                await self._take_over()
                await self._process_command(message)

        await self._patience.run(run, what="executor.commands")

    async def handle_rates(self, message: Message, delivery: Delivery) -> None:
        """Answer a rates request with the broker's closed M1 bars in UTC (no lock: it reads, it never trades)."""
        if not isinstance(message, RatesRequest):
            raise InvalidMessage(f"executor rates queue got a {type(message).__name__}, not a RatesRequest")
        live = self._live.get(message.account_id)
        bars, error, server_time = None, "", None
        if live is None:
            error = f"account {message.account_id} has no terminal session in executor {self._instance}"
        elif message.timeframe != "1m":
            error = f"only 1m bars are served, not {message.timeframe}"
        else:
            try:
                bars = BarColumns.from_bars(await live.rates(message.symbol, message.count))
                server_time = await live.terminal_time(message.symbol)
            except Exception as exc:  # noqa: BLE001  the asker gets the reason instead of a time-out
                error = f"rates of {message.symbol} failed: {exc}"
        if server_time is not None and self._on_terminal_time is not None:
            self._on_terminal_time(server_time)
        reply = RatesReply(correlation_id=message.correlation_id, account_id=message.account_id, symbol=message.symbol,
                           timeframe=message.timeframe, bars=bars, error=error, server_time=server_time)
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
        if message.timeframe != "1m" or not self._paper:
            return
        bars = message.bars.to_bars()
        self._windows[canonical_symbol(message.symbol)] = bars
        async with self._lock:
            if len(bars):  # an empty window feeds no broker; closes still pending are recorded all the same
                newest = int(bars.time[-1])
                for paper, account_ids in self._paper:
                    if not paper.wants_bars(message.symbol, newest):
                        continue  # no position on the symbol, and its quote is this window's already (a shared book)
                    for closed in await paper.on_bars(message.symbol, bars):
                        self._pending_closes.append((account_ids, closed))
            await self._flush_closes()

    # --- the monitor -------------------------------------------------------------------------------------------

    async def monitor_once(self) -> None:
        """One monitor cycle: record closes still pending, settle stuck orders, manage positions, snapshot accounts.
        A standby (not leading) only asks for the lead."""
        async with self._lock:
            if not await self._ensure_leading():
                return
            try:
                await self._flush_closes()
                await self._reconcile_unsettled(touched_before=self._clock.now() - STUCK_AFTER)
            except Exception as exc:  # noqa: BLE001  the snapshot below must still be taken
                self._log.warning("monitor: recording closes or settling orders failed", error=repr(exc))
            for account_id in self._account_ids:
                try:
                    await self._manage_positions(account_id=account_id)
                    await self._snapshot(account_id=account_id)
                except Exception as exc:  # noqa: BLE001  one account's failure does not stop the others
                    self._log.warning("monitor cycle failed", account_id=account_id, error=repr(exc))

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

    async def _manage_positions(self, *, account_id: int) -> None:
        """The position rules, each cycle: match the broker (closes it made, positions opened outside the engine), the
        time stop, then the trailing stop (trailing.py: pure, shared with the backtester)."""
        await self._sync_broker(account_id=account_id)
        async with self._sessions() as session:
            rows = [r for r in await store.open_positions(session=session, account_ids=[account_id]) if not r.external]
        now = self._clock.now()
        expired = [r for r in rows if trailing.time_stop_hit(opened_at=r.opened_at, now=now, rule=self._exit_rule)]
        if expired:
            self._log.info("time stop: closing", account_id=account_id, tickets=[r.ticket for r in expired])
            await self._close_positions(account_id=account_id, rows=expired, reason="early_exit")
        if self._trail_rule.mode == "off":
            return
        for row in rows:
            if row in expired:
                continue
            try:
                market = await self._market(account_id=account_id, symbol=row.symbol)
                if market is None:
                    continue
                bid, ask, spec, atr = market
                new_sl = trailing.trailing_stop(side=row.side, open_price=row.open_price, sl=row.sl, bid=bid, ask=ask, spec=spec,
                                                rule=self._trail_rule, atr=atr)  # type: ignore[arg-type]
                if new_sl is not None:
                    self._log.info("trailing stop", ticket=row.ticket, sl_from=row.sl, sl_to=new_sl)
                    await self._move_stop(row=row, sl=new_sl)
            except Exception as exc:  # noqa: BLE001  one position's failure does not stop the others
                self._log.warning("trailing stop failed", ticket=row.ticket, error=repr(exc))

    async def _market(self, *, account_id: int, symbol: str) -> tuple[float, float, SymbolSpec, float | None] | None:
        """(bid, ask, spec, ATR or None) for the trailing stop: the broker's quote (MT5), or the latest closed bar (paper)."""
        live = self._live.get(account_id)
        want_atr = self._trail_rule.mode == "atr"
        period = self._trail_rule.atr_period
        if live is not None:
            prices = await live.quote(symbol)
            if prices is None:
                return None
            spec = await live.spec(symbol)
            bars = await live.rates(symbol, period * 4 + 1) if want_atr else None
            bid, ask = prices
        else:
            bars = self._windows.get(canonical_symbol(symbol))
            if bars is None or len(bars) == 0:
                return None
            spec = get_spec(symbol)
            bid = float(bars.close[-1])
            ask = spec.round_price(bid + int(bars.spread[-1]) * spec.point)
        atr = None
        if want_atr and bars is not None and len(bars) > period:
            atr = float(atr_series(bars.high, bars.low, bars.close, period)[-1])
        return bid, ask, spec, atr

    async def _sync_broker(self, *, account_id: int) -> None:
        """Match the table with a broker that trades on its own (MT5): record the closes it made (stops, targets, a person)
        and report positions opened outside the engine, as `external`, without ever touching them."""
        broker = self._live.get(account_id)
        if broker is None or not self._leading:
            return  # the paper broker reports its closes itself (on_bars) and knows no other trader; a standby waits
        live = {p.ticket: p for p in await broker.positions()}
        accounts = self._session_accounts[account_id]
        async with self._sessions() as session:
            rows = await store.open_positions(session=session, account_ids=[account_id])
            known = await store.position_tickets(session=session, account_ids=accounts)
            ours = await store.existing_client_order_ids(session=session, client_order_ids=[p.comment for p in live.values()])
        gone = []
        for row in rows:
            if row.ticket in live:
                continue
            closed = await broker.find_close(row.ticket, "manual")
            if closed is None:
                gone.append(row)
            else:
                self._pending_closes.append((accounts, closed))
        if gone:
            await self._close_unknown(account_id=account_id, rows=gone, reason="manual")
        strangers = [p for t, p in live.items() if t not in known and p.comment not in ours]
        if strangers:
            async with transaction(self._sessions) as session:
                for p in strangers:
                    session.add(Position(ticket=p.ticket, account_id=account_id, bot_id=None, client_order_id=None, symbol=p.symbol,
                                         side=p.side, volume=p.volume, open_price=p.open_price, sl=p.sl, tp=p.tp,
                                         opened_at=p.opened_at, external=True))
            for p in strangers:
                self._log.warning("position opened outside the engine: reported, never touched", account_id=account_id,
                                  ticket=p.ticket, symbol=p.symbol, side=p.side, volume=p.volume, magic=p.magic, comment=p.comment)
                async with self._sessions() as session:
                    row = await store.get_position(session=session, account_ids=[account_id], ticket=p.ticket)
                self._enqueue(topology.position_key(account_id), store.position_event(row, kind="opened", at=row.opened_at))
            await self._drain()
        await self._flush_closes()

    async def _snapshot(self, *, account_id: int) -> None:
        info = await self._brokers[account_id].account()
        now = self._clock.now()
        values = (info.balance, info.equity, info.margin, info.margin_free)
        stored = self._stored_snapshots.get(account_id)
        wall = time.monotonic()
        if stored is None or stored[0] != values or wall - stored[1] >= SNAPSHOT_EVERY_S:
            async with transaction(self._sessions) as session:
                session.add(
                    AccountSnapshotRow(
                        account_id=account_id,
                        balance=info.balance,
                        equity=info.equity,
                        margin=info.margin,
                        margin_free=info.margin_free,
                        taken_at=now,
                    )
                )
            self._stored_snapshots[account_id] = (values, wall)
        snapshot = AccountSnapshot(
            account_id=account_id,
            balance=info.balance,
            equity=info.equity,
            margin=info.margin,
            margin_free=info.margin_free,
            taken_at=now,
        )
        self._enqueue(topology.account_key(account_id), snapshot)
        await self._drain()

    # --- order intents: the idempotency chain -----------------------------------------------------------------

    async def _process_intent(self, intent: OrderIntent) -> None:
        now = self._clock.now()
        created = False
        async with transaction(self._sessions) as session:
            order, clash = await store.order_for_intent(session=session, client_order_id=intent.client_order_id, decision_id=intent.decision_id)
            if order is None:
                if clash is not None:
                    raise InvalidMessage(
                        f"decision {intent.decision_id} already has order {clash.client_order_id}, not {intent.client_order_id}"
                    )
                sl, tp = _round_stops(intent.symbol, intent.sl, intent.tp)
                killed = await store.bot_block(session=session, account_id=intent.account_id, bot_id=intent.bot_id)
                # Recorded (and committed) before the broker is ever called: step 4 of the idempotency chain.
                order = Order(
                    decision_id=intent.decision_id,
                    client_order_id=intent.client_order_id,
                    signal_id=str(intent.signal_id),
                    bot_id=intent.bot_id,
                    account_id=intent.account_id,
                    symbol=intent.symbol,
                    side=intent.side,
                    volume=intent.volume,
                    sl=sl,
                    tp=tp,
                    magic=intent.magic,
                    status="rejected" if killed is not None else "sending",
                    reason=BOT_KILLED if killed is not None else "",
                    expires_at=intent.expires_at,
                    created_at=now,
                    updated_at=now,
                )
                order.id = await store.insert_order(session=session, order=order)
                created = True
        if created and order.status == "rejected":
            orders_placed_total.labels(status="rejected").inc()
            self._log.warning("order refused: the bot is killed until decision resumes it", client_order_id=order.client_order_id, bot_id=order.bot_id)
            await self._publish_outcome(order.id)
            return
        if order.status in store.FINAL_ORDER_STATUSES:
            if order.report_sent:
                # The bus confirmed its report already: publishing it again would only make decision drop a copy.
                self._log.info("order intent seen again: its report went out already", client_order_id=order.client_order_id, status=order.status)
                return
            self._log.info("order intent seen again: publishing its outcome", client_order_id=order.client_order_id, status=order.status)
            await self._publish_outcome(order.id)
            return
        if created and self._exit_rule.opposite_signal:
            await self._exit_on_opposite(intent)
        # `_settle` expires an intent already past its expiry without calling the broker. An order created just now
        # had its kill-switch block checked in the transaction that recorded it.
        await self._settle(
            order, deviation=intent.deviation, produced_at=intent.produced_at, ask_broker_first=not created, block_checked=created
        )

    async def reconcile_unsettled(self) -> None:
        """Settle every order left in `sending` (start-up, or an intent whose deliveries ran out): ask the broker first.
        A standby asks for the lead instead (and settles them once it has it)."""
        async with self._lock:
            if self._leading:
                await self._reconcile_unsettled()
            else:
                await self._ensure_leading()

    async def _reconcile_unsettled(self, *, touched_before: datetime | None = None, account_ids: list[int] | None = None) -> None:
        async with self._sessions() as session:
            orders = await store.unsettled_orders(session=session, account_ids=account_ids or self._account_ids, touched_before=touched_before)
        for order in orders:
            try:
                await self._settle(order, deviation=DEFAULT_DEVIATION, produced_at=None, ask_broker_first=True)
            except Exception as exc:  # noqa: BLE001  it stays `sending` and is tried again next cycle
                self._log.warning("order still unsettled", client_order_id=order.client_order_id, error=repr(exc))

    async def _settle(
        self, order: Order, *, deviation: int, produced_at: datetime | None, ask_broker_first: bool, block_checked: bool = False
    ) -> None:
        """Bring an order in `sending` to a final status: reconcile with the broker, expire it, or send it."""
        broker = self._brokers[order.account_id]
        if ask_broker_first:
            # The order may have reached the broker before we lost track of it: never resend before asking.
            found = await broker.find_order(order.client_order_id, order.magic)
            if found is not None and found.status == "filled":
                self._log.warning("order found at the broker: recorded without sending again", client_order_id=order.client_order_id, ticket=found.ticket)
                await self._record(order, found)
                return
        now = self._clock.now()
        if now >= order.expires_at:
            await self._expire(order)
            return
        if not block_checked:
            async with self._sessions() as session:
                killed = await store.bot_block(session=session, account_id=order.account_id, bot_id=order.bot_id)
            if killed is not None:
                await self._record(order, PlaceResult(status="rejected", reason=BOT_KILLED))
                return
        request = OrderRequest(
            client_order_id=order.client_order_id,
            symbol=order.symbol,
            side=order.side,  # type: ignore[arg-type]
            volume=order.volume,
            sl=order.sl,
            tp=order.tp,
            magic=order.magic,
            deviation=deviation,
            expires_at=order.expires_at,
        )
        if produced_at is not None:
            # Decision stamps produced_at with the injected clock: an accelerated clock's seconds are divided by its
            # speed, so the histogram is in real seconds in a replay too.
            elapsed = (now - produced_at).total_seconds() / self._clock.speed
            signal_to_order_seconds.observe(max(0.0, elapsed))
        try:
            result = await broker.place(request)
        except BrokerUnavailable:
            raise
        except Exception as exc:
            # Whatever went wrong, the order may have been placed: it stays `sending` and is looked for before any resend.
            raise BrokerUnavailable(f"order {order.client_order_id}: outcome unknown: {exc!r}") from exc
        if result.status != "filled" and result.retcode in RETRYABLE_RETCODES:
            # Nothing was placed and a fresher price may do: stay `sending`, retry (redelivery) until the intent expires.
            async with transaction(self._sessions) as session:
                row = await session.get(Order, order.id)
                row.reason = f"last broker answer: {result.retcode} {result.reason}"[:300]
                row.updated_at = now
            raise TransientError(f"order {order.client_order_id} not placed ({result.retcode}: {result.reason}); retrying until it expires")
        await self._record(order, result)

    async def _exit_on_opposite(self, intent: OrderIntent) -> None:
        """Early exit on an opposite signal: the bot's positions on the symbol on the other side close first."""
        async with self._sessions() as session:
            rows = await store.open_positions(session=session, account_ids=[intent.account_id], bot_id=intent.bot_id, symbol=intent.symbol)
        opposite = [r for r in rows if trailing.opposite_signal_exit(position_side=r.side, order_side=intent.side, rule=self._exit_rule)]  # type: ignore[arg-type]
        if opposite:
            self._log.info("opposite signal: closing", bot_id=intent.bot_id, symbol=intent.symbol, tickets=[r.ticket for r in opposite])
            await self._close_positions(account_id=intent.account_id, rows=opposite, reason="early_exit")

    async def _expire(self, order: Order) -> None:
        async with transaction(self._sessions) as session:
            row = await session.get(Order, order.id)
            if row.status in store.FINAL_ORDER_STATUSES:
                return
            last = f"; {row.reason}" if row.reason else ""
            row.status = "expired"
            row.reason = f"expired at {row.expires_at.isoformat()} before it was placed{last}"[:300]
            row.updated_at = self._clock.now()
        orders_placed_total.labels(status="expired").inc()
        self._log.info("order expired unsent", client_order_id=order.client_order_id)
        await self._publish_outcome(order.id)

    async def _record(self, order: Order, result: PlaceResult) -> None:
        """Store the broker's answer (order row, position row) in one transaction, then publish the outcome."""
        now = self._clock.now()
        at = result.filled_at or now
        # Netting deals that closed positions: queued before the commit, the broker has closed them whatever happens here.
        for closed in result.closed:
            self._pending_closes.append((self._session_accounts[order.account_id], closed))
        async with transaction(self._sessions) as session:
            row = await session.get(Order, order.id)
            if row.status in store.FINAL_ORDER_STATUSES:
                return
            row.status = result.status
            row.ticket = result.ticket
            row.price = result.price
            row.filled_volume = result.volume
            row.retcode = result.retcode
            row.reason = result.reason[:300]
            row.updated_at = at
            if result.status == "filled":
                position = result.position
                if position is None and not result.closed:
                    position = _position_from(row, result, at)
                if position is not None:
                    await self._upsert_position(session, order=row, position=position)
        orders_placed_total.labels(status=result.status).inc()
        if result.status == "filled":
            fills_total.labels(symbol=order.symbol).inc()
            self._log.info("order filled", client_order_id=order.client_order_id, ticket=result.ticket, price=result.price, volume=result.volume)
        else:
            self._log.warning("order not filled", client_order_id=order.client_order_id, status=result.status, retcode=result.retcode, reason=result.reason)
        await self._publish_outcome(order.id)
        await self._flush_closes()

    async def _upsert_position(self, session: AsyncSession, *, order: Order, position: BrokerPosition) -> None:
        row = await store.get_position(session=session, account_ids=[order.account_id], ticket=position.ticket)
        if row is not None and (row.status != "open" or (row.client_order_id != order.client_order_id and not self._nets(order.account_id))):
            # The broker names a ticket the tables already hold for something else: never overwrite it, never drop it
            # in silence. The order stays filled (the broker did fill it); a person must look.
            kind = "ticket_reused" if row.status != "open" else "position_of_another_order"
            executor_state_conflicts_total.labels(kind=kind).inc()
            self._log.error(
                "broker ticket clashes with the positions table: no position row recorded for this fill", kind=kind,
                account_id=order.account_id, ticket=position.ticket, client_order_id=order.client_order_id,
                row_client_order_id=row.client_order_id, row_status=row.status,
            )
            return
        if row is None:
            session.add(
                Position(
                    ticket=position.ticket,
                    account_id=order.account_id,
                    bot_id=order.bot_id,
                    client_order_id=order.client_order_id,
                    symbol=order.symbol,
                    side=position.side,
                    volume=position.volume,
                    open_price=position.open_price,
                    sl=position.sl,
                    tp=position.tp,
                    opened_at=position.opened_at,
                )
            )
        elif row.status == "open":
            # Netting: the deal added to an open position (volume-weighted price, the new stops).
            row.volume, row.open_price, row.sl, row.tp = position.volume, position.open_price, position.sl, position.tp

    def _nets(self, account_id: int) -> bool:
        """Whether the account nets (one position per symbol, deals add to it) rather than hedges."""
        return self._brokers[account_id].margin_mode == "netting"

    async def _publish_outcome(self, order_id: int) -> None:
        """Publish the order's ExecutionReport (every time asked: a re-delivered intent gets the same report again)
        and, the first time, the PositionEvent `opened` of a fill; then note that the report went out."""
        async with self._sessions() as session:
            order = await session.get(Order, order_id)
            position = None
            if order.status == "filled" and not order.report_sent and order.ticket is not None:
                position = await store.get_position(session=session, account_ids=[order.account_id], ticket=order.ticket)
        self._enqueue(topology.report_key(order.account_id), store.execution_report(order))
        if position is not None:
            self._enqueue(topology.position_key(order.account_id), store.position_event(position, kind="opened", at=position.opened_at))
        await self._drain()
        if not order.report_sent:
            async with transaction(self._sessions) as session:
                row = await session.get(Order, order_id)
                row.report_sent = True

    # --- commands ----------------------------------------------------------------------------------------------

    async def _process_command(self, command: ExecutorCommand) -> None:
        await self._flush_closes()
        account_id = command.account_id
        reason = close_reason_for(command.reason)
        if command.command == "resume_bot":
            async with transaction(self._sessions) as session:
                lifted = await store.lift_block(session=session, account_id=account_id, bot_id=command.bot_id or ACCOUNT_WIDE)
            self._log.info("resume_bot: orders accepted again", account_id=account_id, bot_id=command.bot_id, was_blocked=lifted)
            return
        if command.command == "close_all":
            if reason == "kill_switch":
                # Refuse the bot's orders from now on (persisted: it holds after a restart) until decision sends resume_bot.
                async with transaction(self._sessions) as session:
                    await store.block_bot(session=session, account_id=account_id, bot_id=command.bot_id or ACCOUNT_WIDE,
                                          reason=command.reason, at=self._clock.now())
            async with self._sessions() as session:
                rows = await store.open_positions(session=session, account_ids=[account_id], bot_id=command.bot_id)
            rows = [r for r in rows if not r.external]  # positions opened outside the engine are never touched
            self._log.info("close_all", account_id=account_id, bot_id=command.bot_id, positions=len(rows), reason=reason)
            await self._close_positions(account_id=account_id, rows=rows, reason=reason)
            return
        if command.ticket is None:
            raise InvalidMessage(f"{command.command} needs a ticket")
        async with self._sessions() as session:
            row = await store.get_position(session=session, account_ids=[account_id], ticket=command.ticket)
        if row is None:
            raise InvalidMessage(f"{command.command}: no position {command.ticket} on account {account_id}")
        if command.command == "close_position":
            if row.status == "open" and row.external:
                raise InvalidMessage(f"close_position: {command.ticket} was opened outside the engine and is never touched")
            if row.status == "open":
                await self._close_positions(account_id=account_id, rows=[row], reason=reason)
            else:
                self._enqueue(topology.position_key(account_id), store.position_event(row, kind="closed", at=row.closed_at or self._clock.now()))
                await self._drain()
            return
        if command.sl is None:
            raise InvalidMessage("move_stop needs an sl")
        await self._move_stop(row=row, sl=command.sl)

    async def _close_positions(self, *, account_id: int, rows: list[Position], reason: CloseReason) -> None:
        """Close these positions at market, all at once, and record and report each close."""
        if not rows:
            return
        broker = self._brokers[account_id]
        outcomes = await asyncio.gather(*(broker.close(row.ticket, reason) for row in rows), return_exceptions=True)
        errors: list[str] = []
        unknown: list[Position] = []
        for row, outcome in zip(rows, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                errors.append(f"ticket {row.ticket}: {outcome!r}")
            elif outcome is None:
                unknown.append(row)
            else:
                self._pending_closes.append(((account_id,), outcome))
        if unknown:
            await self._close_unknown(account_id=account_id, rows=unknown, reason=reason)
        await self._flush_closes()
        if errors:
            # The closed ones are recorded; a redelivered command closes the rest (and skips what is closed).
            raise TransientError(f"could not close {len(errors)} of {len(rows)} positions: {'; '.join(errors)}")

    async def _close_unknown(self, *, account_id: int, rows: list[Position], reason: CloseReason) -> None:
        """The broker has no such position any more (closed behind our back): close the row without a price."""
        now = self._clock.now()
        closed = []
        async with transaction(self._sessions) as session:
            for stale in rows:
                row = await store.get_position(session=session, account_ids=[account_id], ticket=stale.ticket)
                if row is None or row.status != "open":
                    continue
                row.status, row.close_reason, row.closed_at = "closed", reason, now
                closed.append(row)
        self._closes_to_publish = self._closes_to_publish or bool(closed)
        for row in closed:
            self._log.error("broker has no such position: marked closed without a price", account_id=account_id, ticket=row.ticket)
        await self._publish_closed_events()

    async def _move_stop(self, *, row: Position, sl: float) -> None:
        if row.status != "open":
            self._log.info("move_stop on a closed position ignored", ticket=row.ticket)
            return
        sl, _ = _round_stops(row.symbol, sl, None)
        now = self._clock.now()
        if row.sl != sl:
            result = await self._brokers[row.account_id].modify(row.ticket, sl, row.tp)
            if not result.ok:
                raise InvalidMessage(f"move_stop of {row.ticket} to {sl} refused by the broker ({result.retcode}): {result.reason}")
            async with transaction(self._sessions) as session:
                fresh = await store.get_position(session=session, account_ids=[row.account_id], ticket=row.ticket)
                fresh.sl = sl
            row = fresh
        self._enqueue(topology.position_key(row.account_id), store.position_event(row, kind="stop_moved", at=now))
        await self._drain()

    # --- closes and events -------------------------------------------------------------------------------------

    async def _flush_closes(self) -> None:
        """Record the closes the broker made (stop/target hits, commands, netting) and publish a `closed` event each.

        A close whose position row is not there yet (its order is still being reconciled) waits for the next flush.
        """
        if not self._pending_closes:
            await self._publish_closed_events()  # events of earlier closes that could not be published yet
            return
        remaining: list[tuple[tuple[int, ...], ClosedPosition]] = []
        events: list[Position] = []
        async with transaction(self._sessions) as session:
            for account_ids, closed in self._pending_closes:
                row = await store.get_position(session=session, account_ids=account_ids, ticket=closed.ticket)
                if row is None:
                    remaining.append((account_ids, closed))
                    continue
                if row.status != "open":
                    continue
                realised = round((row.pnl or 0.0) + closed.pnl, 2)
                if closed.volume < row.volume - 1e-9:
                    # A netting deal closed part of it: the position stays open, smaller; its P&L so far is kept.
                    row.volume = round(row.volume - closed.volume, 8)
                    row.pnl = realised
                    self._log.warning("position partly closed", ticket=row.ticket, closed_volume=closed.volume, left=row.volume)
                    continue
                reason = closed.reason
                if reason == "sl" and row.client_order_id:
                    # A stop that the trailing rule moved: the position was closed by the trail.
                    order = await store.get_order(session=session, client_order_id=row.client_order_id)
                    if order is not None and order.sl is not None and row.sl is not None and abs(row.sl - order.sl) > 1e-9:
                        reason = "trail"
                row.status = "closed"
                self._closes_to_publish = True
                row.close_price = closed.close_price
                row.close_reason = reason
                row.closed_at = closed.closed_at
                row.pnl = realised
                events.append(row)
        self._pending_closes = remaining
        for row in events:
            self._log.info("position closed", ticket=row.ticket, reason=row.close_reason, price=row.close_price, pnl=row.pnl)
        await self._publish_closed_events()

    async def _publish_closed_events(self) -> None:
        """Publish a `closed` event for every closed position whose event has not gone out, then mark it sent.

        The close is committed first and published after; a process that dies in between publishes it on start-up
        (same message id, so a consumer that saw it already drops the copy)."""
        if not self._closes_to_publish:
            return  # nothing closed since the last look: no query on every bar window and every fill
        self._closes_to_publish = False  # cleared before the look: a close recorded meanwhile sets it again
        try:
            async with self._sessions() as session:
                rows = await store.unsent_closes(session=session, account_ids=self._account_ids)
        except BaseException:
            self._closes_to_publish = True
            raise
        for row in rows:
            self._enqueue(topology.position_key(row.account_id), store.position_event(row, kind="closed", at=row.closed_at or row.opened_at))
        try:
            await self._drain()
            if rows:
                async with transaction(self._sessions) as session:
                    await store.mark_close_events_sent(session=session, ids=[r.id for r in rows])
        except BaseException:
            self._closes_to_publish = True
            raise

    def _enqueue(self, routing_key: str, message: Message) -> None:
        if all(queued.message_id != message.message_id for _, queued in self._outbox):
            self._outbox.append((routing_key, message))

    async def _drain(self) -> None:
        """Publish the queued events in order; one that fails stays queued (and raises, so the delivery is retried)."""
        while self._outbox:
            routing_key, message = self._outbox[0]
            await self._bus.publish(message, exchange=topology.EXECUTION_EVENTS, routing_key=routing_key)
            self._outbox.pop(0)

    # --- start-up ----------------------------------------------------------------------------------------------

    async def _restore_paper_brokers(self, *, account_ids: set[int]) -> None:
        """After a restart or a take-over, give an empty paper broker of these accounts the open positions, the balance
        and the ticket count the tables remember (tickets go on past every one ever issued, so none is reused)."""
        for paper, group in self._paper:
            if not account_ids.intersection(group) or await paper.positions():
                continue  # this process's own book: it is the truth, and its ticket count is its own
            async with self._sessions() as session:
                rows = await store.open_positions(session=session, account_ids=group)
                magics = await store.magic_by_client_order_id(session=session, client_order_ids=[r.client_order_id for r in rows])
                realised = await store.realised_pnl(session=session, account_ids=group)
                issued = await store.highest_ticket(session=session, account_ids=group)
            paper.restore(
                [
                    BrokerPosition(
                        ticket=r.ticket,
                        symbol=r.symbol,
                        side=r.side,  # type: ignore[arg-type]
                        volume=r.volume,
                        open_price=r.open_price,
                        sl=r.sl,
                        tp=r.tp,
                        opened_at=r.opened_at,
                        magic=magics.get(r.client_order_id or "", 0),
                        comment=r.client_order_id or "",
                    )
                    for r in rows
                ],
                balance=paper.initial_balance + realised,
                issued_through=issued,
            )
            if rows or realised or issued:
                self._log.info("paper broker restored", accounts=list(group), positions=len(rows), realised_pnl=realised,
                               tickets_issued_through=issued)

    # --- reads for the internal routes -------------------------------------------------------------------------

    def _accounts(self, account_id: int | None) -> list[int]:
        if account_id is None:
            return self._account_ids
        return [account_id] if account_id in self._brokers else []

    async def open_positions(self, *, account_id: int | None = None, bot_id: int | None = None) -> list[Position]:
        async with self._sessions() as session:
            return await store.open_positions(session=session, account_ids=self._accounts(account_id), bot_id=bot_id)

    async def latest_snapshots(self, *, account_id: int | None = None) -> list[AccountSnapshotRow]:
        async with self._sessions() as session:
            return await store.latest_snapshots(session=session, account_ids=self._accounts(account_id))


def _round_stops(symbol: str, sl: float | None, tp: float | None) -> tuple[float | None, float | None]:
    """Stops rounded to the symbol's digits (unchanged for a symbol without a spec: the broker will say no)."""
    try:
        spec = get_spec(symbol)
    except UnknownSymbol:
        return sl, tp
    return (None if sl is None else spec.round_price(sl), None if tp is None else spec.round_price(tp))


def _position_from(order: Order, result: PlaceResult, at: datetime) -> BrokerPosition:
    """The position a fill opened, for a broker that answered without describing it."""
    return BrokerPosition(
        ticket=result.ticket,  # type: ignore[arg-type]
        symbol=order.symbol,
        side=order.side,  # type: ignore[arg-type]
        volume=result.volume if result.volume is not None else order.volume,
        open_price=result.price,  # type: ignore[arg-type]
        sl=order.sl,
        tp=order.tp,
        opened_at=at,
        magic=order.magic,
        comment=order.client_order_id,
    )
