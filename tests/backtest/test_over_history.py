"""A strategy's array form (shared/strategies/over_history/) against its live `evaluate` on every window (issue 18,
item 1): each match the arrays prove is evaluate's match (side, prices and score within 1e-9 relative, features within
1e-9 relative or absolute), each bar they prove empty is one evaluate refuses, and few bars are left to evaluate. On
both shipped files and on generated bars (a random walk with flat stretches, gaps and zero-range bars), with the
scalper engine's lookback and with each strategy's own. And the bound's rounding allowance holds: on sampled windows
the window's EMA and ATR differ from the full history's by no more than the proved seed term plus half of
over_history.ROUNDING."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import talib

from scalper.backtest.signals import LevelsByDay
from shared.bars import FIELDS, Bars
from shared.loaders import load_m1
from shared.strategies import catalog
from shared.strategies.base import EvalContext, WindowCache
from shared.strategies.over_history import ROUNDING, for_strategy
from shared.symbols import get_spec

ARRAY_STRATEGIES = ["price_action_pinbar", "trend_pullback", "doji_breakout"]
LOOKBACK = catalog.CATALOG.lookback_for([catalog.StrategyConfig(name=n) for n in catalog.names("scalper")])


def generated(n: int = 30_000, seed: int = 11) -> Bars:
    rng = np.random.default_rng(seed)
    steps = rng.normal(0, 0.3, n) * np.where(rng.random(n) < 0.05, 0.0, 1.0)  # some bars do not move
    steps += np.where(rng.random(n) < 0.002, rng.normal(0, 5, n), 0.0)  # rare gaps
    close = np.round(2000.0 + np.cumsum(steps), 2)
    open_ = np.round(np.concatenate(([2000.0], close[:-1])), 2)
    wick = np.where(rng.random(n) < 0.03, 0.0, 1.0)
    high = np.round(np.maximum(open_, close) + wick * rng.exponential(0.2, n), 2)
    low = np.round(np.minimum(open_, close) - wick * rng.exponential(0.2, n), 2)
    flat = np.flatnonzero(rng.random(n) < 0.01)
    open_[flat] = high[flat] = low[flat] = close[flat]  # zero-range bars
    t = 1_775_001_600 + 60 * np.arange(n, dtype=np.int64)
    return Bars.from_columns(time=t, open=open_, high=high, low=low, close=close, tick_volume=np.ones(n, np.int64),
                             spread=np.full(n, 20, np.int64))


def _bars(which: str, request) -> tuple[Bars, str]:
    if which == "generated":
        return generated(), "XAUUSD"
    path = request.getfixturevalue("gold_file" if which == "gold" else "eurusd_file")
    return load_m1(path).bars, "XAUUSD" if which == "gold" else "EURUSD"


def test_array_forms_cover_default_parameters_and_only_their_own_evaluate():
    for name in ARRAY_STRATEGIES:
        strategy = catalog.CATALOG.get(name)
        assert for_strategy(strategy, catalog.CATALOG.parse_params(name)) is not None
    doji = catalog.CATALOG.get("doji_breakout")
    assert for_strategy(doji, catalog.CATALOG.parse_params("doji_breakout", {"squeeze": True})) is None  # evaluate's
    assert for_strategy(dataclasses.replace(doji, evaluate=lambda b, c, p: None), catalog.CATALOG.parse_params("doji_breakout")) is None


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-300)


OTHER_PARAMS = {  # every switch the array forms read, away from its default
    "price_action_pinbar": {"swing_intact": False, "use_round_numbers": False, "swing_n": 3, "extreme_bars": 6, "level_atr": 0.5},
    "trend_pullback": {"use_patterns": False, "pullback_bars": 4, "fast_ema": 10, "slow_ema": 30, "slope_bars": 5},
    "doji_breakout": {"stop_at": "mid", "setup_bars": 3, "box_bars": 4, "breakout_atr": 0.2},
}


@pytest.mark.parametrize("lookback", ["engine", "own", "other_params"])
@pytest.mark.parametrize("name", ARRAY_STRATEGIES)
@pytest.mark.parametrize("which", ["gold", "eurusd", "generated"])
def test_arrays_are_evaluate(name, which, lookback, request):
    """On the scalper engine's lookback (741 bars), on the strategy's own (a scan of it alone: 357 for pinbar), and
    with other parameters on their own lookback."""
    bars, symbol = _bars(which, request)
    raw = OTHER_PARAMS[name] if lookback == "other_params" else {}
    own = catalog.CATALOG.lookback_for([catalog.StrategyConfig(name=name, params=raw)])
    L = LOOKBACK if lookback == "engine" else own
    spec = get_spec(symbol)
    strategy = catalog.CATALOG.get(name)
    params = catalog.CATALOG.parse_params(name, raw)
    over = for_strategy(strategy, params)
    first, end = L - 1, len(bars)
    levels = LevelsByDay(bars, first, "utc")
    hs = over(bars, params, lookback=L, first=first, end=end, spec=spec, levels=levels)
    proved = {i: k for k, i in enumerate(hs.index.tolist())}
    unsure = set(hs.unsure.tolist())
    assert not (unsure & set(proved))
    assert hs.proved_none == (end - first) - len(proved) - len(unsure)
    cols = tuple(getattr(bars, f) for f in FIELDS)
    matches = 0
    for i in range(first, end):
        window = Bars(*(c[i + 1 - L : i + 1] for c in cols))
        m = strategy.evaluate(window, EvalContext(spec=spec, levels=levels.at(i), cache=WindowCache(window)), params)
        if i in unsure:
            continue
        if i not in proved:
            assert m is None, f"bar {i}: the arrays proved no match, evaluate found {m}"
            continue
        k = proved[i]
        assert m is not None, f"bar {i}: the arrays proved a match, evaluate found none"
        matches += 1
        assert m.side == hs.side[k]
        for name in ("entry", "stop", "target", "score"):
            assert close(getattr(m, name), float(getattr(hs, name)[k])), (i, name, getattr(m, name), getattr(hs, name)[k])
        assert list(m.features) == list(hs.features[k])
        for key, value in m.features.items():
            got = hs.features[k][key]
            assert (close(value, got) or abs(value - got) <= 1e-9) if isinstance(value, float) else value == got, (i, key, value, got)
    assert matches > 50, "the data must hold matches for the comparison to mean anything"
    assert len(unsure) <= 0.05 * matches, f"{len(unsure)} bars left to evaluate for {matches} proved matches"


@pytest.mark.parametrize("which", ["gold", "eurusd", "generated"])
def test_rounding_allowance_covers_the_measured_rounding(which, request):
    bars, _ = _bars(which, request)
    c, h, lo = bars.close, bars.high, bars.low
    rng = np.random.default_rng(5)
    worst = 0.0
    for n in (20, 50):
        full, sma = talib.EMA(c, n), talib.SMA(c, n)
        decay = 1.0 - 2.0 / (n + 1)
        for i in rng.integers(LOOKBACK + 50, len(c), 1500).tolist():
            w = i + 1 - LOOKBACK
            seed_term = abs(sma[w + n - 1] - full[w + n - 1]) * decay ** (LOOKBACK - n)
            residual = abs(talib.EMA(c[w : i + 1], n)[-1] - full[i]) - seed_term
            worst = max(worst, residual / abs(full[i]))
    full, tr = talib.ATR(h, lo, c, 14), talib.TRANGE(h, lo, c)
    for i in rng.integers(LOOKBACK + 50, len(c), 1500).tolist():
        w = i + 1 - LOOKBACK
        seed_term = abs(tr[w + 1 : w + 15].mean() - full[w + 14]) * (13 / 14) ** (LOOKBACK - 15)
        residual = abs(talib.ATR(h[w : i + 1], lo[w : i + 1], c[w : i + 1], 14)[-1] - full[i]) - seed_term
        if full[i] > 0:
            worst = max(worst, residual / full[i])
    assert worst <= ROUNDING / 2, f"measured rounding {worst:.3g} relative, allowance {ROUNDING:.3g}"
