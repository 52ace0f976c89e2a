"""The in-memory bus's own economy: a typed publish is handed to its consumers without a JSON round trip, and its
body (the bytes RabbitMQ would carry) is made only when something reads it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.bus import QueueSpec
from shared.bus.base import DEATH_REASON_HEADER, ORIGINAL_QUEUE_HEADER, TYPE_HEADER
from shared.bus.memory import InMemoryBus
from shared.bus.topology import DEAD_LETTER_QUEUE, EXECUTION_EVENTS
from shared.messages import AccountSnapshot, InvalidMessage, decode
from tests.bus.test_bus_contract import fresh_queue
from tests.helpers import eventually

T0 = datetime(2026, 3, 24, 17, 0, tzinfo=UTC)


def snapshot() -> AccountSnapshot:
    return AccountSnapshot(account_id=7, balance=100.0, equity=100.0, margin=0.0, margin_free=100.0, taken_at=T0)


@pytest.fixture
async def memory_bus():
    bus = InMemoryBus(delivery_limit=5)
    await bus.start()
    yield bus
    await bus.close()


async def two_queues(bus: InMemoryBus) -> tuple[str, list]:
    """Two queues bound to one key, each keeping what it gets."""
    first, key = fresh_queue()
    second = QueueSpec(first.name + ".b", bindings=first.bindings)
    got: list = []

    async def keep(message, delivery):
        got.append(message)

    await bus.consume(first, keep)
    await bus.consume(second, keep)
    return key, got


async def test_a_typed_publish_reaches_every_queue_as_the_same_frozen_message_never_encoded(memory_bus, monkeypatch):
    encoded = []
    original = AccountSnapshot.encode
    monkeypatch.setattr(AccountSnapshot, "encode", lambda self: encoded.append(self) or original(self))
    key, got = await two_queues(memory_bus)
    sent = snapshot()
    await memory_bus.publish(sent, exchange=EXECUTION_EVENTS, routing_key=key)
    await eventually(lambda: len(got) == 2)
    assert got[0] is sent and got[1] is sent
    assert encoded == [], "nothing read the body, so nothing encoded it"


async def test_a_raw_body_is_decoded_once_for_all_its_queues(memory_bus):
    key, got = await two_queues(memory_bus)
    sent = snapshot()
    await memory_bus.publish_raw(sent.encode(), exchange=EXECUTION_EVENTS, routing_key=key, headers={TYPE_HEADER: "AccountSnapshot"})
    await eventually(lambda: len(got) == 2)
    assert got[0] == sent and got[0] is not sent and got[0] is got[1]


async def test_a_dead_letter_carries_the_body_of_a_message_never_encoded_before(memory_bus):
    spec, key = fresh_queue()

    async def refuse(message, delivery):
        raise InvalidMessage("not for this queue")

    await memory_bus.consume(spec, refuse)
    sent = snapshot()
    await memory_bus.publish(sent, exchange=EXECUTION_EVENTS, routing_key=key)
    dead: list = []

    async def collected() -> bool:
        dead.extend(r for r in await memory_bus.take_raw(DEAD_LETTER_QUEUE.name) if r.headers.get(ORIGINAL_QUEUE_HEADER) == spec.name)
        return bool(dead)

    await eventually(collected)
    (raw,) = dead
    assert raw.headers[DEATH_REASON_HEADER].startswith("invalid: not for this queue")
    assert decode(raw.headers[TYPE_HEADER], raw.body) == (sent, [])
