"""Bus semantics shared by every back end: routing, ack, bounded redelivery, dead letters, consumer failover."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

from shared.bus import QueueSpec
from shared.bus.base import DEATH_REASON_HEADER, ORIGINAL_QUEUE_HEADER, TYPE_HEADER, Outgoing
from shared.bus.topology import CONTROL_PLAN, DEAD_LETTER_QUEUE, EXECUTION_EVENTS, EXECUTION_ORDERS, MARKET_BARS
from shared.messages import AccountSnapshot, InvalidMessage
from tests.helpers import eventually

T0 = datetime(2026, 3, 24, 17, 0, tzinfo=UTC)


def snapshot(n: int = 1) -> AccountSnapshot:
    return AccountSnapshot(account_id=n, balance=100.0 * n, equity=100.0, margin=0.0, margin_free=100.0, taken_at=T0)


def fresh_queue(exchange: str = EXECUTION_EVENTS, **kw) -> tuple[QueueSpec, str]:
    tag = uuid.uuid4().hex[:10]
    key = f"report.{tag}" if exchange == EXECUTION_EVENTS else tag
    return QueueSpec(f"test.{tag}", bindings=((exchange, key),), **kw), key


async def dead_letters_for(bus, queue_name: str) -> list:
    raws = await bus.take_raw(DEAD_LETTER_QUEUE.name)
    mine = [r for r in raws if r.headers.get(ORIGINAL_QUEUE_HEADER) == queue_name]
    return mine


async def test_routes_only_to_bound_queues(bus):
    spec, key = fresh_queue()
    other, _ = fresh_queue()
    got, other_got = [], []
    await bus.consume(spec, lambda m, d: _append(got, m))
    await bus.consume(other, lambda m, d: _append(other_got, m))
    await bus.publish(snapshot(1), exchange=EXECUTION_EVENTS, routing_key=key)
    await eventually(lambda: len(got) == 1, what="delivery")
    await asyncio.sleep(0.05)
    assert other_got == []
    assert got[0].account_id == 1


async def test_topic_and_fanout_bindings(bus):
    tag = uuid.uuid4().hex[:8]
    topic = QueueSpec(f"test.topic.{tag}", bindings=((MARKET_BARS, f"bars.*.{tag}"),))
    fan1 = QueueSpec(f"test.fan1.{tag}", bindings=((CONTROL_PLAN, ""),), exclusive=True)
    fan2 = QueueSpec(f"test.fan2.{tag}", bindings=((CONTROL_PLAN, ""),), exclusive=True)
    seen: dict[str, list] = {"topic": [], "fan1": [], "fan2": []}
    await bus.consume(topic, lambda m, d: _append(seen["topic"], d.routing_key))
    await bus.consume(fan1, lambda m, d: _append(seen["fan1"], m))
    await bus.consume(fan2, lambda m, d: _append(seen["fan2"], m))
    await bus.publish(snapshot(), exchange=MARKET_BARS, routing_key=f"bars.1m.{tag}")
    await bus.publish(snapshot(), exchange=MARKET_BARS, routing_key=f"bars.1m.x.{tag}")  # two words: no match for *
    await bus.publish(snapshot(), exchange=CONTROL_PLAN)
    await eventually(lambda: seen["fan1"] and seen["fan2"] and seen["topic"], what="fanout and topic delivery")
    await asyncio.sleep(0.05)
    assert seen["topic"] == [f"bars.1m.{tag}"]


async def test_acked_message_is_not_redelivered(bus):
    spec, key = fresh_queue()
    calls = []
    await bus.consume(spec, lambda m, d: _append(calls, d))
    await bus.publish(snapshot(), exchange=EXECUTION_EVENTS, routing_key=key)
    await eventually(lambda: calls, what="delivery")
    await asyncio.sleep(0.1)
    assert len(calls) == 1 and calls[0].redelivered is False and calls[0].delivery_count == 1
    assert await bus.queue_depth(spec.name) == 0


async def test_handler_failing_once_is_redelivered_and_succeeds(bus):
    spec, key = fresh_queue()
    deliveries = []

    async def flaky(message, delivery):
        deliveries.append(delivery)
        if len(deliveries) == 1:
            raise ConnectionError("database unreachable")

    await bus.consume(spec, flaky)
    await bus.publish(snapshot(), exchange=EXECUTION_EVENTS, routing_key=key)
    await eventually(lambda: len(deliveries) == 2, what="redelivery")
    await asyncio.sleep(0.1)
    assert len(deliveries) == 2
    assert deliveries[1].redelivered is True and deliveries[1].delivery_count == 2
    assert await dead_letters_for(bus, spec.name) == []


async def test_always_failing_message_is_dead_lettered_at_the_limit_and_consumer_survives(bus):
    spec, key = fresh_queue()
    attempts, good = [], []

    async def handler(message, delivery):
        if message.account_id == 66:
            attempts.append(delivery.delivery_count)
            raise RuntimeError("always broken")
        good.append(message)

    await bus.consume(spec, handler)
    await bus.publish(snapshot(66), exchange=EXECUTION_EVENTS, routing_key=key)
    await eventually(lambda: len(attempts) == 3, what="three attempts")
    await bus.publish(snapshot(2), exchange=EXECUTION_EVENTS, routing_key=key)
    await eventually(lambda: good, what="next message handled")
    dead = await eventually(lambda: dead_letters_for(bus, spec.name), what="dead letter")
    assert attempts == [1, 2, 3]
    assert "always broken" in dead[0].headers[DEATH_REASON_HEADER]
    assert dead[0].headers[TYPE_HEADER] == "AccountSnapshot"


async def test_malformed_body_is_dead_lettered_at_once(bus):
    spec, key = fresh_queue()
    handled = []
    await bus.consume(spec, lambda m, d: _append(handled, m))
    await bus.publish_raw(b"{not json", exchange=EXECUTION_EVENTS, routing_key=key, headers={TYPE_HEADER: "AccountSnapshot"})
    await bus.publish_raw(b'{"account_id": "x"}', exchange=EXECUTION_EVENTS, routing_key=key, headers={TYPE_HEADER: "AccountSnapshot"})
    await bus.publish(snapshot(3), exchange=EXECUTION_EVENTS, routing_key=key)
    await eventually(lambda: handled, what="the good message after two bad ones")
    dead = await eventually(lambda: _collect(bus, spec.name, 2), what="two dead letters")
    reasons = sorted(d.headers[DEATH_REASON_HEADER] for d in dead)
    assert any("not JSON" in r for r in reasons) and any("validation" in r for r in reasons)
    assert [m.account_id for m in handled] == [3]


async def test_handler_raising_invalid_message_dead_letters_without_retry(bus):
    spec, key = fresh_queue()
    attempts = []

    async def handler(message, delivery):
        attempts.append(1)
        raise InvalidMessage("bot 99 does not exist")

    await bus.consume(spec, handler)
    await bus.publish(snapshot(), exchange=EXECUTION_EVENTS, routing_key=key)
    dead = await eventually(lambda: dead_letters_for(bus, spec.name), what="dead letter")
    assert attempts == [1]
    assert "bot 99 does not exist" in dead[0].headers[DEATH_REASON_HEADER]


async def test_newer_major_version_is_refused_newer_minor_fields_ignored(bus):
    spec, key = fresh_queue()
    handled = []
    await bus.consume(spec, lambda m, d: _append(handled, d))
    base = snapshot(5).model_dump(mode="json")
    await bus.publish_raw(
        _json({**base, "schema_version": "1.7", "margin_call": True}), exchange=EXECUTION_EVENTS, routing_key=key,
        headers={TYPE_HEADER: "AccountSnapshot"},
    )
    await bus.publish_raw(_json({**base, "schema_version": "2.0"}), exchange=EXECUTION_EVENTS, routing_key=key, headers={TYPE_HEADER: "AccountSnapshot"})
    await eventually(lambda: handled, what="minor-version message handled")
    dead = await eventually(lambda: dead_letters_for(bus, spec.name), what="major-version dead letter")
    assert handled[0].unknown_fields == ("margin_call",)
    assert "major version" in dead[0].headers[DEATH_REASON_HEADER]


async def test_competing_consumers_share_the_work_once_each(bus):
    spec, key = fresh_queue()
    seen: dict[str, list[int]] = {"a": [], "b": []}

    def make(name):
        async def handler(message, delivery):
            seen[name].append(message.account_id)
            await asyncio.sleep(0.005)

        return handler

    await bus.consume(spec, make("a"))
    await bus.consume(spec, make("b"))
    for n in range(1, 41):
        await bus.publish(snapshot(n), exchange=EXECUTION_EVENTS, routing_key=key)
    await eventually(lambda: len(seen["a"]) + len(seen["b"]) == 40, what="all 40 handled")
    assert sorted(seen["a"] + seen["b"]) == list(range(1, 41))
    assert seen["a"] and seen["b"], "both consumers should have worked"


async def test_single_active_consumer_fails_over(bus):
    spec, key = fresh_queue(EXECUTION_ORDERS, single_active_consumer=True)
    seen: dict[str, list[int]] = {"a": [], "b": []}
    first = await bus.consume(spec, lambda m, d: _append(seen["a"], m.account_id))
    await bus.consume(spec, lambda m, d: _append(seen["b"], m.account_id))
    for n in (1, 2, 3):
        await bus.publish(snapshot(n), exchange=EXECUTION_ORDERS, routing_key=key)
    await eventually(lambda: len(seen["a"]) == 3, what="active consumer took all")
    assert seen["b"] == []
    await first.cancel()
    await bus.publish(snapshot(4), exchange=EXECUTION_ORDERS, routing_key=key)
    await eventually(lambda: seen["b"] == [4], what="standby took over")


async def test_unacked_message_of_a_stopped_consumer_is_redelivered(bus):
    spec, key = fresh_queue()
    started = asyncio.Event()
    survivor = []

    async def stuck(message, delivery):
        started.set()
        await asyncio.sleep(3600)

    doomed = await bus.consume(spec, stuck)
    await bus.publish(snapshot(7), exchange=EXECUTION_EVENTS, routing_key=key)
    await asyncio.wait_for(started.wait(), 5)
    await bus.consume(spec, lambda m, d: _append(survivor, d))
    await _crash(doomed)
    got = await eventually(lambda: survivor, what="redelivery to the other consumer")
    assert got[0].message.account_id == 7 and got[0].redelivered is True


async def test_one_handler_at_a_time_in_order_by_default_whatever_the_prefetch(bus):
    spec, key = fresh_queue()
    running, most, seen = 0, 0, []

    async def handler(message, delivery):
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.002)
        seen.append(message.account_id)
        running -= 1

    await bus.consume(spec, handler, prefetch=20)
    await bus.publish_many([Outgoing(snapshot(n), EXECUTION_EVENTS, key) for n in range(1, 21)])
    await eventually(lambda: len(seen) == 20, what="all 20 handled")
    assert seen == list(range(1, 21)) and most == 1


async def test_concurrency_runs_that_many_handlers_at_once_each_acked_on_its_own(bus):
    spec, key = fresh_queue()
    release = {n: asyncio.Event() for n in (1, 2, 3)}
    started, finished, calls = [], [], []

    async def handler(message, delivery):
        n = message.account_id
        calls.append(n)
        started.append(n)
        await release[n].wait()
        finished.append(n)

    await bus.consume(spec, handler, concurrency=2)
    for n in (1, 2, 3):
        await bus.publish(snapshot(n), exchange=EXECUTION_EVENTS, routing_key=key)
    await eventually(lambda: sorted(started) == [1, 2], what="two handlers running at once")
    await asyncio.sleep(0.1)
    assert started == [1, 2], "a third handler started while two were running"
    release[2].set()  # the second finishes first: it is acked alone, and its slot takes the third message
    await eventually(lambda: started == [1, 2, 3], what="the freed slot taking the next message")
    release[3].set()
    release[1].set()
    await eventually(lambda: sorted(finished) == [1, 2, 3], what="all three handled")
    await asyncio.sleep(0.1)
    assert sorted(calls) == [1, 2, 3], "a message was delivered twice"
    assert await bus.queue_depth(spec.name) == 0


async def test_cancel_waits_for_every_handler_in_progress(bus):
    spec, key = fresh_queue()
    release = asyncio.Event()
    started, finished, later = [], [], []

    async def handler(message, delivery):
        started.append(message.account_id)
        await release.wait()
        finished.append(message.account_id)

    consumer = await bus.consume(spec, handler, concurrency=2)
    for n in (1, 2):
        await bus.publish(snapshot(n), exchange=EXECUTION_EVENTS, routing_key=key)
    await eventually(lambda: len(started) == 2, what="both handlers running")
    cancelling = asyncio.create_task(consumer.cancel())
    await asyncio.sleep(0.1)
    assert not cancelling.done(), "cancel returned while handlers were still running"
    release.set()
    await asyncio.wait_for(cancelling, 10)
    assert sorted(finished) == [1, 2]
    await bus.consume(spec, lambda m, d: _append(later, m.account_id))
    await asyncio.sleep(0.2)
    assert later == [], "a message whose handler finished before the cancel was delivered again"


async def test_concurrency_below_one_is_refused(bus):
    import pytest

    spec, _ = fresh_queue()
    with pytest.raises(ValueError, match="concurrency"):
        await bus.consume(spec, lambda m, d: _append([], m), concurrency=0)


async def test_publish_many_delivers_every_message_in_batch_order(bus):
    spec, key = fresh_queue()
    seen = []
    await bus.consume(spec, lambda m, d: _append(seen, m.account_id))
    await bus.publish_many([Outgoing(snapshot(n), EXECUTION_EVENTS, key) for n in range(1, 31)])
    await eventually(lambda: len(seen) == 30, what="all 30 delivered")
    assert seen == list(range(1, 31))


async def test_publish_many_raises_an_unroutable_message_after_trying_the_rest(bus):
    import pytest

    from shared.bus import Unroutable

    spec, key = fresh_queue()
    seen = []
    await bus.consume(spec, lambda m, d: _append(seen, m.account_id))
    nobody = f"nobody-{uuid.uuid4().hex}"
    batch = [Outgoing(snapshot(1), EXECUTION_EVENTS, key), Outgoing(snapshot(2), EXECUTION_ORDERS, nobody),
             Outgoing(snapshot(3), EXECUTION_EVENTS, key)]
    with pytest.raises(Unroutable, match=nobody):
        await bus.publish_many(batch)
    await eventually(lambda: len(seen) == 2, what="the routable messages delivered")
    assert seen == [1, 3]


async def test_publish_many_of_nothing_publishes_nothing(bus):
    spec, _ = fresh_queue()
    await bus.declare_queue(spec)
    await bus.publish_many([])
    assert await bus.queue_depth(spec.name) == 0


# --- helpers ------------------------------------------------------------------------------------------------


async def _append(target: list, item) -> None:
    target.append(item)


def _json(data: dict) -> bytes:
    import json

    return json.dumps(data).encode()


async def _crash(consumer) -> None:
    """Stop a consumer as a dying process would (in-memory: cancel its task; RabbitMQ: close its channel)."""
    await consumer.kill()


_collected: dict[str, list] = {}


async def _collect(bus, queue_name: str, n: int):
    bucket = _collected.setdefault(queue_name, [])
    bucket.extend(await dead_letters_for(bus, queue_name))
    return bucket if len(bucket) >= n else None


async def test_unroutable_publish_to_a_work_exchange_fails_but_optional_exchanges_drop(bus):
    import pytest

    from shared.bus import Unroutable

    with pytest.raises(Unroutable):
        await bus.publish(snapshot(), exchange=EXECUTION_ORDERS, routing_key=f"nobody-{uuid.uuid4().hex}")
    await bus.publish(snapshot(), exchange=MARKET_BARS, routing_key=f"bars.1m.nobody{uuid.uuid4().hex[:6]}")
