"""The decision service wired to the in-memory bus: topology, routing keys and redelivery as the embedded mode runs them."""

from __future__ import annotations

import uuid

from decision_helpers import T0, add_bot, make_settings, make_signal
from sqlalchemy import func, select
from structlog.testing import capture_logs

from services.decision.service import DecisionService
from shared.bus import topology
from shared.bus.memory import InMemoryBus
from shared.db.models import Decision, SignalRow
from shared.messages import BotScan, ExecutionReport, OrderIntent, ScanReport
from shared.timeutil import ManualClock


async def test_signal_to_intent_to_fill_over_the_in_memory_bus(db, user, account):
    bot = await add_bot(db, user, account)
    bus = InMemoryBus(delivery_limit=5)
    await bus.start()
    received: list[OrderIntent] = []

    async def executor(message, delivery):
        received.append(message)

    await bus.consume(topology.executor_orders_queue(account.id), executor)
    service = DecisionService(bus=bus, sessions=db, clock=ManualClock(T0), settings=make_settings(), lookback_for=lambda c: 100)
    await service.start()
    try:
        window = uuid.uuid4()
        sig = make_signal(bot, window_id=window)
        report = ScanReport(
            window_id=window,
            symbol="XAUUSD",
            timeframe="1m",
            bar_time=T0,
            bots=(BotScan(bot_id=bot.id, strategies=("price_action_pinbar", "trend_pullback"), signal_ids=(sig.signal_id,)),),
        )
        with capture_logs() as logs:
            await bus.publish(sig, exchange=topology.STRATEGY_SIGNALS, routing_key=topology.signals_key("XAUUSD"))
            await bus.publish(sig, exchange=topology.STRATEGY_SIGNALS, routing_key=topology.signals_key("XAUUSD"))  # a duplicate
            await bus.publish(report, exchange=topology.STRATEGY_SIGNALS, routing_key=topology.scan_report_key("XAUUSD"))
            await bus.idle()
        lines = [e["event"] for e in logs if e["event"].startswith("[ScalperTrade]")]
        assert lines == [f"[ScalperTrade] bot={bot.id} symbol=XAUUSDm strategies=2 signals=1 decisions=1 orders=1"]
        assert len(received) == 2 and received[0].client_order_id == received[1].client_order_id

        fill = ExecutionReport(
            client_order_id=received[0].client_order_id, account_id=account.id, bot_id=bot.id, status="filled", ticket=9, price=2000.3
        )
        await bus.publish(fill, exchange=topology.EXECUTION_EVENTS, routing_key=topology.report_key(account.id))
        await bus.idle()
        async with db() as s:
            decision = (await s.execute(select(Decision))).scalar_one()
            assert (await s.execute(select(func.count()).select_from(SignalRow))).scalar_one() == 1
        assert (decision.order_status, decision.ticket, decision.fill_price) == ("filled", 9, 2000.3)
        assert await bus.queue_depth(topology.DEAD_LETTER_QUEUE.name) == 0
    finally:
        await service.stop()
        await bus.close()
