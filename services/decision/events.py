"""The decisions read model of orders and positions, kept from the executor's ExecutionReports and PositionEvents.

Each function is idempotent: an event applied twice changes nothing the second time and writes no second audit row.
A fill is final: a late `expired` or `rejected` never undoes it, and a closed position never reopens.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.decision import audit
from shared.db.models import Decision
from shared.messages import ExecutionReport, PositionEvent

_ORDER_FIELDS = ("order_status", "ticket", "fill_price", "filled_at")
_POSITION_FIELDS = (*_ORDER_FIELDS, "position_status", "close_price", "close_reason", "closed_at", "pnl")


def _state(decision: Decision, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: getattr(decision, name) for name in names}


def _changes(before: dict[str, Any], after: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    changed = [k for k in after if after[k] != before[k]]
    return {k: before[k] for k in changed}, {k: after[k] for k in changed}


def _mark_filled(decision: Decision, *, ticket: int | None, price: float | None, at: datetime | None) -> None:
    decision.order_status = "filled"
    if decision.ticket is None and ticket is not None:
        decision.ticket = ticket
    if decision.fill_price is None and price is not None:
        decision.fill_price = price
    if decision.filled_at is None and at is not None:
        decision.filled_at = at


async def apply_execution_report(*, session: AsyncSession, report: ExecutionReport, now: datetime) -> Decision | None:
    """Record the order's outcome on its decision; None when no decision has this client order id."""
    stmt = select(Decision).where(Decision.client_order_id == report.client_order_id, Decision.account_id == report.account_id)
    decision = (await session.execute(stmt)).scalar_one_or_none()
    if decision is None:
        return None
    before = _state(decision, _ORDER_FIELDS)
    if report.status == "filled":
        decision.order_status = "filled"
        if report.ticket is not None:
            decision.ticket = report.ticket
        if report.price is not None:
            decision.fill_price = report.price
        decision.filled_at = decision.filled_at or report.filled_at or report.produced_at
    elif decision.order_status != "filled":
        decision.order_status = report.status
    previous, changed = _changes(before, _state(decision, _ORDER_FIELDS))
    if changed:
        audit.record(
            session=session,
            kind="order",
            entity_id=decision.client_order_id,
            bot_id=decision.bot_id,
            at=now,
            message=f"order {decision.client_order_id} {report.status}"
            + (f" at {report.price}" if report.price is not None else "")
            + (f" (retcode {report.retcode})" if report.retcode is not None else "")
            + (f": {report.reason}" if report.reason else ""),
            before=previous,
            after=changed,
        )
        await session.flush()
    return decision


async def _decision_for_position(*, session: AsyncSession, event: PositionEvent) -> Decision | None:
    if event.client_order_id:
        stmt = select(Decision).where(Decision.client_order_id == event.client_order_id, Decision.account_id == event.account_id)
        decision = (await session.execute(stmt)).scalar_one_or_none()
        if decision is not None:
            return decision
    stmt = select(Decision).where(Decision.account_id == event.account_id, Decision.ticket == event.ticket, Decision.action == "open")
    return (await session.execute(stmt)).scalars().first()


async def apply_position_event(*, session: AsyncSession, event: PositionEvent, now: datetime) -> Decision | None:
    """Record a position's opening or closing on its decision; None for a position no decision of ours opened."""
    decision = await _decision_for_position(session=session, event=event)
    if decision is None:
        return None
    before = _state(decision, _POSITION_FIELDS)
    # Any event about the position proves the order filled, whichever of report and event came first.
    _mark_filled(decision, ticket=event.ticket, price=event.open_price, at=event.at)
    if event.kind == "closed":
        if decision.position_status != "closed":
            decision.position_status = "closed"
            decision.close_price = event.close_price
            decision.close_reason = event.close_reason
            decision.closed_at = event.at
            decision.pnl = event.pnl
    elif decision.position_status is None:
        decision.position_status = "open"
    previous, changed = _changes(before, _state(decision, _POSITION_FIELDS))
    if changed:
        what = "opened" if event.kind != "closed" else f"closed ({event.close_reason}) at {event.close_price}, pnl {event.pnl}"
        audit.record(
            session=session,
            kind="position",
            entity_id=event.ticket,
            bot_id=decision.bot_id,
            at=now,
            message=f"position {event.ticket} of {decision.client_order_id} {what}",
            before=previous,
            after=changed,
        )
        await session.flush()
    return decision
