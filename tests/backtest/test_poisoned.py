"""The backtester on a poisoned history (a 1e308 bar, a 10x high): the bars are refused by the live sanity rule, and it
trades exactly as on the history without them, with no absurd stop or target."""

from __future__ import annotations

import numpy as np
import pytest

from scalper.backtest.engine import BacktestConfig, run_backtest
from shared.bars import FIELDS, Bars
from shared.loaders import load_m1
from shared.messages import StrategyConfig
from shared.strategies import catalog
from shared.strategies.indicators import atr
from shared.symbols import get_spec

GOLD = get_spec("XAUUSD")
POISON = {1200: "1e308", 1201: "1e308", 2500: "high_x10", 4100: "1e308", 4700: "high_x10"}


@pytest.fixture(scope="module")
def gold_slice(gold_file) -> Bars:
    return load_m1(gold_file).bars[30_000:36_000]


def poisoned(bars: Bars) -> Bars:
    cols = {f: getattr(bars, f).copy() for f in FIELDS}
    for i, kind in POISON.items():
        if kind == "1e308":
            for f in ("open", "high", "low", "close"):
                cols[f][i] = 1e308
        else:
            cols["high"][i] = cols["close"][i] * 10
    return Bars(*(cols[f] for f in FIELDS))


def config(**overrides) -> BacktestConfig:
    return BacktestConfig(symbol="XAUUSD", strategies=tuple(StrategyConfig(name=n) for n in catalog.names("scalper")), **overrides)


def sane(trades, bars: Bars) -> None:
    a = atr(bars.high, bars.low, bars.close, 14)
    for t in trades:
        assert t.sl is None or 0 < abs(t.initial_sl - t.entry_price) <= 20 * a[t.signal_index] + 1.0, t
        assert t.tp is None or (t.tp > 0 and abs(t.tp - t.entry_price) <= 20 * a[t.signal_index] + 1.0), t


def test_refused_bars_are_not_traded_on_and_do_not_poison_the_rest(gold_slice):
    result = run_backtest(poisoned(gold_slice), GOLD, config(bar_sanity_atr=25.0))
    assert [reason for _t, reason in result.refused] == ["jump_outlier", "jump_outlier", "range_outlier", "jump_outlier", "range_outlier"]
    assert [t for t, _r in result.refused] == [int(gold_slice.time[i]) for i in sorted(POISON)]
    keep = np.ones(len(gold_slice), bool)
    keep[list(POISON)] = False
    without = Bars(*(getattr(gold_slice, f)[keep] for f in FIELDS))
    clean = run_backtest(without, GOLD, config(bar_sanity_atr=25.0))
    assert len(result.trades) > 5
    assert [t.as_dict() for t in result.trades] == [t.as_dict() for t in clean.trades]
    sane(result.trades, without)

