"""The SQLite connection of the async engine (shared/db/sqlite.py): one trip to aiosqlite's thread per statement,
and everything SQLAlchemy reads of a cursor still right: rows, row counts, last row ids, errors, transactions."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from shared.db import sqlite
from shared.db.engine import create_engine, session_factory, transaction

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


async def test_a_select_is_one_trip_and_a_read_only_session_ends_without_one(engine, trips):
    async with engine.begin() as conn:
        await conn.execute(items.insert(), [{"name": "a"}, {"name": "b"}])
    trips.clear()
    async with session_factory(engine)() as session:
        rows = (await session.execute(sa.select(items.c.name).order_by(items.c.id))).all()
    assert [r.name for r in rows] == ["a", "b"]
    # aiosqlite through SQLAlchemy's adapter: cursor, execute, fetchall, close, and a rollback on return.
    assert trips == ["_run"]


async def test_a_write_transaction_is_its_statements_and_the_commit(engine, trips):
    async with transaction(session_factory(engine)) as session:
        await session.execute(items.insert().values(name="a"))
        await session.execute(items.update().where(items.c.name == "a").values(name="b"))
    assert trips == ["_run", "_run", "commit"]


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
