"""`scalper serve` without RabbitMQ or PostgreSQL: the shared clock, the command line's refusals, the DB-outage test."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from sqlalchemy.exc import IntegrityError, OperationalError
from typer.testing import CliRunner

from scalper.cli import app
from scalper.serve import SharedClock, build_process, make_clock
from shared.db.patience import is_db_unreachable
from shared.timeutil import TerminalClock
from shared.settings import Settings


def test_processes_started_apart_read_the_same_simulated_time():
    start = datetime(2026, 3, 25, 9, 0, tzinfo=UTC)
    anchor = datetime.now(UTC) - timedelta(seconds=10)
    first = SharedClock(start, anchor, 600)
    time.sleep(0.05)
    second = SharedClock(start, anchor, 600)  # built later, as a process started later would
    assert abs((first.now() - second.now()).total_seconds()) < 0.05 * 600 + 1
    assert start + timedelta(seconds=10 * 600) <= second.now() < start + timedelta(seconds=12 * 600)


def test_the_clock_settings_are_read_as_utc_when_they_name_no_zone():
    settings = Settings(feed="synthetic", clock_start="2026-03-25T09:00:00", clock_anchor=datetime.now(UTC).replace(tzinfo=None).isoformat(), speed=1)
    clock = make_clock(settings)
    assert abs((clock.now() - datetime(2026, 3, 25, 9, 0, tzinfo=UTC)).total_seconds()) < 5


def test_the_mt5_feed_runs_on_the_terminals_clock_in_real_time_unless_a_speed_is_set():
    clock = make_clock(Settings(feed="mt5", _env_file=None))
    assert isinstance(clock, TerminalClock) and clock.speed == 1.0
    assert abs((clock.now() - datetime.now(UTC)).total_seconds()) < 1  # until the terminal says otherwise
    clock.observe(datetime(2024, 3, 1, 10, 0, tzinfo=UTC))  # the first reading anchors it, even backwards
    assert abs((clock.now() - datetime(2024, 3, 1, 10, 0, tzinfo=UTC)).total_seconds()) < 1
    assert make_clock(Settings(feed="mt5", speed=50, _env_file=None)).speed == 50  # a simulator at --speed 50


def test_serve_refuses_an_unknown_service_and_account_id_off_the_executor():
    result = CliRunner().invoke(app, ["serve", "bogus"])
    assert result.exit_code == 2 and "unknown service" in result.output
    with pytest.raises(ValueError, match="executor option"):
        build_process("strategy", Settings(), account_id=1)


@pytest.mark.parametrize(
    ("error", "unreachable"),
    [
        (ConnectionRefusedError(111, "refused"), True),
        (OperationalError("SELECT 1", {}, asyncpg.exceptions.CannotConnectNowError("the database system is starting up")), True),
        (asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"), True),
        (IntegrityError("INSERT", {}, Exception("duplicate key")), False),
        (ValueError("bad value"), False),
    ],
)
def test_only_lost_database_connections_count_as_an_outage(error, unreachable):
    assert is_db_unreachable(error) is unreachable


# --- the service token on the internal routes ----------------------------------------------------------------


def _internal_app(name: str, settings: Settings):
    """The routes `scalper serve NAME` mounts, on an app of their own (the service is not started: a refused call
    never reaches it)."""
    from fastapi import FastAPI

    process = build_process(name, settings)
    app = FastAPI()
    process.mount(app)
    return app


INTERNAL = [("market_data", "/api/v1/symbols"), ("market_data", "/api/v1/bars/XAUUSD"), ("strategy", "/api/v1/strategies"),
            ("executor", "/internal/executor/positions"), ("executor", "/internal/executor/account")]


@pytest.mark.parametrize(("name", "path"), INTERNAL)
def test_internal_routes_refuse_a_call_without_the_service_token(name, path, tmp_path):
    from fastapi.testclient import TestClient

    settings = Settings(_env_file=None, feed="synthetic", service_token="t0ken", database_url=f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    client = TestClient(_internal_app(name, settings))
    assert client.get(path).status_code == 401
    assert client.get(path, headers={"X-Service-Token": "wrong"}).status_code == 401
    if name == "strategy":  # the one route that needs no running service
        assert client.get(path, headers={"X-Service-Token": "t0ken"}).status_code == 200
    # Without a token configured, the routes stay shut rather than open.
    unset = Settings(_env_file=None, feed="synthetic", database_url=f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    answer = TestClient(_internal_app(name, unset)).get(path, headers={"X-Service-Token": ""})
    assert answer.status_code == 401 and "SCALPER_SERVICE_TOKEN" in answer.text


def test_decision_forwards_with_the_service_token():
    from shared.http import service_token_headers

    assert service_token_headers(Settings(_env_file=None, service_token="t0ken")) == {"X-Service-Token": "t0ken"}
    assert service_token_headers(Settings(_env_file=None)) == {}


def test_readyz_is_open_but_names_no_account():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from shared.http import add_ops_routes

    async def readiness():
        return True, {"executor": {"broker_sessions": [{"connected": True, "login": 5001, "server": "Broker-Live"}], "accounts": [1]}}

    app = FastAPI()
    add_ops_routes(app, readiness)
    answer = TestClient(app).get("/readyz")
    assert answer.status_code == 200 and answer.json()["executor"] == {"broker_sessions": [{"connected": True}], "accounts": [1]}
