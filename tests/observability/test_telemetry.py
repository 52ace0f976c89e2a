"""The OTLP exporter (SCALPER_OTLP_ENDPOINT), the periodic gauges, and JSON logs by default in distributed mode."""

from __future__ import annotations

import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import REGISTRY
from sqlalchemy import func, select
from typer.testing import CliRunner

from shared.bus import topology
from shared.db.models import Order, Position
from shared.settings import Settings
from shared.telemetry import configure_telemetry, ensure_tracer_provider, otlp_processor
from tests.observability.conftest import REPLAY_MINUTES, drive


def test_spans_reach_an_otlp_http_collector():
    received: list[tuple[str, bytes]] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802  (http.server's name)
            received.append((self.path, self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    provider = TracerProvider()  # not the global one: nothing else in the test run exports here
    processor = otlp_processor(f"http://127.0.0.1:{server.server_port}")
    provider.add_span_processor(processor)
    try:
        with provider.get_tracer("test").start_as_current_span("market.bars publish"):
            pass
        assert provider.force_flush(10_000)
    finally:
        provider.shutdown()
        server.shutdown()
    assert received and received[0][0] == "/v1/traces"
    assert b"market.bars publish" in received[0][1]
    assert isinstance(processor.span_exporter, OTLPSpanExporter)


def test_without_an_endpoint_nothing_is_exported():
    configure_telemetry(Settings(_env_file=None, otlp_endpoint=None), service_name="test")
    provider = ensure_tracer_provider()
    names = [type(p).__name__ for p in provider._active_span_processor._span_processors]
    assert "BatchSpanProcessor" not in names


def _value(name: str, **labels) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


@pytest.mark.slow
async def test_the_sampler_sets_queue_depth_positions_and_bot_gauges_from_the_tables(gold_stack):
    stack, clock = gold_stack

    async def closed() -> bool:
        async with stack.sessions() as session:
            return (await session.execute(select(func.count()).select_from(Position).where(Position.status == "closed"))).scalar_one() > 0

    await drive(stack, clock, REPLAY_MINUTES * 2, until=closed)
    assert await closed(), "no position closed in the replay slice"
    await stack.sampler.sample_once()
    async with stack.sessions() as session:
        positions = list((await session.execute(select(Position))).scalars())
        filled = (await session.execute(select(func.count()).select_from(Order).where(Order.status == "filled"))).scalar_one()
    bot = str(positions[0].bot_id)
    done = [p for p in positions if p.status == "closed"]
    assert _value("open_positions", bot_id=bot) == sum(1 for p in positions if p.status == "open")
    assert _value("bot_trades_closed", bot_id=bot) == len(done)
    assert _value("bot_win_rate", bot_id=bot) == pytest.approx(sum(1 for p in done if p.pnl > 0) / len(done))
    assert _value("bot_killed", bot_id=bot) == 0
    assert _value("broker_connected") == 1
    assert _value("bus_queue_depth", queue=topology.STRATEGY_BARS.name) == 0
    assert filled >= len(positions)

    # A message waiting in a queue shows in the gauge at the next sample.
    await stack.strategy.stop()
    clock.advance(timedelta(minutes=1))
    windows = await stack.market_data.scan_once()
    await stack.sampler.sample_once()
    assert _value("bus_queue_depth", queue=topology.STRATEGY_BARS.name) == len(windows) >= 1


def test_scalper_serve_logs_json_unless_told_otherwise(monkeypatch):
    import uvicorn

    import scalper.serve
    import shared.logging
    from scalper.cli import app

    formats = []
    monkeypatch.setattr(shared.logging, "configure_logging", lambda fmt, level: formats.append(fmt))
    monkeypatch.setattr(scalper.serve, "build_process", lambda name, settings, account_id=None: object())
    monkeypatch.setattr(scalper.serve, "create_service_app", lambda process: None)
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)
    monkeypatch.delenv("SCALPER_LOG_FORMAT", raising=False)
    runner = CliRunner()
    assert runner.invoke(app, ["serve", "strategy"]).exit_code == 0
    monkeypatch.setenv("SCALPER_LOG_FORMAT", "text")
    assert runner.invoke(app, ["serve", "strategy"]).exit_code == 0
    assert formats == ["json", "text"]


def test_text_logs_keep_the_scan_line_and_add_the_trace_ids_inside_a_span(capsys):
    import logging

    from opentelemetry import trace

    from shared.logging import configure_logging, get_logger

    line = "[ScalperTrade] bot=1 symbol=XAUUSDm strategies=4 signals=2 decisions=1 orders=1"
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("text", "INFO")
        with ensure_tracer_provider().get_tracer("test").start_as_current_span("decision.signals process") as span:
            get_logger("test.scanline").info(line, bot=1, symbol="XAUUSDm", strategies=4, signals=2, decisions=1, orders=1)
        get_logger("test.scanline").info("outside any span")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    inside, outside = capsys.readouterr().err.strip().splitlines()[-2:]
    assert line in inside and inside.count("orders=1") == 1
    assert f"trace_id={format(span.get_span_context().trace_id, '032x')}" in inside
    assert "trace_id" not in outside
    assert not trace.get_current_span().get_span_context().is_valid
