"""The executor's tables (orders, positions, account_snapshots): queries and the messages built from their rows."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import Row, bindparam, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.models import AccountSnapshotRow, BotBlock, Order, Position
from shared.messages import ExecutionReport, PositionEvent

EVENT_NAMESPACE = uuid.UUID("0f7d6c2a-8e51-4d0b-b1f3-6a7c9e2d4b18")
FINAL_ORDER_STATUSES = frozenset({"filled", "rejected", "failed", "expired"})
UNSETTLED_ORDER_STATUSES = ("received", "sending")


async def get_order(*, session: AsyncSession, client_order_id: str) -> Order | None:
    return (await session.execute(select(Order).where(Order.client_order_id == client_order_id))).scalar_one_or_none()


# The two statements of every order intent, built once (each execution binds its values).
_ORDERS = Order.__table__
_ORDER_FOR_INTENT = select(_ORDERS).where(or_(_ORDERS.c.client_order_id == bindparam("client_order_id"), _ORDERS.c.decision_id == bindparam("decision_id")))
_BLOCKS = BotBlock.__table__
_BOT_BLOCK = select(_BLOCKS).where(_BLOCKS.c.account_id == bindparam("account_id"), _BLOCKS.c.bot_id.in_([bindparam("bot_id"), 0]))


_INSERT_ORDER = Order.__table__.insert().returning(Order.__table__.c.id)


async def insert_order(*, session: AsyncSession, order: Order) -> int:
    """Insert a new order's row with one Core statement (the unit of work costs more than the insert); return its id.
    `order` itself stays out of the session: read it, and load the row to change it."""
    values = {column.name: getattr(order, column.key) for column in Order.__table__.columns if column.name != "id"}
    # On the session's connection: a session's execute adds about 55 µs (nothing is pending in it here).
    return (await (await session.connection()).execute(_INSERT_ORDER, values)).scalar_one()


async def order_for_intent(*, session: AsyncSession, client_order_id: str, decision_id: int) -> tuple[Row | None, Row | None]:
    """In one query: the intent's order (by client order id), else another order already made for its decision.

    Rows (read-only, the columns as attributes), not ORM objects: this runs for every intent, and the ORM's objects
    cost about 0.1 ms more. Load the `Order` to change it."""
    params = {"client_order_id": client_order_id, "decision_id": decision_id}
    rows = (await (await session.connection()).execute(_ORDER_FOR_INTENT, params)).all()
    mine = next((row for row in rows if row.client_order_id == client_order_id), None)
    return mine, None if mine is not None else next(iter(rows), None)


async def unsettled_orders(
    *, session: AsyncSession, account_ids: Iterable[int], touched_before: datetime | None = None
) -> list[Order]:
    """Orders recorded but not known to be settled with the broker (left in `sending` by a crash or a lost answer),
    optionally only those not updated since `touched_before`."""
    stmt = select(Order).where(Order.account_id.in_(list(account_ids)), Order.status.in_(UNSETTLED_ORDER_STATUSES))
    if touched_before is not None:
        stmt = stmt.where(Order.updated_at <= touched_before)
    return list((await session.execute(stmt.order_by(Order.id))).scalars())


# The statements of every broker answer, built once: Core rows, not ORM objects (the unit of work's objects and flush
# cost more than the statements on the order path).
_POSITIONS = Order.__table__.metadata.tables["positions"]
_ORDER_BY_ID = select(_ORDERS).where(_ORDERS.c.id == bindparam("order_id"))
_RECORD_ANSWER = (
    _ORDERS.update()
    .where(_ORDERS.c.id == bindparam("order_id"), _ORDERS.c.status.not_in(sorted(FINAL_ORDER_STATUSES)))
    .values(status=bindparam("status"), ticket=bindparam("ticket"), price=bindparam("price"), filled_volume=bindparam("filled_volume"),
            retcode=bindparam("retcode"), reason=bindparam("reason"), updated_at=bindparam("updated_at"))
    .returning(*_ORDERS.c)
)
_REPORT_SENT = _ORDERS.update().where(_ORDERS.c.id == bindparam("order_id")).values(report_sent=True)
_POSITION_BY_TICKET = select(_POSITIONS).where(_POSITIONS.c.account_id == bindparam("account_id"), _POSITIONS.c.ticket == bindparam("ticket"))
_INSERT_POSITION = _POSITIONS.insert()
_NET_POSITION = _POSITIONS.update().where(_POSITIONS.c.id == bindparam("position_id")).values(
    volume=bindparam("volume"), open_price=bindparam("open_price"), sl=bindparam("sl"), tp=bindparam("tp"))


async def order_row(*, session: AsyncSession, order_id: int) -> Row | None:
    return (await (await session.connection()).execute(_ORDER_BY_ID, {"order_id": order_id})).first()


async def record_answer(*, session: AsyncSession, order_id: int, values: dict) -> Row | None:
    """Write the broker's answer on an order not yet final, in one UPDATE; its row after, or None when it was final."""
    return (await (await session.connection()).execute(_RECORD_ANSWER, {"order_id": order_id, **values})).first()


