"""Every metric a dashboard or an alert reads is exported by the embedded stack after an end-to-end run."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select

from scalper.embedded import create_app
from shared.db.models import Order
from tests.observability.conftest import REPLAY_MINUTES, drive
from tests.observability.promql import EVENT_ONLY, MT5_ONLY, PROMETHEUS_OWN, alert_rules, dashboard_queries, exported, family, metric_names

pytestmark = pytest.mark.slow


def test_the_metric_name_parser_reads_promql():
    expr = 'histogram_quantile(0.99, sum by (le, queue) (rate(bus_handler_latency_seconds_bucket{queue!="x"}[5m]))) > 1'
    assert metric_names(expr) == {"bus_handler_latency_seconds_bucket"}
    assert metric_names("sum(rate(a_total[5m])) / clamp_min(sum(rate(b_total{s=~\"r|f\"}[5m])), 1e-9) > 0.5") == {"a_total", "b_total"}
    assert metric_names("up == 0") == {"up"}


def test_the_dashboards_cover_what_issue_8_asks():
    names = {n for _, expr in dashboard_queries() for n in metric_names(expr)}
    for wanted in (
        "signals_ingested_total", "decisions_total", "orders_placed_total", "decision_ignored_total", "dead_letters_total",
        "bar_to_signal_latency_seconds_bucket", "signal_to_order_latency_seconds_bucket", "bus_publish_latency_seconds_bucket",
        "bus_handler_latency_seconds_bucket", "open_positions", "bot_daily_pnl", "bot_win_rate", "bot_equity",
        "kill_switch_trips_total", "bot_killed", "up", "bus_queue_depth", "strategy_errors_total",
    ):
        assert wanted in names, f"no dashboard shows {wanted}"
    assert any("histogram_quantile(0.5" in e for _, e in dashboard_queries())
    assert any("histogram_quantile(0.99" in e for _, e in dashboard_queries())


async def test_every_queried_metric_is_exported_after_a_replay(gold_stack):
    stack, clock = gold_stack

    async def filled() -> bool:
        async with stack.sessions() as session:
            return (await session.execute(select(Order).where(Order.status == "filled").limit(1))).first() is not None

    await drive(stack, clock, REPLAY_MINUTES, until=filled)
    assert await filled()
    await stack.sampler.sample_once()
    app = create_app(stack)  # its ops routes and HTTP instrumentation (the stack already runs: no lifespan here)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://embedded") as client:
        assert (await client.get("/docs")).status_code == 200  # "/" is the dashboard, mounted in the lifespan
        page = await client.get("/metrics")
    assert page.status_code == 200
    with_samples, declared = exported(page.text)

    missing = []
    for where, expr in dashboard_queries() + alert_rules():
        for name in metric_names(expr):
            if name in PROMETHEUS_OWN:
                continue
            if name in MT5_ONLY:
                from services.executor.brokers.mt5 import mt5_alerts_total

                assert name == f"{mt5_alerts_total._name}_total", name
                continue
            fam = family(name)
            if name in with_samples or (fam != name and f"{fam}_bucket" in with_samples):
                continue
            if fam in EVENT_ONLY and (name in declared or fam in declared):
                continue
            missing.append(f"{where}: {name}")
    assert not missing, "queried but not exported:\n" + "\n".join(missing)
