"""The executor as `build_executor` makes it for `scalper run` and `scalper serve executor`: accounts from the tables,
each by its broker column, and accounts created while it runs served within one scan interval."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from services.executor.build import build_executor
from shared.bus import topology
from shared.bus.memory import InMemoryBus
from shared.db.engine import transaction
from shared.db.models import BrokerAccount, Order, Position, User
from shared.db.patience import NO_PATIENCE
from shared.messages import ExecutionReport
from shared.timeutil import ManualClock
from tests.executor.fakes import NOW, command, intent, settings, window
from tests.executor.test_executor_wiring import PRICED, events_of
from tests.helpers import eventually


async def _paper_account(sessions, *, name: str) -> int:
    async with transaction(sessions) as s:
        user = (await s.execute(select(User).where(User.name == "owner"))).scalar_one_or_none()
        if user is None:
            user = User(name="owner")
            s.add(user)
            await s.flush()
        account = BrokerAccount(user_id=user.id, name=name, broker="paper")
        s.add(account)
        await s.flush()
        return account.id


async def test_an_account_created_while_running_is_served_within_one_scan_interval(sessions):
    first = await _paper_account(sessions, name="first")
    bus = InMemoryBus(delivery_limit=3, redelivery_delay_s=0.001)
    await bus.start()
    clock = ManualClock(NOW)
    executor = build_executor(settings=settings(scan_interval_s=45.0), bus=bus, sessions=sessions, clock=clock,
                              patience=NO_PATIENCE)
    await executor.start()
    try:
        assert executor.accounts == [first] and executor.leading
        second = await _paper_account(sessions, name="created later")
        # Decision's outbox declares the new account's queues when its first message finds no route; do the same.
        await bus.declare_queue(topology.executor_orders_queue(second))
        await bus.declare_queue(topology.executor_commands_queue(second))
        await bus.publish(window("XAUUSD", PRICED), exchange=topology.MARKET_BARS, routing_key=topology.bars_key("1m", "XAUUSD"))
        message = intent(1, account_id=second, expires_at=NOW + timedelta(minutes=5))
        await bus.publish(message, exchange=topology.EXECUTION_ORDERS, routing_key=str(second))
        await bus.idle()
        async with sessions() as s:
            assert (await s.execute(select(Order))).scalars().all() == []  # not served yet: the intent waits in its queue

        clock.advance(timedelta(seconds=45))  # one scan interval later the executor has looked at the tables again
        taken: list = []

        async def reports():  # served once its queue is consumed, a moment after it is listed
            await bus.idle()
            taken.extend(await events_of(bus))  # taking drains the queue: keep what each look took
            return [(r.account_id, r.status) for r in taken if isinstance(r, ExecutionReport)]

        assert await eventually(reports, timeout=5, what="the waiting intent filled") == [(second, "filled")]
        assert second in executor.accounts

        await bus.publish(command("close_all", account_id=second, bot_id=7, reason="kill_switch"),
                          exchange=topology.EXECUTION_COMMANDS, routing_key=str(second))
        await bus.idle()
        async with sessions() as s:
            [position] = (await s.execute(select(Position))).scalars()
        assert (position.account_id, position.status, position.close_reason) == (second, "closed", "kill_switch")
    finally:
        await executor.stop()
        await bus.close()
