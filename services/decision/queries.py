"""The API's read side: the user's signals, decisions, orders, positions and audit rows, filtered and paged with an
opaque, stable cursor (newest first), and the closed trades `GET /stats` summarises."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.models import AuditLog, Bot, Decision, SignalRow
from shared.symbols import UnknownSymbol, get_spec

MAX_LIMIT = 500


class BadCursor(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Filters:
    bot_id: int | None = None
    symbol: str | None = None
    strategy: str | None = None
    since: datetime | None = None


def encode_cursor(*values: Any) -> str:
    raw = json.dumps([v.isoformat() if isinstance(v, datetime) else v for v in values], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, *kinds: type) -> list[Any]:
    """The cursor's values, checked against `kinds` (int, str or datetime); BadCursor for anything else."""
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(values, list) or len(values) != len(kinds):
            raise ValueError
        out = []
        for value, kind in zip(values, kinds, strict=True):
            if kind is datetime:
                value = datetime.fromisoformat(value)
                if value.tzinfo is None:
                    raise ValueError
            elif not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError
            out.append(value)
        return out
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise BadCursor("cursor: pass back the next_cursor of the previous page unchanged") from None


def _owned_bots(owner_id: int):
    return select(Bot.id).where(Bot.user_id == owner_id)


async def list_signals(*, session: AsyncSession, owner_id: int, filters: Filters, limit: int, cursor: str | None):
    stmt = (
        select(SignalRow, Decision)
        .join(Bot, Bot.id == SignalRow.bot_id)
        .outerjoin(Decision, Decision.signal_id == SignalRow.signal_id)
        .where(Bot.user_id == owner_id)
    )
    if filters.bot_id is not None:
        stmt = stmt.where(SignalRow.bot_id == filters.bot_id)
    if filters.symbol:
        stmt = stmt.where(SignalRow.symbol == filters.symbol)
    if filters.strategy:
        stmt = stmt.where(SignalRow.strategy == filters.strategy)
    if filters.since is not None:
        stmt = stmt.where(SignalRow.created_at >= filters.since)
    if cursor:
        at, sid = decode_cursor(cursor, datetime, str)
        stmt = stmt.where(or_(SignalRow.created_at < at, and_(SignalRow.created_at == at, SignalRow.signal_id < sid)))
    rows = (await session.execute(stmt.order_by(SignalRow.created_at.desc(), SignalRow.signal_id.desc()).limit(limit + 1))).all()
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1][0].created_at, rows[-1][0].signal_id) if more and rows else None
    return rows, next_cursor


async def get_signal(*, session: AsyncSession, owner_id: int, signal_id: str):
    stmt = (
        select(SignalRow, Decision)
        .join(Bot, Bot.id == SignalRow.bot_id)
        .outerjoin(Decision, Decision.signal_id == SignalRow.signal_id)
        .where(Bot.user_id == owner_id, SignalRow.signal_id == signal_id)
    )
    return (await session.execute(stmt)).first()


async def list_decisions(
    *, session: AsyncSession, owner_id: int, filters: Filters, limit: int, cursor: str | None, kind: str = "decisions"
):
    """Decisions; `kind` "orders" keeps those that sent an order, "positions" those whose order filled."""
    stmt = (
        select(Decision, SignalRow.strategy)
        .join(SignalRow, SignalRow.signal_id == Decision.signal_id)
        .where(Decision.bot_id.in_(_owned_bots(owner_id)))
    )
    if kind == "orders":
        stmt = stmt.where(Decision.client_order_id.is_not(None))
    elif kind == "positions":
        stmt = stmt.where(Decision.position_status.is_not(None))
    if filters.bot_id is not None:
        stmt = stmt.where(Decision.bot_id == filters.bot_id)
    if filters.symbol:
        stmt = stmt.where(Decision.symbol == filters.symbol)
    if filters.strategy:
        stmt = stmt.where(SignalRow.strategy == filters.strategy)
    if filters.since is not None:
        stmt = stmt.where(Decision.created_at >= filters.since)
    if cursor:
        (last_id,) = decode_cursor(cursor, int)
        stmt = stmt.where(Decision.id < last_id)
    rows = (await session.execute(stmt.order_by(Decision.id.desc()).limit(limit + 1))).all()
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (encode_cursor(rows[-1][0].id) if more and rows else None)


async def list_audit(
    *, session: AsyncSession, owner_id: int, filters: Filters, limit: int, cursor: str | None, kind: str | None = None
) -> tuple[list[AuditLog], str | None]:
    stmt = select(AuditLog).where(or_(AuditLog.user_id == owner_id, AuditLog.bot_id.in_(_owned_bots(owner_id))))
    if filters.bot_id is not None:
        stmt = stmt.where(AuditLog.bot_id == filters.bot_id)
    if filters.since is not None:
        stmt = stmt.where(AuditLog.at >= filters.since)
    if kind:
        stmt = stmt.where(AuditLog.kind == kind)
    if cursor:
        (last_id,) = decode_cursor(cursor, int)
        stmt = stmt.where(AuditLog.id < last_id)
    rows = list((await session.execute(stmt.order_by(AuditLog.id.desc()).limit(limit + 1))).scalars())
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (encode_cursor(rows[-1].id) if more and rows else None)


def _pip_size(symbol: str, suffix: str = "") -> float | None:
    try:
        return get_spec(symbol, suffix or None).pip_size
    except (UnknownSymbol, TypeError):
        try:
            return get_spec(symbol).pip_size
        except UnknownSymbol:
            return None


async def closed_trades(*, session: AsyncSession, owner_id: int, bot_id: int | None = None, since: datetime | None = None) -> list:
    """The user's closed trades from the decisions read model, as shared.stats.ClosedTrade values."""
    from shared.stats import ClosedTrade

    stmt = (
        select(Decision, SignalRow.strategy)
        .join(SignalRow, SignalRow.signal_id == Decision.signal_id)
        .where(Decision.bot_id.in_(_owned_bots(owner_id)), Decision.position_status == "closed", Decision.pnl.is_not(None))
    )
    if bot_id is not None:
        stmt = stmt.where(Decision.bot_id == bot_id)
    if since is not None:
        stmt = stmt.where(Decision.closed_at >= since)
    trades = []
    for decision, strategy in (await session.execute(stmt.order_by(Decision.id))).all():
        direction = 1.0 if decision.side == "buy" else -1.0
        opened = decision.fill_price
        closed = decision.close_price
        pip = _pip_size(decision.symbol)
        pips = direction * (closed - opened) / pip if (pip and opened is not None and closed is not None) else 0.0
        risk = abs(opened - decision.sl) if (opened is not None and decision.sl is not None) else 0.0
        r_multiple = direction * (closed - opened) / risk if (risk > 0 and closed is not None) else None
        trades.append(
            ClosedTrade(
                strategy=strategy,
                side=decision.side or "buy",
                pnl=float(decision.pnl),
                pips=pips,
                r_multiple=r_multiple,
                opened_at=decision.filled_at or decision.created_at,
                closed_at=decision.closed_at or decision.created_at,
            )
        )
    return trades
