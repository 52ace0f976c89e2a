"""The executor's events keep the decisions read model, idempotently and whatever order they arrive in."""

from __future__ import annotations

from datetime import timedelta

from decision_helpers import T0, add_bot, delivery, make_settings, make_signal
from sqlalchemy import func, select

from services.decision.service import DecisionService
from shared.bus import topology
from shared.db.models import AuditLog, Decision
from shared.messages import AccountSnapshot, ExecutionReport, PositionEvent
from shared.timeutil import ManualClock

FILLED_AT = T0 + timedelta(seconds=2)
CLOSED_AT = T0 + timedelta(minutes=4)


async def opened_decision(db, bus, user, account):
    bot = await add_bot(db, user, account)
    service = DecisionService(bus=bus, sessions=db, clock=ManualClock(T0), settings=make_settings(), lookback_for=lambda c: 100)
    await service.handle_signal(make_signal(bot))
    [(_, intent)] = bus.sent(topology.EXECUTION_ORDERS)
    return service, intent


async def decision_row(db, coid: str) -> Decision:
    async with db() as s:
        return (await s.execute(select(Decision).where(Decision.client_order_id == coid))).scalar_one()


async def audit_count(db, kind: str) -> int:
    async with db() as s:
        return (await s.execute(select(func.count()).select_from(AuditLog).where(AuditLog.kind == kind))).scalar_one()


def report(intent, status: str, **fields) -> ExecutionReport:
    return ExecutionReport(
        client_order_id=intent.client_order_id, account_id=intent.account_id, bot_id=intent.bot_id, status=status, **fields
    )


def event(intent, kind: str, **fields) -> PositionEvent:
    values = dict(
        ticket=777,
        account_id=intent.account_id,
        bot_id=intent.bot_id,
        client_order_id=intent.client_order_id,
        symbol=intent.symbol,
        side=intent.side,
        volume=intent.volume,
        kind=kind,
        open_price=2000.2,
        at=FILLED_AT,
    )
    values.update(fields)
    return PositionEvent(**values)


async def test_fill_open_close_each_applied_twice(db, bus, user, account):
    service, intent = await opened_decision(db, bus, user, account)
    closed = event(intent, "closed", close_price=2004.0, pnl=3.8, close_reason="tp", at=CLOSED_AT)
    for message in (report(intent, "filled", ticket=777, price=2000.2, filled_at=FILLED_AT), event(intent, "opened"), closed):
        await service.on_events_queue(message, delivery(message))
        await service.on_events_queue(message, delivery(message, count=2))

    row = await decision_row(db, intent.client_order_id)
    assert (row.order_status, row.ticket, row.fill_price, row.filled_at) == ("filled", 777, 2000.2, FILLED_AT)
    assert (row.position_status, row.close_price, row.close_reason, row.closed_at, row.pnl) == ("closed", 2004.0, "tp", CLOSED_AT, 3.8)
    assert await audit_count(db, "order") == 1
    assert await audit_count(db, "position") == 2  # opened, closed


async def test_events_out_of_order_end_in_the_same_state(db, bus, user, account):
    service, intent = await opened_decision(db, bus, user, account)
    # The close overtakes both the open and the fill report; a late `expired` must not undo the fill.
    await service.handle_position_event(event(intent, "closed", close_price=1999.0, pnl=-1.2, close_reason="sl", at=CLOSED_AT))
    await service.handle_position_event(event(intent, "opened"))
    await service.handle_execution_report(report(intent, "filled", ticket=777, price=2000.2, filled_at=FILLED_AT))
    await service.handle_execution_report(report(intent, "expired"))

    row = await decision_row(db, intent.client_order_id)
    assert (row.order_status, row.ticket, row.fill_price) == ("filled", 777, 2000.2)
    assert (row.position_status, row.close_reason, row.pnl) == ("closed", "sl", -1.2)


async def test_rejection_recorded_once(db, bus, user, account):
    service, intent = await opened_decision(db, bus, user, account)
    rejected = report(intent, "rejected", retcode=10016, reason="invalid stops")
    await service.handle_execution_report(rejected)
    await service.handle_execution_report(rejected)
    row = await decision_row(db, intent.client_order_id)
    assert row.order_status == "rejected" and row.ticket is None
    assert await audit_count(db, "order") == 1
    async with db() as s:
        message = (await s.execute(select(AuditLog.message).where(AuditLog.kind == "order"))).scalar_one()
    assert "10016" in message and "invalid stops" in message


async def test_position_matched_by_ticket_when_the_event_has_no_client_order_id(db, bus, user, account):
    service, intent = await opened_decision(db, bus, user, account)
    await service.handle_execution_report(report(intent, "filled", ticket=777, price=2000.2))
    await service.handle_position_event(event(intent, "closed", client_order_id=None, close_price=2001.0, pnl=0.8, close_reason="manual"))
    row = await decision_row(db, intent.client_order_id)
    assert (row.position_status, row.close_reason) == ("closed", "manual")


async def test_events_of_foreign_orders_change_nothing(db, bus, user, account):
    service, intent = await opened_decision(db, bus, user, account)
    await service.handle_execution_report(report(intent, "filled").model_copy(update={"client_order_id": "manual-1"}))
    await service.handle_position_event(event(intent, "opened", ticket=999, client_order_id=None, bot_id=None))
    # Our client order id on another account is not ours either.
    await service.handle_execution_report(report(intent, "filled").model_copy(update={"account_id": intent.account_id + 1}))
    row = await decision_row(db, intent.client_order_id)
    assert (row.order_status, row.position_status) == ("sent", None)
    assert await audit_count(db, "order") == 0


async def test_latest_account_snapshot_kept(db, bus, user, account):
    service, _ = await opened_decision(db, bus, user, account)

    def snap(minute: int, equity: float) -> AccountSnapshot:
        return AccountSnapshot(
            account_id=account.id, balance=10_000, equity=equity, margin=10, margin_free=9_990, taken_at=T0 + timedelta(minutes=minute)
        )

    for message in (snap(1, 10_010), snap(2, 10_020), snap(1, 10_010)):  # the last one is stale, redelivered late
        await service.on_events_queue(message, delivery(message))
    assert service.latest_snapshot(account.id).equity == 10_020
    assert service.latest_snapshot(account.id + 1) is None
