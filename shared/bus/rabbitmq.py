"""RabbitMQ back end of the bus (aio-pika): the semantics of shared/bus/base.py over a real broker.

Work queues are quorum queues (they count deliveries: `x-delivery-count`) with an explicit `x-delivery-limit`
(RabbitMQ 3.10 has no default) and `dead.letters` as their dead-letter exchange. The bus dead-letters by itself,
publishing the message to `dead.letters` with the reason in a header (RabbitMQ's own dead-lettering cannot add
one); the queue's delivery limit stays as the backstop for a consumer that crashes in a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq
from aio_pika import DeliveryMode
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustChannel, AbstractRobustConnection, AbstractRobustExchange
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError, ChannelNotFoundEntity, ChannelPreconditionFailed, DeliveryError, PublishError
from tenacity import AsyncRetrying, RetryError, retry_if_exception_type, stop_after_attempt, wait_exponential
from yarl import URL

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
    TransientError,
    Unroutable,
)
from shared.bus.memory import WORK_QUEUES, RawMessage
from shared.bus.topology import DEAD_LETTER_QUEUE, DEAD_LETTERS, EXCHANGES
from shared.logging import get_logger
from shared.messages import InvalidMessage, Message, decode
from shared.metrics import consume_latency_seconds, dead_letters_total, publish_latency_seconds, unknown_fields_total
from shared.telemetry import consume_span, mark_failed, publish_span

log = get_logger(__name__)

# A quorum queue writes its own `x-delivery-count` (an integer) on every delivery; it is read for Delivery.delivery_count
# and left out of the headers handed on (a dead letter carries our own count, base.DELIVERY_COUNT_HEADER).
_BROKER_COUNT_HEADER = "x-delivery-count"

_CONNECT_ERRORS = (OSError, AMQPError, asyncio.TimeoutError)
_PUBLISH_ERRORS = (AMQPError, ChannelInvalidStateError, ConnectionError, OSError, asyncio.TimeoutError)
_MAX_PREFETCH = 1000
_LOCAL_COUNTS_KEPT = 10_000


class PublishRejected(TransientError):
    """The broker refused a publish (basic.nack): it did not take the message."""


def redact(url: str) -> str:
    """The URL without its password, for logs and errors."""
    parsed = URL(url)
    return str(parsed.with_password("***")) if parsed.password else url


def _header_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value, default=str)
    return str(value)


def _text_headers(raw: Mapping[str, Any] | None) -> dict[str, str]:
    """Header values as text, as the in-memory bus carries them; the broker's own delivery counter is left out."""
    return {key: _header_text(value) for key, value in (raw or {}).items() if not _is_broker_count(key, value)}


def _is_broker_count(key: str, value: Any) -> bool:
    return key == _BROKER_COUNT_HEADER and isinstance(value, int) and not isinstance(value, bool)


def _raw_message(message: AbstractIncomingMessage) -> RawMessage:
    """A fetched message in the in-memory bus's shape; one that RabbitMQ dead-lettered itself gets our headers from x-death."""
    headers = _text_headers(message.headers)
    if ORIGINAL_QUEUE_HEADER not in headers and "x-first-death-queue" in headers:
        headers[ORIGINAL_QUEUE_HEADER] = headers["x-first-death-queue"]
        headers.setdefault(DEATH_REASON_HEADER, f"broker dead-lettered it: {headers.get('x-first-death-reason', 'unknown')}")
        deaths = (message.headers or {}).get("x-death") or []
        if deaths and isinstance(deaths[0], Mapping):
            keys = deaths[0].get("routing-keys") or []
            if keys:
                headers.setdefault(ORIGINAL_ROUTING_KEY_HEADER, _header_text(keys[0]))
    return RawMessage(body=message.body, headers=headers, exchange=message.exchange or "", routing_key=message.routing_key or "")


