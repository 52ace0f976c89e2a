"""Fixtures for the observability tests: spans recorded in memory, and a replayed slice of gold through the embedded stack."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from scalper.embedded import EmbeddedStack
from services.market_data.feeds.replay import ReplayFeed
from shared.settings import Settings
from shared.telemetry import ensure_tracer_provider
from shared.timeutil import ManualClock

REPLAY_MINUTES = 600  # enough gold bars for a pin bar that fills (the e2e test finds about one per hundred bars)


@pytest.fixture
def spans():
    """Every span finished while the test runs (the SDK's InMemorySpanExporter on the process's provider)."""
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    ensure_tracer_provider().add_span_processor(processor)
    yield exporter
    exporter.clear()
    exporter.shutdown()  # the processor stays on the provider (the SDK cannot remove one); it now drops everything


def replay_settings(tmp_path: Path, gold_file: Path) -> Settings:
    # A scan interval far beyond the test: the test drives scan_once() itself on a manual clock.
    return Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'obs.db'}",
        bus_url="memory://",
        feed=f"replay:{gold_file}",
        scan_mode="interval",
        scan_interval_s=10**9,
        monitor_interval_s=3600,
        order_ttl_s=600,
    )


async def drive(stack: EmbeddedStack, clock: ManualClock, minutes: int, *, until=None) -> int:
    """Advance the manual clock a minute at a time, scanning and letting the bus settle; stop early when `until()` holds."""
    for n in range(1, minutes + 1):
        clock.advance(timedelta(minutes=1))
        await stack.market_data.scan_once()
        await stack.bus.idle(timeout=30)
        if until is not None and await until():
            return n
    return minutes


@pytest.fixture
async def gold_stack(tmp_path, gold_file):
    feed = ReplayFeed(gold_file, "XAUUSD")
    clock = ManualClock(feed.start_time() + timedelta(seconds=1))
    stack = EmbeddedStack(replay_settings(tmp_path, gold_file), feed=feed, clock=clock)
    await stack.start()
    yield stack, clock
    await stack.stop()
