"""Order intents to broker orders, exactly once (architecture.md, "Idempotency chain", steps 3-4 and 7): the order
row is committed in `sending` before the broker is called; an order whose outcome is unknown is looked for at the
broker (positions and deals by comment and magic) before it is ever sent again; an intent past its expiry is never sent.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from services.executor import commands, events, store, trailing
from services.executor.brokers.base import RETRYABLE_RETCODES, BrokerPosition, BrokerUnavailable, OrderRequest, PlaceResult
from services.executor.state import ExecutorState
from shared.bus import topology
from shared.bus.base import TransientError
from shared.db.engine import transaction
from shared.db.models import Order
from shared.messages import InvalidMessage, OrderIntent
from shared.sanity import market_order_problem
from shared.metrics import executor_state_conflicts_total, fills_total, orders_placed_total, signal_to_order_seconds

DEFAULT_DEVIATION = 20  # points; what an order resent from its row (no intent at hand) accepts
BOT_KILLED = "bot_killed"


async def process_intent(ex: ExecutorState, intent: OrderIntent) -> None:
    now = ex.clock.now()
    created = False
    async with transaction(ex.sessions) as session:
        order, clash = await store.order_for_intent(session=session, client_order_id=intent.client_order_id, decision_id=intent.decision_id)
        if order is None:
            if clash is not None:
                raise InvalidMessage(
                    f"decision {intent.decision_id} already has order {clash.client_order_id}, not {intent.client_order_id}"
                )
            sl, tp = commands.round_stops(intent.symbol, intent.sl, intent.tp)
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
                invalidation=None if intent.invalidation is None else intent.invalidation.model_dump(mode="json"),
                created_at=now,
                updated_at=now,
            )
            order.id = await store.insert_order(session=session, order=order)
            created = True
    if created and order.status == "rejected":
        orders_placed_total.labels(status="rejected").inc()
        ex.log.warning("order refused: the bot is killed until decision resumes it", client_order_id=order.client_order_id, bot_id=order.bot_id)
        await publish_outcome(ex, order.id)
        return
    if order.status in store.FINAL_ORDER_STATUSES:
        # Reported again even when the bus confirmed the first report: decision sends an intent again only while its
        # decision is still `sent` (its report was lost, or a repeat), and this answer is what settles it.
        ex.log.info("order intent seen again: publishing its outcome", client_order_id=order.client_order_id, status=order.status,
                    report_sent=order.report_sent)
        await publish_outcome(ex, order.id)
        return
    if created and ex.exit_rule.opposite_signal and now < intent.expires_at:
        # Not for an intent already expired (a re-sent one, never placed): it must change nothing at the broker.
        await exit_on_opposite(ex, intent)
    # `settle` expires an intent already past its expiry without calling the broker. An order created just now
    # had its kill-switch block checked in the transaction that recorded it.
    await settle(
        ex, order, deviation=intent.deviation, produced_at=intent.produced_at, ask_broker_first=not created, block_checked=created,
        entry=intent.entry,
    )


async def reconcile_unsettled(ex: ExecutorState, *, touched_before: datetime | None = None, account_ids: list[int] | None = None) -> None:
    async with ex.sessions() as session:
        orders = await store.unsettled_orders(session=session, account_ids=account_ids or ex.account_ids, touched_before=touched_before)
    for order in orders:
        try:
            await settle(ex, order, deviation=DEFAULT_DEVIATION, produced_at=None, ask_broker_first=True)
        except Exception as exc:  # noqa: BLE001  it stays `sending` and is tried again next cycle
            ex.log.warning("order still unsettled", client_order_id=order.client_order_id, error=repr(exc))


async def settle(
    ex: ExecutorState, order: Order, *, deviation: int, produced_at: datetime | None, ask_broker_first: bool,
    block_checked: bool = False, entry: float | None = None,
) -> None:
    """Bring an order in `sending` to a final status: reconcile with the broker, expire it, refuse it at the broker's
    quote, or send it. `entry` is the signal's entry price (None for an order resent from its row)."""
    broker = ex.brokers[order.account_id]
    if ask_broker_first:
        # The order may have reached the broker before we lost track of it: never resend before asking.
        found = await broker.find_order(order.client_order_id, order.magic)
        if found is not None and found.status == "filled":
            ex.log.warning("order found at the broker: recorded without sending again", client_order_id=order.client_order_id, ticket=found.ticket)
            await record(ex, order, found)
            return
    now = ex.clock.now()
    if now >= order.expires_at:
        await expire(ex, order)
        return
    if not block_checked:
        async with ex.sessions() as session:
            killed = await store.bot_block(session=session, account_id=order.account_id, bot_id=order.bot_id)
        if killed is not None:
            await record(ex, order, PlaceResult(status="rejected", reason=BOT_KILLED))
            return
    problem = await quote_problem(ex, order, entry=entry)
    if problem is not None:
        ex.log.warning("order refused at the broker's quote: not sent", client_order_id=order.client_order_id, reason=problem)
        await record(ex, order, PlaceResult(status="rejected", reason=f"refused at the quote: {problem}"))
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
        elapsed = (now - produced_at).total_seconds() / ex.clock.speed
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
        async with transaction(ex.sessions) as session:
            row = await session.get(Order, order.id)
            row.reason = f"last broker answer: {result.retcode} {result.reason}"[:300]
            row.updated_at = now
        raise TransientError(f"order {order.client_order_id} not placed ({result.retcode}: {result.reason}); retrying until it expires")
    await record(ex, order, result)


