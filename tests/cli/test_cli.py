"""The `scalper` command line: user create, bot setup, db upgrade, and clear errors for bad input."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from scalper.cli import app
from scalper.embedded import FeedError, make_feed, symbol_from_filename
from shared.settings import get_settings

runner = CliRunner()


@pytest.fixture
def db(tmp_path, monkeypatch):
    monkeypatch.setenv("SCALPER_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}")
    get_settings.cache_clear()
    yield tmp_path / "cli.db"
    get_settings.cache_clear()


def _sql(path, query):
    engine = create_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        rows = conn.execute(text(query)).all()
    engine.dispose()
    return rows


def test_user_create_prints_the_key_once_and_stores_only_its_hash(db):
    result = runner.invoke(app, ["user", "create", "alice"])
    assert result.exit_code == 0, result.output
    key = result.output.strip().splitlines()[-1].rsplit(" ", 1)[-1]
    assert len(key) >= 32
    stored = _sql(db, "SELECT key_hash, prefix FROM api_keys")
    assert len(stored) == 1 and key not in stored[0][0] and key not in json.dumps(_sql(db, "SELECT * FROM audit_log"), default=str)
    again = runner.invoke(app, ["user", "create", "alice"])
    assert again.exit_code != 0 and "alice" in again.output


def test_bot_setup_needs_a_user_then_upserts(db):
    missing = runner.invoke(app, ["bot", "setup", "--symbol", "XAUUSDm"])
    assert missing.exit_code == 2 and "user 1 does not exist" in missing.output

    _sql(db, "SELECT 1")  # database exists after the failed attempt (migrated)
    runner.invoke(app, ["user", "create", "bob"])
    no_account = runner.invoke(app, ["bot", "setup", "--symbol", "XAUUSDm"])
    assert no_account.exit_code == 2 and "account 1" in no_account.output

    engine = create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO broker_accounts (user_id, name, broker, server_time, symbol_suffix, margin_mode, currency, is_demo, is_active, created_at) VALUES (1, 'paper', 'paper', 'utc', 'm', 'hedging', 'USD', 1, 1, '2026-01-01 00:00:00')"))
    engine.dispose()
    first = runner.invoke(app, ["bot", "setup", "--symbol", "XAUUSDm", "--auto-trade", "--strategies", "price_action_pinbar"])
    assert first.exit_code == 0, first.output
    bot = json.loads(first.output)
    assert bot["symbol"] == "XAUUSDm" and bot["auto_trade"] is True and bot["engine_mode"] == "scalper"
    assert bot["enabled_strategies"] == ["price_action_pinbar"] and bot["default_timeframe"] == "1m"
    second = runner.invoke(app, ["bot", "setup", "--symbol", "XAUUSDm", "--no-auto-trade"])
    assert second.exit_code == 0 and json.loads(second.output)["id"] == bot["id"]
    assert _sql(db, "SELECT count(*) FROM bots")[0][0] == 1


def test_db_upgrade(db):
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0 and "head" in result.output
    assert {"users", "bots", "signals", "decisions", "orders", "positions", "audit_log"} <= {r[0] for r in _sql(db, "SELECT name FROM sqlite_master WHERE type='table'")}


def test_run_refuses_a_missing_replay_file_with_a_clear_error(db):
    result = runner.invoke(app, ["run", "--feed", "replay:/nonexistent/XAUUSD_M1.csv"])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_replay_symbol_comes_from_the_option_or_the_file_name(tmp_path, gold_file):
    from pathlib import Path

    assert symbol_from_filename(Path("XAUUSD_M1.csv")) == "XAUUSD"
    assert symbol_from_filename(Path("eurusd-2018.tsv")) == "EURUSD"
    assert make_feed(f"replay:{gold_file}").symbols() == ["XAUUSD"]
    assert make_feed(f"replay:{gold_file}", symbol="XAUUSDm").symbols() == ["XAUUSD"]
    with pytest.raises(FeedError, match="unknown feed"):
        make_feed("carrier-pigeon")