class RabbitConsumer:
    """One consumer on its own channel; runs the handler on up to `concurrency` messages at once (1: in order)."""

    def __init__(
        self, bus: RabbitBus, spec: QueueSpec, handler: Handler, channel: AbstractRobustChannel, delivery_limit: int,
        concurrency: int = 1,
    ) -> None:
        self.spec = spec
        self._bus = bus
        self._handler = handler
        self._channel = channel
        self._delivery_limit = delivery_limit
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        # Handlers running at once; its waiters are woken first in, first out, so with one slot the order is kept.
        self._concurrency = concurrency
        self._slots = asyncio.Semaphore(concurrency)
        self._pending: set[asyncio.Task] = set()  # deliveries received and not settled (running, waiting or backing off)
        self._backing_off: set[asyncio.Task] = set()  # failed deliveries waiting to be requeued
        self._stopping = False
        self._stopped = False
        # Failed deliveries counted here when the queue does not count them (classic queues: the exclusive ones).
        self._local_counts: OrderedDict[str, int] = OrderedDict()

    @property
    def pending(self) -> int:
        """Messages delivered to this consumer and not yet acked or handed back."""
        return len(self._pending)

    @property
    def active(self) -> bool:
        return not self._stopped

    async def _start(self, queue: AbstractQueue) -> None:
        self._queue = queue
        async with self._bus.bounded():
            self._consumer_tag = await queue.consume(
                self._on_message, exclusive=self.spec.exclusive, timeout=self._bus.op_timeout_s
            )

    async def cancel(self, timeout: float = 30.0) -> None:
        """Stop taking messages, let the handlers in progress finish, then close (graceful, basic.cancel).

        Messages buffered by prefetch and not started go back to the queue when the channel closes. Handlers that
        do not finish within `timeout` are stopped as by kill().
        """
        if self._stopping:
            return
        self._stopping = True
        if self._queue is not None and self._consumer_tag is not None:
            with contextlib.suppress(*_PUBLISH_ERRORS, RuntimeError):
                async with self._bus.bounded():
                    await self._queue.cancel(self._consumer_tag, timeout=self._bus.op_timeout_s)
        taken = 0
        try:
            # Waiting deliveries queue for a slot before us and return at once (they see _stopping); holding every
            # slot means no handler is running.
            async with asyncio.timeout(timeout):
                while taken < self._concurrency:
                    await self._slots.acquire()
                    taken += 1
        except TimeoutError:
            log.warning("consumer did not finish its messages in time; stopping them", queue=self.spec.name, timeout_s=timeout)
            await self._abort()
        finally:
            for _ in range(taken):
                self._slots.release()
        # Messages backing off before a requeue go back now: closing the channel returns them (counted, as a nack would).
        await self._abort(self._backing_off)
        await self._close_channel()

    async def kill(self) -> None:
        """Stop at once, as a crashed process would: the channel closes without acking, RabbitMQ requeues (redelivered)."""
        self._stopping = True
        await self._abort()
        await self._close_channel()

    async def _abort(self, tasks: set[asyncio.Task] | None = None) -> None:
        tasks = [t for t in (self._pending if tasks is None else tasks) if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _close_channel(self) -> None:
        self._stopped = True
        with contextlib.suppress(*_PUBLISH_ERRORS, RuntimeError):
            async with self._bus.bounded():
                await self._channel.close()
        self._bus._detach(self)

    # --- one delivery ----------------------------------------------------------------------------------------

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._pending.add(task)
        try:
            async with self._slots:
                if self._stopping:
                    return  # never started: it goes back to the queue when the channel closes
                retry_count = await self._deliver(message)
            if retry_count is not None:
                # Back off outside the lock: the next message is handled meanwhile, as on the in-memory bus.
                await self._requeue(message, retry_count)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001  nothing may escape into aio-pika's consumer task
            log.exception("consumer failed to settle a message", queue=self.spec.name)
        finally:
            if task is not None:
                self._pending.discard(task)

    def _count(self, message: AbstractIncomingMessage) -> tuple[int, str]:
        """This delivery's number (1 = first) and the key under which a classic queue's failures are counted here."""
        key = message.message_id or f"{message.routing_key}:{hash(message.body)}"
        broker = (message.headers or {}).get(_BROKER_COUNT_HEADER)
        if _is_broker_count(_BROKER_COUNT_HEADER, broker):
            return int(broker) + 1, key
        return self._local_counts.get(key, 0) + 1, key

    async def _deliver(self, message: AbstractIncomingMessage) -> int | None:
        """Handle one delivery; return its number when it is to be requeued (after a back-off), else settle it."""
        started = time.perf_counter()
        count, key = self._count(message)
        headers = _text_headers(message.headers)
        try:
            try:
                decoded, unknown = decode(headers.get(TYPE_HEADER, ""), message.body)
            except InvalidMessage as exc:
                await self._dead_letter(message, key, count=count, reason=f"invalid: {exc}")
                return None
            if unknown:
                unknown_fields_total.labels(type=type(decoded).type_name).inc(len(unknown))
            delivery = Delivery(
                message=decoded,
                exchange=message.exchange or "",
                routing_key=message.routing_key or "",
                headers=headers,
                redelivered=bool(message.redelivered) or count > 1,
                delivery_count=count,
                unknown_fields=tuple(unknown),
            )
            # The handler runs inside a CONSUMER span continuing the publisher's trace (W3C context in the headers).
            with consume_span(
                queue=self.spec.name, headers=headers, message_type=type(decoded).type_name, system="rabbitmq", delivery_count=count
            ) as span:
                try:
                    await self._handler(decoded, delivery)
                except InvalidMessage as exc:
                    mark_failed(span, exc, "dead_lettered")
                    await self._dead_letter(message, key, count=count, reason=f"invalid: {exc}")
                    return None
                except Exception as exc:  # noqa: BLE001  any other failure is retried, bounded by the delivery limit
                    error = f"{type(exc).__name__}: {exc}"
                    log.warning("handler failed", queue=self.spec.name, error=repr(exc), delivery=count, limit=self._delivery_limit)
                    if count >= self._delivery_limit:
                        mark_failed(span, exc, "dead_lettered")
                        await self._dead_letter(message, key, count=count, reason=f"delivery limit {self._delivery_limit} reached; last error: {error}")
                        return None
                    mark_failed(span, exc, "requeued")
                    self._local_counts[key] = count
                    self._local_counts.move_to_end(key)
                    while len(self._local_counts) > _LOCAL_COUNTS_KEPT:
                        self._local_counts.popitem(last=False)
                    return count
            await self._settle(message.ack, "ack")
            self._local_counts.pop(key, None)
            return None
        finally:
            consume_latency_seconds.labels(queue=self.spec.name).observe(time.perf_counter() - started)

    async def _requeue(self, message: AbstractIncomingMessage, count: int) -> None:
        """Back off a little (a transient failure is not hammered), then hand the message back; the queue counts it."""
        self._backing_off.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await asyncio.sleep(min(self._bus.redelivery_delay_s * 2 ** (count - 1), self._bus.max_redelivery_delay_s))
        finally:
            self._backing_off.discard(asyncio.current_task())  # type: ignore[arg-type]
        await self._settle(lambda: message.nack(requeue=True), "nack")

    async def _dead_letter(self, message: AbstractIncomingMessage, key: str, *, count: int, reason: str) -> None:
        """Publish the message to dead.letters with the reason (confirmed), then ack the original."""
        queue = self.spec.name
        log.warning("message dead-lettered", queue=queue, reason=reason, type=_header_text((message.headers or {}).get(TYPE_HEADER, "")))
        if queue != DEAD_LETTER_QUEUE.name:  # a dead letter that fails again is dropped, as on the in-memory bus
            headers = {
                **{k: v for k, v in (message.headers or {}).items() if not _is_broker_count(k, v)},
                DEATH_REASON_HEADER: reason[:500],
                ORIGINAL_QUEUE_HEADER: queue,
                ORIGINAL_ROUTING_KEY_HEADER: message.routing_key or "",
                DELIVERY_COUNT_HEADER: str(count),
            }
            try:
                await self._bus._send(
                    message.body, exchange=DEAD_LETTERS, routing_key=message.routing_key or "", headers=headers,
                    message_id=message.message_id, type_name=message.type,
                )
            except Exception as exc:  # noqa: BLE001  never lose it: hand it back to its queue instead
                log.error("dead-letter publish failed; message returned to its queue", queue=queue, error=repr(exc))
                await self._settle(lambda: message.nack(requeue=True), "nack")
                return
        dead_letters_total.labels(queue=queue, reason="invalid" if reason.startswith("invalid") else "delivery_limit").inc()
        await self._settle(message.ack, "ack")
        self._local_counts.pop(key, None)

    async def _settle(self, action: Callable[[], Any], what: str) -> None:
        try:
            await action()
        except Exception as exc:  # noqa: BLE001  a closed channel: the broker has requeued the message already
            log.warning("could not settle a message; the broker delivers it again", action=what, queue=self.spec.name, error=repr(exc))


class RabbitBus:
    """The Bus protocol over RabbitMQ: durable exchanges, quorum work queues, confirmed persistent publishes."""

    def __init__(
        self,
        url: str,
        *,
        delivery_limit: int = 5,
        prefetch: int = 32,
        connect_attempts: int = 10,
        connect_timeout_s: float = 5.0,
        op_timeout_s: float = 10.0,
        publish_timeout_s: float = 10.0,
        redelivery_delay_s: float = 0.05,
        max_redelivery_delay_s: float = 2.0,
        connection_name: str = "scalper",
    ) -> None:
        if delivery_limit < 1:
            raise ValueError("delivery_limit must be at least 1")
        self.url = url
        self.delivery_limit = delivery_limit
        self.prefetch = max(1, min(prefetch, _MAX_PREFETCH))
        self.connect_attempts = connect_attempts
        self.connect_timeout_s = connect_timeout_s
        self.op_timeout_s = op_timeout_s
        self.publish_timeout_s = publish_timeout_s
        self.redelivery_delay_s = redelivery_delay_s
        self.max_redelivery_delay_s = max_redelivery_delay_s
        self.connection_name = connection_name
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None  # publishes (confirms) and declares
        self._exchanges: dict[str, AbstractRobustExchange] = {}
        self._declared: dict[str, QueueSpec] = {}
        self._consumers: list[RabbitConsumer] = []
        self._publishing_ids: dict[str, tuple[asyncio.Lock, int]] = {}
        self._started = False

    # --- life cycle ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        self._connection = await self._connect()
        try:
            async with self.bounded(1 + len(EXCHANGES)):
                self._channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
                for name, kind in EXCHANGES.items():
                    self._exchanges[name] = await self._channel.declare_exchange(
                        name, aio_pika.ExchangeType(kind), durable=True, timeout=self.op_timeout_s
                    )
            self._started = True
            for spec in WORK_QUEUES:
                await self.declare_queue(spec)
        except BaseException:
            self._started = False
            with contextlib.suppress(Exception):
                await self._connection.close()
            self._connection = None
            raise

    async def _connect(self) -> AbstractRobustConnection:
        """connect_robust with a bounded start-up retry; afterwards aio-pika reconnects by itself."""
        where = redact(self.url)

        def before_sleep(state) -> None:
            log.warning("RabbitMQ not reachable yet", url=where, attempt=state.attempt_number, error=repr(state.outcome.exception()))

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.connect_attempts),
            wait=wait_exponential(multiplier=0.25, min=0.25, max=5),
            retry=retry_if_exception_type(_CONNECT_ERRORS),
            before_sleep=before_sleep,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await aio_pika.connect_robust(
                        self.url, timeout=self.connect_timeout_s, client_properties={"connection_name": self.connection_name}
                    )
        except RetryError as exc:
            last = exc.last_attempt.exception()
            detail = repr(last)
            password = URL(self.url).password
            if password:
                detail = detail.replace(password, "***")
            raise ConnectionError(f"RabbitMQ not reachable at {where} after {self.connect_attempts} attempts: {detail}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def cancel_consumers(self) -> None:
        """Cancel every consumer of this bus gracefully (close() starts with this)."""
        for consumer in list(self._consumers):
            await consumer.cancel()

    async def close(self) -> None:
        await self.cancel_consumers()
        self._started = False
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
        self._connection = None
        self._channel = None
        self._exchanges.clear()
        self._declared.clear()

    async def healthy(self) -> bool:
        return (
            self._started
            and self._connection is not None
            and not self._connection.is_closed
            and self._channel is not None
            and not self._channel.is_closed
        )

    def _require_started(self) -> AbstractRobustConnection:
        if not self._started or self._connection is None:
            raise RuntimeError("bus not started")
        return self._connection

    @property
    def declared_queues(self) -> frozenset[str]:
        """Names of the queues this bus declared (tests delete theirs afterwards)."""
        return frozenset(self._declared)

    def bounded(self, operations: int = 1) -> asyncio.Timeout:
        """A deadline for broker operations: a robust connection that is reconnecting would otherwise wait forever."""
        return asyncio.timeout(self.op_timeout_s * operations)

    @contextlib.asynccontextmanager
    async def _scratch_channel(self) -> AsyncIterator[AbstractRobustChannel]:
        """A short-lived channel for operations that may fail at channel level (404, 406) without harming others."""
        connection = self._require_started()
        async with self.bounded():
            channel = await connection.channel(publisher_confirms=False)
        try:
            yield channel
        finally:
            with contextlib.suppress(Exception):
                async with self.bounded():
                    await channel.close()

    # --- queues ----------------------------------------------------------------------------------------------

    def _limit(self, spec: QueueSpec) -> int:
        return spec.delivery_limit or self.delivery_limit

    def queue_arguments(self, spec: QueueSpec) -> dict[str, Any]:
        """Quorum for work queues (durable, counted deliveries, explicit limit, DLX); classic for exclusive ones."""
        if spec.exclusive:
            return {}  # quorum queues cannot be exclusive: a classic, exclusive, auto-delete queue
        args: dict[str, Any] = {"x-queue-type": "quorum"}
        if spec.name == DEAD_LETTER_QUEUE.name:
            # No DLX and no delivery limit: over a limit without a DLX the broker would delete the last copy.
            return args
        args["x-delivery-limit"] = self._limit(spec)
        args["x-dead-letter-exchange"] = DEAD_LETTERS
        # At-least-once dead-lettering for the broker's backstop (at-most-once by default); it requires reject-publish.
        args["x-dead-letter-strategy"] = "at-least-once"
        args["x-overflow"] = "reject-publish"
        if spec.single_active_consumer:
            args["x-single-active-consumer"] = True
        return args

    async def _declare(self, channel: AbstractRobustChannel, spec: QueueSpec) -> AbstractQueue:
        try:
            return await self._declare_once(channel, spec)
        except TimeoutError as exc:
            raise TimeoutError(
                f"RabbitMQ did not answer the declaration of queue {spec.name} within {self.op_timeout_s:g} s a step. A broker "
                "out of open files stops answering declarations just so (each quorum queue holds several files): compare "
                "file_descriptors in `rabbitmq-diagnostics status` with its limit (docker-compose.yml sets 65536)"
            ) from exc

    async def _declare_once(self, channel: AbstractRobustChannel, spec: QueueSpec) -> AbstractQueue:
        for exchange, _ in spec.bindings:
            if exchange not in EXCHANGES:
                raise ValueError(f"queue {spec.name} binds to unknown exchange {exchange!r}")
        args = self.queue_arguments(spec)
        kwargs: dict[str, Any] = {
            "durable": not spec.exclusive, "exclusive": spec.exclusive, "auto_delete": spec.exclusive, "arguments": args,
        }
        passive = False
        if not spec.exclusive:
            # Probe first: a queue that exists with other arguments answers 406, which closes the channel it was asked on.
            async with self._scratch_channel() as probe:
                try:
                    async with self.bounded():
                        await probe.declare_queue(spec.name, robust=False, timeout=self.op_timeout_s, **kwargs)
                except ChannelPreconditionFailed as exc:
                    log.error(
                        "queue exists with other arguments; using it as it is (delete it to apply ours)",
                        queue=spec.name, wanted=args, error=str(exc),
                    )
                    passive = True
        async with self.bounded(1 + len(spec.bindings)):
            if passive:
                queue = await channel.declare_queue(spec.name, passive=True, timeout=self.op_timeout_s)
            else:
                queue = await channel.declare_queue(spec.name, timeout=self.op_timeout_s, **kwargs)
            for exchange, key in spec.bindings:
                await queue.bind(exchange, key, timeout=self.op_timeout_s)
        self._declared[spec.name] = spec
        return queue

    async def declare_queue(self, spec: QueueSpec) -> None:
        """Declare a queue and its bindings once (idempotent, like the in-memory bus); consume() declares its own."""
        self._require_started()
        if spec.name in self._declared:
            return
        assert self._channel is not None
        await self._declare(self._channel, spec)

    async def delete_queue(self, name: str) -> None:
        """Delete a queue and its messages (quorum queues refuse if-unused/if-empty, so neither is asked)."""
        async with self._scratch_channel() as channel:
            async with self.bounded():
                await channel.queue_delete(name, if_unused=False, if_empty=False, timeout=self.op_timeout_s)
        self._declared.pop(name, None)

    async def _ready_count(self, channel: AbstractRobustChannel, name: str) -> int:
        async with self.bounded():
            queue = await channel.declare_queue(name, passive=True, robust=False, timeout=self.op_timeout_s)
        result = queue.declaration_result  # type: ignore[attr-defined]
        return int(result.message_count or 0)

    async def queue_depth(self, name: str) -> int:
        """Messages ready in a queue (not counting those delivered and not yet acked); 0 for a queue that does not exist."""
        async with self._scratch_channel() as channel:
            try:
                return await self._ready_count(channel, name) or 0
            except ChannelNotFoundEntity:
                return 0

    async def take_raw(
        self, name: str, limit: int = 1000, *, select: Callable[[RawMessage], bool] | None = None, scan_limit: int = 10_000
    ) -> list[RawMessage]:
        """Remove and return up to `limit` ready messages of a queue without handling them (dead letters, tests).

        With `select`, only the messages it accepts are removed; the others (at most `scan_limit` looked at) go
        back to the queue (nack with requeue). Meant for dead.letters, which has no delivery limit: on a work queue
        each look counts as a delivery of those messages, and past the limit the broker dead-letters them.
        """
        out: list[RawMessage] = []
        kept: list[AbstractIncomingMessage] = []
        async with self._scratch_channel() as channel:
            try:
                async with self.bounded():
                    queue = await channel.declare_queue(name, passive=True, robust=False, timeout=self.op_timeout_s)
            except ChannelNotFoundEntity:
                return []
            try:
                while len(out) < limit and len(kept) < scan_limit:
                    message = await queue.get(no_ack=False, fail=False, timeout=self.op_timeout_s)
                    if message is None:
                        break
                    raw = _raw_message(message)
                    if select is None or select(raw):
                        await message.ack()
                        out.append(raw)
                    else:
                        kept.append(message)
            finally:
                for message in kept:
                    with contextlib.suppress(Exception):
                        await message.nack(requeue=True)
        return out

    # --- publishing ------------------------------------------------------------------------------------------

    async def publish(self, message: Message, *, exchange: str, routing_key: str = "", headers: dict[str, str] | None = None) -> None:
        carried = {TYPE_HEADER: message.type_name, **(headers or {})}
        # A PRODUCER span (a new trace when no span is active) whose W3C context travels in the headers.
        with publish_span(exchange=exchange, routing_key=routing_key, message_type=message.type_name, headers=carried, system="rabbitmq"):
            await self._send(
                message.encode(), exchange=exchange, routing_key=routing_key, headers=carried,
                message_id=str(message.message_id), type_name=message.type_name,
            )

    async def publish_many(self, batch: Sequence[Outgoing]) -> None:
        """Publish the batch with its confirms awaited together: one round trip to the broker, not one per message.

        The order holds: each publish takes the channel's lock (FIFO) before it first waits, in the order the tasks
        start, and the broker routes a channel's messages in the order they arrive.
        """
        outcomes = await asyncio.gather(
            *(self.publish(out.message, exchange=out.exchange, routing_key=out.routing_key, headers=out.headers) for out in batch),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def publish_raw(self, body: bytes, *, exchange: str, routing_key: str = "", headers: dict[str, str] | None = None) -> None:
        """Publish already-encoded bytes (tests use it to send malformed messages)."""
        await self._send(body, exchange=exchange, routing_key=routing_key, headers=dict(headers or {}))

    async def _send(
        self, body: bytes, *, exchange: str, routing_key: str, headers: Mapping[str, Any],
        message_id: str | None = None, type_name: str | None = None,
    ) -> None:
        """Publish persistently and wait for the broker's confirm; a returned message raises Unroutable."""
        self._require_started()
        if exchange not in EXCHANGES:
            raise ValueError(f"unknown exchange {exchange!r}")
        message_id = message_id or uuid.uuid4().hex
        amqp_message = aio_pika.Message(
            body,
            headers=dict(headers),
            content_type="application/json",
            delivery_mode=DeliveryMode.PERSISTENT,
            message_id=message_id,
            type=type_name,
            timestamp=datetime.now(UTC),
        )
        mandatory = exchange not in OPTIONAL_ROUTE_EXCHANGES
        started = time.perf_counter()
        # aiormq matches a returned message to its publish by message_id: one publish per id in flight at a time.
        lock, users = self._publishing_ids.get(message_id, (asyncio.Lock(), 0))
        self._publishing_ids[message_id] = (lock, users + 1)
        try:
            async with lock:
                async with asyncio.timeout(self.publish_timeout_s):
                    result = await self._exchanges[exchange].publish(amqp_message, routing_key, mandatory=mandatory)
        except PublishError:
            raise Unroutable(f"no queue is bound to {exchange} with key {routing_key!r}") from None
        except DeliveryError as exc:
            raise PublishRejected(f"broker refused the publish to {exchange} with key {routing_key!r}: {exc}") from exc
        except _PUBLISH_ERRORS as exc:
            raise TransientError(
                f"publish to {exchange} with key {routing_key!r} failed ({exc!r}); outcome unknown, a retry may duplicate"
            ) from exc
        finally:
            lock, users = self._publishing_ids[message_id]
            if users <= 1:
                del self._publishing_ids[message_id]
            else:
                self._publishing_ids[message_id] = (lock, users - 1)
        if isinstance(result, aiormq.abc.DeliveredMessage):  # returned without on_return_raises
            raise Unroutable(f"no queue is bound to {exchange} with key {routing_key!r}")
        publish_latency_seconds.labels(exchange=exchange).observe(time.perf_counter() - started)

    # --- consuming -------------------------------------------------------------------------------------------

    async def consume(self, spec: QueueSpec, handler: Handler, *, prefetch: int | None = None, concurrency: int = 1) -> RabbitConsumer:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        connection = self._require_started()
        if spec.exclusive and any(c.spec.name == spec.name and c.active for c in self._consumers):
            raise RuntimeError(f"queue {spec.name} is exclusive and already has a consumer")
        async with self.bounded():
            channel = await connection.channel(publisher_confirms=False)
        try:
            async with self.bounded():
                # Never fewer buffered than handled at once, or the extra handlers would wait for nothing.
                count = max(concurrency, min(prefetch or self.prefetch, _MAX_PREFETCH))
                await channel.set_qos(prefetch_count=count, timeout=self.op_timeout_s)
            queue = await self._declare(channel, spec)
            consumer = RabbitConsumer(self, spec, handler, channel, self._limit(spec), concurrency)
            self._consumers.append(consumer)
            await consumer._start(queue)
        except BaseException:
            with contextlib.suppress(Exception):
                await channel.close()
            self._consumers = [c for c in self._consumers if c._channel is not channel]
            raise
        return consumer

    def _detach(self, consumer: RabbitConsumer) -> None:
        if consumer in self._consumers:
            self._consumers.remove(consumer)
        if consumer.spec.exclusive and not any(c.spec.name == consumer.spec.name for c in self._consumers):
            self._declared.pop(consumer.spec.name, None)  # auto-delete: gone with its consumer

    async def idle(self, timeout: float = 10.0) -> None:
        """Wait until no queue with a consumer here has a ready or unsettled message (best effort: for tests and replays)."""
        deadline = time.monotonic() + timeout
        quiet = 0
        while True:
            busy = sorted({c.spec.name for c in self._consumers if c.pending})
            for name in sorted({c.spec.name for c in self._consumers} - set(busy)):
                if await self.queue_depth(name):
                    busy.append(name)
            quiet = 0 if busy else quiet + 1
            if quiet >= 2:  # twice in a row: a message on its way to a consumer is not missed
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"bus still busy after {timeout}s: {busy}")
            await asyncio.sleep(0.01)


__all__ = ["PublishRejected", "RabbitBus", "RabbitConsumer", "redact"]
