"""Traces (OpenTelemetry) and the periodic gauges: the W3C trace context across the bus, the OTLP exporter, and a
sampler for queue depth, broker connection and the per-bot trading gauges.

One trace per bar window: market data publishes a BarWindow with no span active, so the bus starts a root PRODUCER
span; every consumer extracts the context from the message headers and runs its handler inside a CONSUMER span, and
whatever the handler publishes carries that span on (Signal -> OrderIntent -> ExecutionReport).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from shared.logging import get_logger

log = get_logger(__name__)

TRACER_NAME = "scalper.bus"
_tracer = trace.get_tracer(TRACER_NAME)
_configured_endpoint: str | None = None


def _sdk_provider():
    """The global TracerProvider when it is an SDK one (None while the API's no-op proxy stands)."""
    from opentelemetry.sdk.trace import TracerProvider

    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    return None


def ensure_tracer_provider(service_name: str = "scalper"):
    """Install an SDK TracerProvider as the global one (once per process) and return it.

    The OpenTelemetry API lets a process set its global provider only once, so every later call returns the same one.
    """
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    provider = _sdk_provider()
    if provider is not None:
        return provider
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    trace.set_tracer_provider(provider)
    return _sdk_provider() or provider


def configure_telemetry(settings: Any, *, service_name: str) -> None:
    """Composition roots call this once: traces are recorded, and exported over OTLP/HTTP when SCALPER_OTLP_ENDPOINT is set.

    The endpoint is the collector's base URL (`http://otel-collector:4318`) or its full traces URL (`.../v1/traces`).
    Unset: spans still propagate across the bus (trace ids in the logs), nothing leaves the process.
    """
    global _configured_endpoint
    provider = ensure_tracer_provider(service_name)
    endpoint = getattr(settings, "otlp_endpoint", None)
    if not endpoint or endpoint == _configured_endpoint:
        return
    processor = otlp_processor(endpoint)
    provider.add_span_processor(processor)
    _configured_endpoint = endpoint
    log.info("traces exported over OTLP", endpoint=endpoint, service=service_name)


def otlp_processor(endpoint: str):
    """A batching span processor that sends to an OTLP/HTTP collector (`http://host:4318` or its `/v1/traces` URL)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    url = endpoint.rstrip("/")
    if not url.endswith("/v1/traces"):
        url += "/v1/traces"
    return BatchSpanProcessor(OTLPSpanExporter(endpoint=url, timeout=5))


# --- the trace context in message headers -------------------------------------------------------------------


@contextlib.contextmanager
def publish_span(*, exchange: str, routing_key: str, message_type: str, headers: dict[str, str], system: str) -> Iterator[Span]:
    """A PRODUCER span around one publish (a root span when none is active); its context is written into `headers`.

    A caller that passes a `traceparent` of its own (a relay, a replayed message) keeps it: the span continues that
    context and the headers go out unchanged.
    """
    supplied = "traceparent" in headers
    with _tracer.start_as_current_span(
        f"{exchange} publish",
        context=propagate.extract(headers) if supplied else None,
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": system,
            "messaging.operation": "publish",
            "messaging.destination.name": exchange,
            "messaging.rabbitmq.destination.routing_key": routing_key,
            "scalper.message_type": message_type,
        },
    ) as span:
        if not supplied:
            propagate.inject(headers)
        yield span


@contextlib.contextmanager
def consume_span(*, queue: str, headers: Mapping[str, str], message_type: str, system: str, delivery_count: int = 1) -> Iterator[Span]:
    """A CONSUMER span for one delivery, child of the publisher's context carried in `headers`; current while it is open."""
    parent = propagate.extract(dict(headers))
    token = otel_context.attach(parent)
    try:
        with _tracer.start_as_current_span(
            f"{queue} process",
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": system,
                "messaging.operation": "process",
                "messaging.destination.name": queue,
                "messaging.rabbitmq.delivery_count": delivery_count,
                "scalper.message_type": message_type,
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            yield span
    finally:
        otel_context.detach(token)


def mark_failed(span: Span, exc: BaseException, outcome: str) -> None:
    """Record a handler's failure on its span (`outcome`: requeued or dead-lettered)."""
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:200]))
    span.set_attribute("scalper.outcome", outcome)


def current_trace_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) in hex of the active span, or None (logs carry them)."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


# --- periodic gauges ------------------------------------------------------------------------------------------


