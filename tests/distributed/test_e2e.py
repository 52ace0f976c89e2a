"""End to end in distributed mode: every service its own OS process (`scalper serve`), two strategy workers, on the
machine's RabbitMQ (a vhost of this test) and PostgreSQL (a database of this test), replaying the real gold file on
a shared accelerated clock to the paper broker. Signals become orders exactly once, as in tests/e2e."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select

from services.market_data.feeds.replay import ReplayFeed
from shared.db.engine import create_engine, session_factory
from shared.db.models import Decision, Order, Position, SignalRow, User
from tests.distributed import cluster as kit

pytestmark = [pytest.mark.services, pytest.mark.slow]

SPEED = 600.0  # a bar every 0.1 s of wall time


async def _fetch(url: str, *models):
    engine = create_engine(url)
    try:
        async with session_factory(engine)() as session:
            return [list((await session.execute(select(m))).scalars()) for m in models]
    finally:
        await engine.dispose()


def rows(url: str, *models):
    return asyncio.run(_fetch(url, *models))


def scan_lines(proc: kit.ServiceProc) -> list[dict]:
    out = []
    for line in proc.log_path.read_text(errors="replace").splitlines():
        if "[ScalperTrade]" in line:
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"event": line})
    return out


def settled(url: str, *, quiet_s: float = 3.0, timeout: float = 60.0) -> None:
    """Wait until no order is in `sending` and the tables stop growing for `quiet_s`."""
    last, since = None, time.monotonic()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        signals, decisions, orders = rows(url, SignalRow, Decision, Order)
        now = (len(signals), len(decisions), len(orders), sum(o.status == "sending" for o in orders))
        if now != last:
            last, since = now, time.monotonic()
        elif now[3] == 0 and time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.5)
    raise AssertionError(f"pipeline still moving after {timeout}s: {last}")


def assert_exactly_once(url: str) -> tuple[list, list, list, list]:
    """The checks of tests/e2e: one signal per key, one decision per signal, one order per open decision, traceable."""
    signals, decisions, orders, positions = rows(url, SignalRow, Decision, Order, Position)
    keys = Counter((s.bot_id, s.symbol, s.strategy, s.timeframe, s.bar_time) for s in signals)
    assert not keys or max(keys.values()) == 1
    assert sorted(d.signal_id for d in decisions) == sorted(s.signal_id for s in signals)
    opened = [d for d in decisions if d.action == "open"]
    by_decision = Counter(o.decision_id for o in orders)
    assert sorted(by_decision) == sorted(d.id for d in opened)
    assert not by_decision or max(by_decision.values()) == 1
    signal_of = {d.id: d.signal_id for d in decisions}
    client_of = {d.id: d.client_order_id for d in opened}
    assert all(o.signal_id == signal_of[o.decision_id] and o.client_order_id == client_of[o.decision_id] for o in orders)
    filled = [o for o in orders if o.status == "filled"]
    assert Counter(p.client_order_id for p in positions) == Counter(o.client_order_id for o in filled)
    return signals, decisions, orders, positions


def replay_env(*, vhost: str, pg_url: str, replay, speed: float = SPEED, anchor_delay_s: float = 12.0, **extra) -> dict[str, str]:
    feed = ReplayFeed(replay, "XAUUSD")
    return kit.base_env(
        bus_url=kit.amqp_url(vhost),
        database_url=pg_url,
        feed=f"replay:{replay}",
        clock_start=feed.start_time(),
        speed=speed,
        anchor_delay_s=anchor_delay_s,
        # Sim-time settings: an order lives 10 min, the plan is refreshed every sim minute, the monitor every 5.
        ORDER_TTL_S=600,
        SCAN_INTERVAL_S=60,
        MONITOR_INTERVAL_S=300,
        **extra,
    ), feed


def test_replay_through_separate_processes_orders_exactly_once(vhost, pg_url, short_gold, make_cluster):
    md_port, strategy_port = kit.free_port(), kit.free_port()
    env, feed = replay_env(
        vhost=vhost, pg_url=pg_url, replay=short_gold,
        MARKET_DATA_URL=f"http://127.0.0.1:{md_port}", STRATEGY_URL=f"http://127.0.0.1:{strategy_port}",
    )
    cluster = make_cluster(env)
    key = kit.first_run(pg_url)  # no demo user in distributed mode: the operator's first-run steps
    decision = cluster.start("decision")
    executor = cluster.start("executor")
    workers = [cluster.start("strategy", port=strategy_port), cluster.start("strategy")]
    market_data = cluster.start("market_data", port=md_port)

    # The replay runs until the file ends; then the pipeline drains.
    clock_end = feed.ends_at() + timedelta(minutes=2)
    anchor = env["SCALPER_CLOCK_ANCHOR"]
    from datetime import datetime

    wall_end = datetime.fromisoformat(anchor).timestamp() + (clock_end - feed.start_time()).total_seconds() / SPEED
    while time.time() < wall_end:
        assert all(p.alive() for p in cluster.procs), cluster.logs()
        time.sleep(1)
    settled(pg_url, timeout=180)

    signals, decisions, orders, positions = assert_exactly_once(pg_url)
    assert len(signals) >= 3, f"only {len(signals)} signals over 300 bars\n{cluster.logs()}"
    assert [d for d in decisions if d.action == "open"], "no decision opened a trade"
    assert [o for o in orders if o.status == "filled"], f"no order filled: {Counter(o.status for o in orders)}"
    # Both strategy workers took windows from strategy.bars.
    handled = [w.metric("bus_handler_latency_seconds_count", queue="strategy.bars") for w in workers]
    assert all(n > 0 for n in handled), handled
    published = market_data.metric("bar_windows_published_total")
    assert sum(handled) == published, (handled, published)
    # Every window's scan line was written once, by one of the two decision processes: at info for a window whose scan
    # found a signal, at debug (below the processes' level, so counted by scan_lines_total) for the others.
    lines = scan_lines(decision)
    assert len(lines) == len({(s.window_id, s.bot_id) for s in signals})
    assert all(" signals=0 " not in line["event"] for line in lines)
    assert decision.metric("scan_lines_total") == published  # one bot: one line per window, quiet or not
    # The public API of the decision process forwards to market data and strategy (behind the API key), with the
    # service token: their own routes, and the executor's, refuse a call without it.
    assert "Demo user created" not in decision.log(1_000_000)
    (people,) = rows(pg_url, User)
    assert [u.name for u in people] == ["trader"], "scalper serve makes no demo user"
    for proc, path in ((market_data, "/api/v1/symbols"), (workers[0], "/api/v1/strategies"), (executor, "/internal/executor/positions")):
        assert proc.get(path).status_code == 401, path
        token = httpx.get(f"{proc.url}{path}", headers={"X-Service-Token": env["SCALPER_SERVICE_TOKEN"]}, timeout=10)
        assert token.status_code == 200, (path, token.text)
    assert httpx.get(f"{decision.url}/api/v1/symbols", timeout=10).status_code == 401
    symbols = httpx.get(f"{decision.url}/api/v1/symbols", headers={"X-API-Key": key}, timeout=10)
    assert symbols.status_code == 200 and "XAUUSD" in symbols.text
    bars = httpx.get(f"{decision.url}/api/v1/bars/XAUUSD", params={"count": 5}, headers={"X-API-Key": key}, timeout=10)
    assert bars.status_code == 200 and bars.json()["count"] == 5, bars.text
    strategies = httpx.get(f"{decision.url}/api/v1/strategies", headers={"X-API-Key": key}, timeout=10)
    assert strategies.status_code == 200 and "pinbar" in strategies.text
    assert httpx.get(f"{decision.url}/api/v1/bots", headers={"X-API-Key": key}, timeout=10).status_code == 200
    for proc in cluster.procs:
        assert proc.get("/healthz").json() == {"status": "ok"}
        assert "process_resident_memory_bytes" in proc.get("/metrics").text
