"""Walk-forward calibration of P(target before stop) per strategy and symbol, and the out-of-sample measures of it.

The model starts from the signal's geometric prior (the gambler's-ruin ratio of its own stop and target in the price
its exits trigger on: shared/calibration.py, geometric_prior), which needs no fitting; a deviation from it (a fitted
intercept, or a logistic regression with the prior as its offset: scikit-learn's objective, scipy's solver) replaces
it only when it holds over a walk-forward inside the training signals (fit_model). The measures: Brier skill against
the evaluated signals' own base rate (bootstrap interval), AUC, reliability bins and the hit rate by p_win quintile.
Only later folds are ever scored."""

from __future__ import annotations

import math
import re

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared.calibration import PRIOR, Calibration, Model, raw_inputs
from scalper.calibrate.outcomes import outcomes_of
from shared.costs import cost_r
from shared.timeutil import from_epoch

MIN_TRAIN = 30  # labelled signals (with both outcomes) a fit needs; fewer: the geometric prior alone
INNER = 4  # folds of the walk-forward inside the training signals that decides whether a deviation from the prior holds
BOOTSTRAP = 1000
C = 0.1  # L2 strength of the logistic regression: strong, because the inputs are few and the signal is weak


@dataclass(slots=True)
class Labelled:
    """The labelled signals of one (strategy, symbol), oldest first."""

    strategy: str
    symbol: str
    times: list[int] = field(default_factory=list)
    inputs: list[dict[str, float]] = field(default_factory=list)
    won: list[int] = field(default_factory=list)
    reward_r: list[float] = field(default_factory=list)
    cost_r: list[float] = field(default_factory=list)
    open: int = 0  # signals neither touched by the end of the file (left out)


def label_file(path: Path, *, strategies: Sequence[str], commission_per_lot: float = 0.0, symbol: str | None = None,
               progress=None) -> tuple[str, list[Labelled]]:
    """Every signal of the strategies on one M1 file (the backtester's own scan on the bars the sanity rule keeps),
    labelled by its first touch."""
    from scalper.backtest.engine import spreads_for
    from scalper.backtest.signals import scan_history
    from shared.loaders import load_m1
    from shared.messages import StrategyConfig
    from shared.sanity import check_bars
    from shared.settings import get_settings
    from shared.symbols import canonical_symbol, get_spec

    loaded = load_m1(path)
    if symbol is None:
        match = re.match(r"[A-Za-z]+", path.stem)
        symbol = match.group(0).upper() if match else path.stem
    symbol = canonical_symbol(symbol)
    spec = get_spec(symbol)
    bars = check_bars(loaded.bars, max_atr=get_settings().bar_sanity_atr, digits=spec.digits).bars
    configs = [StrategyConfig(name=n) for n in strategies]
    signals = scan_history(bars, spec=spec, configs=configs, server_time=loaded.server_time, progress=progress)
    spread = spreads_for(bars, spec, None)
    labels = outcomes_of(bars, spread, spec.point, signals)
    groups: dict[str, Labelled] = {}
    for s, outcome in zip(signals, labels.outcome.tolist(), strict=True):
        g = groups.setdefault(s.strategy, Labelled(s.strategy, symbol))
        if outcome == "open":
            g.open += 1
            continue
        sp = float(spread[s.index])
        values = raw_inputs(score=s.score, features=s.features, entry=s.entry, stop=s.stop, target=s.target,
                            bar_time=from_epoch(s.bar_time), spread_points=sp, spec=spec)
        g.times.append(s.bar_time)
        g.inputs.append(values)
        g.won.append(1 if outcome == "tp" else 0)
        g.reward_r.append(values["reward_r"])
        g.cost_r.append(cost_r(entry=s.entry, stop=s.stop, spread_points=sp, spec=spec, commission_per_lot=commission_per_lot))
    return symbol, list(groups.values())


def fit_model(inputs: list[dict[str, float]], won: Sequence[int]) -> Model:
    """The geometric prior (shared/calibration.py, geometric_prior), unless a fitted deviation from it holds over time:
    over a walk-forward inside the training signals (INNER folds, each later fold scored by a fit on the folds before
    it), the prior with a fitted intercept replaces the prior if it has the lower Brier on every scored inner fold, and
    the logistic regression over every input with the prior as its offset replaces whichever of the two stands if it
    beats that one on every scored inner fold; the one standing is refitted on all the signals. The choice is made on
    training data only, prefers the simpler model on a tie, and asks for a gain in every stretch of time because a
    deviation that wins one split and then drifts is worse out of sample than the prior (docs/benchmarks.md,
    "Calibration")."""
    y = np.asarray(won, dtype=int)
    edges = np.linspace(0, len(y), INNER + 1).astype(int)
    prior = prior_model()
    if edges[1] < MIN_TRAIN:
        return prior

    def fold_briers(fitter) -> np.ndarray:
        out = []
        for k in range(1, INNER):
            a, b = edges[k], edges[k + 1]
            model = prior if fitter is None else fitter(inputs[:a], y[:a])
            out.append(_brier(np.array([model.p_win(v) for v in inputs[a:b]]), y[a:b]))
        return np.array(out)

    best, best_briers = None, fold_briers(None)
    for fitter in (_fit_intercept, _fit_deviation):
        briers = fold_briers(fitter)
        if np.all(briers < best_briers):
            best, best_briers = fitter, briers
    return prior if best is None else best(inputs, y)


