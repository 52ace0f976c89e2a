"""Faults in distributed mode, each service its own OS process on RabbitMQ (a vhost of the test) and PostgreSQL
(a database of the test): a strategy worker killed mid-batch, the active executor killed (the standby takes over),
an invalid message and one that always fails (dead-lettered with the reason; the consumer lives on)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import timedelta

import pytest

from services.decision.plan import build_plan
from services.market_data.feeds.replay import ReplayFeed
from shared.bus import topology
from shared.bus.base import DEATH_REASON_HEADER
from shared.bus.rabbitmq import RabbitBus
from shared.db.engine import create_engine, session_factory
from shared.db.models import Order
from shared.messages import BarColumns, BarWindow, OrderIntent, Signal
from shared.strategies.catalog import lookback_for
from tests.distributed import cluster as kit
from tests.distributed.test_e2e import assert_exactly_once, rows, settled

pytestmark = [pytest.mark.services, pytest.mark.slow]


def env_for(vhost: str, pg_url: str, gold, **extra) -> tuple[dict[str, str], ReplayFeed]:
    """Real time from the gold file's start (speed 1): the test publishes the windows itself."""
    feed = ReplayFeed(gold, "XAUUSD")
    env = kit.base_env(
        bus_url=kit.amqp_url(vhost), database_url=pg_url, feed=f"replay:{gold}", clock_start=feed.start_time(), speed=1.0,
        ORDER_TTL_S=3600, SCAN_INTERVAL_S=3600, MONITOR_INTERVAL_S=3600, **extra,
    )
    return env, feed


async def _plan(pg_url: str):
    engine = create_engine(pg_url)
    try:
        async with session_factory(engine)() as session:
            return await build_plan(session=session, lookback_for=lookback_for, min_lookback=100)
    finally:
        await engine.dispose()


def windows(feed: ReplayFeed, plan, count: int) -> list[BarWindow]:
    """`count` consecutive M1 windows of the gold file for the plan's XAUUSD bots, as market data would publish."""
    entry = next(p for p in plan.symbols if p.symbol == "XAUUSD")
    out = []
    at = feed.start_time()
    for _ in range(count):
        bars = feed.closed_bars("XAUUSD", until=at, count=entry.lookback)
        out.append(
            BarWindow(
                symbol="XAUUSD", bars=BarColumns.from_bars(bars), closed_through=at, source="test", levels=None,
                subscriptions=entry.subscriptions,
            )
        )
        at += timedelta(minutes=1)
    return out


async def publish(vhost: str, messages: list[tuple[object, str, str]]) -> None:
    bus = RabbitBus(kit.amqp_url(vhost))
    await bus.start()
    try:
        for message, exchange, key in messages:
            await bus.publish(message, exchange=exchange, routing_key=key)
    finally:
        await bus.close()


async def dead_letters(vhost: str) -> list:
    bus = RabbitBus(kit.amqp_url(vhost))
    await bus.start()
    try:
        return await bus.take_raw(topology.DEAD_LETTER_QUEUE.name)
    finally:
        await bus.close()


async def publish_raw(vhost: str, body: bytes, *, exchange: str, key: str, headers: dict[str, str]) -> None:
    bus = RabbitBus(kit.amqp_url(vhost))
    await bus.start()
    try:
        await bus.declare_queue(topology.DEAD_LETTER_QUEUE)
        await bus.publish_raw(body, exchange=exchange, routing_key=key, headers=headers)
    finally:
        await bus.close()


def test_a_strategy_worker_killed_mid_batch_leaves_its_windows_to_the_other(vhost, pg_url, gold_file, make_cluster):
    env, feed = env_for(vhost, pg_url, gold_file, PREFETCH=16)
    cluster = make_cluster(env)
    kit.first_run(env["SCALPER_DATABASE_URL"])
    decision = cluster.start("decision")
    cluster.start("executor")
    doomed, survivor = cluster.start("strategy"), cluster.start("strategy")
    batch = windows(feed, asyncio.run(_plan(pg_url)), 600)

    async def publish_and_kill() -> None:
        bus = RabbitBus(kit.amqp_url(vhost))
        await bus.start()
        try:
            sender = asyncio.create_task(_publish_all(bus, batch))
            deadline = asyncio.get_running_loop().time() + 60
            while await asyncio.to_thread(doomed.metric, "bus_handler_latency_seconds_count", queue="strategy.bars") < 20:
                assert asyncio.get_running_loop().time() < deadline, "the first worker took no windows"
                await asyncio.sleep(0.05)
            doomed.kill()  # mid-batch: up to a prefetch of its windows were delivered and not acked
            await sender
        finally:
            await bus.close()

    asyncio.run(publish_and_kill())
    # quiet scans write their line at debug, below the process's level: scan_lines_total counts them all
    kit.eventually(lambda: decision.metric("scan_lines_total") >= len(batch), timeout=240, interval=1, what="every window's scan line")
    settled(pg_url, timeout=180)
    lines = decision.metric("scan_lines_total")
    assert lines == len(batch), f"{lines} scan lines for {len(batch)} windows"
    assert survivor.metric("bus_handler_latency_seconds_count", queue="strategy.bars") > 0
    signals, *_ = assert_exactly_once(pg_url)
    assert signals, "the batch should make signals"
    assert asyncio.run(dead_letters(vhost)) == []


