"""The pure risk rules: each check alone, several together, stops and targets, rounding."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from services.decision.risk import BotRules, Exposure, decide
from shared.messages import Signal
from shared.symbols import DEFAULT_SPECS

GOLD = DEFAULT_SPECS["XAUUSD"]
EURUSD = DEFAULT_SPECS["EURUSD"]
USDJPY = DEFAULT_SPECS["USDJPY"]


def signal(*, side="buy", entry=2000.0, stop=1998.0, target=2004.0, score=0.8, features=None) -> Signal:
    return Signal(
        signal_id=uuid.uuid4(),
        bot_id=1,
        account_id=1,
        symbol="XAUUSDm",
        timeframe="1m",
        strategy="price_action_pinbar",
        side=side,
        bar_time=datetime(2024, 3, 1, 10, 0, tzinfo=UTC),
        entry=entry,
        stop=stop,
        target=target,
        score=score,
        features=features or {},
    )


def failed(result) -> set[str]:
    return {c["name"] for c in result.checks if not c["passed"]}


def test_defaults_open_with_every_check_recorded():
    result = decide(rules=BotRules(), signal=signal(), exposure=Exposure(), spec=GOLD)
    assert (result.action, result.reason) == ("open", "ok")
    assert [c["name"] for c in result.checks] == [
        "bot_not_active",
        "auto_trade_off",
        "invalid_sl_tp_mode",
        "score_below_min",
        "max_concurrent_positions",
        "max_per_symbol",
        "max_trades_per_day",
        "outside_trading_hours",
        "spread_too_wide",
        "stop_within_spread",
        "expected_r_below_min",
        "netting_conflict",
        "correlation_basket",
        "margin_insufficient",
        "implausible_stops",
    ]
    assert all(c["passed"] for c in result.checks)
    score = next(c for c in result.checks if c["name"] == "score_below_min")
    assert (score["value"], score["limit"]) == (0.8, 0.3)
    assert (result.side, result.volume, result.sl, result.tp) == ("buy", 0.01, 1998.0, 2004.0)


@pytest.mark.parametrize(("score", "action"), [(0.29, "ignore"), (0.3, "open"), (0.31, "open")])
def test_score_below_min(score, action):
    result = decide(rules=BotRules(decision_min_score=0.3), signal=signal(score=score), exposure=Exposure(), spec=GOLD)
    assert result.action == action
    if action == "ignore":
        assert result.reason == "score_below_min" and result.volume is None and result.sl is None


@pytest.mark.parametrize(
    ("exposure", "reason"),
    [
        (Exposure(open_positions=2), "max_concurrent_positions"),
        (Exposure(open_on_symbol=1), "max_per_symbol"),
        (Exposure(trades_today=25), "max_trades_per_day"),
    ],
)
def test_each_exposure_limit(exposure, reason):
    rules = BotRules(risk_max_concurrent_positions=2, risk_max_per_symbol=1, max_trades_per_day=25)
    result = decide(rules=rules, signal=signal(), exposure=exposure, spec=GOLD)
    assert (result.action, result.reason) == ("ignore", reason)
    assert failed(result) == {reason}


def test_limits_allow_up_to_one_below():
    rules = BotRules(risk_max_concurrent_positions=2, risk_max_per_symbol=2, max_trades_per_day=25)
    result = decide(rules=rules, signal=signal(), exposure=Exposure(open_positions=1, open_on_symbol=1, trades_today=24), spec=GOLD)
    assert result.action == "open"


@pytest.mark.parametrize(
    ("status", "auto_trade", "reason"),
    [("paused", True, "bot_not_active"), ("killed", True, "bot_not_active"), ("active", False, "auto_trade_off")],
)
def test_inactive_bot(status, auto_trade, reason):
    result = decide(rules=BotRules(status=status, auto_trade=auto_trade), signal=signal(), exposure=Exposure(), spec=GOLD)
    assert (result.action, result.reason) == ("ignore", reason)


def test_several_failures_name_the_first_and_flag_all():
    rules = BotRules(status="killed", decision_min_score=0.9, risk_max_concurrent_positions=1, max_trades_per_day=3)
    result = decide(rules=rules, signal=signal(score=0.5), exposure=Exposure(open_positions=1, open_on_symbol=1, trades_today=3), spec=GOLD)
    assert result.reason == "bot_not_active"
    assert failed(result) == {"bot_not_active", "score_below_min", "max_concurrent_positions", "max_per_symbol", "max_trades_per_day"}
    result = decide(rules=BotRules(decision_min_score=0.9), signal=signal(score=0.5), exposure=Exposure(open_positions=5), spec=GOLD)
    assert result.reason == "score_below_min"


def test_unknown_sl_tp_mode_is_ignored_not_guessed():
    result = decide(rules=BotRules(sl_tp_mode="atr"), signal=signal(), exposure=Exposure(), spec=GOLD)
    assert (result.action, result.reason) == ("ignore", "invalid_sl_tp_mode")


@pytest.mark.parametrize(
    ("spec", "side", "entry", "sl", "tp"),
    [
        # gold: pip 0.1, so 3 and 5 pips are 0.30 and 0.50
        (GOLD, "buy", 2000.00, 1999.70, 2000.50),
        (GOLD, "sell", 2000.00, 2000.30, 1999.50),
        # EURUSD: pip 0.0001
        (EURUSD, "buy", 1.08500, 1.08470, 1.08550),
        (EURUSD, "sell", 1.08500, 1.08530, 1.08450),
        # USDJPY: pip 0.01
        (USDJPY, "buy", 150.000, 149.970, 150.050),
    ],
)
def test_fixed_pips_use_the_symbols_pip(spec, side, entry, sl, tp):
    rules = BotRules(sl_tp_mode="fixed_pips", default_sl_pips=3, default_tp_pips=5)
    result = decide(rules=rules, signal=signal(side=side, entry=entry, stop=0.0, target=0.0), exposure=Exposure(), spec=spec)
    assert result.action == "open"
    assert (result.sl, result.tp) == (sl, tp)


def test_strategy_stops_rounded_to_digits():
    result = decide(rules=BotRules(), signal=signal(entry=2000.0, stop=1998.123456, target=2004.987654), exposure=Exposure(), spec=GOLD)
    assert (result.sl, result.tp) == (1998.12, 2004.99)
    result = decide(
        rules=BotRules(), signal=signal(side="sell", entry=1.085, stop=1.0861234567, target=1.0831234567), exposure=Exposure(), spec=EURUSD
    )
    assert (result.sl, result.tp) == (1.08612, 1.08312)


@pytest.mark.parametrize("mode", ["strategy", "fixed_pips"])
def test_stops_pushed_outside_the_stops_level(mode):
    spec = GOLD.model_copy(update={"stops_level": 50})  # 50 points of 0.01 = 0.50
    rules = BotRules(sl_tp_mode=mode, default_sl_pips=3, default_tp_pips=5)
    result = decide(rules=rules, signal=signal(entry=2000.0, stop=1999.9, target=2000.2), exposure=Exposure(), spec=spec)
    assert (result.sl, result.tp) == (1999.50, 2000.50)


@pytest.mark.parametrize(
    ("qty", "step", "volume"), [(0.017, 0.01, 0.01), (1.239, 0.01, 1.23), (0.25, 0.1, 0.2), (0.001, 0.01, 0.01), (500.0, 0.01, 100.0)]
)
def test_volume_rounded_to_the_step(qty, step, volume):
    spec = GOLD.model_copy(update={"volume_step": step, "volume_min": step})
    result = decide(rules=BotRules(default_qty=qty), signal=signal(), exposure=Exposure(), spec=spec)
    assert result.volume == volume


def test_rules_read_from_a_bot_row():
    from shared.db.models import Bot

    bot = Bot(user_id=1, account_id=1, symbol="XAUUSDm", decision_min_score=0.7, status="paused", default_qty=0.05)
    rules = BotRules.from_attrs(bot)
    assert (rules.decision_min_score, rules.status, rules.default_qty, rules.auto_trade) == (0.7, "paused", 0.05, False)


# --- implausible stops: the side of the entry, and at most max_stop_atr x the window's ATR from it ---------------


def _stops(result) -> dict:
    return next(c for c in result.checks if c["name"] == "implausible_stops")


@pytest.mark.parametrize(
    ("side", "entry", "stop", "target", "features", "passed", "value", "limit"),
    [
        ("buy", 2000.0, 1998.0, 2004.0, {"atr": 1.0}, True, 4.0, 20.0),  # the target 4 ATR away
        ("buy", 2000.0, 1979.0, 2004.0, {"atr": 1.0}, False, 21.0, 20.0),  # the stop 21 ATR away
        ("sell", 2000.0, 2002.0, 1975.0, {"atr": 1.0}, False, 25.0, 20.0),  # the target 25 ATR away
        ("buy", 2000.0, 8.7e304, 2004.0, {"atr": 1.0}, False, "sl 8.7e+304 must be below the entry 2000.0", 20.0),
        ("buy", 2000.0, 1998.0, -5.0, {"atr": 1.0}, False, "tp -5.0 is not a price", 20.0),
        ("sell", 2000.0, 2002.0, 2003.0, {"atr": 1.0}, False, "tp 2003.0 must be below the entry 2000.0", 20.0),
        ("buy", 2000.0, 1998.0, 2100.0, {"atr_5m": 10.0}, True, 10.0, 20.0),  # harami: the M5 ATR
        ("buy", 2000.0, 1900.0, 2004.0, {}, True, None, "atr unknown: right side of the entry only"),
        ("buy", 2000.0, 2001.0, 2004.0, {}, False, "sl 2001.0 must be below the entry 2000.0",
         "atr unknown: right side of the entry only"),
    ],
)
def test_implausible_stops_are_refused_and_recorded(side, entry, stop, target, features, passed, value, limit):
    result = decide(rules=BotRules(), signal=signal(side=side, entry=entry, stop=stop, target=target, features=features),
                    exposure=Exposure(), spec=GOLD)
    check = _stops(result)
    assert (check["passed"], check["value"], check["limit"]) == (passed, value, limit)
    assert (result.action, result.reason) == (("open", "ok") if passed else ("ignore", "implausible_stops"))
    if not passed:
        assert result.sl is None and result.tp is None


def test_max_stop_atr_is_the_callers_limit():
    far = signal(stop=1970.0, target=2004.0, features={"atr": 1.0})  # 30 ATR
    assert decide(rules=BotRules(), signal=far, exposure=Exposure(), spec=GOLD).reason == "implausible_stops"
    wide = decide(rules=BotRules(), signal=far, exposure=Exposure(), spec=GOLD, max_stop_atr=40.0)
    assert wide.action == "open" and _stops(wide)["limit"] == 40.0


def test_fixed_pips_stops_are_checked_against_the_atr_too():
    rules = BotRules(sl_tp_mode="fixed_pips", default_sl_pips=300.0, default_tp_pips=5.0)  # gold pip 0.1: sl 30.0 away
    result = decide(rules=rules, signal=signal(features={"atr": 1.0}), exposure=Exposure(), spec=GOLD)
    assert (result.reason, _stops(result)["value"]) == ("implausible_stops", 30.0)