def _fit_intercept(inputs: list[dict[str, float]], y: np.ndarray) -> Model:
    """The prior shifted by one fitted constant in the log-odds (what the levels miss on average)."""
    return _fit([{PRIOR: row[PRIOR]} for row in inputs], y, offset=PRIOR)


def _fit_deviation(inputs: list[dict[str, float]], y: np.ndarray) -> Model:
    return _fit(inputs, y, offset=PRIOR)


def describe(model: Model) -> str:
    """What kind of model it is, in words (the report and the command's lines)."""
    if model.offset == PRIOR:
        if not model.inputs:
            return "geometric prior" if model.intercept == 0.0 else "prior + fitted intercept"
        return f"prior + fitted deviation ({len(model.inputs)} inputs)"
    return "base rate" if not model.inputs else f"logistic regression ({len(model.inputs)} inputs)"


def _constant(y: np.ndarray) -> Model:
    rate = min(max((y.sum() + 1) / (len(y) + 2), 1e-6), 1 - 1e-6)  # Laplace: never 0 or 1
    return Model((), (), (), (), math.log(rate / (1 - rate)))


def prior_model() -> Model:
    """The geometric prior alone (shared/calibration.py, geometric_prior): no fitted coefficient at all."""
    return Model((), (), (), (), 0.0, PRIOR)


def _fit(inputs: list[dict[str, float]], y: np.ndarray, *, offset: str | None = None) -> Model:
    """Logistic regression on standardised inputs (the base rate alone, or with an offset the offset alone, when there is
    too little to fit). With `offset`, that input enters with its coefficient fixed at 1 and the regression (the same
    L2 penalty, intercept unpenalised) learns only the deviation from it. PRIOR is never a fitted input: it is the
    offset or nothing."""
    if len(y) < MIN_TRAIN or y.min() == y.max():
        return _constant(y) if offset is None else prior_model() if offset == PRIOR else Model((), (), (), (), 0.0, offset)
    names = tuple(sorted({k for row in inputs for k in row} - {PRIOR, offset}))
    x = np.array([[row.get(k, 0.0) for k in names] for row in inputs], dtype=float).reshape(len(y), len(names))
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    keep = scale > 1e-12  # a constant input says nothing
    names, mean, scale = tuple(n for n, k in zip(names, keep, strict=True) if k), mean[keep], scale[keep]
    z = (x[:, keep] - mean) / scale
    if offset is None:
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=C, max_iter=1000).fit(z, y)
        coef, intercept = clf.coef_[0], float(clf.intercept_[0])
    else:
        coef, intercept = _fit_with_offset(z, y, np.array([row[offset] for row in inputs], dtype=float))
    return Model(names, tuple(mean.tolist()), tuple(scale.tolist()), tuple(coef.tolist()), intercept, offset)


def _fit_with_offset(z: np.ndarray, y: np.ndarray, offset: np.ndarray) -> tuple[np.ndarray, float]:
    """scikit-learn's objective (C times the summed log loss plus half the squared coefficients; the intercept free)
    with a fixed offset in the log-odds, which scikit-learn's LogisticRegression cannot take: minimised by scipy's
    L-BFGS (the solver scikit-learn itself uses). Convex, so the minimum is unique."""
    from scipy.optimize import minimize
    from scipy.special import expit

    yf = y.astype(float)

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:-1], theta[-1]
        eta = offset + b + z @ w
        loss = float(np.sum(np.logaddexp(0.0, eta) - yf * eta))
        g = expit(eta) - yf
        return C * loss + 0.5 * float(w @ w), np.append(C * (z.T @ g) + w, C * g.sum())

    res = minimize(objective, np.zeros(z.shape[1] + 1), jac=True, method="L-BFGS-B",
                   options={"maxiter": 10_000, "ftol": 1e-15, "gtol": 1e-10})
    # L-BFGS may stop on a line search at these tolerances with the minimum found; judge by the gradient instead.
    if not np.all(np.isfinite(res.x)) or np.max(np.abs(res.jac)) > 1e-5 * max(1.0, C * len(y)):
        raise RuntimeError(f"the offset logistic regression did not converge: {res.message}")
    return res.x[:-1], float(res.x[-1])


