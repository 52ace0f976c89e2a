"""A decision left `sent` is answered: decision re-sends its intent past the expiry and a grace (services/decision/
resend.py), and the executor's answer settles it. The embedded stack's pieces (in-memory bus, one SQLite database,
the real executor over the paper broker) on a manual clock; the loss is made on purpose by a bus that drops a message
after confirming it, as the in-memory bus does when its process is SIGKILLed before the consumer handled it."""

from __future__ import annotations

from datetime import timedelta

from decision_helpers import T0, add_bot, make_settings, make_signal
from sqlalchemy import select

from services.decision.resend import intents_resent_total
from services.decision.service import DecisionService
from services.executor.brokers.paper import PaperBroker
from services.executor.service import ExecutorService
from shared.bus import topology
from shared.bus.memory import InMemoryBus
from shared.db.models import Decision, Order, OutboxRow
from shared.messages import ExecutionReport, OrderIntent, PositionEvent
from shared.timeutil import ManualClock
from tests.executor.fakes import CountingBroker, window

GRACE_S = 20.0
TTL_S = 30.0
PRICED = [(2000.0, 2001.0, 1999.0, 2000.0, 30)] * 3


class LosingBus:
    """An in-memory bus that, `drops[type]` times, confirms a publish of that message type and delivers nothing."""

    def __init__(self, inner: InMemoryBus) -> None:
        self.inner = inner
        self.drops: dict[type, int] = {}
        self.dropped: list = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _lose(self, message) -> bool:
        left = self.drops.get(type(message), 0)
        if left:
            self.drops[type(message)] = left - 1
            self.dropped.append(message)
        return bool(left)

    async def publish(self, message, *, exchange: str, routing_key: str = "", headers=None) -> None:
        if not self._lose(message):
            await self.inner.publish(message, exchange=exchange, routing_key=routing_key, headers=headers)

    async def publish_many(self, batch) -> None:
        await self.inner.publish_many([out for out in batch if not self._lose(out.message)])


class Stack:
    def __init__(self, db, account) -> None:
        self.clock = ManualClock(T0)
        self.db = db
        self.memory = InMemoryBus(delivery_limit=5)
        self.bus = LosingBus(self.memory)
        settings = make_settings(order_ttl_s=TTL_S, intent_resend_grace_s=GRACE_S)
        # Not started: its background loops (plan, re-send) would race the test; the test drives the re-send itself.
        self.decision = DecisionService(bus=self.bus, sessions=db, clock=self.clock, settings=settings, lookback_for=lambda c: 100)
        self.paper = PaperBroker(clock=self.clock, balance=10_000.0)
        self.broker = CountingBroker(self.paper)
        self.executor = ExecutorService(bus=self.bus, sessions=db, clock=self.clock, settings=settings, broker=self.broker,
                                        account_ids=[account.id])

    async def start(self) -> None:
        await self.memory.start()
        await self.memory.consume(topology.DECISION_EVENTS, self.decision.on_events_queue)
        await self.executor.start()
        await self.paper.on_bars("XAUUSD", window("XAUUSD", PRICED).bars.to_bars())

    async def stop(self) -> None:
        await self.executor.stop()
        await self.memory.close()

    async def decision_row(self) -> Decision:
        async with self.db() as s:
            return (await s.execute(select(Decision))).scalar_one()

    async def orders(self) -> list[Order]:
        async with self.db() as s:
            return list((await s.execute(select(Order))).scalars())

    async def resend_at(self, when) -> int:
        self.clock.set(when)
        resent = await self.decision.resender.resend_overdue()
        await self.memory.idle()
        return resent


async def test_an_intent_lost_after_its_publish_is_settled_expired_after_the_grace_and_never_placed(db, user, account):
    bot = await add_bot(db, user, account)
    stack = Stack(db, account)
    await stack.start()
    try:
        stack.bus.drops[OrderIntent] = 1  # confirmed to the relay, never delivered: the SIGKILL of the crash loop
        await stack.decision.handle_signal(make_signal(bot))
        await stack.memory.idle()
        decision = await stack.decision_row()
        assert decision.order_status == "sent" and len(stack.bus.dropped) == 1
        async with db() as s:
            assert all(r.published_at is not None for r in (await s.execute(select(OutboxRow))).scalars())
        assert await stack.orders() == []  # the phantom: risk counts it, the executor never heard of it

        before = intents_resent_total._value.get()
        expires_at = decision.expires_at
        assert expires_at == T0 + timedelta(seconds=TTL_S)
        assert await stack.resend_at(expires_at + timedelta(seconds=GRACE_S - 1)) == 0  # within the grace: left alone
        assert (await stack.decision_row()).order_status == "sent"

        assert await stack.resend_at(expires_at + timedelta(seconds=GRACE_S)) == 1
        assert intents_resent_total._value.get() == before + 1
        [order] = await stack.orders()
        assert (order.status, order.client_order_id, order.ticket) == ("expired", decision.client_order_id, None)
        assert stack.broker.place_calls == []  # past its expiry: recorded, never placed
        assert (await stack.decision_row()).order_status == "expired"  # settled: risk no longer counts it
        assert await stack.resend_at(expires_at + timedelta(hours=1)) == 0  # answered: nothing more to send
        assert intents_resent_total._value.get() == before + 1
    finally:
        await stack.stop()


async def test_a_re_sent_intent_whose_order_filled_gets_its_fill_and_places_nothing_again(db, user, account):
    bot = await add_bot(db, user, account)
    stack = Stack(db, account)
    await stack.start()
    try:
        # The fill's report and its position's `opened` lost: the decision stays `sent`, the position is open.
        stack.bus.drops.update({ExecutionReport: 1, PositionEvent: 1})
        await stack.decision.handle_signal(make_signal(bot))
        await stack.memory.idle()
        [order] = await stack.orders()
        assert order.status == "filled" and len(stack.broker.place_calls) == 1
        decision = await stack.decision_row()
        assert decision.order_status == "sent"

        assert await stack.resend_at(decision.expires_at + timedelta(seconds=GRACE_S)) == 1
        decision = await stack.decision_row()
        assert (decision.order_status, decision.ticket, decision.fill_price) == ("filled", order.ticket, order.price)
        assert len(stack.broker.place_calls) == 1  # not placed twice
        assert [o.status for o in await stack.orders()] == ["filled"]
    finally:
        await stack.stop()


async def test_a_decision_nobody_answers_is_re_sent_with_a_doubling_back_off(db, user, account):
    bot = await add_bot(db, user, account)
    stack = Stack(db, account)  # the executor never started: the intents wait in its queue
    await stack.memory.start()
    try:
        await stack.decision.handle_signal(make_signal(bot))
        expires_at = (await stack.decision_row()).expires_at
        grace = timedelta(seconds=GRACE_S)
        sent = [await stack.resend_at(expires_at + grace * k) for k in (1, 1, 2, 3, 4, 8)]
        assert sent == [1, 0, 1, 0, 1, 1]
        assert await stack.memory.queue_depth(topology.executor_orders_queue(account.id).name) == 5  # the first and 4 copies
    finally:
        await stack.memory.close()
