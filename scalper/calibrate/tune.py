"""`scalper tune`: a walk-forward parameter search with Optuna over one strategy's parameter model.

The history is cut into K folds by time. A trial runs one backtest over the whole history with its parameters (the
live scan, risk rules and fill model, costs included) and is scored on the walk-forward test folds 1..K-2 only: its
objective is their pooled expectancy in R net of spread and commission, never the profit of the data it is judged
against as a whole. The last fold is a holdout no trial is ever scored on: the best parameters' holdout expectancy is
what the search can honestly claim. Per fold, the table holds the best parameters' in-sample figure (every fold
before it) beside the out-of-sample one (the fold itself); a gap, or a holdout much worse than the search's figure,
raises the overfitting warning.

Trials run in worker processes (both cores), each holding the bars once; Optuna's ask-and-tell drives them.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import numpy as np

MIN_FOLD_TRADES = 10  # a fold with fewer trades says too little: it scores no expectancy
FORMAT = "scalper.tune"
VERSION = 1
OVERFIT_GAP_R = 0.1  # in-sample better than out-of-sample by this much R per trade (or the holdout losing) warns


@dataclass(frozen=True, slots=True)
class Space:
    """One parameter's search range: floats and ints around the default within the model's bounds, choices for
    bools and literals. Periods and score weights are left at their defaults (they move the lookback or only the score)."""

    name: str
    kind: str  # "float" | "int" | "choice"
    low: float = 0.0
    high: float = 0.0
    choices: tuple = ()


def _bounds(field) -> tuple[float | None, float | None]:
    lo = hi = None
    for m in field.metadata:
        for attr, side in (("ge", "lo"), ("gt", "lo"), ("le", "hi"), ("lt", "hi")):
            value = getattr(m, attr, None)
            if value is not None:
                if side == "lo":
                    lo = value
                else:
                    hi = value
    return lo, hi


def search_space(params_model) -> list[Space]:
    out = []
    for name, field in params_model.model_fields.items():
        if name.startswith("weight_") or name.endswith("_period"):
            continue
        ann, default = field.annotation, field.default
        if ann is bool:
            out.append(Space(name, "choice", choices=(True, False)))
        elif typing.get_origin(ann) is typing.Literal:
            out.append(Space(name, "choice", choices=typing.get_args(ann)))
        elif ann in (int, float):
            lo, hi = _bounds(field)
            a, b = (default / 2, default * 2) if default else (lo or 0.0, (lo or 0.0) + 1.0)
            a = a if lo is None else max(a, lo)
            b = b if hi is None else min(b, hi)
            if ann is int:
                a, b = math.ceil(a), math.floor(b)
                if b > a:
                    out.append(Space(name, "int", a, b))
            elif b > a:
                out.append(Space(name, "float", float(a), float(b)))
    return out


def suggest(trial, space: list[Space]) -> dict[str, Any]:
    values = {}
    for s in space:
        if s.kind == "float":
            values[s.name] = trial.suggest_float(s.name, s.low, s.high)
        elif s.kind == "int":
            values[s.name] = trial.suggest_int(s.name, int(s.low), int(s.high))
        else:
            values[s.name] = trial.suggest_categorical(s.name, list(s.choices))
    return values


# --- one trial (in a worker process) ----------------------------------------------------------------------------

_STATE: dict[str, Any] = {}


def _init(bars, symbol: str, strategy: str, commission_per_lot: float, edges: np.ndarray) -> None:
    from shared.symbols import get_spec

    _STATE.update(bars=bars, spec=get_spec(symbol), symbol=symbol, strategy=strategy, commission=commission_per_lot, edges=edges)


def evaluate(params: dict[str, Any]) -> dict[str, Any]:
    """The per-fold R multiples (net) of one parameter set: one backtest over the whole history."""
    from scalper.backtest.engine import BacktestConfig, run_backtest
    from shared.messages import StrategyConfig
    from shared.strategies.catalog import InvalidParams, validate_params

    s = _STATE
    try:
        validate_params(s["strategy"], params)
    except InvalidParams as exc:
        return {"invalid": str(exc)}
    config = BacktestConfig(symbol=s["symbol"], strategies=(StrategyConfig(name=s["strategy"], params=params),),
                            commission_per_lot=s["commission"])
    result = run_backtest(s["bars"], s["spec"], config)
    edges = s["edges"]
    folds: list[list[float]] = [[] for _ in range(len(edges) - 1)]
    for t in result.trades:
        if t.r_multiple is None:
            continue
        k = int(np.searchsorted(edges, t.entry_time, side="right")) - 1
        folds[min(max(k, 0), len(folds) - 1)].append(float(t.r_multiple))
    return {"folds": folds}


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if len(values) >= MIN_FOLD_TRADES else None


def _se(values: list[float]) -> float | None:
    """The standard error of the mean R: what separates an expectancy from luck on this many trades."""
    return float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) >= MIN_FOLD_TRADES else None


INFEASIBLE = -10.0  # the objective of parameters that trade too little to be judged (a loss no real setting reaches)


def score(folds: list[list[float]], min_trades: int = MIN_FOLD_TRADES) -> float:
    """The objective: pooled net expectancy over the test folds 1..K-2 (fold 0 is only in-sample, K-1 the holdout).
    Parameters with fewer than `min_trades` trades in any test fold are infeasible: a handful of lucky trades must not
    win the search."""
    tests = folds[1:-1]
    if not tests or any(len(f) < min_trades for f in tests):
        return INFEASIBLE
    return float(np.mean([r for f in tests for r in f]))


def fold_table(folds: list[list[float]]) -> list[dict[str, Any]]:
    rows = []
    for k in range(1, len(folds)):
        before = [r for f in folds[:k] for r in f]
        rows.append({"fold": k, "holdout": k == len(folds) - 1, "in_sample_trades": len(before), "in_sample_r": _mean(before),
                     "out_of_sample_trades": len(folds[k]), "out_of_sample_r": _mean(folds[k]),
                     "out_of_sample_se": _se(folds[k])})
    return rows


def overfitting_warning(table: list[dict[str, Any]], objective: float, holdout: float | None) -> str | None:
    problems = []
    if objective <= INFEASIBLE:
        problems.append("no trial traded enough in every test fold: nothing here is measured")
    gaps = [r["in_sample_r"] - r["out_of_sample_r"] for r in table if r["in_sample_r"] is not None and r["out_of_sample_r"] is not None]
    if gaps and float(np.mean(gaps)) > OVERFIT_GAP_R:
        problems.append(f"in-sample beats out-of-sample by {np.mean(gaps):.2f} R per trade on average")
    if holdout is None:
        problems.append("the holdout fold has too few trades to judge")
    elif holdout < objective - OVERFIT_GAP_R:
        problems.append(f"the holdout ({holdout:+.3f} R) is much worse than the search's figure ({objective:+.3f} R)")
    if holdout is not None and holdout <= 0:
        problems.append("the holdout loses after costs")
    elif holdout is not None and table and table[-1]["out_of_sample_se"] and holdout < 2 * table[-1]["out_of_sample_se"]:
        problems.append(f"the holdout's gain ({holdout:+.3f} R) is under two standard errors "
                        f"({table[-1]['out_of_sample_se']:.3f} R): not distinguishable from no edge")
    return "; ".join(problems) or None


def tune(bars, *, symbol: str, strategy: str, trials: int, folds: int, commission_per_lot: float = 0.0, jobs: int = 2,
         seed: int = 19, min_trades: int = 20, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    import optuna

    from shared.strategies import catalog

    if folds < 3:
        raise ValueError("tune needs at least 3 folds: an in-sample one, a test one and the holdout")
    definition = catalog.get(strategy)
    space = search_space(definition.Params)
    edges = np.linspace(int(bars.time[0]), int(bars.time[-1]) + 60, folds + 1).astype(np.int64)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    defaults = definition.Params().model_dump()
    study.enqueue_trial({s.name: defaults[s.name] for s in space})  # the defaults are trial 0: the bar to beat
    results: dict[int, dict[str, Any]] = {}
    invalid = 0
    with ProcessPoolExecutor(max_workers=jobs, initializer=_init, initargs=(bars, symbol, strategy, commission_per_lot, edges)) as pool:
        running = {}
        asked = 0
        while asked < trials or running:
            while asked < trials and len(running) < jobs:
                trial = study.ask()
                params = suggest(trial, space)
                running[pool.submit(evaluate, params)] = (trial, params)
                asked += 1
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                trial, params = running.pop(future)
                got = future.result()
                if "invalid" in got:
                    invalid += 1
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                    continue
                value = score(got["folds"], min_trades)
                results[trial.number] = {"params": params, "folds": got["folds"], "objective": value}
                study.tell(trial, value)
                if progress is not None:
                    progress(len(results) + invalid, trials)
    if not results:
        raise ValueError(f"every trial's parameters were refused ({invalid}): nothing to report")
    best_n = max(results, key=lambda n: results[n]["objective"])
    best = results[best_n]
    table = fold_table(best["folds"])
    holdout = table[-1]["out_of_sample_r"]
    default = results.get(0)
    full = {**defaults, **best["params"]}
    changed = {k: v for k, v in full.items() if k in best["params"]}
    return {
        "format": FORMAT, "version": VERSION, "strategy": strategy, "symbol": symbol, "folds": folds, "trials": trials,
        "invalid_trials": invalid, "commission_per_lot": commission_per_lot,
        "objective": "pooled net expectancy (R per trade) on walk-forward test folds 1..K-2; fold K-1 is a holdout",
        "min_fold_trades": min_trades, "feasible_trials": sum(1 for r in results.values() if r["objective"] > INFEASIBLE),
        "best_trial": best_n, "best_objective": best["objective"], "holdout_r": holdout,
        "default_objective": None if default is None else default["objective"],
        "default_holdout_r": None if default is None else fold_table(default["folds"])[-1]["out_of_sample_r"],
        "table": table, "warning": overfitting_warning(table, best["objective"], holdout),
        "strategy_params": {strategy: changed},
        "history": [results[n]["objective"] for n in sorted(results)],
    }
