"""A strategy's invalidation exits a trade early, identically in the backtester and through the executor's rule:
both ask shared/strategies/invalidation.py of closed bars (range_reversion: ADX above 25 or a close outside its range)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from pydantic import BaseModel, ConfigDict

from scalper.backtest.engine import BacktestConfig, run_backtest
from services.executor.trailing import ExitRule
from shared.bars import Bars
from shared.loaders import load_m1
from shared.messages import StrategyConfig
from shared.strategies import range_reversion
from shared.strategies.base import EvalContext, Match, StrategyDef
from shared.strategies.catalog import CATALOG, Catalog
from shared.strategies.invalidation import first_invalid, invalid_mask, invalid_now
from shared.symbols import get_spec
from tests.backtest.helpers import BUY, flat_bars, set_bar

GOLD = get_spec("XAUUSD")
INVALID = 903  # a bar marked so invalidates the scripted setup


class _P(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _evaluate(bars: Bars, ctx: EvalContext, p: _P) -> Match | None:
    if int(bars.tick_volume[-1]) != BUY:
        return None
    close = float(bars.close[-1])
    return Match(side="buy", entry=close, stop=close - 2.0, target=close + 4.0, score=0.8, features={"mark": INVALID})


def _invalidation(bars: Bars, ctx: EvalContext, p: _P, features) -> np.ndarray:
    return bars.tick_volume == int(features["mark"])


SCRIPT = StrategyDef(name="scripted_exit", engine="scalper", timeframe="1m", Params=_P, lookback=lambda p: 100,
                     evaluate=_evaluate, invalidation=_invalidation)
SCRIPTED = Catalog([SCRIPT])


def _config(**kw) -> BacktestConfig:
    return BacktestConfig(symbol="XAUUSD", strategies=(StrategyConfig(name="scripted_exit"),), **kw)


def test_an_invalidated_setup_exits_at_the_next_open_in_the_backtest_and_the_live_rule_agrees():
    bars = flat_bars(400)
    set_bar(bars, 200, mark=BUY)
    set_bar(bars, 230, mark=INVALID)
    set_bar(bars, 231, open=2000.05)
    [trade] = run_backtest(bars, GOLD, _config(), catalog=SCRIPTED).trades
    assert (trade.entry_index, trade.exit_index, trade.reason, trade.exit_price) == (201, 231, "early_exit", 2000.05)
    # The executor's question on the window whose newest bar is k: only bar 230 says invalid.
    opened_bar = int(bars.time[201])
    verdicts = [invalid_now("scripted_exit", bars[k - 99 : k + 1], params={}, features={"mark": INVALID}, spec=GOLD,
                            opened_bar=opened_bar, catalog=SCRIPTED) for k in range(200, 240)]
    assert [200 + i for i, v in enumerate(verdicts) if v] == [230]
    # A mark before the position opened (the signal bar's window) is not the position's business.
    assert not invalid_now("scripted_exit", bars[100:201], params={}, features={"mark": BUY}, spec=GOLD,
                           opened_bar=opened_bar, catalog=SCRIPTED)


def test_with_the_exit_off_the_trade_runs_to_its_stop_or_target_or_the_end():
    bars = flat_bars(400)
    set_bar(bars, 200, mark=BUY)
    set_bar(bars, 230, mark=INVALID)
    [trade] = run_backtest(bars, GOLD, _config(exits=ExitRule(invalidation=False)), catalog=SCRIPTED).trades
    assert trade.reason == "end_of_data"


def test_a_stop_touched_on_the_invalid_bar_itself_is_the_stop():
    bars = flat_bars(400)
    set_bar(bars, 200, mark=BUY)
    set_bar(bars, 230, mark=INVALID, low=1997.0)
    [trade] = run_backtest(bars, GOLD, _config(), catalog=SCRIPTED).trades
    assert (trade.exit_index, trade.reason) == (230, "sl")


def _quiet(n: int) -> Bars:
    rng = np.random.default_rng(7)
    close = 2000.0 + np.cumsum(rng.normal(0, 0.3, n)) * 0.2
    return Bars.from_columns(time=60 * np.arange(n, dtype=np.int64), open=close, high=close + 0.4, low=close - 0.4,
                             close=close.copy(), tick_volume=np.ones(n, np.int64), spread=np.full(n, 12, np.int64))


def test_range_reversion_is_invalid_on_a_close_outside_its_channel_or_an_adx_above_the_exit_level():
    bars = _quiet(600)
    p = range_reversion.RangeReversionParams()
    ctx = EvalContext(spec=GOLD)
    lo, hi = float(bars.close.min()) - 1.0, float(bars.close.max()) + 1.0
    adx = range_reversion.adx(bars.high, bars.low, bars.close, p.adx_period)
    inside = range_reversion.invalidation(bars, ctx, p, {"channel_high": hi, "channel_low": lo})
    assert np.array_equal(inside, np.nan_to_num(adx, nan=0.0) > 25.0)
    on_edge = range_reversion.invalidation(bars, ctx, p, {"channel_high": float(bars.close[-1]), "channel_low": lo})
    assert on_edge[-1]  # a close on the channel's edge is outside it (evaluate() wants bottom < close < top)
    loose = range_reversion.RangeReversionParams(adx_exit=100.0)
    assert not range_reversion.invalidation(bars, ctx, loose, {"channel_high": hi, "channel_low": lo}).any()
    # A strong trend lifts ADX past 25: the setup is invalid even inside a (wide) channel.
    trend = Bars.from_columns(time=bars.time, open=bars.open + np.arange(600) * 0.5, high=bars.high + np.arange(600) * 0.5,
                              low=bars.low + np.arange(600) * 0.5, close=bars.close + np.arange(600) * 0.5,
                              tick_volume=bars.tick_volume, spread=bars.spread)
    wide = {"channel_high": 1e9, "channel_low": 0.0}
    assert range_reversion.invalidation(trend, ctx, p, wide)[-1]


def test_the_exit_level_is_never_below_the_entry_regimes_limit():
    bars = _quiet(600)
    adx = np.nan_to_num(range_reversion.adx(bars.high, bars.low, bars.close, 14), nan=0.0)
    wide = {"channel_high": 1e9, "channel_low": 0.0}
    ctx = EvalContext(spec=GOLD)
    high_regime = range_reversion.RangeReversionParams(adx_max=40.0, adx_exit=15.0)
    assert np.array_equal(range_reversion.invalidation(bars, ctx, high_regime, wide), adx > 40.0)


def test_first_invalid():
    mask = np.array([False, True, False, True])
    assert (first_invalid(mask, 0), first_invalid(mask, 2), first_invalid(np.zeros(3, bool), 0), first_invalid(None, 0)) == (1, 3, None, None)


@pytest.mark.data
def test_range_reversion_on_gold_backtest_exits_where_the_live_window_first_says_invalid(gold_file):
    loaded = load_m1(gold_file)
    bars = loaded.bars[:30_000]
    config = BacktestConfig(symbol="XAUUSD", strategies=(StrategyConfig(name="range_reversion"),))
    result = run_backtest(bars, GOLD, config)
    signals = {s.index: s for s in result.signals}
    lookback = CATALOG.lookback("range_reversion")
    early = 0
    for t in result.trades:
        features = signals[t.signal_index].features
        opened_bar = int(bars.time[t.entry_index])
        last = t.exit_index - 1 if t.reason == "early_exit" else t.exit_index
        verdicts = [invalid_now("range_reversion", bars[k + 1 - lookback : k + 1], params={}, features=features, spec=GOLD,
                                opened_bar=opened_bar) for k in range(t.entry_index, last + 1)]
        if t.reason == "early_exit":
            early += 1
            assert verdicts[-1] and not any(verdicts[:-1]), (t.as_dict(), verdicts)
        elif t.reason in ("sl", "tp"):
            assert not any(verdicts[:-1])  # never invalid before the bar that took the stop or target
    assert early > 0, "no range_reversion trade was invalidated on 30,000 gold bars: the test proves nothing"
    off = run_backtest(bars, GOLD, dataclasses.replace(config, exits=ExitRule(invalidation=False)))
    assert "early_exit" not in {t.reason for t in off.trades}
    # The whole-history mask the backtester uses agrees with the windowed one (the declared lookback).
    s = result.signals[0]
    full = invalid_mask("range_reversion", bars, params={}, features=s.features, ctx=EvalContext(spec=GOLD))
    windowed = [invalid_now("range_reversion", bars[k + 1 - lookback : k + 1], params={}, features=s.features, spec=GOLD,
                            opened_bar=0) for k in range(s.index, s.index + 300)]
    assert list(full[s.index : s.index + 300]) == windowed


def test_the_rule_asked_of_stretches_finds_the_bar_the_whole_history_finds(gold_file):
    """The backtester asks range_reversion's rule of short stretches after each entry, with the history's indicators
    sliced: the first invalid bar is the one the whole-history mask gives, for channels of every width and entries
    all over the file (including never-invalid channels that run to the end, and a stretch past the last bar)."""
    from scalper.backtest.invalidation import Invalidations

    bars = load_m1(gold_file).bars
    ctx = EvalContext(spec=GOLD)
    rng = np.random.default_rng(18)
    found = set()
    for params in ({}, {"adx_exit": 100.0}):  # ADX never above 100: only the channel ends these setups
        inv = Invalidations(bars, GOLD, (StrategyConfig(name="range_reversion", params=params),))
        entries = np.concatenate((rng.integers(0, len(bars), 200), [len(bars) - 1, len(bars) - 5, 0]))
        for e in entries.tolist():
            c = float(bars.close[e])
            half = float(rng.choice([0.5, 2.0, 8.0, 30.0, 1e6]))
            features = {"channel_high": c + half, "channel_low": c - half}
            got = inv.first("range_reversion", features, e)
            mask = invalid_mask("range_reversion", bars, params=params, features=features, ctx=ctx)
            assert got == first_invalid(mask, e), (params, e, half)
            found.add(None if got is None else got - e >= 256)
    assert found == {None, True, False}  # never invalid, invalid in the first stretch, and beyond it
