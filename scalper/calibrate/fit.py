"""Walk-forward calibration of P(target before stop) per strategy and symbol (scikit-learn's logistic regression),
and the out-of-sample measures of it: Brier skill against the evaluated signals' own base rate (bootstrap interval),
AUC, reliability bins and the hit rate by p_win quintile. Only later folds are ever scored."""

from __future__ import annotations

import math
import re

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared.calibration import Calibration, Model, raw_inputs
from scalper.calibrate.outcomes import outcomes_of
from shared.costs import cost_r
from shared.timeutil import from_epoch

MIN_TRAIN = 30  # labelled signals (with both outcomes) a fit needs; fewer: the training base rate alone
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
    """The logistic regression when it beats the base rate on the latest 30 % of the training signals (fitted on the
    earlier 70 %), refitted on all of them; else the training base rate alone. The choice is made on training data
    only, so a model that has learnt noise falls back to the base rate instead of being worse than it."""
    y = np.asarray(won, dtype=int)
    cut = int(len(y) * 0.7)
    if len(y) >= 2 * MIN_TRAIN and y[:cut].min() != y[:cut].max():
        trial, constant = _fit(inputs[:cut], y[:cut]), _constant(y[:cut])
        held = y[cut:]
        trial_brier = _brier(np.array([trial.p_win(v) for v in inputs[cut:]]), held)
        if trial_brier < _brier(np.full(len(held), constant.p_win({})), held):
            return _fit(inputs, y)
    return _constant(y)


def _constant(y: np.ndarray) -> Model:
    rate = min(max((y.sum() + 1) / (len(y) + 2), 1e-6), 1 - 1e-6)  # Laplace: never 0 or 1
    return Model((), (), (), (), math.log(rate / (1 - rate)))


def _fit(inputs: list[dict[str, float]], y: np.ndarray) -> Model:
    """Logistic regression on standardised inputs (the base rate alone when there is too little to fit)."""
    if len(y) < MIN_TRAIN or y.min() == y.max():
        return _constant(y)
    from sklearn.linear_model import LogisticRegression

    names = tuple(sorted({k for row in inputs for k in row}))
    x = np.array([[row.get(k, 0.0) for k in names] for row in inputs], dtype=float)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    keep = scale > 1e-12  # a constant input says nothing
    names, mean, scale = tuple(n for n, k in zip(names, keep, strict=True) if k), mean[keep], scale[keep]
    z = (x[:, keep] - mean) / scale
    clf = LogisticRegression(C=C, max_iter=1000).fit(z, y)
    return Model(names, tuple(mean.tolist()), tuple(scale.tolist()), tuple(clf.coef_[0].tolist()), float(clf.intercept_[0]))


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
        per_fold.append({"fold": k, "train": int(a), "scored": int(b - a), "brier": _brier(p, y), "hit_rate": float(y.mean())})
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
                     "open": g.open, **walk_forward(g, folds)})
    meta = {"files": [Path(f).name for f in files], "folds": folds, "strategies": list(strategies),
            "evaluation": [{k: v for k, v in r.items() if k not in ("reliability", "folds")} for r in rows]}
    return Calibration(models, commission_per_lot, meta), rows


