"""The ScanPlan: who is scanned (active, auto-trading bots on active accounts), grouped by instrument; its refresh loop."""

from __future__ import annotations

from datetime import timedelta

from decision_helpers import T0, add_account, add_bot, add_user, eventually, make_settings
from sqlalchemy import update

from services.decision.plan import build_plan
from services.decision.service import DecisionService
from shared.bus import topology
from shared.db.engine import transaction
from shared.db.models import Bot
from shared.messages import ScanPlan
from shared.timeutil import ManualClock


def lookback_recorder(calls: list):
    def lookback_for(configs):
        calls.append(sorted(c.name for c in configs))
        return 400 if any(c.name == "trend_pullback" for c in configs) else 50

    return lookback_for


async def test_plan_takes_active_auto_trading_bots_on_active_accounts(db, user):
    main = await add_account(db, user, symbol_suffix="m")
    closed = await add_account(db, user, name="closed", is_active=False)
    other_user = await add_user(db, "bob")
    pro = await add_account(db, other_user, symbol_suffix=".pro")

    gold = await add_bot(
        db, user, main, enabled_strategies=["price_action_pinbar", "trend_pullback"], strategy_params={"trend_pullback": {"ema_period": 34}}
    )
    harami = await add_bot(db, user, main, engine_mode="harami", default_timeframe="5m", enabled_strategies=["harami"])
    euro_pro = await add_bot(db, other_user, pro, symbol="EURUSD.pro", enabled_strategies=["range_reversion"])
    await add_bot(db, user, main, symbol="EURUSDm", status="paused")
    await add_bot(db, user, main, symbol="USDJPYm", status="killed")
    await add_bot(db, user, main, symbol="GBPUSDm", auto_trade=False)
    await add_bot(db, user, main, symbol="AUDUSDm", enabled_strategies=[])
    await add_bot(db, user, closed, symbol="XAUUSDm")

    calls: list = []
    async with db() as s:
        plan = await build_plan(session=s, lookback_for=lookback_recorder(calls), min_lookback=100)

    assert [p.symbol for p in plan.symbols] == ["EURUSD", "XAUUSD"]
    euro, xau = plan.symbols
    assert [sub.bot_id for sub in xau.subscriptions] == [gold.id, harami.id]
    assert [sub.bot_id for sub in euro.subscriptions] == [euro_pro.id]
    first = xau.subscriptions[0]
    assert (first.account_id, first.symbol, first.engine_mode, first.timeframe) == (main.id, "XAUUSDm", "scalper", "1m")
    assert [(c.name, c.params) for c in first.strategies] == [("price_action_pinbar", {}), ("trend_pullback", {"ema_period": 34})]
    assert (xau.subscriptions[1].engine_mode, xau.subscriptions[1].timeframe) == ("harami", "5m")
    assert euro.subscriptions[0].symbol == "EURUSD.pro"
    # lookback_for sees every strategy of the symbol; the minimum lifts a short one.
    assert sorted(calls) == [["harami", "price_action_pinbar", "trend_pullback"], ["range_reversion"]]
    assert (xau.lookback, euro.lookback) == (400, 100)


async def test_plan_of_no_bots_is_empty(db):
    async with db() as s:
        plan = await build_plan(session=s, lookback_for=lambda configs: 100)
    assert plan.symbols == ()


async def test_plan_loop_publishes_every_interval_of_clock_time_and_on_request(db, bus, user, account):
    bot = await add_bot(db, user, account)
    clock = ManualClock(T0)
    service = DecisionService(bus=bus, sessions=db, clock=clock, settings=make_settings(scan_interval_s=45), lookback_for=lambda c: 120)
    await service.start()
    try:
        assert set(bus.handlers) == {topology.DECISION_SIGNALS.name, topology.DECISION_EVENTS.name}

        def plans() -> list[ScanPlan]:
            return [msg for key, msg in bus.sent(topology.CONTROL_PLAN) if key == ""]

        await eventually(lambda: len(plans()) == 1)
        assert [(p.symbol, p.lookback) for p in plans()[0].symbols] == [("XAUUSD", 120)]
        clock.advance(timedelta(seconds=45))
        await eventually(lambda: len(plans()) == 2)
        clock.advance(timedelta(seconds=45))
        await eventually(lambda: len(plans()) == 3)

        async with transaction(db) as s:  # a bot paused by another process
            await s.execute(update(Bot).where(Bot.id == bot.id).values(status="paused"))
        refreshed = await service.refresh_plan()
        assert refreshed.symbols == () and plans()[-1].symbols == ()
        assert len(plans()) == 4
    finally:
        await service.stop()
    assert service.last_plan is not None and service.last_plan.symbols == ()


async def test_a_large_plan_sizes_each_distinct_config_once_and_lets_the_loop_run(db, user, monkeypatch):
    import asyncio

    from services.decision import plan as plan_module

    monkeypatch.setattr(plan_module, "YIELD_EVERY", 3)
    accounts = [await add_account(db, user, name=f"a{i}") for i in range(8)]
    for i, account in enumerate(accounts):
        params = {"trend_pullback": {"ema_period": 34}} if i == 0 else {}
        await add_bot(db, user, account, enabled_strategies=["price_action_pinbar", "trend_pullback"], strategy_params=params)
    calls: list = []

    def lookback_for(configs):
        calls.append(sorted((c.name, tuple(sorted(c.params.items()))) for c in configs))
        return 100

    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    try:
        async with db() as s:
            started = ticks
            plan = await build_plan(session=s, lookback_for=lookback_for)
            ran_meanwhile = ticks - started
    finally:
        task.cancel()
    assert len(plan.symbols[0].subscriptions) == 8
    # Eight bots, three distinct configs: the defaults of both strategies and one trend_pullback of its own.
    assert calls == [[("price_action_pinbar", ()), ("trend_pullback", ()), ("trend_pullback", (("ema_period", 34),))]]
    assert ran_meanwhile >= 2, "another task runs while a long plan is built"
