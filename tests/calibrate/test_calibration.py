"""The calibration: the JSON model gives scikit-learn's own probabilities, the fit finds skill where there is some and
falls back to the base rate where there is none, the file is versioned, and the backtester and the live worker put the
same p_win on the same signal."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pytest
from typer.testing import CliRunner

from scalper.calibrate import fit
from scalper.cli import app
from shared.calibration import Calibration, CalibrationError, load, raw_inputs
from shared.symbols import get_spec

GOLD = get_spec("XAUUSD")
T = datetime(2026, 4, 1, 9, 30, tzinfo=UTC)


def _rows(n: int, seed: int, *, informative: bool):
    rng = np.random.default_rng(seed)
    score = rng.random(n)
    p = 0.15 + 0.6 * score if informative else np.full(n, 0.35)
    won = (rng.random(n) < p).astype(int).tolist()
    inputs = [raw_inputs(score=float(s), features={"score_shape": float(s) ** 2}, entry=2000.0, stop=1998.0, target=2004.0,
                         bar_time=T, spread_points=12, spec=GOLD) for s in score]
    return inputs, won


def test_the_json_model_gives_sklearns_probabilities():
    from sklearn.linear_model import LogisticRegression

    inputs, won = _rows(600, 1, informative=True)
    model = fit._fit(inputs, np.asarray(won))
    names = model.inputs
    x = np.array([[r[k] for k in names] for r in inputs])
    z = (x - np.array(model.mean)) / np.array(model.scale)
    ref = LogisticRegression(C=fit.C, max_iter=1000).fit(z, won).predict_proba(z)[:, 1]
    ours = np.array([model.p_win(r) for r in inputs])
    assert np.allclose(ours, ref, atol=1e-9)


def _group(informative: bool) -> fit.Labelled:
    inputs, won = _rows(1500, 2, informative=informative)
    g = fit.Labelled("s", "XAUUSD", times=list(range(len(won))), inputs=inputs, won=won, reward_r=[2.0] * len(won),
                     cost_r=[0.06] * len(won))
    return g


def test_skill_is_found_where_the_label_follows_the_score():
    row = fit.walk_forward(_group(True), 5)
    assert row["brier_skill_95"][0] > 0 and row["auc"] > 0.65
    assert row["quintile_hit_rate"][-1] > row["quintile_hit_rate"][0]
    assert row["verdict"].startswith("skill")


def test_no_skill_is_said_plainly_and_the_fit_falls_back_to_the_base_rate():
    g = _group(False)
    row = fit.walk_forward(g, 5)
    assert row["verdict"].startswith("no skill")
    assert row["brier_skill"] >= -0.01  # the fallback is never meaningfully worse than the base rate
    assert fit.fit_model(g.inputs, g.won).inputs == ()  # noise: the base rate alone


def test_the_file_is_versioned_and_refused_otherwise(tmp_path):
    cal = Calibration({("s", "XAUUSD"): fit._constant(np.array([1, 0, 0]))}, 7.0, {})
    doc = cal.to_json()
    again = Calibration.from_json(json.loads(json.dumps(doc)))
    assert again.models == cal.models and again.commission_per_lot == 7.0
    with pytest.raises(CalibrationError, match="version"):
        Calibration.from_json({**doc, "version": 2})
    with pytest.raises(CalibrationError, match="format"):
        Calibration.from_json({"models": []})
    bad = tmp_path / "x.json"
    bad.write_text("{")
    with pytest.raises(CalibrationError, match="not JSON"):
        load(bad)


def test_expected_r_net_is_net_of_spread_and_commission():
    model = fit._constant(np.array([1, 0, 0, 1]))  # p = 0.5 (Laplace)
    cal = Calibration({("s", "XAUUSD"): model}, commission_per_lot=10.0)
    p, e = cal.estimate(strategy="s", symbol="XAUUSD", score=0.5, features={}, entry=2000.0, stop=1998.0, target=2004.0,
                        bar_time=T, spread_points=20, spec=GOLD)
    # gold: 0.20 of spread + $10 / 100 oz = 0.10 of commission, over a 2.00 stop: 0.15 R
    assert p == pytest.approx(0.5) and e == pytest.approx(0.5 * 2 - 0.5 - 0.15)
    assert cal.estimate(strategy="other", symbol="XAUUSD", score=0.5, features={}, entry=2000.0, stop=1998.0,
                        target=2004.0, bar_time=T, spread_points=20, spec=GOLD) is None


@pytest.mark.data
def test_calibrate_then_backtest_and_live_carry_the_same_p_win(gold_file, tmp_path):
    out, report = tmp_path / "cal.json", tmp_path / "cal.html"
    runner = CliRunner()
    made = runner.invoke(app, ["calibrate", str(gold_file), "--out", str(out), "--html", str(report), "--folds", "3",
                               "--strategies", "price_action_pinbar,range_reversion"])
    assert made.exit_code == 0, made.output
    assert "Brier skill" in made.output and ("no skill" in made.output or "skill:" in made.output)
    html = report.read_text()
    assert "Reliability" in html and "price_action_pinbar" in html and "later folds" in html
    calibration = load(out)
    assert {k[0] for k in calibration.models} == {"price_action_pinbar", "range_reversion"}

    bt = tmp_path / "bt.json"
    run = runner.invoke(app, ["backtest", str(gold_file), "--from", "2026-05-04", "--to", "2026-05-08", "--strategies",
                              "price_action_pinbar,range_reversion", "--calibration", str(out), "--json", str(bt), "--quiet"])
    assert run.exit_code == 0, run.output
    doc = json.loads(bt.read_text())
    signals = doc["signals"]
    assert signals and all(s["p_win"] is not None and s["expected_r_net"] is not None for s in signals)
    # Fitted on this very file: the run says it is in sample, and which calibration it used.
    assert doc["run"]["calibration"] == str(out) and doc["run"]["calibration_in_sample"] is True
    assert "in sample" in run.output

    # The live worker on the window of the first signal's bar puts the same p_win on it.
    from scalper.backtest.signals import scan_history
    from services.strategy.service import scan_window
    from shared.loaders import load_m1
    from shared.messages import BarColumns, BarWindow, StrategyConfig, Subscription
    from shared.strategies.catalog import CATALOG
    from shared.timeutil import from_epoch

    bars = load_m1(gold_file).bars
    configs = (StrategyConfig(name="price_action_pinbar"),)
    lookback = CATALOG.lookback_for(configs)
    first = int(np.searchsorted(bars.time, int(datetime(2026, 5, 4, tzinfo=UTC).timestamp())))
    [event] = scan_history(bars, spec=GOLD, configs=configs, start=first)[:1]
    window_bars = bars[event.index + 1 - lookback : event.index + 1]
    window = BarWindow(symbol="XAUUSD", bars=BarColumns.from_bars(window_bars), closed_through=from_epoch(int(window_bars.time[-1]) + 60),
                       source="test", subscriptions=(Subscription(bot_id=1, account_id=1, symbol="XAUUSD", strategies=configs),))
    [live], _ = scan_window(window, catalog=CATALOG, now=from_epoch(int(window_bars.time[-1]) + 61), calibration=calibration)
    [ours] = [s for s in signals if s["strategy"] == "price_action_pinbar" and s["time"] == from_epoch(event.bar_time).isoformat()]
    assert live.p_win == pytest.approx(ours["p_win"], abs=1e-6) and live.expected_r_net == pytest.approx(ours["expected_r_net"], abs=1e-6)