async def _publish_all(bus: RabbitBus, batch: list[BarWindow]) -> None:
    for window in batch:
        await bus.publish(window, exchange=topology.MARKET_BARS, routing_key=topology.bars_key("1m", window.symbol))


def _intent(n: int, now, *, run: str) -> OrderIntent:
    client = f"t{run}-{n:04d}"
    return OrderIntent(
        client_order_id=client, decision_id=10_000 + n, signal_id=uuid.uuid4(), bot_id=1, account_id=1, symbol="XAUUSDm",
        side="buy" if n % 2 else "sell", volume=0.01, sl=None, tp=None, magic=1, comment=client, expires_at=now + timedelta(hours=1),
    )


def _orders(pg_url: str) -> list[Order]:
    return rows(pg_url, Order)[0]


def test_the_standby_executor_takes_over_when_the_active_one_dies(vhost, pg_url, gold_file, make_cluster):
    env, feed = env_for(vhost, pg_url, gold_file)
    cluster = make_cluster(env)
    kit.first_run(env["SCALPER_DATABASE_URL"])
    cluster.start("decision")
    active = cluster.start("executor", "--account-id", "1")
    standby = cluster.start("executor", "--account-id", "1")
    plan = asyncio.run(_plan(pg_url))
    price = windows(feed, plan, 1)  # the paper brokers' price
    run = uuid.uuid4().hex[:6]
    now = feed.start_time()
    first = [_intent(n, now, run=run) for n in range(10)]
    bars_key = topology.bars_key("1m", "XAUUSD")
    asyncio.run(publish(vhost, [(price[0], topology.MARKET_BARS, bars_key)] + [(i, topology.EXECUTION_ORDERS, "1") for i in first]))
    kit.eventually(lambda: sum(o.status == "filled" for o in _orders(pg_url)) == 10, timeout=30, what="10 fills by the active executor")
    assert active.metric("orders_placed_total") >= 10 and standby.metric("orders_placed_total") == 0

    active.kill()
    second = [_intent(n, now, run=run) for n in range(10, 20)]
    again = first[3:5]  # redelivered intents must not be sent twice
    asyncio.run(publish(vhost, [(i, topology.EXECUTION_ORDERS, "1") for i in second + again]))
    kit.eventually(lambda: sum(o.status == "filled" for o in _orders(pg_url)) == 20, timeout=60, what="20 fills")
    orders = _orders(pg_url)
    assert len(orders) == 20 and max(Counter(o.client_order_id for o in orders).values()) == 1
    assert standby.metric("orders_placed_total") == 10
    assert "executor leads its accounts" in standby.log(100_000)
    assert standby.get("/readyz").json()["leader"] is True


def test_invalid_and_always_failing_messages_are_dead_lettered_and_consumers_live_on(vhost, pg_url, gold_file, make_cluster):
    env, feed = env_for(vhost, pg_url, gold_file)  # the default delivery limit: 5
    cluster = make_cluster(env)
    kit.first_run(env["SCALPER_DATABASE_URL"])
    decision = cluster.start("decision")
    cluster.start("executor")
    worker = cluster.start("strategy")
    plan = asyncio.run(_plan(pg_url))

    # Not JSON at all: dead-lettered at once, with the reason.
    asyncio.run(publish_raw(vhost, b"{not json", exchange=topology.MARKET_BARS, key=topology.bars_key("1m", "XAUUSD"),
                            headers={"x-message-type": "BarWindow"}))
    # A valid signal whose row the database refuses (a strategy name over the column's 64 characters): the insert
    # fails on every delivery, as a handler error that is not the message's fault would.
    poison = Signal(
        signal_id=uuid.uuid4(), window_id=uuid.uuid4(), bot_id=1, account_id=1, symbol="XAUUSDm", timeframe="1m", strategy="s" * 70,
        side="buy", bar_time=feed.start_time() - timedelta(minutes=1), entry=1.0, stop=0.5, target=2.0, score=0.5, features={},
    )
    asyncio.run(publish(vhost, [(poison, topology.STRATEGY_SIGNALS, topology.signals_key("XAUUSD"))]))

    def both_dead():
        found = asyncio.run(dead_letters(vhost))
        both_dead.seen += found
        return {"strategy.bars", "decision.signals"} <= {d.headers.get("x-original-queue") for d in both_dead.seen}

    both_dead.seen = []
    kit.eventually(both_dead, timeout=60, what="two dead letters")
    reasons = {d.headers.get("x-original-queue"): d.headers.get(DEATH_REASON_HEADER, "") for d in both_dead.seen}
    assert reasons["strategy.bars"].startswith("invalid: body is not JSON"), reasons
    assert reasons["decision.signals"].startswith("delivery limit 5 reached"), reasons
    dead_poison = next(d for d in both_dead.seen if d.headers.get("x-original-queue") == "decision.signals")
    assert dead_poison.headers["x-scalper-delivery-count"] == "5"
    # Neither consumer died: a good window still goes through strategy and decision.
    batch = windows(feed, plan, 3)
    asyncio.run(publish(vhost, [(w, topology.MARKET_BARS, topology.bars_key("1m", "XAUUSD")) for w in batch]))
    kit.eventually(lambda: decision.metric("scan_lines_total") >= 3, timeout=30, what="scan lines after the dead letters")
    assert worker.alive() and decision.alive()
    assert worker.metric("dead_letters_total", queue="strategy.bars") == 1
    assert decision.metric("dead_letters_total", queue="decision.signals") == 1

