"""SQLite for the async engine: aiosqlite's connection, its statements run on the event loop's thread.

aiosqlite runs each call on the connection's own thread, and SQLAlchemy's aiosqlite adapter makes four calls per
SELECT (open a cursor, execute, fetch all, close) and one more per commit or rollback, even when there is nothing to
end. A trip to that thread costs about 0.13 ms here (the thread's wake-up, then the event loop's), against 10-50 µs
for the statements of the trading path (point lookups and one-row writes); the ORM adds about 0.05 ms.

So a statement runs where it is called, in one step (execute, fetch all, close), unless:
- another connection holds the write lock: the statement then fails at once (`busy_timeout` is 0 on the loop's
  thread, which must never sleep), and is run again on the connection's thread, which waits for the lock as long as
  the engine's time-out (30 s) allows; the loop goes on meanwhile, so the holder can finish;
- the caller runs in `offloaded()`: its statements go to the thread. The HTTP API does (shared/http.py), since a
  listing or the admin's counts may scan a large table and must not hold up the trading path on the same loop.

Commits run here too when they never wait on the disk: in WAL mode with `synchronous=NORMAL` a commit only appends
to the WAL, and the WAL is copied into the database file (a checkpoint, which syncs) by a `Checkpointer` thread
instead of by whichever commit passes 1,000 pages. With `synchronous=FULL` every commit syncs the WAL, so commits go
to the connection's thread. Rollbacks run here (they write nothing); neither makes a call outside a transaction.

Going to the thread costs more than the trip: its answer needs the GIL, and a busy event loop gives it up only
after the interpreter's switch interval (5 ms), which put 5-6 ms gaps into the slowest decisions.

The connection, its thread and sqlite3's behaviour are otherwise aiosqlite's (aiosqlite is pinned in pyproject.toml:
this relies on its `Connection._execute` and `_conn`); the connection is opened with `check_same_thread=False`, and
SQLAlchemy never uses one connection from two tasks at once.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from functools import partial
from typing import Any

import aiosqlite

from shared.logging import get_logger

log = get_logger(__name__)

_OFFLOADED: ContextVar[bool] = ContextVar("scalper_sqlite_offloaded", default=False)


@contextmanager
def offloaded() -> Iterator[None]:
    """Within this block (and the tasks it starts), SQLite statements run on their connection's thread, never on the
    event loop's: for work whose statements may be long."""
    token = _OFFLOADED.set(True)
    try:
        yield
    finally:
        _OFFLOADED.reset(token)


