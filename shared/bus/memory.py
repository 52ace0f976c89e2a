"""In-memory bus for the embedded mode: RabbitMQ's routing and delivery semantics inside one process.

A typed publish hands its frozen message to the queues as it is: a JSON round trip inside one process bought
nothing and cost 0.7 ms of every bar window's path to an order. The body RabbitMQ would carry (JSON with a type
header) is made only when something reads it: a dead letter, a test. A raw publish is decoded at delivery, so a
body that fails to decode is dead-lettered here too. See shared/bus/base.py for the semantics both back ends keep.

Time-outs use `asyncio.timeout`, never `asyncio.wait_for`: on Python 3.11, a task cancelled just as the awaited
thing finishes can have its cancellation swallowed by wait_for (fixed in 3.12), and a consumer or sampler that
survives its cancel makes `stop()` wait for ever (seen once in four runs of an embedded app's shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from shared.bus.base import (
    DEATH_REASON_HEADER,
    DELIVERY_COUNT_HEADER,
    OPTIONAL_ROUTE_EXCHANGES,
    ORIGINAL_QUEUE_HEADER,
    ORIGINAL_ROUTING_KEY_HEADER,
    TYPE_HEADER,
    Delivery,
    Handler,
    Outgoing,
    QueueSpec,
    Unroutable,
)
from shared.bus.topology import DEAD_LETTER_QUEUE, DEAD_LETTERS, DECISION_EVENTS, DECISION_SIGNALS, EXCHANGES, STRATEGY_BARS
from shared.logging import get_logger
from shared.messages import InvalidMessage, Message, decode
from shared.metrics import consume_latency_seconds, dead_letters_total, publish_latency_seconds, unknown_fields_total
from shared.telemetry import consume_span, mark_failed, publish_span

log = get_logger(__name__)

WORK_QUEUES = (STRATEGY_BARS, DECISION_SIGNALS, DECISION_EVENTS, DEAD_LETTER_QUEUE)


@dataclass(slots=True)
class Payload:
    """One publish's message, shared by the queues it was routed to (messages are frozen models, so one consumer
    cannot change what another reads), with its encoded body made at most once.

    A typed publish hands its message over as is and encodes nothing: the body (the same bytes RabbitMQ would carry)
    is made only if something reads it, such as a dead letter or a test. A bar window takes about 0.5 ms to encode and
    0.2 ms to decode, and it is on the path of every order. A raw publish is decoded at its first delivery."""

    value: tuple[Message, list[str]] | None = None
    body: bytes | None = None

    def encoded(self) -> bytes:
        if self.body is None:
            assert self.value is not None, "a Payload holds a body or a message"
            self.body = self.value[0].encode()
        return self.body


class RawMessage:
    """A message as it sits in a queue: its body (encoded when first read, see Payload) and its headers."""

    __slots__ = ("headers", "exchange", "routing_key", "delivery_count", "not_before", "payload")

    def __init__(
        self, body: bytes | None = None, headers: dict[str, str] | None = None, exchange: str = "", routing_key: str = "", *,
        payload: Payload | None = None,
    ) -> None:
        self.payload = payload if payload is not None else Payload()
        if body is not None:
            self.payload.body = body
        self.headers = headers if headers is not None else {}
        self.exchange = exchange
        self.routing_key = routing_key
        self.delivery_count = 0  # deliveries that ended without an ack
        self.not_before = 0.0  # monotonic time before which a requeued message is not redelivered

    @property
    def body(self) -> bytes:
        return self.payload.encoded()

    def decode(self) -> tuple[Message, list[str]]:
        """The message and its unknown fields; InvalidMessage for a body that does not decode (never cached)."""
        if self.payload.value is None:
            self.payload.value = decode(self.headers.get(TYPE_HEADER, ""), self.payload.encoded())
        return self.payload.value


def topic_matches(pattern: str, key: str) -> bool:
    """AMQP topic matching: `*` is exactly one word, `#` zero or more words."""
    return _match(pattern.split("."), key.split("."))


def _match(pattern: list[str], words: list[str]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, words[i:]) for i in range(len(words) + 1))
    return bool(words) and head in ("*", words[0]) and _match(rest, words[1:])


@dataclass(eq=False)
class _Queue:
    spec: QueueSpec
    delivery_limit: int
    ready: deque[RawMessage] = field(default_factory=deque)
    consumers: list[_Consumer] = field(default_factory=list)
    in_flight: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def poke(self) -> None:
        self.changed.set()


class _Consumer:
    """Runs the handler on up to `concurrency` messages at once: one task per slot, each taking the next ready message."""

    def __init__(self, bus: InMemoryBus, queue: _Queue, handler: Handler, concurrency: int = 1) -> None:
        self._bus = bus
        self._queue = queue
        self._handler = handler
        self._stopping = False
        self._tasks = [asyncio.create_task(self._run(), name=f"consumer:{queue.spec.name}") for _ in range(concurrency)]

    def _eligible(self) -> bool:
        q = self._queue
        return not q.spec.single_active_consumer or (bool(q.consumers) and q.consumers[0] is self)

    def _next(self) -> RawMessage | None:
        """The first ready message whose redelivery delay has passed."""
        now = time.monotonic()
        ready = self._queue.ready
        for i, raw in enumerate(ready):
            if raw.not_before <= now:
                del ready[i]
                return raw
        return None

    async def _run(self) -> None:
        q = self._queue
        while not self._stopping:
            raw = self._next() if self._eligible() else None
            if raw is None:
                q.changed.clear()
                delays = [m.not_before - time.monotonic() for m in q.ready]
                timeout = max(0.001, min(delays)) if delays and self._eligible() else None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):  # not wait_for: on 3.11 it can lose a cancel (module doc)
                        await q.changed.wait()
                continue
            q.in_flight += 1
            try:
                await self._deliver(raw)
            except asyncio.CancelledError:
                # Stopped in the middle of a handler: the message was never acked, so it is redelivered.
                self._bus._requeue(q, raw, reason="consumer stopped before ack")
                raise
            finally:
                q.in_flight -= 1
                q.poke()

    async def _deliver(self, raw: RawMessage) -> None:
        q = self._queue
        started = time.perf_counter()
        try:
            message, unknown = raw.decode()
        except InvalidMessage as exc:
            self._bus._dead_letter(q, raw, reason=f"invalid: {exc}")
            return
        if unknown:
            unknown_fields_total.labels(type=type(message).type_name).inc(len(unknown))
        delivery = Delivery(
            message=message,
            exchange=raw.exchange,
            routing_key=raw.routing_key,
            headers=dict(raw.headers),
            redelivered=raw.delivery_count > 0,
            delivery_count=raw.delivery_count + 1,
            unknown_fields=tuple(unknown),
        )
        # The handler runs inside a CONSUMER span continuing the publisher's trace (W3C context in the headers).
        with consume_span(
            queue=q.spec.name, headers=raw.headers, message_type=type(message).type_name, system="memory",
            delivery_count=delivery.delivery_count,
        ) as span:
            try:
                await self._handler(message, delivery)
            except InvalidMessage as exc:
                mark_failed(span, exc, "dead_lettered")
                self._bus._dead_letter(q, raw, reason=f"invalid: {exc}")
            except Exception as exc:  # noqa: BLE001  any other failure is retried, bounded by the delivery limit
                mark_failed(span, exc, "requeued")
                log.warning("handler failed", queue=q.spec.name, error=repr(exc), delivery=delivery.delivery_count)
                self._bus._requeue(q, raw, reason=f"{type(exc).__name__}: {exc}")
            finally:
                consume_latency_seconds.labels(queue=q.spec.name).observe(time.perf_counter() - started)

    async def cancel(self) -> None:
        """Stop taking messages; handlers in progress finish first (graceful, like basic.cancel)."""
        self._stopping = True
        self._queue.poke()
        await self._join()

    async def kill(self) -> None:
        """Stop at once, as a crashed process would: unacked messages go back to the queue."""
        for task in self._tasks:
            task.cancel()
        await self._join()

    async def _join(self) -> None:
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._bus._detach(self._queue, self)


class InMemoryBus:
    """The Bus protocol in one process: exchanges, bindings, competing consumers, acks, redelivery, dead letters."""

    def __init__(self, *, delivery_limit: int = 5, prefetch: int = 32, redelivery_delay_s: float = 0.01) -> None:
        self.delivery_limit = delivery_limit
        self.prefetch = prefetch  # nothing is buffered ahead of the handlers here; kept for interface parity
        self.redelivery_delay_s = redelivery_delay_s
        self._queues: dict[str, _Queue] = {}
        self._bindings: dict[str, list[tuple[str, _Queue]]] = {name: [] for name in EXCHANGES}
        self._route_cache: dict[tuple[str, str], list[_Queue]] = {}  # cleared whenever a binding changes
        self._started = False

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        for spec in WORK_QUEUES:
            await self.declare_queue(spec)

    async def close(self) -> None:
        for q in list(self._queues.values()):
            for consumer in list(q.consumers):
                await consumer.cancel()
        self._started = False

    async def healthy(self) -> bool:
        return self._started

    async def declare_queue(self, spec: QueueSpec) -> None:
        if spec.name in self._queues:
            return
        q = _Queue(spec=spec, delivery_limit=spec.delivery_limit or self.delivery_limit)
        self._queues[spec.name] = q
        for exchange, key in spec.bindings:
            if exchange not in self._bindings:
                raise ValueError(f"queue {spec.name} binds to unknown exchange {exchange!r}")
            self._bindings[exchange].append((key, q))
        self._route_cache.clear()

    def _routes(self, exchange: str, routing_key: str) -> list[_Queue]:
        cached = self._route_cache.get((exchange, routing_key))
        if cached is not None:
            return cached
        kind = EXCHANGES[exchange]
        out: list[_Queue] = []
        for key, q in self._bindings[exchange]:
            hit = kind == "fanout" or (kind == "direct" and key == routing_key) or (kind == "topic" and topic_matches(key, routing_key))
            if hit and q not in out:
                out.append(q)
        self._route_cache[(exchange, routing_key)] = out
        return out

    async def publish(self, message: Message, *, exchange: str, routing_key: str = "", headers: dict[str, str] | None = None) -> None:
        carried = {TYPE_HEADER: message.type_name, **(headers or {})}
        # A PRODUCER span (a new trace when no span is active) whose W3C context travels in the headers.
        with publish_span(exchange=exchange, routing_key=routing_key, message_type=message.type_name, headers=carried, system="memory"):
            self._route(Payload(value=(message, [])), exchange=exchange, routing_key=routing_key, headers=carried)

    async def publish_many(self, batch: Sequence[Outgoing]) -> None:
        """Publish each message in order; like RabbitMQ's confirms awaited together, every one is tried and the
        first failure is raised after the batch (base.py)."""
        failures: list[Exception] = []
        for out in batch:
            try:
                await self.publish(out.message, exchange=out.exchange, routing_key=out.routing_key, headers=out.headers)
            except Exception as exc:  # noqa: BLE001  raised below, once the rest of the batch has been tried
                failures.append(exc)
        if failures:
            raise failures[0]

    async def publish_raw(self, body: bytes, *, exchange: str, routing_key: str = "", headers: dict[str, str] | None = None) -> None:
        """Publish already-encoded bytes (tests use it to send malformed messages)."""
        self._route(Payload(body=body), exchange=exchange, routing_key=routing_key, headers=headers)

    def _route(self, payload: Payload, *, exchange: str, routing_key: str, headers: dict[str, str] | None) -> None:
        if not self._started:
            raise RuntimeError("bus not started")
        if exchange not in EXCHANGES:
            raise ValueError(f"unknown exchange {exchange!r}")
        started = time.perf_counter()
        targets = self._routes(exchange, routing_key)
        if not targets and exchange not in OPTIONAL_ROUTE_EXCHANGES:
            raise Unroutable(f"no queue is bound to {exchange} with key {routing_key!r}")
        for q in targets:
            q.ready.append(RawMessage(headers=dict(headers or {}), exchange=exchange, routing_key=routing_key, payload=payload))
            q.poke()
        publish_latency_seconds.labels(exchange=exchange).observe(time.perf_counter() - started)

    async def consume(self, spec: QueueSpec, handler: Handler, *, prefetch: int | None = None, concurrency: int = 1) -> _Consumer:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        await self.declare_queue(spec)
        q = self._queues[spec.name]
        if spec.exclusive and q.consumers:
            raise RuntimeError(f"queue {spec.name} is exclusive and already has a consumer")
        consumer = _Consumer(self, q, handler, concurrency)
        q.consumers.append(consumer)
        return consumer

    async def queue_depth(self, name: str) -> int:
        q = self._queues.get(name)
        return 0 if q is None else len(q.ready)

    async def take_raw(self, name: str, limit: int = 1000) -> list[RawMessage]:
        """Remove and return up to `limit` ready messages of a queue without handling them (dead letters, tests)."""
        q = self._queues.get(name)
        if q is None:
            return []
        out = []
        while q.ready and len(out) < limit:
            out.append(q.ready.popleft())
        return out

    async def idle(self, timeout: float = 10.0) -> None:
        """Wait until no queue with a consumer has a ready or in-flight message (for tests and replays)."""
        deadline = time.monotonic() + timeout
        while True:
            busy = [q.spec.name for q in self._queues.values() if q.consumers and (q.ready or q.in_flight)]
            if not busy:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"bus still busy after {timeout}s: {busy}")
            await asyncio.sleep(0.002)

    # --- acknowledgement outcomes -------------------------------------------------------------------------

    def _requeue(self, q: _Queue, raw: RawMessage, *, reason: str) -> None:
        raw.delivery_count += 1
        if raw.delivery_count >= q.delivery_limit:
            self._dead_letter(q, raw, reason=f"delivery limit {q.delivery_limit} reached; last error: {reason}")
            return
        raw.not_before = time.monotonic() + self.redelivery_delay_s * 2 ** (raw.delivery_count - 1)
        q.ready.append(raw)
        q.poke()

    def _dead_letter(self, q: _Queue, raw: RawMessage, *, reason: str) -> None:
        log.warning("message dead-lettered", queue=q.spec.name, reason=reason, type=raw.headers.get(TYPE_HEADER))
        dead_letters_total.labels(queue=q.spec.name, reason="invalid" if reason.startswith("invalid") else "delivery_limit").inc()
        if q.spec.name == DEAD_LETTER_QUEUE.name:
            return
        headers = {
            **raw.headers,
            DEATH_REASON_HEADER: reason[:500],
            ORIGINAL_QUEUE_HEADER: q.spec.name,
            ORIGINAL_ROUTING_KEY_HEADER: raw.routing_key,
            DELIVERY_COUNT_HEADER: str(raw.delivery_count + (0 if reason.startswith("delivery limit") else 1)),
        }
        for target in self._routes(DEAD_LETTERS, ""):
            target.ready.append(RawMessage(headers=headers, exchange=DEAD_LETTERS, routing_key=raw.routing_key, payload=raw.payload))
            target.poke()

    def _detach(self, q: _Queue, consumer: _Consumer) -> None:
        if consumer in q.consumers:
            q.consumers.remove(consumer)
        if q.spec.exclusive and not q.consumers:
            self._queues.pop(q.spec.name, None)
            for bindings in self._bindings.values():
                bindings[:] = [(k, bq) for k, bq in bindings if bq is not q]
            self._route_cache.clear()
        q.poke()
