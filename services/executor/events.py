"""The executor's events (ExecutionReport, PositionEvent, AccountSnapshot): queued in order and published after the
transaction that recorded them; the closes the broker made are recorded here and each gets one `closed` event.

A `closed` event is marked sent in the tables only once the bus confirmed it, so a process that dies in between
publishes it again on start-up (same message id: a consumer that saw it drops the copy).
"""

from __future__ import annotations

from services.executor import store
from services.executor.brokers.base import ClosedPosition
from services.executor.state import ExecutorState
from shared.bus import topology
from shared.db.engine import transaction
from shared.db.models import Position
from shared.messages import Message


async def flush_closes(ex: ExecutorState) -> None:
    """Record the closes the broker made (stop/target hits, commands, netting) and publish a `closed` event each.

    A close whose position row is not there yet (its order is still being reconciled) waits for the next flush.
    """
    if not ex.pending_closes:
        await publish_closed_events(ex)  # events of earlier closes that could not be published yet
        return
    remaining: list[tuple[tuple[int, ...], ClosedPosition]] = []
    events: list[Position] = []
    async with transaction(ex.sessions) as session:
        for account_ids, closed in ex.pending_closes:
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
                ex.log.warning("position partly closed", ticket=row.ticket, closed_volume=closed.volume, left=row.volume)
                continue
            reason = closed.reason
            if reason == "sl" and row.client_order_id:
                # A stop that the trailing rule moved: the position was closed by the trail.
                order = await store.get_order(session=session, client_order_id=row.client_order_id)
                if order is not None and order.sl is not None and row.sl is not None and abs(row.sl - order.sl) > 1e-9:
                    reason = "trail"
            row.status = "closed"
            ex.closes_to_publish = True
            row.close_price = closed.close_price
            row.close_reason = reason
            row.closed_at = closed.closed_at
            row.pnl = realised
            events.append(row)
    ex.pending_closes = remaining
    for row in events:
        ex.log.info("position closed", bot=row.bot_id, symbol=row.symbol, side=row.side, volume=row.volume, price=row.close_price,
                    open_price=row.open_price, reason=row.close_reason, pnl=row.pnl, ticket=row.ticket)
    await publish_closed_events(ex)


async def publish_closed_events(ex: ExecutorState) -> None:
    """Publish a `closed` event for every closed position whose event has not gone out, then mark it sent.

    The close is committed first and published after; a process that dies in between publishes it on start-up
    (same message id, so a consumer that saw it already drops the copy)."""
    if not ex.closes_to_publish:
        return  # nothing closed since the last look: no query on every bar window and every fill
    ex.closes_to_publish = False  # cleared before the look: a close recorded meanwhile sets it again
    try:
        async with ex.sessions() as session:
            rows = await store.unsent_closes(session=session, account_ids=ex.account_ids)
    except BaseException:
        ex.closes_to_publish = True
        raise
    for row in rows:
        enqueue(ex, topology.position_key(row.account_id), store.position_event(row, kind="closed", at=row.closed_at or row.opened_at))
    try:
        await drain(ex)
        if rows:
            async with transaction(ex.sessions) as session:
                await store.mark_close_events_sent(session=session, ids=[r.id for r in rows])
    except BaseException:
        ex.closes_to_publish = True
        raise


def enqueue(ex: ExecutorState, routing_key: str, message: Message) -> None:
    if all(queued.message_id != message.message_id for _, queued in ex.outbox):
        ex.outbox.append((routing_key, message))


async def drain(ex: ExecutorState) -> None:
    """Publish the queued events in order; one that fails stays queued (and raises, so the delivery is retried)."""
    while ex.outbox:
        routing_key, message = ex.outbox[0]
        await ex.bus.publish(message, exchange=topology.EXECUTION_EVENTS, routing_key=routing_key)
        ex.outbox.pop(0)
