"""Test helpers: poll for a condition instead of sleeping and hoping; a recording bus for handler tests."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable

from shared.bus.base import Delivery, QueueSpec
from shared.messages import Message


async def eventually(predicate: Callable, *, timeout: float = 5.0, interval: float = 0.01, what: str = "condition"):
    """Poll `predicate` (sync or async) until it returns a truthy value; return that value or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s (last value {value!r})")
        await asyncio.sleep(interval)


class RecordingConsumer:
    def __init__(self) -> None:
        self.cancelled = False

    async def cancel(self) -> None:
        self.cancelled = True


class RecordingBus:
    """The Bus protocol's shape for handler tests: records what is published, keeps each queue's handler so a test
    can deliver to it, and fails the next `fail_publishes` publishes on demand."""

    def __init__(self) -> None:
        self.started = False
        self.published: list[tuple[str, str, Message]] = []
        self.handlers: dict[str, object] = {}
        self.fail_publishes = 0

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.started = False

    async def declare_queue(self, spec: QueueSpec) -> None:
        pass

    async def publish(self, message: Message, *, exchange: str, routing_key: str = "", headers=None) -> None:
        if self.fail_publishes:
            self.fail_publishes -= 1
            raise ConnectionError("bus unreachable (test)")
        self.published.append((exchange, routing_key, message))

    async def consume(self, spec: QueueSpec, handler, *, prefetch=None, concurrency=1) -> RecordingConsumer:
        self.handlers[spec.name] = handler
        return RecordingConsumer()

    async def queue_depth(self, name: str) -> int:
        return 0

    async def healthy(self) -> bool:
        return True

    async def deliver(self, queue: str, message: Message, *, count: int = 1) -> None:
        """Hand `message` to the queue's handler as the bus would (exceptions propagate to the test)."""
        delivery = Delivery(message=message, exchange="test", routing_key="test", redelivered=count > 1, delivery_count=count)
        await self.handlers[queue](message, delivery)

    def sent(self, exchange: str) -> list[tuple[str, Message]]:
        return [(key, msg) for ex, key, msg in self.published if ex == exchange]

    def of(self, kind: type[Message], *, routing_key: str | None = None) -> list:
        return [m for _, key, m in self.published if isinstance(m, kind) and (routing_key is None or key == routing_key)]
