"""Four strategy workers compete for one queue and one is SIGKILLed mid-run: every window's signals are stored once,
none is lost.

Decision and four `scalper serve strategy` processes on RabbitMQ (a vhost of this test) and PostgreSQL (a database of
this test). Eight auto-trading bots on XAUUSD (eight accounts); 400 real gold windows for them are queued on
strategy.bars at once, and while the queue still holds windows one worker is SIGKILLed: what it had taken and not
acked goes back to the queue and is scanned again by another worker, whose ScanResult repeats signal ids decision
already stored. At the end the signals table must hold exactly the signals the windows make when scanned here
(same ids, each with the window that made it), one decision each, and nothing dead-lettered.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest
from sqlalchemy import func, insert, select

from shared.bus import topology
from tests.distributed import cluster as kit

pytestmark = [pytest.mark.services, pytest.mark.slow, pytest.mark.data]

BOTS = 8
WINDOWS = 400
WORKERS = 4


async def _seed(url: str):
    """Users, accounts and bots; the plan's XAUUSD entry (its subscriptions and lookback)."""
    from services.decision.bots import strategy_names
    from services.decision.plan import build_plan
    from shared.db.engine import create_engine, session_factory, transaction, upgrade
    from shared.db.models import Bot, BrokerAccount, User
    from shared.strategies.catalog import lookback_for

    await asyncio.to_thread(upgrade, url)
    engine = create_engine(url)
    sessions = session_factory(engine)
    try:
        async with transaction(sessions) as session:
            user = User(name="crash")
            session.add(user)
            await session.flush()
            accounts = [BrokerAccount(user_id=user.id, name=f"paper-{i}", broker="paper") for i in range(BOTS)]
            session.add_all(accounts)
            await session.flush()
            await session.execute(insert(Bot), [
                {"user_id": user.id, "account_id": a.id, "symbol": "XAUUSD", "enabled_strategies": strategy_names("scalper"),
                 "strategy_params": {}, "auto_trade": True, "name": f"bot-{a.id}"} for a in accounts
            ])
        async with sessions() as session:
            plan = await build_plan(session=session, lookback_for=lookback_for, min_lookback=100)
    finally:
        await engine.dispose()
    [entry] = plan.symbols
    return entry


def _windows(entry, gold):
    from services.market_data.feeds.replay import ReplayFeed
    from shared.messages import BarColumns, BarWindow

    feed = ReplayFeed(gold, "XAUUSD")
    first = feed.start_time() + timedelta(minutes=entry.lookback + 1)
    out = []
    for k in range(WINDOWS):
        at = first + timedelta(minutes=k)
        bars = feed.closed_bars("XAUUSD", until=at, count=entry.lookback)
        out.append(BarWindow(symbol="XAUUSD", bars=BarColumns.from_bars(bars), closed_through=at, source="test",
                             subscriptions=entry.subscriptions))
    return out


async def _publish(url: str, windows) -> None:
    from shared.bus import create_bus
    from shared.bus.base import Outgoing

    bus = create_bus(url)
    await bus.start()
    try:
        await bus.publish_many([Outgoing(w, topology.MARKET_BARS, topology.bars_key("1m", w.symbol)) for w in windows])
    finally:
        await bus.close()


async def _depths(url: str) -> dict[str, int]:
    from shared.bus import create_bus

    bus = create_bus(url)
    await bus.start()
    try:
        return {q: await bus.queue_depth(q) for q in (topology.STRATEGY_BARS.name, topology.DECISION_SIGNALS.name,
                                                      topology.DEAD_LETTER_QUEUE.name)}
    finally:
        await bus.close()


async def _stored(url: str) -> tuple[dict[str, str | None], int]:
    from shared.db.engine import create_engine, session_factory
    from shared.db.models import Decision, SignalRow

    engine = create_engine(url)
    try:
        async with session_factory(engine)() as session:
            signals = dict((await session.execute(select(SignalRow.signal_id, SignalRow.window_id))).all())
            decisions = (await session.execute(select(func.count()).select_from(Decision))).scalar_one()
    finally:
        await engine.dispose()
    return signals, decisions


def test_four_workers_one_sigkilled_mid_run_store_each_windows_signals_once(vhost, pg_url, gold_file, make_cluster):
    from services.strategy.service import scan_window
    from shared.strategies.catalog import CATALOG
    from shared.timeutil import utcnow

    entry = asyncio.run(_seed(pg_url))
    windows = _windows(entry, gold_file)
    expected: dict[str, str] = {}
    for window in windows:
        for signal in scan_window(window, catalog=CATALOG, now=utcnow())[0]:
            expected[str(signal.signal_id)] = str(window.message_id)
    assert len(expected) >= 20, f"the windows make too few signals ({len(expected)}) to test with"

    bus_url = kit.amqp_url(vhost)
    env = kit.base_env(bus_url=bus_url, database_url=pg_url, feed=f"replay:{gold_file}", clock_start=windows[0].closed_through,
                       speed=1.0, SCAN_INTERVAL_S=3600, ORDER_TTL_S=3600)
    cluster = make_cluster(env)
    cluster.start("decision")
    workers = [cluster.start("strategy") for _ in range(WORKERS)]
    asyncio.run(_publish(bus_url, windows))

    victim = workers[0]
    kit.eventually(lambda: victim.metric("bus_handler_latency_seconds_count") > 0, timeout=60, interval=0.05,
                   what="the victim has scanned a window")
    victim.kill()
    queued = asyncio.run(_depths(bus_url))[topology.STRATEGY_BARS.name]  # what the victim held is back in the queue
    killed_at = time.monotonic()

    def settled():
        depths = asyncio.run(_depths(bus_url))
        signals, decisions = asyncio.run(_stored(pg_url))
        done = not depths[topology.STRATEGY_BARS.name] and not depths[topology.DECISION_SIGNALS.name] and len(signals) >= len(expected)
        return (signals, decisions, depths) if done else None

    kit.eventually(settled, timeout=180, interval=0.5, what="every window scanned and decided")
    time.sleep(2.0)  # nothing more comes: a late redelivery would show here
    signals, decisions = asyncio.run(_stored(pg_url))
    depths = asyncio.run(_depths(bus_url))

    survivors = [w for w in workers[1:] if w.alive()]
    assert len(survivors) == WORKERS - 1, cluster.logs()
    assert queued > 0, "the queue was drained before the kill: the test killed no worker mid-run"
    assert set(signals) == set(expected), (
        f"missing {sorted(set(expected) - set(signals))[:5]}, unexpected {sorted(set(signals) - set(expected))[:5]}"
    )
    assert signals == expected  # each stored with the window that made it
    assert decisions == len(expected)  # one decision per signal, whatever was scanned twice
    assert depths == {topology.STRATEGY_BARS.name: 0, topology.DECISION_SIGNALS.name: 0, topology.DEAD_LETTER_QUEUE.name: 0}
    print(f"{len(windows)} windows, {len(expected)} signals, {queued} windows still queued at the kill, "
          f"settled {time.monotonic() - killed_at:.1f} s after it")
