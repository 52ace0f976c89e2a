"""The calibration's model choices side by side, on the same walk-forward folds of the shipped files (docs/benchmarks.md,
"Calibration"): the logistic regression without the prior that falls back to the training base rate (the model before
the prior), the geometric prior alone, the prior with the regression's deviation always fitted, and fit_model (the
prior unless a deviation holds over an inner walk-forward). Pooled out-of-sample Brier skill against the scored
signals' own base rate, its 95 % bootstrap interval, and AUC, per (strategy, file).

    .venv/bin/python bench/calibration_variants.py [--folds 5]

Not a bench of its own (no bench_ prefix: `make bench` does not run it); it measures skill, not speed.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np

from scalper.calibrate import fit
from shared.calibration import Model
from shared.settings import get_settings
from shared.strategies import catalog

FILES = ("XAUUSD_M1.csv", "EURUSD_M1.tsv")


def without_prior(inputs: list[dict[str, float]], won: list[int]) -> Model:
    """The model before the prior: the regression when it beat the training base rate on the latest 30 % of the
    training signals (fitted on the earlier 70 %), refitted on all; else the training base rate."""
    y = np.asarray(won, dtype=int)
    cut = int(len(y) * 0.7)
    if len(y) >= 2 * fit.MIN_TRAIN and y[:cut].min() != y[:cut].max():
        trial, constant = fit._fit(inputs[:cut], y[:cut]), fit._constant(y[:cut])
        held = y[cut:]
        if fit._brier(np.array([trial.p_win(v) for v in inputs[cut:]]), held) < fit._brier(np.full(len(held), constant.p_win({})), held):
            return fit._fit(inputs, y)
    return fit._constant(y)


VARIANTS: dict[str, Callable[[list[dict[str, float]], list[int]], Model]] = {
    "no prior (before)": without_prior,
    "prior alone": lambda inputs, won: fit.prior_model(),
    "prior + deviation": lambda inputs, won: fit._fit(inputs, np.asarray(won), offset=fit.PRIOR),
    "fit_model (after)": fit.fit_model,
}


def scored(g: fit.Labelled, folds: int, fitter) -> dict:
    edges = np.linspace(0, len(g.won), folds + 1).astype(int)
    p, y = [], []
    for k in range(1, folds):
        a, b = edges[k], edges[k + 1]
        model = fitter(g.inputs[:a], g.won[:a])
        p.append(np.array([model.p_win(v) for v in g.inputs[a:b]]))
        y.append(np.asarray(g.won[a:b]))
    pp, yy = np.concatenate(p), np.concatenate(y)
    return fit.measures(pp, yy, np.zeros(len(yy)), np.zeros(len(yy)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--folds", type=int, default=5)
    folds = parser.parse_args().folds
    data = get_settings().data_dir
    names = catalog.names(None)
    print(f"folds {folds}; files in {data}")
    print("| strategy | file | scored | " + " | ".join(VARIANTS) + " |")
    print("|---|---|---|" + "---|" * len(VARIANTS))
    for name in FILES:
        symbol, groups = fit.label_file(data / name, strategies=names)
        for g in sorted(groups, key=lambda g: g.strategy):
            order = np.argsort(g.times, kind="stable")
            for field in ("times", "inputs", "won", "reward_r", "cost_r"):
                values = getattr(g, field)
                setattr(g, field, [values[i] for i in order])
            cells = []
            for fitter in VARIANTS.values():
                r = scored(g, folds, fitter)
                lo, hi = r["brier_skill_95"]
                cells.append(f"{r['brier_skill']:+.3f} [{lo:+.3f}, {hi:+.3f}] AUC {r['auc']:.2f}")
            n = len(g.won) - int(np.linspace(0, len(g.won), folds + 1).astype(int)[1])
            print(f"| {g.strategy} | {symbol} | {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
