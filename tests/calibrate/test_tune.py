"""`scalper tune`: the search space from the parameter model, the walk-forward table and its overfitting warning, and
an end-to-end run whose best parameters `scalper bot setup --params` loads."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from scalper.calibrate.tune import fold_table, overfitting_warning, score, search_space
from scalper.cli import app
from shared.strategies import catalog
from shared.strategies.catalog import validate_params


@pytest.mark.parametrize("name", catalog.names(None))
def test_the_space_is_inside_the_models_bounds_and_leaves_weights_and_periods(name):
    model = catalog.get(name).Params
    space = search_space(model)
    assert space and not any(s.name.startswith("weight_") or s.name.endswith("_period") for s in space)
    for s in space:
        if s.kind == "choice":
            continue
        for value in (s.low, s.high):
            validate_params(name, {s.name: int(value) if s.kind == "int" else value})  # inside the bounds: accepted
        assert s.low <= model().model_dump()[s.name] <= s.high


def test_the_table_is_in_sample_before_the_fold_beside_the_fold_and_the_objective_skips_fold_0_and_the_holdout():
    folds = [[1.0] * 10, [0.5] * 10, [-0.2] * 10, [-1.0] * 10]
    table = fold_table(folds)
    assert [(r["fold"], r["in_sample_trades"], r["out_of_sample_trades"], r["holdout"]) for r in table] == [
        (1, 10, 10, False), (2, 20, 10, False), (3, 30, 10, True)]
    assert table[1]["in_sample_r"] == pytest.approx(0.75) and table[2]["out_of_sample_r"] == -1.0
    assert score(folds, 10) == pytest.approx(0.15)  # folds 1 and 2 only
    assert score(folds, 11) == -10.0  # a test fold under the minimum: infeasible
    warning = overfitting_warning(table, score(folds, 10), table[-1]["out_of_sample_r"])
    assert "in-sample beats out-of-sample" in warning and "holdout" in warning
    steady = [[0.2] * 10] * 4
    assert overfitting_warning(fold_table(steady), score(steady, 10), 0.2) is None  # no spread: no standard error
    noisy = [[1.0, -1.0] * 10] * 3 + [[1.2, -1.0] * 10]
    assert "not distinguishable from no edge" in overfitting_warning(fold_table(noisy), 0.1, 0.1)
    assert "nothing here is measured" in overfitting_warning(fold_table(steady), score(steady, 11), 0.2)
    assert fold_table([[1.0] * 3, [1.0] * 3, [1.0] * 3])[0]["in_sample_r"] is None  # too few trades to say


@pytest.mark.data
def test_tune_end_to_end_writes_params_bot_setup_loads(gold_file, tmp_path, monkeypatch):
    out, html = tmp_path / "best.json", tmp_path / "tune.html"
    runner = CliRunner()
    run = runner.invoke(app, ["tune", str(gold_file), "--strategy", "price_action_pinbar", "--trials", "4", "--folds", "3",
                              "--out", str(out), "--html", str(html), "--commission-per-lot", "7", "--min-fold-trades", "5"])
    assert run.exit_code == 0, run.output
    doc = json.loads(out.read_text())
    assert doc["format"] == "scalper.tune" and len(doc["table"]) == 2 and doc["table"][-1]["holdout"]
    assert len(doc["history"]) + doc["invalid_trials"] == 4
    assert "in-sample" in run.output and "holdout" in run.output
    assert ("no trial beat the defaults" in run.output) == (doc["best_trial"] == 0)
    assert ("lose after costs" in run.output) == (doc["best_objective"] <= 0)
    validate_params("price_action_pinbar", doc["strategy_params"]["price_action_pinbar"])
    assert "Overfitting" in html.read_text() or doc["warning"] is None

    from tests.cli.test_cli_bot_params import _account

    monkeypatch.setenv("SCALPER_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}")
    from shared.settings import get_settings

    get_settings.cache_clear()
    try:
        _account(tmp_path / "cli.db")
        made = runner.invoke(app, ["bot", "setup", "--symbol", "XAUUSDm", "--strategies", "price_action_pinbar", "--params", str(out)])
        assert made.exit_code == 0, made.output
        assert json.loads(made.output)["strategy_params"] == doc["strategy_params"]
    finally:
        get_settings.cache_clear()
