"""The cost-aware gates (issue 19): a stop closer than min_stop_spread_ratio spreads is refused, and so is a calibrated
signal (p_win present) whose expected R net of costs is under min_expected_r; each is a recorded check with its value
and limit, and the backtester runs the same checks."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime

import pytest

from scalper.backtest.engine import BacktestConfig, run_backtest
from services.decision.risk import BotRules, Exposure, decide
from shared.costs import cost_r, expected_r_net
from shared.messages import Signal, StrategyConfig
from shared.symbols import DEFAULT_SPECS
from tests.backtest.helpers import BUY, CATALOG as SCRIPTED, flat_bars, set_bar

GOLD = DEFAULT_SPECS["XAUUSD"]
EURUSD = DEFAULT_SPECS["EURUSD"]


def signal(*, entry=1.10000, stop=1.09980, target=1.10040, spread=None, p_win=None, expected=None) -> Signal:
    return Signal(
        signal_id=uuid.uuid4(), bot_id=1, account_id=1, symbol="EURUSD", timeframe="1m", strategy="price_action_pinbar",
        side="buy", bar_time=datetime(2024, 3, 1, 10, 0, tzinfo=UTC), entry=entry, stop=stop, target=target, score=0.8,
        features={} if spread is None else {"spread_points": spread}, p_win=p_win, expected_r_net=expected,
    )


def check(result, name):
    [c] = [c for c in result.checks if c["name"] == name]
    return c


def test_a_stop_of_under_three_spreads_is_refused_with_its_ratio():
    # 2 pips of stop against a 1.2-pip spread: 1.67 spreads
    result = decide(rules=BotRules(), signal=signal(spread=12), exposure=Exposure(), spec=EURUSD)
    assert (result.action, result.reason) == ("ignore", "stop_within_spread")
    assert check(result, "stop_within_spread") == {"name": "stop_within_spread", "passed": False, "value": 1.667, "limit": 3.0}


def test_three_spreads_exactly_passes_and_the_ratio_is_the_bots():
    ok = decide(rules=BotRules(), signal=signal(spread=12, stop=1.09964), exposure=Exposure(), spec=EURUSD)
    assert ok.action == "open" and check(ok, "stop_within_spread")["value"] == 3.0
    loose = decide(rules=BotRules(min_stop_spread_ratio=1.5), signal=signal(spread=12), exposure=Exposure(), spec=EURUSD)
    assert loose.action == "open" and check(loose, "stop_within_spread")["limit"] == 1.5


def test_without_a_spread_the_check_passes_and_says_so():
    result = decide(rules=BotRules(), signal=signal(), exposure=Exposure(), spec=EURUSD)
    assert result.action == "open"
    assert check(result, "stop_within_spread") == {"name": "stop_within_spread", "passed": True, "value": None, "limit": "3 (spread unknown)"}


def test_fixed_pips_mode_holds_the_bots_own_stop_to_the_spread():
    rules = BotRules(sl_tp_mode="fixed_pips", default_sl_pips=3.0, default_tp_pips=5.0)
    result = decide(rules=rules, signal=signal(spread=12, stop=1.0990), exposure=Exposure(), spec=EURUSD)
    assert (result.reason, check(result, "stop_within_spread")["value"]) == ("stop_within_spread", 2.5)


def test_a_calibrated_signal_expecting_less_than_min_expected_r_is_refused():
    bad = decide(rules=BotRules(), signal=signal(p_win=0.3, expected=-0.2), exposure=Exposure(), spec=EURUSD)
    assert (bad.action, bad.reason) == ("ignore", "expected_r_below_min")
    assert check(bad, "expected_r_below_min") == {"name": "expected_r_below_min", "passed": False, "value": -0.2, "limit": 0.0}
    good = decide(rules=BotRules(), signal=signal(p_win=0.5, expected=0.25), exposure=Exposure(), spec=EURUSD)
    assert good.action == "open" and check(good, "expected_r_below_min")["passed"]
    demanding = decide(rules=BotRules(min_expected_r=0.3), signal=signal(p_win=0.5, expected=0.25), exposure=Exposure(), spec=EURUSD)
    assert demanding.reason == "expected_r_below_min"


def test_without_a_calibration_the_expected_r_check_passes_with_no_value():
    result = decide(rules=BotRules(min_expected_r=5.0), signal=signal(), exposure=Exposure(), spec=EURUSD)
    assert result.action == "open"
    assert check(result, "expected_r_below_min") == {"name": "expected_r_below_min", "passed": True, "value": None,
                                                      "limit": "5 (no calibration)"}


def test_expected_r_net_counts_the_spread_and_the_commission_in_r():
    # EURUSD: 2-pip stop, 1.2-pip spread = 0.6 R; $7 per lot round turn = 0.7 pip = 0.35 R
    cost = cost_r(entry=1.1, stop=1.0998, spread_points=12, spec=EURUSD, commission_per_lot=7.0)
    assert cost == pytest.approx(0.6 + 0.35)
    assert expected_r_net(0.5, reward_r=2.0, cost=cost) == pytest.approx(0.5 * 2 - 0.5 - 0.95)


def test_the_backtester_refuses_what_decision_refuses():
    bars = flat_bars(400, spread=50)  # 0.50 of spread against the scripted 2.00 stop: 4 spreads
    set_bar(bars, 200, mark=BUY)
    config = BacktestConfig(symbol="XAUUSD", strategies=(StrategyConfig(name="scripted"),))
    assert len(run_backtest(bars, GOLD, config, catalog=SCRIPTED).trades) == 1
    strict = dataclasses.replace(config, rules=BotRules(min_stop_spread_ratio=5.0))
    result = run_backtest(bars, GOLD, strict, catalog=SCRIPTED)
    assert result.trades == [] and result.ignored["stop_within_spread"] == 1