def walk_forward(g: Labelled, folds: int) -> dict[str, Any]:
    """Fit on folds < k, score fold k, for k = 1..folds-1 (time order); the measures on all scored signals pooled."""
    n = len(g.won)
    edges = np.linspace(0, n, folds + 1).astype(int)
    p_all, y_all, r_all, exp_all, per_fold = [], [], [], [], []
    for k in range(1, folds):
        a, b = edges[k], edges[k + 1]
        if b <= a:
            continue
        model = fit_model(g.inputs[:a], g.won[:a])
        p = np.array([model.p_win(v) for v in g.inputs[a:b]])
        y = np.asarray(g.won[a:b])
        reward, cost = np.asarray(g.reward_r[a:b]), np.asarray(g.cost_r[a:b])
        realised = np.where(y == 1, reward, -1.0) - cost
        expected = p * reward - (1 - p) - cost
        p_all.append(p), y_all.append(y), r_all.append(realised), exp_all.append(expected)
        per_fold.append({"fold": k, "train": int(a), "scored": int(b - a), "model": describe(model), "brier": _brier(p, y),
                         "hit_rate": float(y.mean()), "p_mean": float(p.mean())})
    if not p_all:
        return {"scored": 0}
    p, y, realised, expected = (np.concatenate(v) for v in (p_all, y_all, r_all, exp_all))
    return {"scored": int(len(y)), "folds": per_fold, **measures(p, y, realised, expected)}


def _brier(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((p - y) ** 2))


def brier_skill(p: np.ndarray, y: np.ndarray) -> float:
    """1 - Brier / Brier of always saying these signals' own base rate (0: no better than the base rate)."""
    base = y.mean()
    ref = float(np.mean((base - y) ** 2))
    return 1.0 - _brier(p, y) / ref if ref > 0 else float("nan")


def measures(p: np.ndarray, y: np.ndarray, realised: np.ndarray, expected: np.ndarray, *, seed: int = 19) -> dict[str, Any]:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    skill = brier_skill(p, y)
    boot = []
    for _ in range(BOOTSTRAP):
        i = rng.integers(0, len(y), len(y))
        if y[i].min() != y[i].max():
            boot.append(brier_skill(p[i], y[i]))
    lo, hi = (np.percentile(boot, [2.5, 97.5]).tolist() if boot else (float("nan"), float("nan")))
    auc = float(roc_auc_score(y, p)) if y.min() != y.max() else float("nan")
    order = np.argsort(p, kind="stable")
    bins = [b for b in np.array_split(order, min(10, len(order))) if len(b)]
    quintiles = [b for b in np.array_split(order, min(5, len(order))) if len(b)]
    taken = expected > 0
    return {
        "base_rate": float(y.mean()), "brier": _brier(p, y), "brier_base": float(np.mean((y.mean() - y) ** 2)),
        "brier_skill": skill, "brier_skill_95": [lo, hi], "auc": auc,
        "reliability": [{"p_mean": float(p[b].mean()), "hit_rate": float(y[b].mean()), "n": int(len(b))} for b in bins],
        "quintile_hit_rate": [float(y[b].mean()) for b in quintiles],
        "r_net_mean": float(realised.mean()), "r_net_when_expected_positive": float(realised[taken].mean()) if taken.any() else None,
        "expected_positive": int(taken.sum()),
        "verdict": verdict(skill, lo, [float(y[b].mean()) for b in quintiles]),
    }


def verdict(skill: float, lo: float, quintiles: list[float]) -> str:
    rising = len(quintiles) >= 2 and quintiles[-1] > quintiles[0]
    if not math.isnan(lo) and lo > 0 and rising:
        return "skill: better than the base rate out of sample (interval above 0) and the hit rate rises with p_win"
    if skill < -0.01:
        return "no skill, and worse than the base rate out of sample: do not trust this strategy's p_win"
    return "no skill: out of sample p_win is no better than saying the base rate"


def calibrate(files: Sequence[Path], *, strategies: Sequence[str], folds: int = 5, commission_per_lot: float = 0.0,
              progress=None) -> tuple[Calibration, list[dict[str, Any]]]:
    """The artifact (each model fitted on all of its file's labelled signals) and the walk-forward evaluation rows."""
    merged: dict[tuple[str, str], Labelled] = {}
    for path in files:
        symbol, groups = label_file(Path(path), strategies=strategies, commission_per_lot=commission_per_lot, progress=progress)
        for g in groups:
            have = merged.get((g.strategy, symbol))
            if have is None:
                merged[(g.strategy, symbol)] = g
                continue
            for name in ("times", "inputs", "won", "reward_r", "cost_r"):
                getattr(have, name).extend(getattr(g, name))
            have.open += g.open
    models, rows = {}, []
    for key, g in sorted(merged.items()):
        order = np.argsort(g.times, kind="stable")
        for name in ("times", "inputs", "won", "reward_r", "cost_r"):
            values = getattr(g, name)
            setattr(g, name, [values[i] for i in order])
        models[key] = fit_model(g.inputs, g.won)
        rows.append({"strategy": key[0], "symbol": key[1], "signals": len(g.won) + g.open, "labelled": len(g.won),
                     "open": g.open, "model": describe(models[key]), **walk_forward(g, folds)})
    meta = {"files": [Path(f).name for f in files], "folds": folds, "strategies": list(strategies),
            "evaluation": [{k: v for k, v in r.items() if k not in ("reliability", "folds")} for r in rows]}
    return Calibration(models, commission_per_lot, meta), rows


