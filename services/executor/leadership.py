"""Which executor process leads an account: the one that restores its paper book, settles orders left in `sending`,
syncs with the broker and runs the monitor. A standby (a second process for the same account) waits for the lock.

RabbitMQ hands each account's single-active-consumer queues to one consumer at a time, so only the active process
gets deliveries; this lock decides the work nobody delivers (the monitor, start-up settling). Passed to the executor
as a collaborator: `SoleLeader` where one process holds the database (SQLite, the embedded stack), `AdvisoryLock` on
PostgreSQL.
"""

from __future__ import annotations

from typing import Protocol

from shared.logging import get_logger

log = get_logger(__name__)


class Leadership(Protocol):
    @property
    def held(self) -> bool: ...

    async def try_acquire(self, account_ids: list[int]) -> bool:
        """Take the lock of every account in `account_ids` (all or none); True when this process holds them all."""

    async def release(self) -> None: ...


class SoleLeader:
    """The only process on its database: it always leads."""

    held = True

    async def try_acquire(self, account_ids: list[int]) -> bool:
        return True

    async def release(self) -> None:
        return None


class AdvisoryLock:
    """A PostgreSQL session advisory lock per account, held by one dedicated connection: a process that dies loses it,
    and a standby takes it."""

    NAMESPACE = 0x5CA1  # advisory lock key: (namespace, account id)

    def __init__(self, url: str) -> None:
        self._url = url
        self._conn = None
        self._locked: set[int] = set()

    @property
    def held(self) -> bool:
        return bool(self._locked)

    async def try_acquire(self, account_ids: list[int]) -> bool:
        if self._locked and self._conn is not None and not self._conn.is_closed():
            try:  # the locks live exactly as long as this connection (asked each monitor cycle, not per order)
                await self._conn.fetchval("SELECT 1", timeout=5)
            except Exception as exc:  # noqa: BLE001  the connection is gone, and the locks with it
                log.warning("executor leader lock lost with its connection", error=repr(exc))
                await self.release()
        if self._conn is None or self._conn.is_closed():
            self._locked.clear()  # the locks died with their connection (a database restart): take them again
        wanted = [a for a in account_ids if a not in self._locked]
        if not wanted:
            return True
        import asyncpg
        from sqlalchemy.engine import make_url

        try:
            if self._conn is None or self._conn.is_closed():
                dsn = make_url(self._url).set(drivername="postgresql").render_as_string(hide_password=False)
                self._conn = await asyncpg.connect(dsn, timeout=5)
            got = [await self._conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", self.NAMESPACE, a) for a in wanted]
            if all(got):
                self._locked.update(wanted)
                return True
            for account_id, ok in zip(wanted, got, strict=True):
                if ok:
                    await self._conn.execute("SELECT pg_advisory_unlock($1, $2)", self.NAMESPACE, account_id)
        except Exception as exc:  # noqa: BLE001  not leading yet; asked again next cycle
            log.info("executor leader lock not taken", error=repr(exc))
            await self.release()
        return False

    async def release(self) -> None:
        conn, self._conn = self._conn, None
        self._locked.clear()
        if conn is not None:
            try:
                await conn.close()
            except Exception as exc:  # noqa: BLE001  a dead connection holds no lock: nothing else to do
                log.info("executor leader lock connection closed with an error", error=repr(exc))


def leadership_for(database_url: str) -> Leadership:
    """The advisory lock on PostgreSQL; on SQLite one process owns the file, and it leads."""
    return AdvisoryLock(database_url) if database_url.startswith("postgresql") else SoleLeader()