def _busy(exc: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY or one of its extended codes: another connection holds the lock."""
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_BUSY


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
        connection = self._connection
        if _OFFLOADED.get():
            result = await connection._execute(connection._run_waiting, sql, parameters, many)
        else:
            try:
                result = connection._run_here(sql, parameters, many)
            except sqlite3.OperationalError as exc:
                if not _busy(exc):
                    raise
                # Nothing was done (the lock was not taken): again on the thread, which may wait for the lock.
                result = await connection._execute(connection._run_waiting, sql, parameters, many)
        self.description, self.rowcount, self.lastrowid, rows = result
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
    """aiosqlite's connection whose statements run on the caller's thread, or in one trip to its own (module doc)."""

    def __init__(self, connector: Callable[[], sqlite3.Connection], *, wait_ms: int, commit_here: bool, **kwargs: Any) -> None:
        super().__init__(connector, **kwargs)
        self._wait_ms = wait_ms  # how long a statement on the connection's thread waits for another's lock
        self._busy_timeout_ms = wait_ms  # the connection's current setting (sqlite3.connect's timeout)
        self._commit_here = commit_here  # commits never sync (WAL, synchronous=NORMAL, checkpoints elsewhere)

    def _set_busy_timeout(self, ms: int) -> None:
        if self._busy_timeout_ms != ms:
            self._conn.execute(f"PRAGMA busy_timeout={ms:d}").close()
            self._busy_timeout_ms = ms

    def _run_here(self, sql: str, parameters: Any, many: bool) -> tuple[Any, int, int | None, list]:
        """On the event loop's thread: fail at once rather than sleep while another connection holds the lock."""
        conn = self._conn  # raises ValueError("no active connection") once closed, as aiosqlite does
        self._set_busy_timeout(0)
        return _run(conn, sql, parameters, many)

    def _run_waiting(self, sql: str, parameters: Any, many: bool) -> tuple[Any, int, int | None, list]:
        """On the connection's thread: wait for another connection's lock up to the time-out."""
        self._set_busy_timeout(self._wait_ms)
        return _run(self._conn, sql, parameters, many)

    def _end(self, commit: bool) -> None:
        """On the connection's thread: commit (waiting for a lock up to the time-out, and for the disk) or roll back."""
        self._set_busy_timeout(self._wait_ms)
        (self._conn.commit if commit else self._conn.rollback)()

    def cursor(self) -> OneTripCursor:  # type: ignore[override]  # SQLAlchemy enters it with `__aenter__`
        return OneTripCursor(self)

    async def commit(self) -> None:
        if not self._conn.in_transaction:
            return
        if self._commit_here and not _OFFLOADED.get():
            try:
                self._set_busy_timeout(0)
                self._conn.commit()
                return
            except sqlite3.OperationalError as exc:
                if not _busy(exc):
                    raise
                # The transaction is still open and the commit may be tried again (SQLite's COMMIT on SQLITE_BUSY).
        await self._execute(self._end, True)

    async def rollback(self) -> None:
        # A pooled connection is rolled back each time it is returned, mostly with nothing to roll back.
        if not self._conn.in_transaction:
            return
        if _OFFLOADED.get():
            await self._execute(self._end, False)
        else:
            self._conn.rollback()  # it writes nothing and waits for no lock


def connector(database: str, *, timeout: float = 30.0, commit_here: bool = False, **kwargs: Any) -> Callable[[], OneTripConnection]:
    """An `async_creator` for create_async_engine: a OneTripConnection to `database`; `timeout` (seconds) is how long
    a statement waits for another connection's lock, on the connection's thread; `commit_here` when commits never
    sync (module doc); other kwargs go to sqlite3.connect."""

    def connect() -> OneTripConnection:
        opened = partial(sqlite3.connect, database, timeout=timeout, check_same_thread=False, **kwargs)
        connection = OneTripConnection(opened, wait_ms=round(timeout * 1000), commit_here=commit_here, iter_chunk_size=64)
        connection._thread.daemon = True  # as SQLAlchemy does for aiosqlite: an unclosed connection never holds up exit
        return connection

    return connect


class Checkpointer:
    """A thread that copies the WAL into the database file every `interval_s` (a PASSIVE checkpoint: it waits for no
    reader or writer), for connections whose own automatic checkpoint is off (`PRAGMA wal_autocheckpoint=0`).

    Started by the engine's first connection, stopped (after a last checkpoint) when the engine is disposed; it may
    start again after that."""

    def __init__(self, database: str, *, interval_s: float = 1.0) -> None:
        self.database = database
        self.interval_s = interval_s
        self.checkpoints = 0  # completed passes, for tests
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._guard = threading.Lock()

    def start(self) -> None:
        with self._guard:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=f"sqlite-checkpoint:{self.database}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._guard:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(timeout=10)

    def _run(self) -> None:
        conn = sqlite3.connect(self.database, timeout=0)
        try:
            stopping = False
            while not stopping:
                stopping = self._stop.wait(self.interval_s)  # once more on the way out: what the last interval wrote
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.checkpoints += 1
                except sqlite3.Error as exc:  # tried again next pass; a WAL that keeps growing is worth a log line
                    log.warning("sqlite checkpoint failed", database=self.database, error=str(exc))
        finally:
            conn.close()