async def quote_problem(ex: ExecutorState, order: Order, *, entry: float | None) -> str | None:
    """Why the broker's current quote says this market order must not go (shared/sanity.py), or None. Without a quote
    the broker itself answers (the paper broker: no price yet, retried)."""
    quote = await ex.brokers[order.account_id].quote(order.symbol)
    if quote is None:
        return None
    bid, ask = quote
    fill_at = ask if order.side == "buy" else bid
    return market_order_problem(order.side, fill_at if entry is None else entry, order.sl, order.tp, bid, ask,
                                ex.settings.max_quote_deviation)


async def exit_on_opposite(ex: ExecutorState, intent: OrderIntent) -> None:
    """Early exit on an opposite signal: the bot's positions on the symbol on the other side close first."""
    async with ex.sessions() as session:
        rows = await store.open_positions(session=session, account_ids=[intent.account_id], bot_id=intent.bot_id, symbol=intent.symbol)
    opposite = [r for r in rows if trailing.opposite_signal_exit(position_side=r.side, order_side=intent.side, rule=ex.exit_rule)]  # type: ignore[arg-type]
    if opposite:
        ex.log.info("opposite signal: closing", bot_id=intent.bot_id, symbol=intent.symbol, tickets=[r.ticket for r in opposite])
        await commands.close_positions(ex, account_id=intent.account_id, rows=opposite, reason="early_exit")


async def expire(ex: ExecutorState, order: Order) -> None:
    async with transaction(ex.sessions) as session:
        row = await session.get(Order, order.id)
        if row.status in store.FINAL_ORDER_STATUSES:
            return
        last = f"; {row.reason}" if row.reason else ""
        row.status = "expired"
        row.reason = f"expired at {row.expires_at.isoformat()} before it was placed{last}"[:300]
        row.updated_at = ex.clock.now()
    orders_placed_total.labels(status="expired").inc()
    ex.log.info("order expired unsent", client_order_id=order.client_order_id)
    await publish_outcome(ex, order.id)


async def record(ex: ExecutorState, order: Order, result: PlaceResult) -> None:
    """Store the broker's answer (order row, position row) in one transaction, then publish the outcome."""
    now = ex.clock.now()
    at = result.filled_at or now
    # Netting deals that closed positions: queued before the commit, the broker has closed them whatever happens here.
    for closed in result.closed:
        ex.pending_closes.append((ex.session_accounts[order.account_id], closed))
    async with transaction(ex.sessions) as session:
        row = await store.record_answer(session=session, order_id=order.id, values={
            "status": result.status, "ticket": result.ticket, "price": result.price, "filled_volume": result.volume,
            "retcode": result.retcode, "reason": result.reason[:300], "updated_at": at,
        })
        if row is None:
            return  # final already (another delivery recorded it)
        if result.status == "filled":
            position = result.position
            if position is None and not result.closed:
                position = position_from(row, result, at)
            if position is not None:
                await upsert_position(ex, session, order=row, position=position)
    orders_placed_total.labels(status=result.status).inc()
    if result.status == "filled":
        fills_total.labels(symbol=order.symbol).inc()
        ex.log.info("order filled", bot=order.bot_id, symbol=order.symbol, side=order.side, volume=result.volume, price=result.price,
                    ticket=result.ticket, client_order_id=order.client_order_id)
    else:
        ex.log.warning("order not filled", client_order_id=order.client_order_id, status=result.status, retcode=result.retcode, reason=result.reason)
    await publish_outcome(ex, order.id)
    await events.flush_closes(ex)


