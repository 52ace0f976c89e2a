"""SQLite for the async engine: aiosqlite's connection, with one trip to its thread per statement.

aiosqlite runs each call on the connection's own thread, and SQLAlchemy's aiosqlite adapter makes four calls per
SELECT (open a cursor, execute, fetch all, close) and one more per commit or rollback, even when there is nothing to
end. Each trip costs a thread wake-up (about 0.1 ms here) against microseconds for the statement itself, so a
decision of seven statements spent most of its time waiting for threads. This cursor does the four steps in one
trip, and commit and rollback make no trip outside a transaction. The connection, its thread, its locking and
sqlite3's behaviour are aiosqlite's, unchanged (aiosqlite is pinned in pyproject.toml: this relies on its
`Connection._execute` and `_conn`).
"""

from __future__ import annotations

import sqlite3
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import aiosqlite


def _run(conn: sqlite3.Connection, sql: str, parameters: Any, many: bool) -> tuple[Any, int, int | None, list]:
    """On the connection's thread: the whole statement, rows included, and the cursor closed."""
    cursor = conn.cursor()
    try:
        if many:
            cursor.executemany(sql, parameters)
        else:
            cursor.execute(sql, parameters)
        rows = cursor.fetchall() if cursor.description else []
        return cursor.description, cursor.rowcount, cursor.lastrowid, rows
    finally:
        cursor.close()


class OneTripCursor:
    """The part of aiosqlite's Cursor that SQLAlchemy's adapter uses; results are read in the one trip."""

    arraysize = 1

    def __init__(self, connection: OneTripConnection) -> None:
        self._connection = connection
        self.description: Any = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self._rows: deque = deque()

    async def __aenter__(self) -> OneTripCursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def execute(self, sql: str, parameters: Any = ()) -> OneTripCursor:
        return await self._trip(sql, parameters, many=False)

    async def executemany(self, sql: str, parameters: Sequence[Any]) -> OneTripCursor:
        return await self._trip(sql, parameters, many=True)

    async def _trip(self, sql: str, parameters: Any, *, many: bool) -> OneTripCursor:
        conn = self._connection._conn  # raises ValueError("no active connection") once closed, as aiosqlite does
        self.description, self.rowcount, self.lastrowid, rows = await self._connection._execute(_run, conn, sql, parameters, many)
        self._rows = deque(rows)
        return self

    async def fetchone(self) -> Any:
        return self._rows.popleft() if self._rows else None

    async def fetchmany(self, size: int | None = None) -> list:
        count = self.arraysize if size is None else size
        return [self._rows.popleft() for _ in range(min(count, len(self._rows)))]

    async def fetchall(self) -> list:
        rows, self._rows = list(self._rows), deque()
        return rows

    async def close(self) -> None:
        self._rows.clear()


class OneTripConnection(aiosqlite.Connection):
    """aiosqlite's connection whose cursors make one trip per statement."""

    def cursor(self) -> OneTripCursor:  # type: ignore[override]  # SQLAlchemy enters it with `__aenter__`
        return OneTripCursor(self)

    async def commit(self) -> None:
        if self._conn.in_transaction:
            await super().commit()

    async def rollback(self) -> None:
        # A pooled connection is rolled back each time it is returned, mostly with nothing to roll back.
        if self._conn.in_transaction:
            await super().rollback()


def connector(database: str, **kwargs: Any) -> Callable[[], OneTripConnection]:
    """An `async_creator` for create_async_engine: a OneTripConnection to `database` (sqlite3.connect's kwargs)."""

    def connect() -> OneTripConnection:
        connection = OneTripConnection(partial(sqlite3.connect, database, **kwargs), iter_chunk_size=64)
        connection._thread.daemon = True  # as SQLAlchemy does for aiosqlite: an unclosed connection never holds up exit
        return connection

    return connect
