"""Shared fixtures: real data (skip or fail by SCALPER_REQUIRE_DATA), a fresh database per test, the in-memory bus."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared.settings import Settings


def _required(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def need(condition: bool, reason: str, *, required_by: str) -> None:
    """Skip with `reason` when `condition` is false, or fail when the environment variable `required_by` is set (CI)."""
    if condition:
        return
    if _required(required_by):
        pytest.fail(f"{reason} (and {required_by}=1 demands it)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Settings().data_dir
    need(path.is_dir(), f"real M1 data folder {path} is absent (set SCALPER_DATA_DIR)", required_by="SCALPER_REQUIRE_DATA")
    return path


@pytest.fixture(scope="session")
def gold_file(data_dir: Path) -> Path:
    path = data_dir / "XAUUSD_M1.csv"
    need(path.is_file(), f"{path} is absent", required_by="SCALPER_REQUIRE_DATA")
    return path


@pytest.fixture(scope="session")
def eurusd_file(data_dir: Path) -> Path:
    path = data_dir / "EURUSD_M1.tsv"
    need(path.is_file(), f"{path} is absent", required_by="SCALPER_REQUIRE_DATA")
    return path


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite database for this test, migrated to head."""
    from shared.db.engine import upgrade

    url = f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
    upgrade(url)
    return url


@pytest.fixture
async def sessions(sqlite_url: str):
    from shared.db.engine import create_engine, session_factory

    engine = create_engine(sqlite_url)
    yield session_factory(engine)
    await engine.dispose()


@pytest.fixture(autouse=True)
def _no_broker_specs_between_tests():
    """A spec an MT5 session described in one test must not size another test's orders (shared/symbols.py)."""
    from shared.symbols import forget_broker_specs

    yield
    forget_broker_specs()


@pytest.fixture
def chromium_available():
    import shutil

    need(shutil.which("chromium") is not None, "Debian's chromium is not installed (apt-get install chromium)", required_by="SCALPER_REQUIRE_SERVICES")
