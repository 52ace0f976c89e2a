"""The SQLite connection of the async engine (shared/db/sqlite.py): statements on the event loop's thread, commits
and offloaded or blocked statements in one trip to aiosqlite's thread, and everything SQLAlchemy reads of a cursor
still right: rows, row counts, last row ids, errors, transactions, another connection's lock."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from shared.db import sqlite
from shared.db.engine import CHECKPOINTERS, create_engine, session_factory, transaction
from tests.helpers import eventually

metadata = sa.MetaData()
items = sa.Table(
    "items", metadata, sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.String, unique=True, nullable=False)
)


@pytest.fixture
async def engine(tmp_path):
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'one-trip.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    yield engine
    await engine.dispose()


@pytest.fixture
def trips(monkeypatch) -> list[str]:
    """Every call sent to a connection's thread, by function name."""
    calls: list[str] = []
    original = sqlite.OneTripConnection._execute

    async def counted(self, fn, *args, **kwargs):
        calls.append(getattr(fn, "__name__", repr(fn)))
        return await original(self, fn, *args, **kwargs)

    monkeypatch.setattr(sqlite.OneTripConnection, "_execute", counted)
    return calls


async def test_the_engine_uses_one_trip_connections(engine):
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        assert isinstance(raw.driver_connection, sqlite.OneTripConnection)


async def test_a_select_makes_no_trip_and_a_read_only_session_ends_without_one(engine, trips):
    async with engine.begin() as conn:
        await conn.execute(items.insert(), [{"name": "a"}, {"name": "b"}])
    trips.clear()
    async with session_factory(engine)() as session:
        rows = (await session.execute(sa.select(items.c.name).order_by(items.c.id))).all()
    assert [r.name for r in rows] == ["a", "b"]
    # aiosqlite through SQLAlchemy's adapter: cursor, execute, fetchall, close, and a rollback on return: all here.
    assert trips == []


async def test_a_write_transaction_and_its_commit_make_no_trip(engine, trips):
    async with transaction(session_factory(engine)) as session:
        await session.execute(items.insert().values(name="a"))
        await session.execute(items.update().where(items.c.name == "a").values(name="b"))
    assert trips == []  # synchronous=NORMAL: the commit only appends to the WAL


async def test_with_synchronous_full_the_commit_goes_to_the_thread(tmp_path, trips):
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'full.db'}", sqlite_synchronous="full")
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        trips.clear()
        async with transaction(session_factory(engine)) as session:
            await session.execute(items.insert().values(name="a"))
        assert trips == ["_end"]  # each commit syncs the WAL: never on the loop's thread
        assert engine not in CHECKPOINTERS  # the connections checkpoint as SQLite does by default
    finally:
        await engine.dispose()


async def test_a_checkpointer_thread_does_the_checkpoints_and_stops_with_the_engine(tmp_path):
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'wal.db'}")
    checkpointer = CHECKPOINTERS[engine]
    checkpointer.interval_s = 0.05
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            assert (await conn.execute(sa.text("PRAGMA wal_autocheckpoint"))).scalar_one() == 0
        async with transaction(session_factory(engine)) as session:
            await session.execute(items.insert(), [{"name": f"n{i}"} for i in range(500)])
        passes = checkpointer.checkpoints
        await eventually(lambda: checkpointer.checkpoints >= passes + 2, what="two checkpoint passes")
        # Everything written is in the database file now: a reader that ignores the WAL sees it.
        raw = sqlite3.connect(f"file:{tmp_path / 'wal.db'}?immutable=1", uri=True)
        try:
            assert raw.execute("SELECT count(*) FROM items").fetchone() == (500,)
        finally:
            raw.close()
    finally:
        await engine.dispose()
    assert checkpointer._thread is None
    assert not any(t.name.startswith("sqlite-checkpoint:") and str(tmp_path) in t.name for t in threading.enumerate())


async def test_offloaded_statements_go_to_the_thread_one_trip_each(engine, trips):
    with sqlite.offloaded():
        async with transaction(session_factory(engine)) as session:
            await session.execute(items.insert().values(name="a"))
            names = (await session.execute(sa.select(items.c.name))).scalars().all()
    assert names == ["a"]
    assert trips == ["_run_waiting", "_run_waiting", "_end"]