async def upsert_position(ex: ExecutorState, session: AsyncSession, *, order, position: BrokerPosition) -> None:
    row = await store.position_row(session=session, account_id=order.account_id, ticket=position.ticket)
    if row is not None and (row.status != "open" or (row.client_order_id != order.client_order_id and not ex.nets(order.account_id))):
        # The broker names a ticket the tables already hold for something else: never overwrite it, never drop it
        # in silence. The order stays filled (the broker did fill it); a person must look.
        kind = "ticket_reused" if row.status != "open" else "position_of_another_order"
        executor_state_conflicts_total.labels(kind=kind).inc()
        ex.log.error(
            "broker ticket clashes with the positions table: no position row recorded for this fill", kind=kind,
            account_id=order.account_id, ticket=position.ticket, client_order_id=order.client_order_id,
            row_client_order_id=row.client_order_id, row_status=row.status,
        )
        return
    if row is None:
        await store.insert_position(session=session, values={
            "ticket": position.ticket, "account_id": order.account_id, "bot_id": order.bot_id,
            "client_order_id": order.client_order_id, "symbol": order.symbol, "side": position.side,
            "volume": position.volume, "open_price": position.open_price, "sl": position.sl, "tp": position.tp,
            "opened_at": position.opened_at, "status": "open", "external": False, "close_event_sent": False,
        })
    elif row.status == "open":
        # Netting: the deal added to an open position (volume-weighted price, the new stops).
        await store.net_position(session=session, position_id=row.id, volume=position.volume, open_price=position.open_price,
                                 sl=position.sl, tp=position.tp)


async def publish_outcome(ex: ExecutorState, order_id: int) -> None:
    """Publish the order's ExecutionReport (every time asked: a re-delivered intent gets the same report again)
    and, the first time, the PositionEvent `opened` of a fill; then note that the report went out."""
    async with ex.sessions() as session:
        order = await store.order_row(session=session, order_id=order_id)
        position = None
        if order.status == "filled" and not order.report_sent and order.ticket is not None:
            position = await store.position_row(session=session, account_id=order.account_id, ticket=order.ticket)
    events.enqueue(ex, topology.report_key(order.account_id), store.execution_report(order))
    if position is not None:
        events.enqueue(ex, topology.position_key(order.account_id), store.position_event(position, kind="opened", at=position.opened_at))
    await events.drain(ex)
    if not order.report_sent:
        async with transaction(ex.sessions) as session:
            await store.mark_report_sent(session=session, order_id=order_id)


async def settle_without_sending(ex: ExecutorState) -> None:
    """On the way out: record what the broker says of each order still `sending`, expire the stale; never send."""
    async with ex.sessions() as session:
        orders = await store.unsettled_orders(session=session, account_ids=ex.account_ids)
    for order in orders:
        try:
            found = await ex.brokers[order.account_id].find_order(order.client_order_id, order.magic)
            if found is not None and found.status == "filled":
                await record(ex, order, found)
            elif ex.clock.now() >= order.expires_at:
                await expire(ex, order)
            else:
                ex.log.error("order left in sending at stop: the broker does not know it yet", client_order_id=order.client_order_id)
        except Exception as exc:  # noqa: BLE001  the next start reconciles it
            ex.log.error("order left in sending at stop", client_order_id=order.client_order_id, error=repr(exc))


def position_from(order: Order, result: PlaceResult, at: datetime) -> BrokerPosition:
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
