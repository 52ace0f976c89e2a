"""The migrations run on SQLite and PostgreSQL alike: a fresh database of each is upgraded to head and holds every table."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import inspect
from sqlmodel import SQLModel

from shared.db.engine import create_engine, upgrade


async def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await engine.dispose()


def _check(url: str) -> None:
    import shared.db.models  # noqa: F401  the tables the code expects

    upgrade(url)
    upgrade(url)  # at head already: a no-op
    tables = asyncio.run(_tables(url))
    expected = {t.name for t in SQLModel.metadata.sorted_tables}
    assert expected <= tables, f"missing after upgrade: {sorted(expected - tables)}"
    assert "alembic_version" in tables


def test_a_fresh_sqlite_database_upgrades_to_head(tmp_path):
    _check(f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}")


@pytest.mark.services
def test_a_fresh_postgresql_database_upgrades_to_head(pg_url):
    _check(pg_url)