async def mark_report_sent(*, session: AsyncSession, order_id: int) -> None:
    await (await session.connection()).execute(_REPORT_SENT, {"order_id": order_id})


async def position_row(*, session: AsyncSession, account_id: int, ticket: int) -> Row | None:
    return (await (await session.connection()).execute(_POSITION_BY_TICKET, {"account_id": account_id, "ticket": ticket})).first()


async def insert_position(*, session: AsyncSession, values: dict) -> None:
    await (await session.connection()).execute(_INSERT_POSITION, values)


async def net_position(*, session: AsyncSession, position_id: int, volume: float, open_price: float, sl, tp) -> None:
    await (await session.connection()).execute(
        _NET_POSITION, {"position_id": position_id, "volume": volume, "open_price": open_price, "sl": sl, "tp": tp})


async def get_position(*, session: AsyncSession, account_ids: Iterable[int], ticket: int) -> Position | None:
    stmt = select(Position).where(Position.account_id.in_(list(account_ids)), Position.ticket == ticket)
    return (await session.execute(stmt)).scalars().first()


async def open_positions(
    *, session: AsyncSession, account_ids: Iterable[int], bot_id: int | None = None, symbol: str | None = None
) -> list[Position]:
    stmt = select(Position).where(Position.account_id.in_(list(account_ids)), Position.status == "open")
    if bot_id is not None:
        stmt = stmt.where(Position.bot_id == bot_id)
    if symbol is not None:
        stmt = stmt.where(Position.symbol == symbol)
    return list((await session.execute(stmt.order_by(Position.opened_at, Position.ticket))).scalars())


async def realised_pnl(*, session: AsyncSession, account_ids: Iterable[int]) -> float:
    stmt = select(func.coalesce(func.sum(Position.pnl), 0.0)).where(
        Position.account_id.in_(list(account_ids)), Position.pnl.is_not(None)
    )
    return float((await session.execute(stmt)).scalar_one())


async def highest_ticket(*, session: AsyncSession, account_ids: Iterable[int]) -> int:
    """The highest ticket these accounts' orders and positions ever recorded (0 for none): a paper broker goes on after it."""
    ids = list(account_ids)
    orders = select(func.max(Order.ticket)).where(Order.account_id.in_(ids)).scalar_subquery()
    positions = select(func.max(Position.ticket)).where(Position.account_id.in_(ids)).scalar_subquery()
    highest = (await session.execute(select(func.coalesce(orders, 0), func.coalesce(positions, 0)))).one()
    return int(max(highest))


async def magic_by_client_order_id(*, session: AsyncSession, client_order_ids: Iterable[str]) -> dict[str, int]:
    ids = [c for c in client_order_ids if c]
    if not ids:
        return {}
    rows = await session.execute(select(Order.client_order_id, Order.magic).where(Order.client_order_id.in_(ids)))
    return {cid: magic for cid, magic in rows}


async def invalidations(*, session: AsyncSession, client_order_ids: Iterable[str]) -> dict[str, dict]:
    """The early exits (StrategyExit as JSON) the orders of these client order ids carry, by client order id."""
    ids = [c for c in client_order_ids if c]
    if not ids:
        return {}
    stmt = select(Order.client_order_id, Order.invalidation).where(Order.client_order_id.in_(ids), Order.invalidation.is_not(None))
    return {cid: value for cid, value in await session.execute(stmt) if value}


