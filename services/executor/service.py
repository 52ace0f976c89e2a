"""The executor: order intents to broker orders without duplicates (architecture.md, "Idempotency chain"),
commands (close, kill switch, move stop), stop/target closes from the paper broker, and account snapshots.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.executor import store
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
)
from shared.bus import topology
from shared.bus.base import Bus, Consumer, Delivery, TransientError
from shared.db.engine import transaction
from shared.db.models import AccountSnapshotRow, Order, Position
from shared.logging import get_logger
from shared.messages import AccountSnapshot, BarWindow, ExecutorCommand, InvalidMessage, Message, OrderIntent
from shared.metrics import fills_total, orders_placed_total, signal_to_order_seconds
from shared.settings import Settings
from shared.symbols import UnknownSymbol, get_spec
from shared.timeutil import Clock

log = get_logger(__name__)

CLOSE_REASONS: frozenset[str] = frozenset({"tp", "sl", "trail", "early_exit", "kill_switch", "manual"})
DEFAULT_DEVIATION = 20  # points; what an order resent from its row (no intent at hand) accepts
# The monitor settles only orders untouched this long: a younger one may be in flight in another executor process
# (a standby taking over); within this process the lock already keeps the monitor and the handlers apart.
STUCK_AFTER = timedelta(seconds=30)


def close_reason_for(reason: str) -> CloseReason:
    """A command's free-text reason as a PositionEvent close_reason: kill_switch when it says so, else manual."""
    word = reason.strip().lower()
    if word in CLOSE_REASONS:
        return word  # type: ignore[return-value]
    return "kill_switch" if "kill" in word else "manual"


