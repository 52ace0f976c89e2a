"""Decision's transactional outbox: a row per message in the deciding transaction, published after the commit, retried
until the bus confirms, published at start-up after a crash, and executor queues declared for an account no executor
serves yet."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from decision_helpers import T0, RecordingBus, add_bot, eventually, make_settings, make_signal
from sqlalchemy import func, select

from services.decision import decisions, killswitch, outgoing
from services.decision.service import DecisionService
from shared.bus import topology
from shared.bus.base import TransientError
from shared.bus.memory import InMemoryBus
from shared.db.engine import transaction
from shared.db.models import Decision, OutboxRow, SignalRow
from shared.messages import AccountSnapshot, ExecutorCommand, OrderIntent, decode
from shared.outbox import OutboxRelay
from shared.timeutil import ManualClock


class FlakyBus(RecordingBus):
    """Fails the publishes it is told to (in order, then every one succeeds); `fail_key` fails one routing key until cleared."""

    def __init__(self, failures=(), *, fail_key: str | None = None, delay_s: float = 0.0) -> None:
        super().__init__()
        self.failures = list(failures)
        self.fail_key = fail_key
        self.delay_s = delay_s
        self.attempts = 0

    async def publish(self, message, *, exchange: str, routing_key: str = "", headers=None) -> None:
        self.attempts += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_key is not None and routing_key == self.fail_key:
            raise TransientError(f"broker refuses {routing_key} (test)")
        if self.failures:
            raise self.failures.pop(0)
        await super().publish(message, exchange=exchange, routing_key=routing_key, headers=headers)


def fast_relay(bus, db, **kw) -> OutboxRelay:
    return OutboxRelay(bus=bus, sessions=db, retry_min_s=0.01, retry_max_s=0.05, **kw)


def make_service(bus, db, relay=None) -> DecisionService:
    return DecisionService(
        bus=bus, sessions=db, clock=ManualClock(T0), settings=make_settings(), lookback_for=lambda c: 100,
        outbox=relay or fast_relay(bus, db),
    )


async def outbox_rows(db) -> list[OutboxRow]:
    async with db() as s:
        return list((await s.execute(select(OutboxRow).order_by(OutboxRow.id))).scalars())


async def count(db, model) -> int:
    async with db() as s:
        return (await s.execute(select(func.count()).select_from(model))).scalar_one()


def intents(bus) -> list[OrderIntent]:
    return [m for _, m in bus.sent(topology.EXECUTION_ORDERS)]


def close_all(account_id: int, bot_id: int) -> ExecutorCommand:
    return ExecutorCommand(command="close_all", account_id=account_id, bot_id=bot_id, reason="kill")


async def test_the_intent_is_written_with_its_decision_and_marked_once_confirmed(db, bus, user, account):
    bot = await add_bot(db, user, account)
    service = make_service(bus, db)
    await service.handle_signal(make_signal(bot))
    [intent] = intents(bus)
    [row] = await outbox_rows(db)
    assert (row.exchange, row.routing_key, row.message_type) == (topology.EXECUTION_ORDERS, str(account.id), "OrderIntent")
    assert decode(row.message_type, row.body.encode())[0] == intent  # the body as the bus carries it, message id included
    assert row.published_at is not None and row.attempts == 0 and row.last_error is None
    await service.stop()


async def test_a_rolled_back_transaction_leaves_no_outbox_row(db, bus, user, account, monkeypatch):
    bot = await add_bot(db, user, account)
    with pytest.raises(RuntimeError):
        async with transaction(db) as session:
            await outgoing.enqueue_commands(session=session, commands=[close_all(account.id, bot.id)])
            raise RuntimeError("the change failed after its command was queued")
    assert await count(db, OutboxRow) == 0

    # The decision path: a failure after the intent's row was written rolls back the decision and the row together.
    real = outgoing.enqueue_intent

    async def enqueue_then_fail(**kw):
        await real(**kw)
        raise RuntimeError("database gone mid-transaction (test)")

    monkeypatch.setattr(outgoing, "enqueue_intent", enqueue_then_fail)
    with pytest.raises(RuntimeError):
        await make_service(bus, db).handle_signal(make_signal(bot))
    assert await count(db, OutboxRow) == 0 and await count(db, Decision) == 0
    assert bus.published == []


async def test_a_failing_publish_is_kept_and_retried_until_the_bus_confirms(db, user, account):
    bot = await add_bot(db, user, account)
    bus = FlakyBus([TransientError("broker unreachable (test)"), ConnectionError("reset (test)"), TransientError("timeout (test)")])
    service = make_service(bus, db)
    await service.handle_signal(make_signal(bot))  # the decision stands: no exception, the message is acked
    [row] = await outbox_rows(db)
    assert row.published_at is None and row.attempts == 1 and "TransientError" in row.last_error
    assert intents(bus) == []
    assert (await service.readiness())[1]["outbox_unpublished"] == 1

    await eventually(lambda: intents(bus), what="the intent published after the broker came back")
    [row] = await eventually(lambda: _published(db), what="the row marked published")
    assert row.attempts == 3 and "TransientError" in row.last_error
    assert len(intents(bus)) == 1 and bus.attempts == 4
    [decision] = await _decisions(db)
    assert intents(bus)[0].client_order_id == decision.client_order_id
    await service.stop()


async def _published(db):
    rows = await outbox_rows(db)
    return rows if rows and all(r.published_at is not None for r in rows) else None


async def _decisions(db):
    async with db() as s:
        return list((await s.execute(select(Decision))).scalars())


async def test_a_crash_between_commit_and_publish_is_published_at_the_next_start(db, user, account):
    bot = await add_bot(db, user, account)
    # The first process commits a decision and a kill, and dies before its relay publishes either.
    async with transaction(db) as session:
        outcome = await decisions.handle_signal(session=session, signal=make_signal(bot), now=T0, order_ttl_s=30.0)
    async with transaction(db) as session:
        await outgoing.enqueue_commands(session=session, commands=[close_all(account.id, bot.id)])
    assert [r.published_at for r in await outbox_rows(db)] == [None, None]

    bus = InMemoryBus()
    await bus.start()
    received: list = []

    async def executor(message, delivery):
        received.append(message)

    await bus.consume(topology.executor_orders_queue(account.id), executor)
    await bus.consume(topology.executor_commands_queue(account.id), executor)
    service = make_service(bus, db)
    await service.start()
    try:
        await bus.idle()
        assert [type(m).__name__ for m in received] == ["OrderIntent", "ExecutorCommand"]
        assert received[0] == outcome.intent
        assert all(r.published_at is not None for r in await outbox_rows(db))
    finally:
        await service.stop()
    # A later start finds nothing left: no second copy.
    again = make_service(bus, db)
    await again.start()
    await again.stop()
    await bus.idle()
    assert len(received) == 2
    await bus.close()


async def test_an_account_without_an_executor_gets_its_queues_and_the_message_waits_there(db, user, account):
    bot = await add_bot(db, user, account)
    bus = InMemoryBus()
    await bus.start()
    service = make_service(bus, db)
    await service.handle_signal(make_signal(bot))  # no executor has declared executor.<account> yet: Unroutable
    assert await bus.queue_depth(topology.executor_orders_queue(account.id).name) == 1
    [row] = await outbox_rows(db)
    assert row.published_at is not None

    received: list = []

    async def executor(message, delivery):
        received.append(message)

    # The executor starts later, declaring the same queue (same spec): the intent is there for it.
    await bus.consume(topology.executor_orders_queue(account.id), executor)
    await bus.idle()
    assert [m.client_order_id for m in received] == [(await _decisions(db))[0].client_order_id]
    await service.stop()
    await bus.close()


async def test_a_failing_destination_keeps_its_order_and_holds_up_no_other(db, user, account):
    from decision_helpers import add_account

    other = await add_account(db, user, name="second")
    bot = await add_bot(db, user, account)
    neighbour = await add_bot(db, user, other)
    bus = FlakyBus(fail_key=str(account.id))
    relay = fast_relay(bus, db)
    resume = ExecutorCommand(command="resume_bot", account_id=account.id, bot_id=bot.id, reason="resume")
    async with transaction(db) as session:
        first = await outgoing.enqueue_commands(session=session, commands=[close_all(account.id, bot.id)])
    await relay.kick(first)
    async with transaction(db) as session:
        rows = await outgoing.enqueue_commands(session=session, commands=[resume, close_all(other.id, neighbour.id)])
    await relay.kick(rows)
    # The other account's command went out; the failing account's resume waits behind its close_all.
    assert [(k, m.command) for k, m in bus.sent(topology.EXECUTION_COMMANDS)] == [(str(other.id), "close_all")]
    assert relay.unpublished == 2

    bus.fail_key = None
    await eventually(lambda: relay.unpublished == 0, what="the failing account's commands published")
    assert [(k, m.command) for k, m in bus.sent(topology.EXECUTION_COMMANDS)] == [
        (str(other.id), "close_all"), (str(account.id), "close_all"), (str(account.id), "resume_bot"),
    ]
    await eventually(lambda: _published(db), what="every row marked")
    await relay.stop()


async def test_a_killed_bots_close_all_again_goes_through_the_outbox(db, user, account):
    """still_to_flatten's close_all is written in the snapshot's transaction; a failed publish is retried."""
    bot = await add_bot(db, user, account, status="killed")
    signal_id = "00000000-0000-0000-0000-000000000001"
    async with transaction(db) as session:
        session.add(SignalRow(signal_id=signal_id, bot_id=bot.id, account_id=account.id, symbol=bot.symbol, timeframe="1m",
                              strategy="price_action_pinbar", side="buy", bar_time=T0, entry=2000.0, stop=1998.0, target=2004.0,
                              score=0.8, created_at=T0))
        await session.flush()
        session.add(Decision(signal_id=signal_id, bot_id=bot.id, account_id=account.id, symbol=bot.symbol, action="open", reason="ok",
                             side="buy", volume=0.01, order_status="filled", position_status="open", created_at=T0))
    bus = FlakyBus([TransientError("down (test)")])
    service = make_service(bus, db)
    snapshot = AccountSnapshot(account_id=account.id, balance=10_000.0, equity=10_000.0, margin=0.0, margin_free=10_000.0,
                               taken_at=T0 + timedelta(minutes=1))
    await service.handle_account_snapshot(snapshot)
    [row] = await outbox_rows(db)
    assert row.message_type == "ExecutorCommand" and row.attempts == 1
    await eventually(lambda: bus.of(ExecutorCommand), what="the close_all published on retry")
    assert [(c.command, c.bot_id, c.reason) for c in bus.of(ExecutorCommand)] == [("close_all", bot.id, killswitch.KILL_SWITCH_REASON)]
    await service.stop()


@pytest.mark.services
async def test_two_relays_sweeping_at_once_publish_each_row_once(pg_sessions, user_pg):
    """PostgreSQL: a sweep locks its batch FOR UPDATE SKIP LOCKED, so a second relay sweeping at once takes other rows."""
    db, account, bot = user_pg
    async with transaction(db) as session:
        await outgoing.enqueue_commands(session=session, commands=[close_all(account.id, bot.id) for _ in range(40)])
    bus_a, bus_b = FlakyBus(delay_s=0.002), FlakyBus(delay_s=0.002)
    a, b = fast_relay(bus_a, db, batch_size=5), fast_relay(bus_b, db, batch_size=5)
    published = await asyncio.gather(a.sweep(min_age_s=0), b.sweep(min_age_s=0))
    assert sum(published) == 40
    ids = [m.message_id for m in bus_a.of(ExecutorCommand) + bus_b.of(ExecutorCommand)]
    assert len(ids) == len(set(ids)) == 40
    assert bus_a.of(ExecutorCommand) and bus_b.of(ExecutorCommand)  # both took a share
    assert await _published(db)


@pytest.fixture
async def user_pg(pg_sessions):
    from decision_helpers import add_account, add_user

    user = await add_user(pg_sessions)
    account = await add_account(pg_sessions, user)
    bot = await add_bot(pg_sessions, user, account)
    return pg_sessions, account, bot