async def position_tickets(*, session: AsyncSession, account_ids: Iterable[int]) -> set[int]:
    """Every ticket the table knows on these accounts, open or closed."""
    rows = await session.execute(select(Position.ticket).where(Position.account_id.in_(list(account_ids))))
    return {t for (t,) in rows}


async def existing_client_order_ids(*, session: AsyncSession, client_order_ids: Iterable[str]) -> set[str]:
    ids = [c for c in client_order_ids if c]
    if not ids:
        return set()
    rows = await session.execute(select(Order.client_order_id).where(Order.client_order_id.in_(ids)))
    return {c for (c,) in rows}


async def unsent_closes(*, session: AsyncSession, account_ids: Iterable[int]) -> list[Position]:
    """Closed positions whose `closed` event has not been published yet (oldest first)."""
    stmt = select(Position).where(
        Position.account_id.in_(list(account_ids)), Position.status == "closed", Position.close_event_sent.is_(False)
    )
    return list((await session.execute(stmt.order_by(Position.closed_at, Position.id))).scalars())


async def mark_close_events_sent(*, session: AsyncSession, ids: list[int]) -> None:
    await session.execute(update(Position).where(Position.id.in_(ids)).values(close_event_sent=True))


async def bot_block(*, session: AsyncSession, account_id: int, bot_id: int) -> Row | None:
    """The kill-switch block on this bot (or on its whole account), if any: its row's columns, not an ORM object (it
    is checked on every order intent)."""
    return (await (await session.connection()).execute(_BOT_BLOCK, {"account_id": account_id, "bot_id": bot_id})).first()


async def block_bot(*, session: AsyncSession, account_id: int, bot_id: int, reason: str, at: datetime) -> None:
    if await session.get(BotBlock, (account_id, bot_id)) is None:
        session.add(BotBlock(account_id=account_id, bot_id=bot_id, reason=reason[:200], blocked_at=at))


async def lift_block(*, session: AsyncSession, account_id: int, bot_id: int) -> bool:
    result = await session.execute(delete(BotBlock).where(BotBlock.account_id == account_id, BotBlock.bot_id == bot_id))
    return bool(result.rowcount)


async def latest_snapshots(*, session: AsyncSession, account_ids: Iterable[int]) -> list[AccountSnapshotRow]:
    """The newest snapshot of each account."""
    out = []
    for account_id in account_ids:
        stmt = (
            select(AccountSnapshotRow)
            .where(AccountSnapshotRow.account_id == account_id)
            .order_by(AccountSnapshotRow.taken_at.desc(), AccountSnapshotRow.id.desc())
            .limit(1)
        )
        row = (await session.execute(stmt)).scalar_one_or_none()
        if row is not None:
            out.append(row)
    return out


def execution_report(order: Order) -> ExecutionReport:
    """The order's report; built from the row alone, so a re-published report is the same message (same id)."""
    return ExecutionReport(
        message_id=uuid.uuid5(EVENT_NAMESPACE, f"report|{order.account_id}|{order.client_order_id}|{order.status}"),
        client_order_id=order.client_order_id,
        account_id=order.account_id,
        bot_id=order.bot_id,
        status=order.status,
        ticket=order.ticket,
        price=order.price,
        volume=order.filled_volume,
        retcode=order.retcode,
        reason=order.reason,
        filled_at=order.updated_at if order.status == "filled" else None,
    )


def position_event(position: Position, *, kind: str, at: datetime) -> PositionEvent:
    """A PositionEvent from the row; its id is derived from what happened, so re-publishing repeats the same message."""
    key = f"position|{position.account_id}|{position.ticket}|{kind}|{at.isoformat()}|{position.sl}|{position.volume}"
    return PositionEvent(
        message_id=uuid.uuid5(EVENT_NAMESPACE, key),
        ticket=position.ticket,
        account_id=position.account_id,
        bot_id=position.bot_id,
        client_order_id=position.client_order_id,
        symbol=position.symbol,
        side=position.side,
        volume=position.volume,
        kind=kind,
        open_price=position.open_price,
        sl=position.sl,
        tp=position.tp,
        close_price=position.close_price if kind == "closed" else None,
        pnl=position.pnl if kind == "closed" else None,
        close_reason=position.close_reason if kind == "closed" else None,
        at=at,
    )
