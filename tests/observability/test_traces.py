"""One trace per bar window: BarWindow -> Signal -> OrderIntent -> ExecutionReport under one trace id, on both buses.

The bus writes the W3C trace context into every message's headers at publish and runs each handler in a CONSUMER
span continuing it, so the chain is one trace however many processes it crosses.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from sqlalchemy import select

from shared.bus import topology
from shared.bus.base import QueueSpec
from shared.db.models import Order
from shared.logging import configure_logging, get_logger
from shared.messages import OrderIntent
from tests.bus.conftest import rabbit_bus
from tests.observability.conftest import REPLAY_MINUTES, drive

# A window's signals travel together in one ScanResult (schema 1.1), so that is the hop between window and order.
CHAIN = ("BarWindow", "ScanResult", "OrderIntent", "ExecutionReport")


def _by_trace(finished) -> dict[int, list]:
    out: dict[int, list] = {}
    for span in finished:
        out.setdefault(span.context.trace_id, []).append(span)
    return out


def _types(spans_, kind) -> set[str]:
    return {s.attributes.get("scalper.message_type") for s in spans_ if s.kind == kind}


@pytest.mark.slow
async def test_a_bar_window_its_signal_order_and_fill_share_one_trace(gold_stack, spans):
    stack, clock = gold_stack

    async def filled() -> bool:
        async with stack.sessions() as session:
            return (await session.execute(select(Order).where(Order.status == "filled").limit(1))).first() is not None

    await drive(stack, clock, REPLAY_MINUTES, until=filled)
    assert await filled(), f"no order filled within {REPLAY_MINUTES} replayed bars"

    traces = _by_trace(spans.get_finished_spans())
    full = [t for t in traces.values() if set(CHAIN) <= _types(t, SpanKind.CONSUMER)]
    assert full, "no trace holds the whole chain BarWindow -> ScanResult -> OrderIntent -> ExecutionReport"
    chain = full[0]
    # One root: the BarWindow's publish; every other span descends from it.
    roots = [s for s in chain if s.parent is None]
    assert len(roots) == 1 and roots[0].kind == SpanKind.PRODUCER
    assert roots[0].attributes["scalper.message_type"] == "BarWindow"
    ids = {s.context.span_id for s in chain}
    assert all(s.parent.span_id in ids for s in chain if s.parent is not None)
    # Each hop's consumer is the child of the publish that sent it, in order down the chain.
    by_id = {s.context.span_id: s for s in chain}
    intent = next(s for s in chain if s.kind == SpanKind.CONSUMER and s.attributes["scalper.message_type"] == "OrderIntent")
    path = []
    node = intent
    while node is not None:
        path.append((node.kind, node.attributes.get("scalper.message_type")))
        node = by_id.get(node.parent.span_id) if node.parent is not None else None
    assert path[::-1] == [
        (SpanKind.PRODUCER, "BarWindow"), (SpanKind.CONSUMER, "BarWindow"),
        (SpanKind.PRODUCER, "ScanResult"), (SpanKind.CONSUMER, "ScanResult"),
        (SpanKind.PRODUCER, "OrderIntent"), (SpanKind.CONSUMER, "OrderIntent"),
    ]
    # Windows that traded nothing are traces of their own: one trace per bar window, not one for the whole run.
    windows = [t for t in traces.values() if "BarWindow" in _types(t, SpanKind.PRODUCER)]
    assert len(windows) > 10
    assert all(len([s for s in t if s.parent is None]) == 1 for t in windows)


async def test_log_lines_inside_a_handler_carry_its_trace_ids(spans, capsys):
    from shared.bus.memory import InMemoryBus

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging("json", "INFO")
    bus = InMemoryBus()
    await bus.start()
    seen = asyncio.Event()

    async def handler(message, delivery) -> None:
        get_logger("test.traced").info("handled inside a span")
        seen.set()

    try:
        spec = QueueSpec(f"test.trace.{id(bus)}", bindings=((topology.EXECUTION_ORDERS, "77"),))
        await bus.consume(spec, handler)
        await bus.publish(_intent(), exchange=topology.EXECUTION_ORDERS, routing_key="77")
        await asyncio.wait_for(seen.wait(), 5)
        await bus.idle()
    finally:
        await bus.close()
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    import json

    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if "handled inside a span" in line]
    assert lines, "the handler's log line was not printed"
    consumer = next(s for s in spans.get_finished_spans() if s.kind == SpanKind.CONSUMER)
    assert lines[0]["trace_id"] == format(consumer.context.trace_id, "032x")
    assert lines[0]["span_id"] == format(consumer.context.span_id, "016x")
    assert not trace.get_current_span().get_span_context().is_valid  # nothing leaks out of the handler


def _intent(**kw) -> OrderIntent:
    from datetime import UTC, datetime, timedelta
    from uuid import uuid4

    fields = dict(
        client_order_id="t" + uuid4().hex[:20], decision_id=1, signal_id=uuid4(), bot_id=1, account_id=77, symbol="XAUUSD",
        side="buy", volume=0.01, sl=1.0, tp=3.0, deviation=20, magic=1, comment="t",
        expires_at=datetime.now(UTC) + timedelta(minutes=5),
    )
    fields.update(kw)
    return OrderIntent(**fields)


async def test_two_hops_over_rabbitmq_stay_in_one_trace(spans):
    """publish -> consume -> publish -> consume across RabbitBus: both consumers in the first publish's trace."""
    async for bus in rabbit_bus():
        suffix = id(spans)
        first = QueueSpec(f"test.trace.a.{suffix}", bindings=((topology.EXECUTION_ORDERS, f"9{suffix % 10**6}"),))
        second = QueueSpec(f"test.trace.b.{suffix}", bindings=((topology.EXECUTION_COMMANDS, f"9{suffix % 10**6}"),))
        done = asyncio.Event()

        async def hop(message, delivery) -> None:
            assert "traceparent" in delivery.headers
            await bus.publish(message, exchange=topology.EXECUTION_COMMANDS, routing_key=f"9{suffix % 10**6}")

        async def last(message, delivery) -> None:
            done.set()

        await bus.consume(first, hop)
        await bus.consume(second, last)
        await bus.publish(_intent(account_id=1), exchange=topology.EXECUTION_ORDERS, routing_key=f"9{suffix % 10**6}")
        await asyncio.wait_for(done.wait(), 20)
        await asyncio.sleep(0.05)  # the second consumer's span ends just after its handler returns

    finished = [s for s in spans.get_finished_spans() if s.attributes.get("messaging.system") == "rabbitmq"]
    consumers = [s for s in finished if s.kind == SpanKind.CONSUMER]
    producers = [s for s in finished if s.kind == SpanKind.PRODUCER]
    assert len(consumers) == 2 and len(producers) == 2
    assert len({s.context.trace_id for s in finished}) == 1
    root = next(s for s in producers if s.parent is None)
    hop_consumer = next(s for s in consumers if s.parent.span_id == root.context.span_id)
    second_publish = next(s for s in producers if s.parent is not None)
    assert second_publish.parent.span_id == hop_consumer.context.span_id
    assert any(s.parent.span_id == second_publish.context.span_id for s in consumers)