class MetricsSampler:
    """Every `interval_s`, set the gauges no handler updates by itself: queue depth of the work queues, the broker
    connection, and per bot (from the tables) open positions, realised P&L of the day, win rate, equity and status.

    The queue depths come from the bus's `queue_depth`; on RabbitMQ that is broker-wide, so any one process may sample.
    """

    def __init__(
        self,
        *,
        bus: Any = None,
        queues: Callable[[], Sequence[str]] | Sequence[str] = (),
        sessions: Any = None,
        clock: Any = None,
        broker_healthy: Callable[[], Awaitable[bool]] | None = None,
        interval_s: float = 5.0,
    ) -> None:
        self._bus = bus
        self._queues = queues
        self._sessions = sessions
        self._clock = clock
        self._broker_healthy = broker_healthy
        self.interval_s = interval_s
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None:
            _prime_series(self._queues() if callable(self._queues) else self._queues)
            self._task = asyncio.create_task(self._run(), name="metrics-sampler")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            try:
                await self.sample_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001  a gauge left stale for one cycle is better than a dead sampler
                log.warning("metrics sample failed", error=repr(exc))
            await asyncio.sleep(self.interval_s)

    async def sample_once(self) -> None:
        from shared import metrics

        if self._bus is not None:
            names = self._queues() if callable(self._queues) else self._queues
            for name in names:
                metrics.queue_depth.labels(queue=name).set(await self._bus.queue_depth(name))
        if self._broker_healthy is not None:
            try:
                async with asyncio.timeout(5):
                    ok = bool(await self._broker_healthy())
            except Exception:  # noqa: BLE001  a broker that does not answer is a disconnected broker
                ok = False
            metrics.broker_connected.set(1 if ok else 0)
        if self._sessions is not None:
            await self._sample_bots()

    async def _sample_bots(self) -> None:
        from sqlalchemy import func, select

        from shared import metrics
        from shared.db.models import AccountSnapshotRow, Bot, Position

        now: datetime = self._clock.now() if self._clock is not None else datetime.now().astimezone()
        day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        async with self._sessions() as session:
            bots = list((await session.execute(select(Bot).where(Bot.deleted_at.is_(None)))).scalars())
            open_rows = (await session.execute(
                select(Position.bot_id, func.count()).where(Position.status == "open").group_by(Position.bot_id)
            )).all()
            closed = (await session.execute(
                select(Position.bot_id, Position.pnl, Position.closed_at).where(Position.status == "closed")
            )).all()
            equity: dict[int, float] = {}
            for account_id in {b.account_id for b in bots}:
                row = (await session.execute(
                    select(AccountSnapshotRow.equity).where(AccountSnapshotRow.account_id == account_id)
                    .order_by(AccountSnapshotRow.taken_at.desc()).limit(1)
                )).scalar_one_or_none()
                if row is not None:
                    equity[account_id] = float(row)
        open_by_bot = {bot_id: n for bot_id, n in open_rows}
        for bot in bots:
            label = str(bot.id)
            mine = [(pnl or 0.0, at) for bot_id, pnl, at in closed if bot_id == bot.id]
            today = [pnl for pnl, at in mine if at is not None and _aware(at) >= day_start]
            metrics.open_positions.labels(bot_id=label).set(open_by_bot.get(bot.id, 0))
            metrics.bot_daily_pnl.labels(bot_id=label).set(sum(today))
            metrics.bot_trades_closed.labels(bot_id=label).set(len(mine))
            metrics.bot_win_rate.labels(bot_id=label).set(sum(1 for pnl, _ in mine if pnl > 0) / len(mine) if mine else 0.0)
            metrics.bot_killed.labels(bot_id=label).set(1 if bot.status == "killed" else 0)
            if bot.account_id in equity:
                metrics.bot_equity.labels(bot_id=label, account_id=str(bot.account_id)).set(equity[bot.account_id])


def _prime_series(queues: Sequence[str]) -> None:
    from shared import metrics

    try:
        from shared.strategies import catalog

        strategies = catalog.names(None)
    except Exception:  # noqa: BLE001  no catalog: strategy errors appear with the first one
        strategies = []
    metrics.prime(queues=list(queues), strategies=strategies)


def _aware(at: datetime) -> datetime:
    from datetime import UTC

    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


__all__ = [
    "MetricsSampler",
    "configure_telemetry",
    "consume_span",
    "current_trace_ids",
    "ensure_tracer_provider",
    "mark_failed",
    "publish_span",
]
