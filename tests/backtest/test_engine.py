"""The backtester's trading rules on scripted bars: fills (architecture.md "Fills"), risk rules, the kill switch, costs."""

from __future__ import annotations

import dataclasses
import math

import pytest

from scalper.backtest.engine import BacktestConfig, run_backtest
from services.decision.risk import BotRules
from services.executor.trailing import TrailRule
from shared.messages import StrategyConfig
from shared.symbols import get_spec
from tests.backtest.helpers import BUY, CATALOG, SELL, flat_bars, set_bar

GOLD = get_spec("XAUUSD")  # 2 digits, point 0.01, contract 100


def run(bars, **overrides):
    params = overrides.pop("params", {})
    overrides.setdefault("spread_points", 0.0)  # a file without spreads would otherwise get the typical 12 points
    # The scripted bars range 0.2: a gap of 10 is 50 of their ATRs, a bar the sanity rule refuses (tests/backtest/
    # test_poisoned.py); these tests are about fills, so only the outlier test is off (a malformed bar is still refused).
    overrides.setdefault("bar_sanity_atr", math.inf)
    config = BacktestConfig(symbol="XAUUSD", strategies=(StrategyConfig(name="scripted", params=params),), **overrides)
    return run_backtest(bars, GOLD, config, catalog=CATALOG)


def test_buy_fills_at_next_open_ask_and_takes_target_on_bid():
    bars = flat_bars(300, spread=20)
    set_bar(bars, 150, mark=BUY)  # entry 2000, stop 1998, target 2004
    set_bar(bars, 151, open=2000.5, high=2000.6)
    set_bar(bars, 160, high=2004.0)
    result = run(bars)
    (t,) = result.trades
    assert (t.entry_index, t.entry_price) == (151, 2000.7)  # ask = bid open 2000.5 + 20 points
    assert (t.exit_index, t.exit_price, t.reason) == (160, 2004.0, "tp")
    assert t.pnl == pytest.approx((2004.0 - 2000.7) * 0.01 * 100)
    assert t.pips == pytest.approx(33.0)
    assert t.r_multiple == pytest.approx((2004.0 - 2000.7) / (2000.7 - 1998.0))
    assert result.stats["total"]["trades"] == 1 and result.stats["total"]["wins"] == 1


def test_stop_first_when_both_touched_and_gap_fills_at_open():
    bars = flat_bars(300)
    set_bar(bars, 150, mark=BUY)
    set_bar(bars, 155, high=2005.0, low=1997.0)  # both: the stop
    set_bar(bars, 200, mark=BUY)
    set_bar(bars, 210, open=1990.0, high=1990.5, low=1989.0, close=1990.0)  # gaps through 1998: fills at 1990
    first, second = run(bars).trades
    assert (first.exit_index, first.exit_price, first.reason) == (155, 1998.0, "sl")
    assert (second.exit_index, second.exit_price, second.reason) == (210, 1990.0, "sl")


def test_short_stop_triggers_on_the_ask():
    bars = flat_bars(300, spread=50)  # 0.50
    set_bar(bars, 150, mark=SELL)  # entry 2000, stop 2002, target 1996
    set_bar(bars, 170, high=2001.6)  # ask high 2002.1 >= 2002: stopped although the bid never reached it
    (t,) = run(bars).trades
    assert t.entry_price == 2000.0 and (t.exit_index, t.exit_price, t.reason) == (170, 2002.0, "sl")


def test_one_per_symbol_and_min_score():
    bars = flat_bars(300)
    set_bar(bars, 150, mark=BUY)
    set_bar(bars, 152, mark=BUY)  # the first is still open: max_per_symbol
    result = run(bars)
    assert len(result.trades) == 1 and result.ignored["max_per_symbol"] == 1
    assert run(bars, params={"score": 0.2}).ignored["score_below_min"] == 2


def test_max_trades_per_day_counts_on_broker_day():
    bars = flat_bars(1440 + 300)
    for i in range(120, 1400, 40):  # 32 signals on day one; each trade stopped out on the next bar
        set_bar(bars, i, mark=BUY)
        set_bar(bars, i + 2, low=1997.0)
    set_bar(bars, 1500, mark=BUY)  # next UTC day: allowed again
    rules = dataclasses.replace(BotRules(), max_trades_per_day=25)
    result = run(bars, rules=rules, kill_switch_pct=100.0)
    assert result.ignored["max_trades_per_day"] == 7
    assert len(result.trades) == 26


def test_kill_switch_closes_all_and_stops_the_day():
    bars = flat_bars(1440 + 300)
    set_bar(bars, 150, mark=BUY)
    set_bar(bars, 160, close=1998.5, low=1998.4)  # 1 lot x 1.5 x 100 = 150 lost open > 2 % of 5000 = 100
    set_bar(bars, 161, open=1998.6, low=1998.5)  # a bar: its open inside its range
    set_bar(bars, 300, mark=BUY)  # same day: the bot is killed
    set_bar(bars, 1500, mark=BUY)  # next day: trades again
    result = run(bars, balance=5000.0, rules=dataclasses.replace(BotRules(), default_qty=1.0))
    first, second = result.trades
    assert (first.exit_index, first.reason, first.exit_price) == (161, "kill_switch", 1998.6)
    assert result.ignored["bot_not_active"] == 1 and len(result.kill_days) == 1
    assert second.signal_index == 1500


def test_commission_and_swap():
    bars = flat_bars(3000)
    set_bar(bars, 150, mark=BUY)
    set_bar(bars, 2000, high=2004.5)  # next day: one rollover
    (t,) = run(bars, commission_per_lot=7.0, swap_per_lot_day=-3.0, rules=dataclasses.replace(BotRules(), default_qty=0.5)).trades
    assert t.commission == pytest.approx(3.5) and t.swap == pytest.approx(-1.5)
    assert t.pnl == pytest.approx(4.0 * 0.5 * 100 - 3.5 - 1.5)


def test_trailing_stop_as_the_executor_applies_it():
    bars = flat_bars(300)
    set_bar(bars, 150, mark=BUY)  # stop 1998, target 2004
    set_bar(bars, 160, high=2003.0, close=2003.0)  # trail 1 pip x 10 = 1.0 behind the bid: stop to 2002.0
    set_bar(bars, 161, open=2002.5, high=2002.6, low=2001.9, close=2002.0)  # a bar: its close inside its range
    (t,) = run(bars, trail=TrailRule(mode="pips", distance_pips=10.0)).trades
    assert (t.exit_index, t.exit_price, t.reason) == (161, 2002.0, "trail")


def test_kill_switch_bound_never_changes_the_result(gold_file, monkeypatch):
    """The kill switch skips the exact check where a cheap bound says the limit cannot be reached: on real gold with a
    balance small enough to trip it on many days, the trades are the same with the exact check everywhere."""
    from scalper.backtest import engine
    from shared.loaders import load_m1
    from shared.strategies import catalog

    bars = load_m1(gold_file).bars[:25_000]
    config = BacktestConfig(symbol="XAUUSD", balance=300.0, strategies=tuple(StrategyConfig(name=n) for n in catalog.names("scalper")))
    fast = run_backtest(bars, GOLD, config)
    monkeypatch.setattr(engine._Book, "_may_trip", lambda self, *args: True)
    exact = run_backtest(bars, GOLD, config)
    assert len(fast.kill_days) > 3
    assert fast.kill_days == exact.kill_days
    assert [t.as_dict() for t in fast.trades] == [t.as_dict() for t in exact.trades]
