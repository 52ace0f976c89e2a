"""`scalper bot setup --params PATH` (the file `scalper tune --out` writes) and the cost-gate settings, validated as
PATCH /bots/{id} validates them."""

from __future__ import annotations

import json

from sqlalchemy import create_engine, text

from scalper.cli import app
from tests.cli.test_cli import _sql, db, runner  # noqa: F401  (the db fixture)


def _account(path) -> None:
    runner.invoke(app, ["user", "create", "carol"])
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO broker_accounts (user_id, name, broker, server_time, symbol_suffix, margin_mode, currency, is_demo, is_active, created_at) VALUES (1, 'paper', 'paper', 'utc', 'm', 'hedging', 'USD', 1, 1, '2026-01-01 00:00:00')"))
    engine.dispose()


def test_params_and_cost_settings_reach_the_bot_and_bad_ones_are_refused(db, tmp_path):
    _account(db)
    params = tmp_path / "best.json"
    params.write_text(json.dumps({"strategy": "range_reversion", "strategy_params": {"range_reversion": {"adx_max": 18.0}}}))
    made = runner.invoke(app, ["bot", "setup", "--symbol", "XAUUSDm", "--strategies", "range_reversion", "--params", str(params),
                               "--min-stop-spread-ratio", "4", "--min-expected-r", "0.1"])
    assert made.exit_code == 0, made.output
    bot = json.loads(made.output)
    assert bot["strategy_params"] == {"range_reversion": {"adx_max": 18.0}}
    assert (bot["min_stop_spread_ratio"], bot["min_expected_r"]) == (4.0, 0.1)
    assert _sql(db, "SELECT min_stop_spread_ratio, min_expected_r FROM bots") == [(4.0, 0.1)]

    params.write_text(json.dumps({"strategy_params": {"range_reversion": {"adx_max": 150.0}}}))  # over its bound, 100
    refused = runner.invoke(app, ["bot", "setup", "--symbol", "XAUUSDm", "--params", str(params)])
    assert refused.exit_code == 2 and "adx_max" in refused.output
    negative = runner.invoke(app, ["bot", "setup", "--symbol", "XAUUSDm", "--min-stop-spread-ratio", "-1"])
    assert negative.exit_code == 2 and "min_stop_spread_ratio" in negative.output
    params.write_text("[]")
    shapeless = runner.invoke(app, ["bot", "setup", "--symbol", "XAUUSDm", "--params", str(params)])
    assert shapeless.exit_code == 2 and "strategy_params" in shapeless.output
    assert _sql(db, "SELECT min_stop_spread_ratio FROM bots") == [(4.0,)]
