"""The outbox on RabbitMQ and PostgreSQL: a decision and a kill committed by a process that died before publishing
are published by the next one at start, into executor queues it declares (the account's executor has not started),
and reach that executor when it does."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select

from services.decision import decisions, outgoing
from services.decision.service import DecisionService
from shared.bus import topology
from shared.bus.rabbitmq import RabbitBus
from shared.db.engine import create_engine, session_factory, transaction, upgrade
from shared.db.models import OutboxRow
from shared.messages import ExecutorCommand, OrderIntent
from shared.outbox import OutboxRelay
from shared.timeutil import ManualClock
from tests.decision.decision_helpers import T0, add_account, add_bot, add_user, eventually, make_settings, make_signal
from tests.distributed import cluster as kit

pytestmark = pytest.mark.services


async def test_a_crashed_decisions_outbox_is_published_at_the_next_start_into_queues_it_declares(vhost, pg_url):
    await asyncio.to_thread(upgrade, pg_url)
    engine = create_engine(pg_url)
    db = session_factory(engine)
    bus = RabbitBus(kit.amqp_url(vhost), delivery_limit=5, connect_attempts=3)
    await bus.start()
    service = None
    try:
        user = await add_user(db)
        account = await add_account(db, user)
        bot = await add_bot(db, user, account, risk_max_per_symbol=5, risk_max_concurrent_positions=5)
        # The process that died: its transactions committed, its relay never ran.
        async with transaction(db) as session:
            outcome = await decisions.handle_signal(session=session, signal=make_signal(bot), now=T0, order_ttl_s=30.0)
            kill = ExecutorCommand(command="close_all", account_id=account.id, bot_id=bot.id, reason="kill")
            await outgoing.enqueue_commands(session=session, commands=[kill])

        relay = OutboxRelay(bus=bus, sessions=db, retry_min_s=0.01, retry_max_s=0.2)
        service = DecisionService(bus=bus, sessions=db, clock=ManualClock(T0), settings=make_settings(), lookback_for=lambda c: 100, outbox=relay)
        await service.start()  # the sweep publishes both: Unroutable at first (no executor queues), then declared and confirmed
        async with db() as s:
            rows = list((await s.execute(select(OutboxRow).order_by(OutboxRow.id))).scalars())
        assert [r.published_at is not None for r in rows] == [True, True]
        assert relay.unpublished == 0

        received: list = []

        async def executor(message, delivery):
            received.append(message)

        await bus.consume(topology.executor_orders_queue(account.id), executor)
        await bus.consume(topology.executor_commands_queue(account.id), executor)
        await eventually(lambda: len(received) == 2, timeout=10, what="the intent and the command delivered to the executor")
        [intent] = [m for m in received if isinstance(m, OrderIntent)]
        [command] = [m for m in received if isinstance(m, ExecutorCommand)]
        assert intent == outcome.intent and command.message_id == kill.message_id

        # And a new decision after start goes straight out, once: one INSERT with the decision, one UPDATE after the confirm.
        await service.handle_signal(make_signal(bot, bar_time=T0.replace(minute=5), strategy="trend_pullback"))
        await eventually(lambda: len(received) == 3, timeout=10, what="the next intent delivered")
        async with db() as s:
            rows = list((await s.execute(select(OutboxRow).order_by(OutboxRow.id))).scalars())
        assert len(rows) == 3 and all(r.published_at is not None and r.attempts == 0 for r in rows)
    finally:
        if service is not None:
            await service.stop()
        await bus.close()
        await engine.dispose()
