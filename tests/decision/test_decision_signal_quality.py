"""Through the decision service: a signal's p_win and expected_r_net are stored with it and decide the expected-R gate;
a range_reversion decision's intent carries the strategy's early exit for the executor."""

from __future__ import annotations

from decision_helpers import RecordingBus, add_bot, delivery, make_signal
from sqlalchemy import select

from shared.bus import topology
from shared.db.models import Decision, SignalRow
from tests.decision.test_decision_signals import make_service


async def test_p_win_is_stored_and_a_negative_expectation_is_refused(db, bus: RecordingBus, user, account):
    bot = await add_bot(db, user, account)
    service = make_service(bus, db)
    sig = make_signal(bot).model_copy(update={"p_win": 0.31, "expected_r_net": -0.12})
    await service.on_signals_queue(sig, delivery(sig))
    async with db() as s:
        row = (await s.execute(select(SignalRow))).scalar_one()
        decision = (await s.execute(select(Decision))).scalar_one()
    assert (row.p_win, row.expected_r_net) == (0.31, -0.12)
    assert (decision.action, decision.reason) == ("ignore", "expected_r_below_min")
    [gate] = [c for c in decision.checks if c["name"] == "expected_r_below_min"]
    assert (gate["value"], gate["limit"]) == (-0.12, 0.0)
    assert bus.sent(topology.EXECUTION_ORDERS) == []


async def test_a_range_reversion_intent_carries_its_invalidation_with_the_bots_params(db, bus: RecordingBus, user, account):
    bot = await add_bot(db, user, account, enabled_strategies=["range_reversion"],
                        strategy_params={"range_reversion": {"adx_exit": 30.0}})
    service = make_service(bus, db)
    sig = make_signal(bot, strategy="range_reversion").model_copy(
        update={"features": {"channel_high": 2005.0, "channel_low": 1995.0, "atr": 1.0}})
    await service.on_signals_queue(sig, delivery(sig))
    [(_, intent)] = bus.sent(topology.EXECUTION_ORDERS)
    assert intent.invalidation.strategy == "range_reversion"
    assert intent.invalidation.params == {"adx_exit": 30.0} and intent.invalidation.features["channel_high"] == 2005.0
    async with db() as s:
        assert (await s.execute(select(SignalRow.p_win))).scalars().all() == [None]  # no calibration: null, stored so
