"""Fixtures of the distributed tests: a vhost and a database of this test's own, and a cluster of service processes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import need
from tests.distributed import cluster as kit

pytestmark = pytest.mark.services


def _reachable_postgres() -> str | None:
    try:
        kit.drop_database(f"{kit.PG_ADMIN_URL.rsplit('/', 1)[0]}/scalper_probe_absent")
        return None
    except Exception as exc:  # noqa: BLE001
        return f"PostgreSQL unreachable at {kit.PG_ADMIN_URL}: {exc!r}"


@pytest.fixture(scope="session")
def services_available() -> None:
    problem = kit.rabbitmqctl_available() or _reachable_postgres()
    if not kit.SCALPER.exists():
        problem = f"{kit.SCALPER} is not installed"
    need(problem is None, problem or "", required_by="SCALPER_REQUIRE_SERVICES")


@pytest.fixture
def vhost(services_available) -> str:
    """A RabbitMQ vhost of this test (the services' fixed queue names never meet another run's)."""
    name = kit.add_vhost()
    yield name
    kit.delete_vhost(name)


@pytest.fixture
def pg_url(services_available) -> str:
    url = kit.create_database()
    yield url
    kit.drop_database(url)


@pytest.fixture
def make_cluster(tmp_path: Path):
    """Build clusters; every process they started is stopped at teardown, whatever the test did."""
    clusters: list[kit.Cluster] = []

    def build(env: dict[str, str]) -> kit.Cluster:
        cluster = kit.Cluster(env=env, log_dir=tmp_path)
        clusters.append(cluster)
        return cluster

    yield build
    for cluster in clusters:
        cluster.stop()
    if os.environ.get("SCALPER_TEST_SHOW_LOGS"):
        for cluster in clusters:
            print(cluster.logs())


@pytest.fixture
def short_gold(tmp_path: Path, gold_file: Path) -> Path:
    """The gold file's first 800 warm-up bars and 300 more, as a replay that ends (market data falls quiet after it).

    800: the scalper engine's lookback is 741 bars (trend_pullback's EMA(50), docs/strategies.md)."""
    lines = gold_file.read_text().splitlines(keepends=True)
    out = tmp_path / "replay" / "XAUUSD_M1.csv"
    out.parent.mkdir()
    out.write_text("".join(lines[: 1 + 800 + 300]))
    return out
