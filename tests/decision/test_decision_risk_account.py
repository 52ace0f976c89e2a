"""The account-wide risk rules, pure: trading hours, spread, netting, correlation basket, margin; alone and together;
and the same rules through the decision service on a real database (orders in flight count)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from decision_helpers import T0, add_account, add_bot, make_settings, make_signal

from services.decision.risk import AccountRules, BotRules, Exposure, Leg, decide, in_trading_hours, margin_required, parse_trading_hours
from services.decision.service import DecisionService
from shared.bus import topology
from shared.db.models import Decision
from shared.messages import Signal
from shared.symbols import DEFAULT_SPECS
from shared.timeutil import ManualClock

GOLD, EURUSD, GBPUSD, USDCHF = (DEFAULT_SPECS[n] for n in ("XAUUSD", "EURUSD", "GBPUSD", "USDCHF"))


def fx_signal(*, symbol="EURUSD", side="buy", entry=1.1, bot_id=1, at=datetime(2024, 3, 1, 10, 0, tzinfo=UTC), features=None) -> Signal:
    step = 0.001 if side == "buy" else -0.001
    return Signal(
        signal_id=uuid.uuid4(), bot_id=bot_id, account_id=1, symbol=symbol, timeframe="1m", strategy="price_action_pinbar",
        side=side, bar_time=at, entry=entry, stop=entry - step, target=entry + 2 * step, score=0.8, features=features or {},
    )


def failed(result) -> set[str]:
    return {c["name"] for c in result.checks if not c["passed"]}


@pytest.mark.parametrize(
    ("hours", "hh", "mm", "inside"),
    [("", 3, 0, True), ("07:00-20:00", 6, 59, False), ("07:00-20:00", 7, 0, True), ("07:00-20:00", 20, 0, False),
     ("22:00-06:00", 23, 30, True), ("22:00-06:00", 5, 59, True), ("22:00-06:00", 12, 0, False)],
)
def test_trading_hours(hours, hh, mm, inside):
    at = datetime(2024, 3, 1, hh, mm, tzinfo=UTC)
    assert in_trading_hours(hours, at) is inside
    result = decide(rules=BotRules(trading_hours=hours), signal=fx_signal(at=at), exposure=Exposure(), spec=EURUSD)
    assert (result.action == "open") is inside
    if not inside:
        assert result.reason == "outside_trading_hours"


@pytest.mark.parametrize("text", ["9-17", "25:00-01:00", "07:00-07:00", "07:00 - 08:00"])
def test_bad_trading_hours_are_refused_with_the_form_to_use(text):
    with pytest.raises(ValueError, match="HH:MM-HH:MM|equal"):
        parse_trading_hours(text)


def test_spread_limit_in_pips_by_the_symbols_pip_size():
    rules = BotRules(max_spread_pips=2.0)
    wide = decide(rules=rules, signal=fx_signal(features={"spread": 25}), exposure=Exposure(), spec=EURUSD)  # 25 points = 2.5 pips
    assert (wide.action, wide.reason) == ("ignore", "spread_too_wide")
    check = next(c for c in wide.checks if c["name"] == "spread_too_wide")
    assert (check["value"], check["limit"]) == (2.5, 2.0)
    assert decide(rules=rules, signal=fx_signal(features={"spread": 20}), exposure=Exposure(), spec=EURUSD).action == "open"
    # no spread in the features: the check passes and says it did not know
    unknown = decide(rules=rules, signal=fx_signal(), exposure=Exposure(), spec=EURUSD)
    assert unknown.action == "open" and next(c for c in unknown.checks if c["name"] == "spread_too_wide")["value"] is None


def test_netting_refuses_to_reduce_or_reverse_another_bots_position():
    other_long = (Leg(bot_id=2, instrument="EURUSD", side="buy", volume=0.1),)
    netting, hedging = AccountRules(margin_mode="netting"), AccountRules(margin_mode="hedging")
    exposure = Exposure(legs=other_long)
    sell = fx_signal(side="sell")
    assert decide(rules=BotRules(risk_max_per_symbol=5), signal=sell, exposure=exposure, spec=EURUSD, account=netting).reason == "netting_conflict"
    assert decide(rules=BotRules(risk_max_per_symbol=5), signal=sell, exposure=exposure, spec=EURUSD, account=hedging).action == "open"
    # the same bot's own position, or the same direction, is no conflict
    own = Exposure(legs=(Leg(bot_id=1, instrument="EURUSD", side="buy"),))
    assert "netting_conflict" not in failed(decide(rules=BotRules(), signal=sell, exposure=own, spec=EURUSD, account=netting))
    assert "netting_conflict" not in failed(decide(rules=BotRules(), signal=fx_signal(), exposure=exposure, spec=EURUSD, account=netting))


def test_correlation_basket_counts_the_direction_of_the_common_currency():
    long_eur = Exposure(legs=(Leg(bot_id=2, instrument="EURUSD", side="buy"),))  # short USD
    gbp_buy = fx_signal(symbol="GBPUSD", entry=1.27)  # short USD too: refused
    result = decide(rules=BotRules(), signal=gbp_buy, exposure=long_eur, spec=GBPUSD)
    assert (result.action, result.reason) == ("ignore", "correlation_basket")
    assert "EURUSD" in next(c for c in result.checks if c["name"] == "correlation_basket")["value"]
    chf_sell = fx_signal(symbol="USDCHF", side="sell", entry=0.88)  # selling USDCHF is short USD: refused
    assert decide(rules=BotRules(), signal=chf_sell, exposure=long_eur, spec=USDCHF).reason == "correlation_basket"
    chf_buy = fx_signal(symbol="USDCHF", entry=0.88)  # long USD: the other way, allowed
    assert decide(rules=BotRules(), signal=chf_buy, exposure=long_eur, spec=USDCHF).action == "open"
    assert decide(rules=BotRules(correlation_check=False), signal=gbp_buy, exposure=long_eur, spec=GBPUSD).action == "open"
    gold = decide(rules=BotRules(), signal=fx_signal(symbol="XAUUSD", entry=2000.0), exposure=long_eur, spec=GOLD)
    assert gold.action == "open"  # gold is in no basket


def test_margin_enough_for_the_volume():
    # 0.01 lot of gold at 2000 (contract 100) at 1:100 needs 20.00
    assert margin_required(spec=GOLD, volume=0.01, price=2000.0, leverage=100) == pytest.approx(20.0)
    gold = fx_signal(symbol="XAUUSD", entry=2000.0)
    short = decide(rules=BotRules(), signal=gold, exposure=Exposure(margin_free=19.99), spec=GOLD)
    assert (short.action, short.reason) == ("ignore", "margin_insufficient")
    assert next(c for c in short.checks if c["name"] == "margin_insufficient")["limit"] == 20.0
    assert decide(rules=BotRules(), signal=gold, exposure=Exposure(margin_free=20.0), spec=GOLD).action == "open"
    assert decide(rules=BotRules(), signal=gold, exposure=Exposure(margin_free=5.0), spec=GOLD, account=AccountRules(leverage=500)).action == "open"
    # USD is the base of USDCHF: 0.01 x 100000 / 100 = 10 USD whatever the price
    assert margin_required(spec=USDCHF, volume=0.01, price=0.88, leverage=100) == pytest.approx(10.0)


def test_every_failing_check_is_recorded_and_the_first_names_the_reason():
    exposure = Exposure(open_positions=2, open_on_symbol=1, trades_today=25, legs=(Leg(bot_id=2, instrument="GBPUSD", side="buy"),
                        Leg(bot_id=2, instrument="EURUSD", side="sell")), margin_free=0.0)
    rules = BotRules(max_spread_pips=1.0, trading_hours="11:00-12:00", decision_min_score=0.9)
    result = decide(rules=rules, signal=fx_signal(features={"spread": 50}), exposure=exposure, spec=EURUSD, account=AccountRules(margin_mode="netting"))
    assert result.reason == "score_below_min"
    assert failed(result) == {"score_below_min", "max_concurrent_positions", "max_per_symbol", "max_trades_per_day", "outside_trading_hours",
                              "spread_too_wide", "stop_within_spread", "netting_conflict", "correlation_basket", "margin_insufficient"}


# --- through the service, on SQLite and PostgreSQL ---------------------------------------------------------------


async def test_netting_and_baskets_see_other_bots_orders_in_flight(db, bus, user):
    account = await add_account(db, user, margin_mode="netting")
    eur_a = await add_bot(db, user, account, symbol="EURUSD", risk_max_per_symbol=5)
    eur_b = await add_bot(db, user, account, symbol="EURUSD", engine_mode="harami", risk_max_per_symbol=5)
    gbp = await add_bot(db, user, account, symbol="GBPUSD")
    service = DecisionService(bus=bus, sessions=db, clock=ManualClock(T0), settings=make_settings(), lookback_for=lambda c: 100)
    await service.handle_signal(make_signal(eur_a, side="buy", entry=1.1, stop=1.099, target=1.102))
    assert len(bus.sent(topology.EXECUTION_ORDERS)) == 1  # sent, not filled yet: it counts
    await service.handle_signal(make_signal(eur_b, side="sell", entry=1.1, stop=1.101, target=1.098))
    await service.handle_signal(make_signal(gbp, side="buy", entry=1.27, stop=1.269, target=1.272))
    async with db() as s:
        from sqlalchemy import select

        rows = {d.bot_id: (d.action, d.reason) for d in (await s.execute(select(Decision))).scalars()}
    assert rows == {eur_a.id: ("open", "ok"), eur_b.id: ("ignore", "netting_conflict"), gbp.id: ("ignore", "correlation_basket")}


async def test_the_margin_check_reads_the_latest_snapshot(db, bus, user, account):
    from shared.messages import AccountSnapshot

    bot = await add_bot(db, user, account)
    service = DecisionService(bus=bus, sessions=db, clock=ManualClock(T0), settings=make_settings(), lookback_for=lambda c: 100)
    await service.handle_account_snapshot(AccountSnapshot(account_id=account.id, balance=15.0, equity=15.0, margin=0.0, margin_free=15.0, taken_at=T0))
    await service.handle_signal(make_signal(bot))
    async with db() as s:
        from sqlalchemy import select

        decision = (await s.execute(select(Decision))).scalar_one()
    assert (decision.action, decision.reason) == ("ignore", "margin_insufficient")
    check = next(c for c in decision.checks if c["name"] == "margin_insufficient")
    assert (check["value"], check["limit"]) == (15.0, 20.0)
    assert bus.sent(topology.EXECUTION_ORDERS) == []



async def test_orders_in_flight_take_margin_before_any_snapshot_shows_it(db, bus, user, account):
    from shared.messages import AccountSnapshot

    first = await add_bot(db, user, account)
    second = await add_bot(db, user, account, symbol="EURUSD")
    service = DecisionService(bus=bus, sessions=db, clock=ManualClock(T0), settings=make_settings(), lookback_for=lambda c: 100)
    # 30 free: gold's 0.01 lot takes 20, EURUSD's 0.01 lot at 1.1 takes 11 -> the second does not fit while the first is in flight
    await service.handle_account_snapshot(AccountSnapshot(account_id=account.id, balance=30.0, equity=30.0, margin=0.0, margin_free=30.0, taken_at=T0))
    await service.handle_signal(make_signal(first))
    await service.handle_signal(make_signal(second, entry=1.1, stop=1.099, target=1.102))
    async with db() as s:
        from sqlalchemy import select

        rows = {d.bot_id: (d.action, d.reason) for d in (await s.execute(select(Decision))).scalars()}
    assert rows == {first.id: ("open", "ok"), second.id: ("ignore", "margin_insufficient")}
