"""Audit rows: who changed what, written in the same transaction as the change they describe."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db import unnest
from shared.db.models import AuditLog
from shared.timeutil import utcnow


def jsonable(values: dict[str, Any] | None) -> dict[str, Any] | None:
    """A copy fit for a JSON column: datetimes as ISO strings, other non-JSON values as text."""
    if values is None:
        return None
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, (list, tuple)):
            value = [v if isinstance(v, (str, int, float, bool, dict, type(None))) else str(v) for v in value]
        elif not isinstance(value, (str, int, float, bool, dict, type(None))):
            value = str(value)
        out[key] = value
    return out


class AuditIsAppendOnly(RuntimeError):
    pass


@event.listens_for(AuditLog, "before_update")
@event.listens_for(AuditLog, "before_delete")
def _append_only(mapper, connection, target) -> None:
    """Audit rows are written once: the ORM refuses to change or delete one."""
    raise AuditIsAppendOnly(f"audit row {target.id} is append-only")


def entry(
    *,
    kind: str,
    message: str,
    actor: str = "decision",
    entity_id: str | int | None = None,
    user_id: int | None = None,
    bot_id: int | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> dict[str, Any]:
    """An audit row's values (see `record`, and `write` for several rows in one INSERT)."""
    return {
        "at": at or utcnow(),
        "actor": actor,
        "user_id": user_id,
        "bot_id": bot_id,
        "kind": kind,
        "entity_id": None if entity_id is None else str(entity_id),
        "message": message[:500],
        "before": jsonable(before),
        "after": jsonable(after),
    }


def record(*, session: AsyncSession, **fields: Any) -> AuditLog:
    """Add one audit row to the session (written with its flush); `fields` as for `entry`."""
    row = AuditLog(**entry(**fields))
    session.add(row)
    return row


_INSERT = AuditLog.__table__.insert()  # Core: the ORM's bulk insert took twice as long for a decision's two rows
# PostgreSQL: the same rows over one array per column (shared/db/unnest.py); the columns `entry` fills.
_INSERT_ARRAYS = unnest.insert("audit_log", (
    ("at", "time"), ("actor", "text"), ("user_id", "int"), ("bot_id", "int"), ("kind", "text"), ("entity_id", "text"),
    ("message", "text"), ("before", "json"), ("after", "json"),
))


async def write(*, session: AsyncSession, entries: list[dict[str, Any]]) -> None:
    """Insert audit rows (each made by `entry`) now, in one statement, without loading them as objects (the hot path
    of a decision), on the session's connection: pending ORM changes are not flushed first."""
    if not entries:
        return
    connection = await session.connection()
    if connection.dialect.name == "postgresql":
        await _INSERT_ARRAYS.execute(connection, entries)
    else:
        await connection.execute(_INSERT, entries)
