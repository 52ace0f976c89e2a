"""The bus interface: one Protocol, two back ends (memory.py, rabbitmq.py) with the same semantics.

Semantics every back end keeps (architecture.md, "Bus topology" and "Redelivery"):
- a message is acked only after its handler returns;
- a handler that raises `InvalidMessage` (or a body that fails to decode) is dead-lettered at once, with the reason;
- a handler that raises anything else is nacked with requeue and delivered again (`redelivered=True`,
  `delivery_count` + 1) until the queue's delivery limit, then dead-lettered with the last error as reason;
- unacked messages of a consumer that stops are requeued;
- a single-active-consumer queue delivers to one consumer at a time and fails over when it stops;
- a consumer runs its handler on one message at a time (prefetch only bounds what is buffered), so a service
  that must not race itself (decision) just uses one consumer;
- a publish to a work exchange that routes to no queue raises `Unroutable` (RabbitMQ: mandatory + returned);
  on `OPTIONAL_ROUTE_EXCHANGES` it is dropped;
- `publish_many` sends its messages in order and awaits their confirms together: it returns once every one is
  confirmed, or raises the first failure in batch order once all have settled (the others may have been delivered,
  so a caller retries the whole batch and consumers drop the repeats).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from shared.messages import InvalidMessage, Message

ExchangeType = Literal["topic", "direct", "fanout"]

# Header names carried by every message.
TYPE_HEADER = "x-message-type"
DEATH_REASON_HEADER = "x-death-reason"
ORIGINAL_QUEUE_HEADER = "x-original-queue"
ORIGINAL_ROUTING_KEY_HEADER = "x-original-routing-key"
DELIVERY_COUNT_HEADER = "x-scalper-delivery-count"  # not `x-delivery-count`: quorum queues write that one themselves


class TransientError(Exception):
    """A failure that may pass (database or broker unreachable): the message is requeued and counted."""


class Unroutable(TransientError):
    """A publish that no queue is bound to receive: on work exchanges that would lose the message, so it fails."""


# Exchanges where a message nobody listens to is simply not needed (no work is lost by dropping it).
OPTIONAL_ROUTE_EXCHANGES = frozenset({"control.plan", "dead.letters", "market.bars"})


@dataclass(frozen=True, slots=True)
class QueueSpec:
    name: str
    bindings: tuple[tuple[str, str], ...] = ()  # (exchange, routing key or pattern)
    single_active_consumer: bool = False
    exclusive: bool = False  # one consumer's private queue, deleted when it stops (e.g. control.plan)
    delivery_limit: int | None = None  # None: the bus's default


@dataclass(frozen=True, slots=True)
class Delivery:
    """What a handler receives beside the decoded message."""

    message: Message
    exchange: str
    routing_key: str
    headers: dict[str, str] = field(default_factory=dict)
    redelivered: bool = False
    delivery_count: int = 1
    unknown_fields: tuple[str, ...] = ()


Handler = Callable[[Message, Delivery], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message of a `publish_many` batch and where it goes."""

    message: Message
    exchange: str
    routing_key: str = ""
    headers: dict[str, str] | None = None


class Consumer(Protocol):
    async def cancel(self) -> None: ...


class Bus(Protocol):
    async def start(self) -> None:
        """Connect and declare the exchanges of the topology (idempotent)."""

    async def close(self) -> None: ...

    async def declare_queue(self, spec: QueueSpec) -> None: ...

    async def publish(self, message: Message, *, exchange: str, routing_key: str = "", headers: dict[str, str] | None = None) -> None:
        """Publish durably; return only once the broker has accepted the message (confirm)."""

    async def publish_many(self, batch: Sequence[Outgoing]) -> None:
        """Publish `batch` in order, as `publish` does each message, waiting for all the confirms at once."""

    async def consume(self, spec: QueueSpec, handler: Handler, *, prefetch: int | None = None, concurrency: int = 1) -> Consumer:
        """Declare `spec` and deliver its messages to `handler` until the consumer is cancelled.

        The handler runs on up to `concurrency` messages at once, each acked when its own handler returns. With the
        default of 1 they are handled one at a time, in order (decision and the executor rely on it); more suits
        independent messages whose handlers wait on the broker, as the strategy worker's wait for its confirms.
        """

    async def queue_depth(self, name: str) -> int:
        """Messages ready in a queue (not counting those delivered and not yet acked)."""

    async def healthy(self) -> bool: ...


__all__ = [
    "Bus",
    "Consumer",
    "Delivery",
    "Handler",
    "InvalidMessage",
    "Outgoing",
    "QueueSpec",
    "TransientError",
    "Unroutable",
]
