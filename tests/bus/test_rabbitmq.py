"""RabbitMQ back end specifics: queue arguments, persistence, confirms and returns, one handler at a time per consumer."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import uuid

import aio_pika
import aiormq
import pytest
from aio_pika.exceptions import ChannelPreconditionFailed

from shared.bus import QueueSpec, Unroutable
from shared.bus.base import DEATH_REASON_HEADER, DELIVERY_COUNT_HEADER, ORIGINAL_QUEUE_HEADER, ORIGINAL_ROUTING_KEY_HEADER, TYPE_HEADER, Outgoing
from shared.bus.rabbitmq import PublishRejected, RabbitBus
from shared.bus.topology import DEAD_LETTER_QUEUE, DEAD_LETTERS, EXECUTION_EVENTS, EXECUTION_ORDERS, MARKET_BARS
from tests.bus.conftest import AMQP_URL, TestRabbitBus, rabbit_bus
from tests.bus.test_bus_contract import fresh_queue, snapshot
from tests.helpers import eventually


@pytest.fixture
async def amqp(rabbit):
    """A plain aio-pika connection beside the bus, to look at what the bus made (needs the `rabbit` fixture's broker)."""
    connection = await aio_pika.connect(AMQP_URL)
    yield connection
    await connection.close()


async def _declare_fails(connection, name: str, **kw) -> bool:
    channel = await connection.channel()
    try:
        await channel.declare_queue(name, **kw)
    except ChannelPreconditionFailed:
        return True
    await channel.close()
    return False


def _rabbitmqctl_queues() -> dict[str, tuple[str, str]] | None:
    """name -> (type, arguments) from `rabbitmqctl list_queues`, or None where the tool is absent or refused."""
    if shutil.which("rabbitmqctl") is None:
        return None
    try:
        out = subprocess.run(
            ["rabbitmqctl", "-q", "list_queues", "name", "type", "arguments"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return None
    rows = {}
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) == 3:
            rows[parts[0]] = (parts[1], parts[2])
    return rows


# --- queue arguments ------------------------------------------------------------------------------------------


async def test_work_queues_are_quorum_with_the_explicit_limit_and_the_dead_letter_exchange(rabbit, amqp):
    spec, _ = fresh_queue()
    orders, _ = fresh_queue(EXECUTION_ORDERS, single_active_consumer=True)
    await rabbit.declare_queue(spec)
    await rabbit.declare_queue(orders)
    wanted = {"x-queue-type": "quorum", "x-delivery-limit": 3, "x-dead-letter-exchange": DEAD_LETTERS,
              "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
    assert rabbit.queue_arguments(spec) == wanted
    # The broker compares arguments on every declare: the same ones pass, any other answers 406 (PRECONDITION_FAILED).
    assert not await _declare_fails(amqp, spec.name, durable=True, arguments=wanted)
    assert await _declare_fails(amqp, spec.name, durable=True, arguments={**wanted, "x-delivery-limit": 4})
    assert await _declare_fails(amqp, spec.name, durable=True, arguments={"x-queue-type": "quorum", "x-delivery-limit": 3})
    assert await _declare_fails(amqp, spec.name, durable=True, arguments={**wanted, "x-queue-type": "classic"})
    assert not await _declare_fails(amqp, orders.name, durable=True, arguments={**wanted, "x-single-active-consumer": True})
    assert await _declare_fails(amqp, orders.name, durable=True, arguments=wanted)
    # dead.letters: quorum, no DLX, no limit (over a limit without a DLX the broker would delete the last copy).
    assert not await _declare_fails(amqp, DEAD_LETTER_QUEUE.name, durable=True, arguments={"x-queue-type": "quorum"})

    listed = _rabbitmqctl_queues()
    if listed is not None:
        qtype, args = listed[spec.name]
        assert qtype == "quorum"
        assert '{"x-delivery-limit",3}' in args and '{"x-dead-letter-exchange","dead.letters"}' in args
        assert '"x-single-active-consumer",true' in listed[orders.name][1]
        assert listed[DEAD_LETTER_QUEUE.name][0] == "quorum" and "x-dead-letter-exchange" not in listed[DEAD_LETTER_QUEUE.name][1]


async def test_exclusive_queue_is_a_classic_queue_private_to_the_connection(rabbit, amqp):
    tag = uuid.uuid4().hex[:8]
    spec = QueueSpec(f"test.excl.{tag}", bindings=((MARKET_BARS, f"bars.1m.{tag}"),), exclusive=True)
    consumer = await rabbit.consume(spec, lambda m, d: asyncio.sleep(0))
    assert rabbit.queue_arguments(spec) == {}
    channel = await amqp.channel()
    with pytest.raises(aiormq.exceptions.ChannelLockedResource):  # 405 RESOURCE_LOCKED: another connection's queue
        await channel.declare_queue(spec.name, passive=True)
    with pytest.raises(RuntimeError):
        await rabbit.consume(spec, lambda m, d: asyncio.sleep(0))
    await consumer.cancel()
    channel = await amqp.channel()
    with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):  # auto-delete: gone with its consumer
        await channel.declare_queue(spec.name, passive=True)


async def test_a_queue_that_exists_with_other_arguments_is_used_as_it_is():
    """A delivery-limit setting changed between deploys must not stop a service: the bus's own limit still holds."""
    spec, key = fresh_queue()
    async for first in rabbit_bus(delivery_limit=3):
        await first.declare_queue(spec)
        async for second in rabbit_bus(delivery_limit=2):
            attempts = []

            async def failing(message, delivery):
                attempts.append(delivery.delivery_count)
                raise RuntimeError("down")

            await second.consume(spec, failing)
            await second.publish(snapshot(), exchange=EXECUTION_EVENTS, routing_key=key)
            dead = await eventually(lambda: first.take_raw(DEAD_LETTER_QUEUE.name, select=lambda r: r.headers.get(ORIGINAL_QUEUE_HEADER) == spec.name),
                                    what="dead letter at the bus's limit")
            assert attempts == [1, 2]
            assert "delivery limit 2 reached" in dead[0].headers[DEATH_REASON_HEADER]


# --- publishing -----------------------------------------------------------------------------------------------


async def test_publish_to_execution_orders_with_no_bound_queue_raises_unroutable(rabbit):
    with pytest.raises(Unroutable):
        await rabbit.publish(snapshot(), exchange=EXECUTION_ORDERS, routing_key=f"nobody-{uuid.uuid4().hex}")
    with pytest.raises(Unroutable):
        await rabbit.publish_raw(b"{}", exchange=EXECUTION_ORDERS, routing_key=f"nobody-{uuid.uuid4().hex}")
    # the channel survives a return: the next publish goes through
    spec, key = fresh_queue(EXECUTION_ORDERS)
    await rabbit.declare_queue(spec)
    await rabbit.publish(snapshot(), exchange=EXECUTION_ORDERS, routing_key=key)
    assert await eventually(lambda: rabbit.queue_depth(spec.name), what="message in the queue") == 1


async def test_broker_nack_raises(rabbit, amqp):
    """A queue that refuses the message (full, overflow reject-publish) makes the broker nack: the publish fails."""
    key = f"full-{uuid.uuid4().hex[:8]}"
    channel = await amqp.channel()
    full = await channel.declare_queue(exclusive=True, arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
    await full.bind(EXECUTION_ORDERS, key)
    with pytest.raises(PublishRejected):
        await rabbit.publish(snapshot(), exchange=EXECUTION_ORDERS, routing_key=key)


async def test_publish_many_raises_a_broker_nack_and_confirms_the_rest(rabbit, amqp):
    key = f"full-{uuid.uuid4().hex[:8]}"
    channel = await amqp.channel()
    full = await channel.declare_queue(exclusive=True, arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
    await full.bind(EXECUTION_ORDERS, key)
    spec, open_key = fresh_queue(EXECUTION_ORDERS)
    await rabbit.declare_queue(spec)
    with pytest.raises(PublishRejected):
        await rabbit.publish_many([Outgoing(snapshot(1), EXECUTION_ORDERS, key), Outgoing(snapshot(2), EXECUTION_ORDERS, open_key)])
    assert await rabbit.queue_depth(spec.name) == 1  # confirmed before publish_many returned


class InFlightBus(TestRabbitBus):
    """Counts the publishes waiting for their confirm at the same time."""

    __test__ = False

    def __init__(self, url: str, **kw) -> None:
        super().__init__(url, **kw)
        self.in_flight = self.most_in_flight = 0

    async def _send(self, body: bytes, **kw) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await super()._send(body, **kw)
        finally:
            self.in_flight -= 1


async def test_publish_many_awaits_the_confirms_together_not_one_by_one(rabbit):
    bus = InFlightBus(AMQP_URL, connect_attempts=1)
    await bus.start()
    try:
        spec, key = fresh_queue()
        await bus.declare_queue(spec)
        await bus.publish_many([Outgoing(snapshot(n), EXECUTION_EVENTS, key) for n in range(10)])
        assert bus.most_in_flight == 10
        assert await bus.queue_depth(spec.name) == 10
    finally:
        await bus.clean_up()


async def test_messages_are_persistent_json_with_the_type_header_and_headers_pass_through(rabbit, amqp):
    spec, key = fresh_queue()
    await rabbit.declare_queue(spec)
    trace = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "tracestate": "scalper=1"}
    message = snapshot(4)
    await rabbit.publish(message, exchange=EXECUTION_EVENTS, routing_key=key, headers=trace)
    channel = await amqp.channel()
    queue = await channel.declare_queue(spec.name, passive=True)
    got = await eventually(lambda: queue.get(fail=False), what="message")
    assert got.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert got.content_type == "application/json"
    assert got.message_id == str(message.message_id)
    assert got.headers[TYPE_HEADER] == "AccountSnapshot"
    assert {k: got.headers[k] for k in trace} == trace
    assert json.loads(got.body)["account_id"] == 4
    await got.nack(requeue=True)

    seen = []
    await rabbit.consume(spec, lambda m, d: _append(seen, d))
    delivery = (await eventually(lambda: seen, what="delivery"))[0]
    assert {k: delivery.headers[k] for k in trace} == trace
    assert all(isinstance(v, str) for v in delivery.headers.values())


# --- consuming ------------------------------------------------------------------------------------------------


async def test_persistent_message_survives_its_consumers_channel_closing(rabbit):
    spec, key = fresh_queue()
    started = asyncio.Event()

    async def stuck(message, delivery):
        started.set()
        await asyncio.sleep(3600)

    doomed = await rabbit.consume(spec, stuck)
    await rabbit.publish(snapshot(8), exchange=EXECUTION_EVENTS, routing_key=key)
    await asyncio.wait_for(started.wait(), 5)
    assert await rabbit.queue_depth(spec.name) == 0  # delivered, unacked
    await doomed.kill()  # closes the consumer's channel without an ack
    assert await eventually(lambda: rabbit.queue_depth(spec.name), what="message back in the queue") == 1
    raws = await rabbit.take_raw(spec.name)
    assert len(raws) == 1 and json.loads(raws[0].body)["account_id"] == 8
    assert await rabbit.healthy()  # the other channels are untouched


async def test_message_in_a_durable_queue_outlives_the_connection_that_sent_it(rabbit):
    spec, key = fresh_queue()
    await rabbit.declare_queue(spec)
    await rabbit.publish(snapshot(9), exchange=EXECUTION_EVENTS, routing_key=key)
    await rabbit.close()
    async for later in rabbit_bus():  # declares the queue again, so this bus deletes it afterwards
        got = []
        await later.consume(spec, lambda m, d: _append(got, m))
        assert (await eventually(lambda: got, what="delivery to a new connection"))[0].account_id == 9


async def test_a_failed_message_backs_off_without_holding_up_the_next():
    spec, key = fresh_queue()
    order = []

    async def handler(message, delivery):
        order.append((message.account_id, delivery.delivery_count))
        if message.account_id == 1 and delivery.delivery_count == 1:
            raise ConnectionError("database unreachable")

    async for bus in rabbit_bus(redelivery_delay_s=0.3):
        await bus.consume(spec, handler)
        await bus.publish(snapshot(1), exchange=EXECUTION_EVENTS, routing_key=key)
        await eventually(lambda: order, what="first attempt")
        await bus.publish(snapshot(2), exchange=EXECUTION_EVENTS, routing_key=key)
        await eventually(lambda: len(order) == 3, what="retry")
        assert order == [(1, 1), (2, 1), (1, 2)]


async def test_cancel_lets_the_message_in_progress_finish_and_acks_it(rabbit):
    spec, key = fresh_queue()
    started, release, done = asyncio.Event(), asyncio.Event(), []

    async def slow(message, delivery):
        started.set()
        await release.wait()
        done.append(message.account_id)

    consumer = await rabbit.consume(spec, slow)
    await rabbit.publish(snapshot(5), exchange=EXECUTION_EVENTS, routing_key=key)
    await asyncio.wait_for(started.wait(), 5)
    cancelling = asyncio.create_task(consumer.cancel())
    await asyncio.sleep(0.05)
    assert not cancelling.done()
    release.set()
    await asyncio.wait_for(cancelling, 5)
    assert done == [5]
    await asyncio.sleep(0.1)
    assert await rabbit.queue_depth(spec.name) == 0


async def test_dead_letter_keeps_the_delivery_count_and_the_original_routing_key(bus):
    """Both back ends: the quorum queue's own x-delivery-count must not overwrite the dead letter's."""
    spec, key = fresh_queue()

    async def failing(message, delivery):
        raise RuntimeError("down")

    await bus.consume(spec, failing)
    await bus.publish(snapshot(), exchange=EXECUTION_EVENTS, routing_key=key)
    dead = await eventually(lambda: _dead_for(bus, spec.name), what="dead letter")
    assert dead[0].headers[DELIVERY_COUNT_HEADER] == "3"
    assert dead[0].headers[ORIGINAL_ROUTING_KEY_HEADER] == key


async def test_failures_on_an_exclusive_queue_are_counted_and_dead_lettered(bus):
    """Exclusive queues are classic on RabbitMQ (no x-delivery-count): the consumer counts their failures itself."""
    tag = uuid.uuid4().hex[:8]
    spec = QueueSpec(f"test.excl.{tag}", bindings=((MARKET_BARS, f"bars.1m.{tag}"),), exclusive=True)
    attempts = []

    async def failing(message, delivery):
        attempts.append((delivery.delivery_count, delivery.redelivered))
        raise RuntimeError("down")

    await bus.consume(spec, failing)
    await bus.publish(snapshot(), exchange=MARKET_BARS, routing_key=f"bars.1m.{tag}")
    dead = await eventually(lambda: _dead_for(bus, spec.name), what="dead letter")
    assert attempts == [(1, False), (2, True), (3, True)]
    assert "delivery limit 3 reached" in dead[0].headers[DEATH_REASON_HEADER]


async def test_idle_waits_for_the_handlers(bus):
    spec, key = fresh_queue()
    done = []

    async def slow(message, delivery):
        await asyncio.sleep(0.05)
        done.append(message.account_id)

    await bus.consume(spec, slow)
    for n in range(3):
        await bus.publish(snapshot(n + 1), exchange=EXECUTION_EVENTS, routing_key=key)
    await bus.idle(5)
    assert done == [1, 2, 3]


async def test_start_gives_up_with_an_error_that_names_the_url_without_the_password():
    bus = RabbitBus("amqp://guest:s3cret@127.0.0.1:1/", connect_attempts=2, connect_timeout_s=0.5)
    with pytest.raises(ConnectionError) as failure:
        await bus.start()
    text = str(failure.value)
    assert "127.0.0.1:1" in text and "after 2 attempts" in text
    assert "s3cret" not in text


# --- helpers --------------------------------------------------------------------------------------------------


async def _append(target: list, item) -> None:
    target.append(item)


async def _dead_for(bus, queue_name: str):
    raws = await bus.take_raw(DEAD_LETTER_QUEUE.name)
    return [r for r in raws if r.headers.get(ORIGINAL_QUEUE_HEADER) == queue_name] or None


async def test_a_declaration_the_broker_never_answers_names_the_likely_cause():
    """A broker out of open files stops answering queue declarations (docs/benchmarks.md): the time-out says so."""

    class SilentChannel:
        async def declare_queue(self, *args, **kwargs):
            await asyncio.sleep(3600)

    bus = RabbitBus("amqp://guest:guest@127.0.0.1:1/", op_timeout_s=0.05)
    spec = QueueSpec("test.silent", bindings=(), exclusive=True)  # exclusive: declared on the channel, no probe first
    with pytest.raises(TimeoutError, match=r"test\.silent.*open files.*rabbitmq-diagnostics status"):
        await bus._declare(SilentChannel(), spec)
    assert "test.silent" not in bus.declared_queues
