"""The calibration: the geometric prior is calibrated on a driftless random walk judged by the first-touch rule, the
JSON model gives scikit-learn's own probabilities (and the offset fit scikit-learn's objective), the fit finds skill
where there is some and falls back to the prior where there is none, the file is versioned (version 1 still loads),
and the backtester and the live worker put the same p_win on the same signal."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pytest
from typer.testing import CliRunner

from scalper.calibrate import fit
from scalper.cli import app
from scalper.calibrate.outcomes import first_touch
from shared.bars import Bars
from shared.calibration import PRIOR, Calibration, CalibrationError, geometric_prior, load, logit, raw_inputs
from shared.costs import cost_r, expected_r_net
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


def test_skill_found_is_a_fitted_deviation_from_the_prior():
    g = _group(True)
    model = fit.fit_model(g.inputs, g.won)
    assert model.offset == PRIOR and "score" in model.inputs
    assert fit.describe(model).startswith("prior + fitted deviation")


def test_no_skill_is_said_plainly_and_the_fit_falls_back_to_the_prior():
    g = _group(False)
    row = fit.walk_forward(g, 5)
    assert row["verdict"].startswith("no skill")
    assert row["brier_skill"] >= -0.01  # the fallback is never meaningfully worse than the base rate
    model = fit.fit_model(g.inputs, g.won)
    assert model.inputs == () and model.offset == PRIOR  # noise: the prior (perhaps shifted), no fitted input


def test_a_steady_bias_of_the_levels_is_learnt_as_the_priors_intercept():
    # Targets hit at 15 % where the levels say 1/3, in every stretch of time: the prior shifted, no input fitted.
    inputs, _ = _rows(1500, 7, informative=False)
    won = (np.random.default_rng(8).random(1500) < 0.15).astype(int).tolist()
    model = fit.fit_model(inputs, won)
    assert fit.describe(model) == "prior + fitted intercept" and model.inputs == ()
    assert model.p_win(inputs[0]) == pytest.approx(np.mean(won), abs=0.02)


def test_too_few_signals_get_the_prior_alone():
    inputs, won = _rows(40, 3, informative=True)
    assert fit.fit_model(inputs, won) == fit.prior_model()
    assert fit.prior_model().p_win(inputs[0]) == pytest.approx(2 / 6)  # long, stop 2 below, target 4 above


def test_the_file_is_versioned_and_refused_otherwise(tmp_path):
    cal = Calibration({("s", "XAUUSD"): fit._constant(np.array([1, 0, 0]))}, 7.0, {})
    doc = cal.to_json()
    again = Calibration.from_json(json.loads(json.dumps(doc)))
    assert again.models == cal.models and again.commission_per_lot == 7.0
    with pytest.raises(CalibrationError, match="version 3; this engine reads versions 1, 2"):
        Calibration.from_json({**doc, "version": 3})
    with pytest.raises(CalibrationError, match="format"):
        Calibration.from_json({"models": []})
    bad = tmp_path / "x.json"
    bad.write_text("{")
    with pytest.raises(CalibrationError, match="not JSON"):
        load(bad)


def test_the_offset_round_trips_through_the_artifact():
    inputs, won = _rows(600, 4, informative=True)
    model = fit._fit(inputs, np.asarray(won), offset=PRIOR)
    assert model.offset == PRIOR and PRIOR not in model.inputs
    cal = Calibration({("s", "XAUUSD"): model}, 0.0, {})
    doc = json.loads(json.dumps(cal.to_json()))
    assert doc["version"] == 2 and doc["models"][0]["offset"] == PRIOR
    again = Calibration.from_json(doc).models[("s", "XAUUSD")]
    assert again == model
    row = inputs[0]
    z = model.intercept + row[PRIOR] + sum(c * (row[k] - m) / sc for k, m, sc, c in
                                           zip(model.inputs, model.mean, model.scale, model.coef, strict=True))
    assert again.p_win(row) == pytest.approx(1 / (1 + np.exp(-z)), abs=1e-12)
    with pytest.raises(CalibrationError, match="offset"):
        Calibration.from_json({**doc, "models": [{**doc["models"][0], "offset": "score"}]})  # a fitted input


def test_a_version_1_artifact_still_loads_and_gives_its_p_win():
    inputs, won = _rows(600, 5, informative=True)
    model = fit._fit(inputs, np.asarray(won))  # version 1's model: no offset
    doc = Calibration({("s", "XAUUSD"): model}, 0.0, {}).to_json()
    v1 = {**doc, "version": 1, "models": [{k: v for k, v in m.items() if k != "offset"} for m in doc["models"]]}
    loaded = Calibration.from_json(json.loads(json.dumps(v1))).models[("s", "XAUUSD")]
    assert loaded.offset is None and loaded.p_win(inputs[0]) == pytest.approx(model.p_win(inputs[0]), abs=1e-15)
    with pytest.raises(CalibrationError, match="version 1 calibration cannot carry an offset"):
        Calibration.from_json({**v1, "models": [{**v1["models"][0], "offset": PRIOR}]})


def test_the_offset_fit_is_scikit_learns_objective():
    # With the offset at zero the scipy fit must land on scikit-learn's own coefficients.
    from sklearn.linear_model import LogisticRegression

    inputs, won = _rows(600, 6, informative=True)
    zeroed = [{**r, PRIOR: 0.0} for r in inputs]
    ours = fit._fit(zeroed, np.asarray(won), offset=PRIOR)
    names = ours.inputs
    z = (np.array([[r[k] for k in names] for r in inputs]) - np.array(ours.mean)) / np.array(ours.scale)
    ref = LogisticRegression(C=fit.C, max_iter=1000, tol=1e-10).fit(z, won)
    assert np.allclose(ours.coef, ref.coef_[0], atol=1e-5) and ours.intercept == pytest.approx(ref.intercept_[0], abs=1e-5)


def test_the_geometric_prior_is_the_gamblers_ruin_ratio_in_the_judged_price():
    # A long's levels are judged on the bid, which starts at the entry: S / (S + T).
    assert geometric_prior(entry=100.0, stop=98.0, target=104.0, spread_price=0.5) == pytest.approx(2 / 6)
    # A short's on the ask, a spread above the entry: (S - s) / (S + T).
    assert geometric_prior(entry=100.0, stop=102.0, target=96.0, spread_price=0.5) == pytest.approx(1.5 / 6)
    # A short's stop inside the spread: near-certain loss, clipped so its log-odds stay finite.
    assert geometric_prior(entry=100.0, stop=100.2, target=96.0, spread_price=0.5) == pytest.approx(1e-3)
    row = raw_inputs(score=0.5, features={}, entry=2000.0, stop=2002.0, target=1996.0, bar_time=T, spread_points=50, spec=GOLD)
    assert row[PRIOR] == pytest.approx(logit(1.5 / 6))


def _random_walk(n: int, seed: int, *, ticks: int = 30, sigma: float = 0.05, spread_points: int = 20) -> Bars:
    """Driftless M1 bars from a finer gaussian path (each bar's high and low are its path's extremes; each bar opens at
    the previous close)."""
    rng = np.random.default_rng(seed)
    path = 2000.0 + np.concatenate([[0.0], np.cumsum(rng.normal(0.0, sigma, n * ticks))])
    cuts = path[: n * ticks + 1]
    body = np.lib.stride_tricks.sliding_window_view(cuts, ticks + 1)[::ticks]
    return Bars.from_columns(time=1_775_000_000 + 60 * np.arange(n), open=body[:, 0], high=body.max(axis=1),
                             low=body.min(axis=1), close=body[:, -1], spread=np.full(n, spread_points))


def test_the_prior_is_calibrated_on_a_driftless_random_walk():
    bars = _random_walk(60_000, 11)
    spread = bars.spread * GOLD.point
    rng = np.random.default_rng(12)
    m = 3000
    index = np.sort(rng.choice(np.arange(100, 50_000), m, replace=False))
    buy = rng.random(m) < 0.5
    s_dist, t_dist = rng.uniform(1.0, 4.0, m), rng.uniform(0.5, 8.0, m)  # in price: 4-30 bar ranges of this walk
    entry = bars.close[index]
    stop = np.where(buy, entry - s_dist, entry + s_dist)
    target = np.where(buy, entry + t_dist, entry - t_dist)
    got = first_touch(bars, spread.astype(float), index=index, buy=buy, stop=stop, target=target)
    assert (got.outcome != "open").all()
    y = (got.outcome == "tp").astype(int)
    p = np.array([geometric_prior(entry=e, stop=s, target=t, spread_price=0.2) for e, s, t in zip(entry, stop, target, strict=True)])
    assert abs(p.mean() - y.mean()) < 0.02  # calibrated in the large
    for side in (buy, ~buy):  # the spread's term: a short starts a spread nearer its stop
        assert abs(p[side].mean() - y[side].mean()) < 0.03
    order = np.argsort(p)
    for chunk in np.array_split(order, 5):  # and in each fifth of p: hit rates follow p
        assert abs(p[chunk].mean() - y[chunk].mean()) < 0.05
    assert fit.brier_skill(p, y) > 0.1  # the geometry alone beats the base rate when the geometry varies


def test_under_the_prior_a_trade_expects_to_lose_its_costs_whichever_its_side():
    # A driftless price is a fair game in the judged price: a long loses the spread it pays at the ask, a short the
    # spread its levels meet on the ask (already in p), both the commission; so E[R] = -(spread + commission) / S.
    spec, sp, commission = GOLD, 20, 10.0  # 0.20 of spread, 0.10 of commission, stops 2.00 away
    for entry, stop, target in ((2000.0, 1998.0, 2005.0), (2000.0, 2002.0, 1995.0)):
        row = raw_inputs(score=0.5, features={}, entry=entry, stop=stop, target=target, bar_time=T, spread_points=sp, spec=spec)
        cost = cost_r(entry=entry, stop=stop, spread_points=sp, spec=spec, commission_per_lot=commission)
        e = expected_r_net(fit.prior_model().p_win(row), reward_r=row["reward_r"], cost=cost)
        assert e == pytest.approx(-(0.20 + 0.10) / 2.0)


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
