"""One bus test body, every back end: the in-memory bus always, RabbitMQ when the machine has it.

The RabbitMQ tests share a broker (and its static queues) with other test runs and perhaps with services, so the
test bus marks what it publishes, sees only its own dead letters, and removes its queues and litter afterwards.
Point SCALPER_TEST_AMQP_URL at a vhost of its own to keep tests away from running services entirely.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest

from shared.bus.base import QueueSpec
from shared.bus.memory import WORK_QUEUES, InMemoryBus, RawMessage
from shared.bus.rabbitmq import RabbitBus
from shared.bus.topology import DEAD_LETTER_QUEUE
from shared.settings import Settings
from tests.conftest import need

AMQP_URL = os.environ.get("SCALPER_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
TEST_RUN_HEADER = "x-scalper-test-run"  # every message a test bus publishes carries its run id
STATIC_QUEUES = frozenset(spec.name for spec in WORK_QUEUES)
# The static queues are the services' too: declare them with the services' default limit, or a service sharing the
# broker would meet a queue with other arguments.
SERVICE_DELIVERY_LIMIT: int = Settings.model_fields["delivery_limit"].default


class TestRabbitBus(RabbitBus):
    """RabbitBus that keeps a shared broker clean: tags its publishes, takes only its own dead letters."""

    __test__ = False

    def __init__(self, url: str, **kw: Any) -> None:
        super().__init__(url, **kw)
        self.run_id = uuid.uuid4().hex
        self.test_queues: set[str] = set()

    def _limit(self, spec: QueueSpec) -> int:
        if spec.name in STATIC_QUEUES and spec.delivery_limit is None:
            return SERVICE_DELIVERY_LIMIT
        return super()._limit(spec)

    async def _declare(self, channel, spec: QueueSpec):
        if spec.name not in STATIC_QUEUES:
            self.test_queues.add(spec.name)
        return await super()._declare(channel, spec)

    async def _send(self, body: bytes, *, headers, **kw: Any) -> None:
        await super()._send(body, headers={**headers, TEST_RUN_HEADER: self.run_id}, **kw)

    def mine(self, raw: RawMessage) -> bool:
        return raw.headers.get(TEST_RUN_HEADER) == self.run_id

    async def take_raw(self, name: str, limit: int = 1000, **kw: Any) -> list[RawMessage]:
        if name == DEAD_LETTER_QUEUE.name:
            kw.setdefault("select", self.mine)  # leave other runs' dead letters where they are
        return await super().take_raw(name, limit, **kw)

    async def clean_up(self) -> None:
        """Stop the consumers, drop this run's test queues and leftovers, close."""
        try:
            await self.cancel_consumers()
            if await self.healthy():
                for name in sorted(self.test_queues):
                    with contextlib.suppress(Exception):
                        await self.delete_queue(name)
                await self.take_raw(DEAD_LETTER_QUEUE.name)
                # Test routing keys also match the services' bindings (report.<tag> -> decision.events): a service
                # started later on this broker must not take test messages for real ones.
                for name in sorted(STATIC_QUEUES - {DEAD_LETTER_QUEUE.name}):
                    await self._sweep(name)
        finally:
            await self.close()

    async def _sweep(self, name: str) -> None:
        """Remove every test run's messages from a services' queue and put the others back as they were.

        A message handed back with nack would count as a delivery (past the limit the broker dead-letters it), so
        the others are published again to the same queue (confirmed) before their original is acked.
        """
        depth = await self.queue_depth(name)
        if not depth:
            return
        assert self._channel is not None
        async with self._scratch_channel() as channel:
            queue = await channel.declare_queue(name, passive=True, robust=False)
            for _ in range(depth):
                message = await queue.get(fail=False)
                if message is None:
                    break
                if TEST_RUN_HEADER not in (message.headers or {}):
                    await self._channel.default_exchange.publish(_copy(message), routing_key=name)
                await message.ack()


def _copy(message) -> aio_pika.Message:
    headers = {k: v for k, v in (message.headers or {}).items() if k != "x-delivery-count" or isinstance(v, str)}
    return aio_pika.Message(
        message.body, headers=headers, content_type=message.content_type, content_encoding=message.content_encoding,
        delivery_mode=message.delivery_mode, priority=message.priority, correlation_id=message.correlation_id,
        reply_to=message.reply_to, expiration=message.expiration, message_id=message.message_id,
        timestamp=message.timestamp, type=message.type, user_id=message.user_id, app_id=message.app_id,
    )


_unreachable: dict[str, str] = {}  # url -> why: try a broker that is down once per session, not once per test


async def rabbit_bus(**kw: Any) -> AsyncIterator[TestRabbitBus]:
    """A started test bus on the machine's RabbitMQ, or a skip (a failure with SCALPER_REQUIRE_SERVICES=1)."""
    if AMQP_URL in _unreachable:
        need(False, _unreachable[AMQP_URL], required_by="SCALPER_REQUIRE_SERVICES")
    kw.setdefault("delivery_limit", 3)
    kw.setdefault("redelivery_delay_s", 0.005)
    b = TestRabbitBus(AMQP_URL, connect_attempts=1, connect_timeout_s=3.0, **kw)
    try:
        await b.start()
    except ConnectionError as exc:
        _unreachable[AMQP_URL] = str(exc)  # "RabbitMQ not reachable at <url without password> after 1 attempts: ..."
        need(False, _unreachable[AMQP_URL], required_by="SCALPER_REQUIRE_SERVICES")
    try:
        yield b
    finally:
        await b.clean_up()


@pytest.fixture(params=["memory", "rabbitmq"])
async def bus(request):
    if request.param == "memory":
        b = InMemoryBus(delivery_limit=3, redelivery_delay_s=0.001)
        await b.start()
        yield b
        await b.close()
        return
    async for b in rabbit_bus():
        yield b


@pytest.fixture
async def rabbit():
    async for b in rabbit_bus():
        yield b
