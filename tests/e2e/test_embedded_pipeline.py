"""End to end in one process: a slice of the real gold file replayed through market data, strategy, decision
and executor (in-memory bus, SQLite, paper broker), driven bar by bar on a manual clock."""

from __future__ import annotations

import logging
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from scalper.embedded import EmbeddedStack
from services.decision.service import DecisionService
from services.market_data.feeds.replay import ReplayFeed
from shared.bus import topology
from shared.db.models import Decision, Order, Position, SignalRow
from shared.logging import configure_logging
from shared.settings import Settings
from shared.timeutil import ManualClock

pytestmark = pytest.mark.slow

MINUTES = 1500  # about a day of gold: enough for a dozen pin bars at the measured 1.7 % rate


def _settings(tmp_path: Path, feed: str) -> Settings:
    # A scan interval far beyond the test: the scan loop stays idle and the test drives scan_once() itself.
    return Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'e2e.db'}",
        bus_url="memory://",
        feed=feed,
        scan_mode="interval",
        scan_interval_s=10**9,
        monitor_interval_s=3600,
        order_ttl_s=600,
    )


async def _drive(stack: EmbeddedStack, clock: ManualClock, minutes: int) -> list:
    windows = []
    for _ in range(minutes):
        clock.advance(timedelta(minutes=1))
        windows += await stack.market_data.scan_once()
        await stack.bus.idle(timeout=30)
    return windows


@pytest.fixture
async def replay_stack(tmp_path, gold_file):
    feed = ReplayFeed(gold_file, "XAUUSD")
    clock = ManualClock(feed.start_time() + timedelta(seconds=1))
    stack = EmbeddedStack(_settings(tmp_path, f"replay:{gold_file}"), feed=feed, clock=clock)
    await stack.start()
    yield stack, clock
    await stack.stop()


def _scan_lines(caplog) -> list[str]:
    events = [r.msg.get("event", "") if isinstance(r.msg, dict) else r.getMessage() for r in caplog.records]
    return [e for e in events if e.startswith("[ScalperTrade]")]


async def _rows(stack, model):
    async with stack.sessions() as session:
        return list((await session.execute(select(model))).scalars())


async def test_signals_become_decisions_orders_and_positions_exactly_once(replay_stack, caplog):
    stack, clock = replay_stack
    configure_logging("text", "INFO")
    caplog.set_level(logging.DEBUG)  # a scan that found no signal logs its line at debug
    windows = await _drive(stack, clock, MINUTES)

    signals = await _rows(stack, SignalRow)
    decisions = await _rows(stack, Decision)
    orders = await _rows(stack, Order)
    positions = await _rows(stack, Position)

    assert len(windows) > 1000, "the replay should publish about one window per bar"
    assert len(signals) >= 5, f"only {len(signals)} signals over {MINUTES} bars"
    # No two signals for one (bot, symbol, strategy, timeframe, bar).
    keys = Counter((s.bot_id, s.symbol, s.strategy, s.timeframe, s.bar_time) for s in signals)
    assert max(keys.values()) == 1
    # Every signal has exactly one decision; every `open` decision exactly one order, traceable to its signal.
    assert sorted(d.signal_id for d in decisions) == sorted(s.signal_id for s in signals)
    opened = [d for d in decisions if d.action == "open"]
    assert opened, "no decision opened a trade"
    by_decision = Counter(o.decision_id for o in orders)
    assert sorted(by_decision) == sorted(d.id for d in opened) and max(by_decision.values()) == 1
    signal_of = {d.id: d.signal_id for d in decisions}
    assert all(o.signal_id == signal_of[o.decision_id] for o in orders)
    assert all(o.client_order_id == d.client_order_id for o in orders for d in opened if d.id == o.decision_id)
    # Filled orders opened one position each; stops and targets closed some on later bars with a P&L.
    filled = [o for o in orders if o.status == "filled"]
    assert filled
    assert Counter(p.client_order_id for p in positions) == Counter(o.client_order_id for o in filled)
    closed = [p for p in positions if p.status == "closed"]
    assert closed and all(p.pnl is not None and p.close_reason in ("sl", "tp") for p in closed)
    # Decision's read model follows the executor's events.
    model = {d.client_order_id: d for d in opened}
    assert all(model[o.client_order_id].order_status == "filled" for o in filled)
    assert all(model[p.client_order_id].position_status == "closed" for p in closed)
    # A signal's bar is a bar the feed served, and its entry is that bar's close.
    bar_close = {int(t): c for w in windows for t, c in zip(w.bars.time, w.bars.close, strict=True)}
    assert all(s.entry == pytest.approx(bar_close[int(s.bar_time.timestamp())]) for s in signals)
    # The seed's scan line, once per bot per scan, with the orders it sent.
    lines = _scan_lines(caplog)
    assert len(lines) == len(windows)
    assert sum(int(line.rsplit("orders=", 1)[1]) for line in lines) == len(orders)


async def test_the_same_window_twice_makes_no_second_signal_or_order(replay_stack):
    stack, clock = replay_stack
    windows = await _drive(stack, clock, MINUTES)
    signals = await _rows(stack, SignalRow)
    assert signals, "need a window that produced a signal"
    producer = next(w for w in windows if str(w.message_id) == signals[0].window_id)
    before = [len(await _rows(stack, m)) for m in (SignalRow, Decision, Order, Position)]

    # The very same message redelivered, and the same bars re-scanned into a new message.
    await stack.bus.publish(producer, exchange=topology.MARKET_BARS, routing_key=topology.bars_key("1m", producer.symbol))
    rescanned = producer.model_copy(update={"message_id": __import__("uuid").uuid4()})
    await stack.bus.publish(rescanned, exchange=topology.MARKET_BARS, routing_key=topology.bars_key("1m", producer.symbol))
    await stack.bus.idle(timeout=30)

    after = [len(await _rows(stack, m)) for m in (SignalRow, Decision, Order, Position)]
    assert after == before


async def test_a_handler_that_fails_once_is_redelivered_and_succeeds(tmp_path, gold_file, monkeypatch):
    failures = []
    original = DecisionService.decide_scan

    async def fail_first_time(self, signals, report=None, delivery=None):
        if signals and not failures:  # the first window with signals: its ScanResult fails once
            failures.append(signals[0].signal_id)
            raise ConnectionError("database briefly unreachable")
        return await original(self, signals, report, delivery)

    monkeypatch.setattr(DecisionService, "decide_scan", fail_first_time)
    feed = ReplayFeed(gold_file, "XAUUSD")
    clock = ManualClock(feed.start_time() + timedelta(seconds=1))
    stack = EmbeddedStack(_settings(tmp_path, f"replay:{gold_file}"), feed=feed, clock=clock)
    await stack.start()
    try:
        for _ in range(MINUTES):
            clock.advance(timedelta(minutes=1))
            await stack.market_data.scan_once()
            await stack.bus.idle(timeout=30)
            if failures:
                break
        assert failures, "no signal reached decision"
        await stack.bus.idle(timeout=30)
        decided = {d.signal_id for d in await _rows(stack, Decision)}
        assert str(failures[0]) in decided
        assert await stack.bus.take_raw(topology.DEAD_LETTER_QUEUE.name) == []
    finally:
        await stack.stop()
