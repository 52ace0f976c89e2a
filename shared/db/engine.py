"""The async engine and sessions, and `upgrade()` that runs the Alembic migrations."""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from shared.db import sqlite

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
POOL_RECYCLE_S = 300  # a pooled PostgreSQL connection older than this is closed at checkout and replaced
# The background checkpointer of each SQLite engine that has one (synchronous NORMAL, a file).
CHECKPOINTERS: weakref.WeakKeyDictionary[AsyncEngine, sqlite.Checkpointer] = weakref.WeakKeyDictionary()


def create_engine(url: str, *, sqlite_synchronous: str = "normal") -> AsyncEngine:
    """An async engine for `url`; for SQLite the file's folder is created, WAL and foreign keys turned on, and
    `sqlite_synchronous` set (settings.py: `normal` or `full`)."""
    if sqlite_synchronous.lower() not in ("normal", "full"):
        raise ValueError(f"sqlite_synchronous must be normal or full, not {sqlite_synchronous!r}")
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ":memory:"
        file_backed = database != ":memory:"
        if file_backed:
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        # aiosqlite's connection, its statements on the event loop's thread (shared/db/sqlite.py). With synchronous
        # NORMAL a commit never syncs once a Checkpointer thread does the checkpoints: commits run there too.
        commit_here = file_backed and sqlite_synchronous.lower() == "normal"
        engine = create_async_engine(url, async_creator=sqlite.connector(database, timeout=30, commit_here=commit_here))
        checkpointer = sqlite.Checkpointer(database) if commit_here else None

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA synchronous={sqlite_synchronous.upper()}")
            if checkpointer is not None:
                cur.execute("PRAGMA wal_autocheckpoint=0")
                checkpointer.start()
            cur.close()

        if checkpointer is not None:
            event.listen(engine.sync_engine, "engine_disposed", lambda _engine: checkpointer.stop())
            CHECKPOINTERS[engine] = checkpointer
        return engine
    # No ping on every checkout (a round trip before each transaction): connections are recycled before a server or
    # proxy drops them for idling, and one dropped anyway (a database restart) fails its statement with a lost
    # connection, which the handlers' Patience (shared/db/patience.py) retries on a fresh one, like any outage.
    return create_async_engine(url, pool_recycle=POOL_RECYCLE_S, pool_size=10, max_overflow=10)


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def transaction(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A session whose work commits when the block ends without error and rolls back otherwise."""
    async with sessions() as session, session.begin():
        yield session


def alembic_config(url: str):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "heads") -> None:
    """Bring the database at `url` to `revision` (blocking: call it before the event loop starts, or in a thread).

    `heads` rather than `head`, so that two migrations written side by side both apply until a merge revision joins them.
    """
    from alembic import command

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), revision)
