"""The executor's position monitor closes a position whose strategy's setup is invalid (the intent's StrategyExit,
kept on the order row so a restart still knows it): the rule of shared/strategies/invalidation.py, which the backtester
applies too (tests/backtest/test_invalidation_exit.py)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from services.executor.rules import PositionRules
from shared.db.models import Order
from shared.messages import StrategyExit
from shared.strategies.invalidation import strategy_exit
from tests.executor.fakes import ORDERS_Q, intent
from tests.executor.test_executor_rules import PRICED, Rig

CHANNEL = {"channel_high": 2004.0, "channel_low": 1996.0, "atr": 1.0}
INSIDE = (2000.0, 2001.0, 1999.0, 2000.0, 30)
OUTSIDE = (2000.0, 2004.5, 1999.0, 2004.2, 30)


def _intent(n: int):
    return intent(n, sl=1990.0, tp=2010.0).model_copy(
        update={"invalidation": StrategyExit(strategy="range_reversion", params={}, features=CHANNEL)})


async def test_a_close_outside_the_range_closes_the_position_early_and_a_restart_remembers_the_rule(sessions):
    rig = Rig(sessions)
    await rig.service.start()
    await rig.priced()
    await rig.bus.deliver(ORDERS_Q, _intent(1))
    async with sessions() as s:
        [stored] = (await s.execute(select(Order.invalidation))).scalars().all()
    assert stored["strategy"] == "range_reversion" and stored["features"]["channel_high"] == 2004.0

    await rig.priced(PRICED + [INSIDE])  # the bar after the fill closes inside the range: nothing to do
    await rig.service.monitor_once()
    assert rig.events("closed") == []
    await rig.service.stop()

    again = Rig(sessions, paper=rig.paper, clock=rig.clock)
    await again.service.start()
    again.clock.advance(timedelta(minutes=1))
    await again.priced(PRICED + [INSIDE, OUTSIDE])  # a close above the channel: the setup is gone
    await again.service.monitor_once()
    [closed] = again.events("closed")
    assert closed.close_reason == "early_exit"
    await again.service.stop()


async def test_a_window_older_than_the_position_or_the_rule_switched_off_closes_nothing(sessions):
    rig = Rig(sessions, rules=PositionRules(_env_file=None, exit_on_invalidation=False))
    await rig.service.start()
    await rig.priced()
    await rig.bus.deliver(ORDERS_Q, _intent(1))
    await rig.priced(PRICED + [INSIDE, OUTSIDE])
    await rig.service.monitor_once()
    assert rig.events("closed") == []
    await rig.service.stop()

    on = Rig(sessions, paper=rig.paper, clock=rig.clock)
    await on.service.start()
    # The signal bar's own window (its newest bar opened before the position did) says nothing about the position.
    await on.priced(PRICED[:2] + [OUTSIDE])
    await on.service.monitor_once()
    assert on.events("closed") == []
    await on.service.stop()


def test_decision_attaches_the_rule_only_for_a_strategy_that_has_one():
    rule = strategy_exit("range_reversion", {"adx_exit": 30.0}, CHANNEL)
    assert rule == StrategyExit(strategy="range_reversion", params={"adx_exit": 30.0}, features=CHANNEL)
    assert strategy_exit("pinbar", {}, {"atr": 1.0}) is None and strategy_exit("no_such_strategy", {}, {}) is None
