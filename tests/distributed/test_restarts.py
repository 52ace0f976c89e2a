"""RabbitMQ and PostgreSQL restarted under a running distributed stack: services reconnect, handlers retry, nothing is
lost and nothing is doubled. Each test restarts a PRIVATE instance (own port, own data directory)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from shared.db.models import Order, SignalRow
from tests.distributed import cluster as kit
from tests.distributed.private import PrivatePostgres, PrivateRabbit
from tests.distributed.test_e2e import assert_exactly_once, replay_env, rows, settled

pytestmark = [pytest.mark.services, pytest.mark.slow]

SPEED = 600.0
TRADING_BARS = 500


@pytest.fixture
def long_gold(tmp_path: Path, gold_file: Path) -> Path:
    lines = gold_file.read_text().splitlines(keepends=True)
    out = tmp_path / "replay-long" / "XAUUSD_M1.csv"
    out.parent.mkdir()
    out.write_text("".join(lines[: 1 + 600 + TRADING_BARS]))
    return out


@pytest.fixture
def private_rabbit(services_available):
    try:
        rabbit = PrivateRabbit.create()
        rabbit.start()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"cannot start a private RabbitMQ here: {exc}")
    yield rabbit
    rabbit.destroy()


@pytest.fixture
def private_postgres(services_available):
    try:
        pg = PrivatePostgres.create()
        pg.start()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"cannot start a private PostgreSQL here: {exc}")
    yield pg
    pg.destroy()


def _run_until_replay_ends(cluster: kit.Cluster, env: dict[str, str], feed, *, during) -> None:
    """Run the replay to its end (plus two minutes), calling `during()` once a first order exists."""
    clock_end = feed.ends_at() + timedelta(minutes=2)
    wall_end = datetime.fromisoformat(env["SCALPER_CLOCK_ANCHOR"]).timestamp() + (clock_end - feed.start_time()).total_seconds() / SPEED
    kit.eventually(lambda: rows(env["SCALPER_DATABASE_URL"], Order)[0], timeout=120, interval=0.5, what="a first order")
    during()
    while time.time() < wall_end:
        time.sleep(1)


def _check(cluster: kit.Cluster, env: dict[str, str], market_data: kit.ServiceProc, decision: kit.ServiceProc, before: int) -> None:
    url = env["SCALPER_DATABASE_URL"]
    settled(url, timeout=120)
    assert all(p.alive() for p in cluster.procs), cluster.logs()
    signals, decisions, orders, _ = assert_exactly_once(url)
    assert len(signals) > before, f"no signal after the restart ({before} before)\n{cluster.logs()}"
    # Every window market data published reached decision (a publish whose confirm was lost may come twice: at least).
    assert decision.metric("scan_lines_total") >= market_data.metric("bar_windows_published_total") > 0
    assert [o for o in orders if o.status == "filled"]


def test_services_reconnect_after_a_rabbitmq_restart(private_rabbit, pg_url, long_gold, make_cluster):
    env, feed = replay_env(vhost="", pg_url=pg_url, replay=long_gold, speed=SPEED, anchor_delay_s=15)
    env["SCALPER_BUS_URL"] = private_rabbit.url
    cluster = make_cluster(env)
    kit.first_run(env["SCALPER_DATABASE_URL"])
    decision = cluster.start("decision")
    cluster.start("executor")
    cluster.start("strategy")
    market_data = cluster.start("market_data")
    before: list[int] = []

    def restart() -> None:
        before.append(len(rows(pg_url, SignalRow)[0]))
        private_rabbit.stop()
        time.sleep(2)
        private_rabbit.start()

    _run_until_replay_ends(cluster, env, feed, during=restart)
    _check(cluster, env, market_data, decision, before[0])


def test_handlers_retry_through_a_postgresql_restart(private_postgres, vhost, long_gold, make_cluster):
    url = kit.create_database(private_postgres.admin_url)
    env, feed = replay_env(vhost=vhost, pg_url=url, replay=long_gold, speed=SPEED, anchor_delay_s=15)
    cluster = make_cluster(env)
    kit.first_run(env["SCALPER_DATABASE_URL"])
    decision = cluster.start("decision")
    cluster.start("executor")
    cluster.start("strategy")
    market_data = cluster.start("market_data")
    before: list[int] = []

    def restart() -> None:
        before.append(len(rows(url, SignalRow)[0]))
        private_postgres.stop()
        time.sleep(3)
        private_postgres.start()

    _run_until_replay_ends(cluster, env, feed, during=restart)
    _check(cluster, env, market_data, decision, before[0])
    assert decision.metric("dead_letters_total") == 0, decision.log(20_000)