class ExecutorService:
    """One executor instance: the only holder of its accounts' broker sessions.

    Every handler, the monitor cycle and the start-up reconciliation run one at a time (one lock): the broker
    session is single-threaded anyway, and it makes "is this order already in flight?" a question with one answer.
    Events are published only after the transaction that recorded them has committed.
    """

    def __init__(
        self,
        *,
        bus: Bus,
        sessions: async_sessionmaker[AsyncSession],
        clock: Clock,
        settings: Settings,
        broker: Broker | Mapping[int, Broker],
        account_ids: list[int],
        instance: str = "ex-1",
    ) -> None:
        self._bus = bus
        self._sessions = sessions
        self._clock = clock
        self._settings = settings
        self._instance = instance
        self._account_ids = list(dict.fromkeys(account_ids))
        # One broker session per trading account; a single broker given for several accounts serves them all.
        brokers = dict(broker) if isinstance(broker, Mapping) else {a: broker for a in self._account_ids}
        missing = [a for a in self._account_ids if a not in brokers]
        if missing:
            raise ValueError(f"no broker for accounts {missing}")
        self._brokers: dict[int, Broker] = {a: brokers[a] for a in self._account_ids}
        groups: dict[int, tuple[Broker, list[int]]] = {}
        for account_id, b in self._brokers.items():
            groups.setdefault(id(b), (b, []))[1].append(account_id)
        self._broker_groups: list[tuple[Broker, tuple[int, ...]]] = [(b, tuple(ids)) for b, ids in groups.values()]
        # The accounts that share each account's broker session (a ticket is unique within a session).
        self._session_accounts: dict[int, tuple[int, ...]] = {a: ids for _, ids in self._broker_groups for a in ids}
        # Simulated brokers (the paper broker) are fed the bars queue and rebuilt from the tables on start.
        self._paper: list[tuple[BarFedBroker, tuple[int, ...]]] = [
            (b, ids) for b, ids in self._broker_groups if isinstance(b, BarFedBroker)
        ]
        self._lock = asyncio.Lock()
        self._pending_closes: list[tuple[tuple[int, ...], ClosedPosition]] = []
        self._outbox: list[tuple[str, Message]] = []
        self._consumers: list[Consumer] = []
        self._monitor_task: asyncio.Task | None = None
        self._started = False
        self._log = log.bind(instance=instance)

    # --- lifecycle ---------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Rebuild the paper broker, settle orders left in `sending`, then consume and start the monitor."""
        if self._started:
            return
        self._started = True
        await self._restore_paper_brokers()
        await self.reconcile_unsettled()
        prefetch = self._settings.prefetch
        for account_id in self._account_ids:
            self._consumers.append(await self._bus.consume(topology.executor_orders_queue(account_id), self.handle_intent, prefetch=prefetch))
            self._consumers.append(
                await self._bus.consume(topology.executor_commands_queue(account_id), self.handle_command, prefetch=prefetch)
            )
        if self._paper:
            self._consumers.append(await self._bus.consume(topology.executor_bars_queue(self._instance), self.handle_bars, prefetch=prefetch))
        self._monitor_task = asyncio.create_task(self._monitor_loop(), name=f"executor-monitor:{self._instance}")
        self._log.info("executor started", accounts=self._account_ids, paper=bool(self._paper))

    async def stop(self) -> None:
        if self._monitor_task is not None:
            self._monitor_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor_task
            self._monitor_task = None
        for consumer in self._consumers:
            await consumer.cancel()
        self._consumers.clear()
        self._started = False
        self._log.info("executor stopped")

    async def readiness(self) -> tuple[bool, dict]:
        """Ready when every broker session answers healthy and the database answers a query."""
        broker_ok = True
        for b, _ in self._broker_groups:
            try:
                broker_ok = broker_ok and bool(await asyncio.wait_for(b.healthy(), timeout=5))
            except Exception:  # noqa: BLE001  readiness reports, it does not raise
                broker_ok = False
        try:
            async with self._sessions() as session:
                await asyncio.wait_for(session.execute(text("SELECT 1")), timeout=5)
            db_ok = True
        except Exception:  # noqa: BLE001
            db_ok = False
        details = {
            "broker": broker_ok,
            "database": db_ok,
            "accounts": self._account_ids,
            "closes_not_recorded": len(self._pending_closes),
            "events_not_published": len(self._outbox),
        }
        return broker_ok and db_ok, details

    # --- bus handlers (thin: check the type, take the lock, call the logic) -------------------------------------

    async def handle_intent(self, message: Message, delivery: Delivery) -> None:
        if not isinstance(message, OrderIntent):
            raise InvalidMessage(f"executor orders queue got a {type(message).__name__}, not an OrderIntent")
        if message.account_id not in self._brokers:
            raise InvalidMessage(f"account {message.account_id} is not served by executor {self._instance}")
        async with self._lock:
            await self._process_intent(message)

    async def handle_command(self, message: Message, delivery: Delivery) -> None:
        if not isinstance(message, ExecutorCommand):
            raise InvalidMessage(f"executor commands queue got a {type(message).__name__}, not an ExecutorCommand")
        if message.account_id not in self._brokers:
            raise InvalidMessage(f"account {message.account_id} is not served by executor {self._instance}")
        async with self._lock:
            await self._process_command(message)

    async def handle_bars(self, message: Message, delivery: Delivery) -> None:
        """Feed a closed-bar window to the paper broker and record the positions its stops and targets closed."""
        if not isinstance(message, BarWindow):
            raise InvalidMessage(f"executor bars queue got a {type(message).__name__}, not a BarWindow")
        if message.timeframe != "1m" or not self._paper:
            return
        bars = message.bars.to_bars()
        async with self._lock:
            for paper, account_ids in self._paper:
                for closed in await paper.on_bars(message.symbol, bars):
                    self._pending_closes.append((account_ids, closed))
            await self._flush_closes()

    # --- the monitor -------------------------------------------------------------------------------------------

    async def monitor_once(self) -> None:
        """One monitor cycle: record closes still pending, settle stuck orders, manage positions, snapshot accounts."""
        async with self._lock:
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
        """Seam for the position rules of a later issue (trailing stops, early exits), run before each snapshot.

        A rule reads the open positions (store.open_positions) and the latest prices, and acts through the same
        paths as the commands: `self._move_stop(...)` for a trail (publishes stop_moved) and
        `self._close_positions(..., reason="trail" | "early_exit")` for an exit (publishes closed). Keep the rule
        itself a pure function, shared with the backtester like fills.py.
        """

    async def _snapshot(self, *, account_id: int) -> None:
        info = await self._brokers[account_id].account()
        now = self._clock.now()
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
            order = await store.get_order(session=session, client_order_id=intent.client_order_id)
            if order is None:
                clash = await store.get_order_by_decision(session=session, decision_id=intent.decision_id)
                if clash is not None:
                    raise InvalidMessage(
                        f"decision {intent.decision_id} already has order {clash.client_order_id}, not {intent.client_order_id}"
                    )
                sl, tp = _round_stops(intent.symbol, intent.sl, intent.tp)
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
                    status="sending",
                    expires_at=intent.expires_at,
                    created_at=now,
                    updated_at=now,
                )
                session.add(order)
                created = True
        if order.status in store.FINAL_ORDER_STATUSES:
            self._log.info("order intent seen again: re-publishing its outcome", client_order_id=order.client_order_id, status=order.status)
            await self._publish_outcome(order.id)
            return
        # `_settle` expires an intent already past its expiry without calling the broker.
        await self._settle(order, deviation=intent.deviation, produced_at=intent.produced_at, ask_broker_first=not created)

    async def reconcile_unsettled(self) -> None:
        """Settle every order left in `sending` (start-up, or an intent whose deliveries ran out): ask the broker first."""
        async with self._lock:
            await self._reconcile_unsettled()

    async def _reconcile_unsettled(self, *, touched_before: datetime | None = None) -> None:
        async with self._sessions() as session:
            orders = await store.unsettled_orders(session=session, account_ids=self._account_ids, touched_before=touched_before)
        for order in orders:
            try:
                await self._settle(order, deviation=DEFAULT_DEVIATION, produced_at=None, ask_broker_first=True)
            except Exception as exc:  # noqa: BLE001  it stays `sending` and is tried again next cycle
                self._log.warning("order still unsettled", client_order_id=order.client_order_id, error=repr(exc))

    async def _settle(self, order: Order, *, deviation: int, produced_at: datetime | None, ask_broker_first: bool) -> None:
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
        request = OrderRequest(
            client_order_id=order.client_order_id,
            symbol=order.symbol,
            side=order.side,  # type: ignore[arg-type]
            volume=order.volume,
            sl=order.sl,
            tp=order.tp,
            magic=order.magic,
            deviation=deviation,
        )
        if produced_at is not None:
            # Measured on the injected clock, as decision stamps produced_at with it (real seconds x speed when accelerated).
            signal_to_order_seconds.observe(max(0.0, (now - produced_at).total_seconds()))
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
        if command.command == "close_all":
            async with self._sessions() as session:
                rows = await store.open_positions(session=session, account_ids=[account_id], bot_id=command.bot_id)
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
        for row in closed:
            self._log.error("broker has no such position: marked closed without a price", account_id=account_id, ticket=row.ticket)
            self._enqueue(topology.position_key(account_id), store.position_event(row, kind="closed", at=now))
        await self._drain()

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
            await self._drain()  # events of earlier closes that could not be published yet
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
                row.status = "closed"
                row.close_price = closed.close_price
                row.close_reason = closed.reason
                row.closed_at = closed.closed_at
                row.pnl = realised
                events.append(row)
        self._pending_closes = remaining
        for row in events:
            self._log.info("position closed", ticket=row.ticket, reason=row.close_reason, price=row.close_price, pnl=row.pnl)
            self._enqueue(topology.position_key(row.account_id), store.position_event(row, kind="closed", at=row.closed_at))
        await self._drain()

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

    async def _restore_paper_brokers(self) -> None:
        """After a restart, give an empty paper broker the open positions and the balance the tables remember."""
        for paper, account_ids in self._paper:
            if await paper.positions():
                continue
            async with self._sessions() as session:
                rows = await store.open_positions(session=session, account_ids=account_ids)
                magics = await store.magic_by_client_order_id(session=session, client_order_ids=[r.client_order_id for r in rows])
                realised = await store.realised_pnl(session=session, account_ids=account_ids)
            if not rows and realised == 0:
                continue
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
            )
            self._log.info("paper broker restored", accounts=account_ids, positions=len(rows), realised_pnl=realised)

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
