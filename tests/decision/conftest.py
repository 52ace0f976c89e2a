"""Fixtures of the decision tests (helpers in decision_helpers.py)."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest
from decision_helpers import RecordingBus, add_account, add_user
from sqlalchemy import text
from sqlalchemy.engine import make_url

from shared.db.engine import create_engine, session_factory, upgrade
from shared.db.models import BrokerAccount, User


@pytest.fixture
def bus() -> RecordingBus:
    return RecordingBus()


@pytest.fixture
async def user(db) -> User:
    return await add_user(db)


@pytest.fixture
async def account(db, user) -> BrokerAccount:
    return await add_account(db, user)


# --- PostgreSQL, when the machine has it ------------------------------------------------------------------

PG_ADMIN_URL = os.environ.get("SCALPER_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")


def _required_services() -> bool:
    return os.environ.get("SCALPER_REQUIRE_SERVICES", "").strip().lower() in ("1", "true", "yes")


def _pg_dsn(url) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


async def _pg_execute(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(_pg_dsn(make_url(PG_ADMIN_URL)), timeout=3)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_database():
    """A PostgreSQL database of this run (its own uuid name), migrated once, dropped at the end."""
    import asyncpg

    admin = make_url(PG_ADMIN_URL)
    name = f"scalper_test_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_pg_execute(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        where = admin.render_as_string()
        if _required_services():
            pytest.fail(f"PostgreSQL unreachable at {where} (SCALPER_REQUIRE_SERVICES=1): {exc}")
        pytest.skip(f"PostgreSQL unreachable at {where}: {exc}")
    try:
        url = admin.set(database=name).render_as_string(hide_password=False)
        upgrade(url)
        yield url
    finally:
        asyncio.run(_pg_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def pg_sessions(pg_database):
    """Sessions on this run's PostgreSQL database, emptied for this test (tests of one run go one at a time)."""
    from sqlmodel import SQLModel

    engine = create_engine(pg_database)
    tables = ", ".join(f'"{t.name}"' for t in SQLModel.metadata.sorted_tables)
    async with engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    try:
        yield session_factory(engine)
    finally:
        await engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def db(request):
    """Sessions on SQLite, then on PostgreSQL: the same test against both databases the engine runs on."""
    fixture = "sessions" if request.param == "sqlite" else "pg_sessions"
    return request.getfixturevalue(fixture)