def _hold_write_lock(path, held: threading.Event, release: threading.Event) -> None:
    """Another connection (as another process would) holding SQLite's write lock until `release`."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO items (name) VALUES ('holder')")
        held.set()
        release.wait(10)
        conn.execute("COMMIT")
    finally:
        conn.close()


async def test_a_statement_blocked_by_another_writer_waits_on_the_thread_and_the_loop_runs_on(tmp_path, trips):
    path = tmp_path / "locked.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        held, release = threading.Event(), threading.Event()
        holder = threading.Thread(target=_hold_write_lock, args=(str(path), held, release))
        holder.start()
        await asyncio.to_thread(held.wait, 10)
        trips.clear()
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while not release.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        async def release_later() -> None:
            await asyncio.sleep(0.3)
            release.set()

        async def write() -> float:
            started = time.monotonic()
            async with transaction(session_factory(engine)) as session:
                await session.execute(items.insert().values(name="mine"))
            return time.monotonic() - started

        waited, *_ = await asyncio.gather(write(), tick(), release_later())
        await asyncio.to_thread(holder.join, 10)
        assert waited >= 0.25  # it waited for the lock instead of failing
        assert ticks >= 10  # and the event loop went on meanwhile (the wait was on the connection's thread)
        assert trips == ["_run_waiting"]  # the commit, once the lock was had, ran on the loop's thread
        async with engine.connect() as conn:
            assert (await conn.execute(sa.select(items.c.name).order_by(items.c.id))).scalars().all() == ["holder", "mine"]
            raw = (await conn.get_raw_connection()).driver_connection
            # Back on the loop's thread, the connection fails at once again rather than sleep.
            assert (await conn.execute(sa.text("PRAGMA busy_timeout"))).scalar_one() == 0
            assert raw._wait_ms == 30_000
    finally:
        await engine.dispose()


async def test_http_requests_are_offloaded_and_the_lifespan_is_not(engine, trips):
    from fastapi import FastAPI

    from shared.http import add_ops_routes

    async def ready() -> tuple[bool, dict]:
        return True, {}

    app = FastAPI()
    add_ops_routes(app, ready)

    @app.get("/names")
    async def names() -> list[str]:
        async with session_factory(engine)() as session:
            return list((await session.execute(sa.select(items.c.name))).scalars())

    async with engine.begin() as conn:
        await conn.execute(items.insert().values(name="a"))
    trips.clear()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        assert (await client.get("/names")).json() == ["a"]
    assert trips == ["_run_waiting"]
    trips.clear()
    async with session_factory(engine)() as session:  # outside a request: on the loop's thread
        await session.execute(sa.select(items.c.name))
    assert trips == []


async def test_the_middleware_offloads_http_but_not_the_lifespan_that_starts_the_consumers():
    from shared.http import SQLiteOffloaded

    seen: dict[str, bool] = {}

    async def inner(scope, receive, send) -> None:
        seen[scope["type"]] = sqlite._OFFLOADED.get()

    middleware = SQLiteOffloaded(inner)
    for kind in ("lifespan", "http"):
        await middleware({"type": kind}, None, None)
    assert seen == {"lifespan": False, "http": True}
    assert sqlite._OFFLOADED.get() is False  # reset after the request


async def test_rowcount_lastrowid_and_returning(engine):
    async with engine.begin() as conn:
        inserted = await conn.execute(items.insert().values(name="a"))
        assert inserted.inserted_primary_key == (1,)
        returned = await conn.execute(items.insert().values(name="b").returning(items.c.id))
        assert returned.scalar_one() == 2
        await conn.execute(items.insert(), [{"name": "c"}, {"name": "d"}])  # executemany
        updated = await conn.execute(items.update().where(items.c.id > 2).values(name=items.c.name + "!"))
        assert updated.rowcount == 2
    async with engine.connect() as conn:
        names = (await conn.execute(sa.select(items.c.name).order_by(items.c.id))).scalars().all()
        assert names == ["a", "b", "c!", "d!"]
        streamed = await conn.stream(sa.select(items.c.id).order_by(items.c.id))
        assert [row.id async for row in streamed] == [1, 2, 3, 4]


async def test_errors_and_rollback(engine):
    sessions = session_factory(engine)
    async with transaction(sessions) as session:
        await session.execute(items.insert().values(name="a"))
    with pytest.raises(IntegrityError):
        async with transaction(sessions) as session:
            await session.execute(items.insert().values(name="b"))
            await session.execute(items.insert().values(name="a"))  # unique: the whole transaction rolls back
    async with sessions() as session:
        assert (await session.execute(sa.select(items.c.name))).scalars().all() == ["a"]


@pytest.mark.parametrize(("setting", "pragma"), [("normal", 1), ("full", 2)])
async def test_synchronous_follows_the_setting(tmp_path, setting, pragma):
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'sync.db'}", sqlite_synchronous=setting)
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(sa.text("PRAGMA synchronous"))).scalar_one() == pragma
            assert (await conn.execute(sa.text("PRAGMA journal_mode"))).scalar_one() == "wal"
    finally:
        await engine.dispose()
    with pytest.raises(ValueError, match="normal or full"):
        create_engine("sqlite+aiosqlite:///x.db", sqlite_synchronous="off")
