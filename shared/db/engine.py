"""The async engine and sessions, and `upgrade()` that runs the Alembic migrations."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from shared.db import sqlite

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def create_engine(url: str, *, sqlite_synchronous: str = "normal") -> AsyncEngine:
    """An async engine for `url`; for SQLite the file's folder is created, WAL and foreign keys turned on, and
    `sqlite_synchronous` set (settings.py: `normal` or `full`)."""
    if sqlite_synchronous.lower() not in ("normal", "full"):
        raise ValueError(f"sqlite_synchronous must be normal or full, not {sqlite_synchronous!r}")
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ":memory:"
        if database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        # aiosqlite's connection; statements on the event loop's thread, commits on the connection's (shared/db/sqlite.py).
        engine = create_async_engine(url, async_creator=sqlite.connector(database, timeout=30))

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA synchronous={sqlite_synchronous.upper()}")
            cur.close()

        return engine
    return create_async_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


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
