"""The market-data service: what a scan publishes, when it stays quiet, staleness, bad bars, and the scan clock."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from prometheus_client import REGISTRY

from services.market_data.feeds.synthetic import SyntheticFeed
from services.market_data.service import MarketDataService
from shared.bars import Bars
from shared.bus import topology
from shared.bus.base import QueueSpec
from shared.bus.memory import InMemoryBus
from shared.levels import previous_day_levels
from shared.messages import BarWindow, InvalidMessage, Signal
from shared.timeutil import ManualClock, from_epoch, to_epoch
from tests.helpers import eventually
from tests.market_data.md_helpers import ListFeed, RecordingBus, make_bars, plan, settings


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def metric(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def fresh_symbol() -> str:
    return f"T{uuid.uuid4().hex[:8].upper()}"


T0 = utc(2025, 3, 12, 10, 0)  # a Wednesday


def list_service(n: int = 300, **overrides):
    """A service over a ListFeed whose bars end at T0 (the last one closes at T0), and its bus and clock."""
    symbol = fresh_symbol()
    feed = ListFeed(symbol, make_bars(T0 - timedelta(minutes=n), n))
    bus, clock = RecordingBus(), ManualClock(T0 + timedelta(seconds=1))
    service = MarketDataService(bus=bus, feed=feed, clock=clock, settings=settings(**overrides))
    service.set_plan(plan((symbol, 150)))
    return service, feed, bus, clock, symbol


def extend(feed: ListFeed, minutes: int) -> None:
    last = from_epoch(int(feed.bars.time[-1]) + 60)
    feed.bars = feed.bars.concat(make_bars(last, minutes, price=float(feed.bars.close[-1]), seed=minutes))


# --- what one scan publishes -------------------------------------------------------------------------------


async def test_scan_publishes_a_full_window_per_planned_symbol():
    feed = SyntheticFeed()
    bus, clock = RecordingBus(), ManualClock(utc(2025, 3, 12, 10, 0, 1))
    service = MarketDataService(bus=bus, feed=feed, clock=clock, settings=settings(lookback_bars=120))
    service.set_plan(plan(("XAUUSD", 400), ("EURUSD", 50)))

    windows = await service.scan_once()

    assert [(type(m), ex, key) for m, ex, key in bus.published] == [
        (BarWindow, topology.MARKET_BARS, "bars.1m.XAUUSD"),
        (BarWindow, topology.MARKET_BARS, "bars.1m.EURUSD"),
    ]
    gold, eur = windows
    assert len(gold.bars.time) == 400 and len(eur.bars.time) == 120  # max(plan lookback, settings.lookback_bars)
    assert gold.closed_through == utc(2025, 3, 12, 10, 0) and gold.bars.time[-1] == to_epoch(utc(2025, 3, 12, 9, 59))
    assert gold.source == "synthetic" and gold.timeframe == "1m"
    assert gold.subscriptions == service.plan.symbols[0].subscriptions
    expected = feed.closed_bars("XAUUSD", until=utc(2025, 3, 12, 10, 0), count=400)
    assert gold.bars.close == expected.close.tolist()
    history = feed.closed_bars("XAUUSD", until=utc(2025, 3, 12, 10, 0), count=3000)
    assert gold.levels == previous_day_levels(history, utc(2025, 3, 12, 9, 59))
    assert gold.levels.prev_high == float(history.high[(history.time >= to_epoch(utc(2025, 3, 11))) & (history.time < to_epoch(utc(2025, 3, 12)))].max())
    assert BarWindow.model_validate_json(gold.encode()) == gold  # survives the wire


async def test_no_republish_unless_a_new_bar_or_a_new_plan():
    service, feed, bus, clock, symbol = list_service()
    assert len(await service.scan_once()) == 1
    before = metric("bar_windows_published_total", symbol=symbol)

    clock.advance(timedelta(seconds=30))
    assert await service.scan_once() == []  # same newest bar, same plan
    service.set_plan(plan((symbol, 150)))  # republished by decision, unchanged for this symbol
    assert await service.scan_once() == []

    service.set_plan(plan((symbol, 150), bot_id=2))  # a subscription changed
    assert len(await service.scan_once()) == 1
    extend(feed, 1)
    clock.advance(timedelta(seconds=60))
    [window] = await service.scan_once()
    assert window.closed_through == T0 + timedelta(minutes=1)
    assert metric("bar_windows_published_total", symbol=symbol) == before + 2
    assert len(bus.published) == 3


async def test_short_history_is_not_published():
    service, feed, bus, clock, symbol = list_service(n=120)  # the plan asks for 150
    assert await service.scan_once() == []
    ready, details = service.readiness()
    assert details["symbols"][symbol]["state"] == "warming_up"


async def test_a_symbol_the_feed_lacks_does_not_stop_the_others():
    service, feed, bus, clock, symbol = list_service()
    service.set_plan(plan(("NOSUCH", 100), (symbol, 150)))
    windows = await service.scan_once()
    assert [w.symbol for w in windows] == [symbol]
    assert service.readiness()[1]["symbols"]["NOSUCH"]["state"] == "error"


# --- bad bars ----------------------------------------------------------------------------------------------


async def test_bad_bars_are_refused_counted_once_and_logged():
    service, feed, bus, clock, symbol = list_service()
    high = feed.bars.high.copy()
    bad_time = int(feed.bars.time[-10])
    high[-10] = feed.bars.low[-10] - 1  # high below low
    close = feed.bars.close.copy()
    close[-20] = float("nan")
    feed.bars = Bars(feed.bars.time, feed.bars.open, high, feed.bars.low, close, feed.bars.tick_volume, feed.bars.spread)

    [window] = await service.scan_once()

    assert bad_time not in window.bars.time and len(window.bars.time) == 150
    assert all(np.isfinite(window.bars.close))
    assert metric("bars_rejected_total", symbol=symbol, reason="high_below_low") == 1
    assert metric("bars_rejected_total", symbol=symbol, reason="nan_price") == 1
    extend(feed, 1)
    clock.advance(timedelta(minutes=1))
    assert len(await service.scan_once()) == 1
    assert metric("bars_rejected_total", symbol=symbol, reason="high_below_low") == 1  # the same bar is not counted again


async def test_a_feed_going_back_in_time_is_refused():
    service, feed, bus, clock, symbol = list_service()
    await service.scan_once()
    feed.bars = feed.bars[:-5]
    service.set_plan(plan((symbol, 150), bot_id=9))  # a plan change would otherwise republish
    assert await service.scan_once() == []
    assert metric("bars_rejected_total", symbol=symbol, reason="time_not_increasing") == 1


# --- staleness ---------------------------------------------------------------------------------------------


async def test_stale_feed_pauses_the_symbol_and_resumes_by_itself():
    service, feed, bus, clock, symbol = list_service()
    assert len(await service.scan_once()) == 1
    assert service.readiness()[0] is False  # not started, so not ready, but nothing stale
    assert service.readiness()[1]["stale"] == {}

    clock.advance(timedelta(minutes=4, seconds=30))  # 4.5 min since the last bar closed: not yet stale
    assert await service.scan_once() == []
    assert metric("feed_stale", symbol=symbol) == 0
    clock.advance(timedelta(minutes=1))  # 5.5 min
    service.set_plan(plan((symbol, 150), bot_id=3))  # a plan change must not republish old prices
    assert await service.scan_once() == []
    assert metric("feed_stale", symbol=symbol) == 1
    ready, details = service.readiness()
    assert not ready and "no new closed bar for 5.5 min" in details["stale"][symbol]

    extend(feed, 6)  # bars return: at 10:05:31 the 10:04 bar is the newest closed one
    [window] = await service.scan_once()
    assert window.closed_through == T0 + timedelta(minutes=5)
    assert metric("feed_stale", symbol=symbol) == 0
    assert service.readiness()[1]["stale"] == {}


async def test_no_staleness_while_the_market_is_closed_nor_just_after_it_reopens():
    service, feed, bus, clock, symbol = list_service()
    await service.scan_once()
    feed.open = False
    for _ in range(10):  # two days closed
        clock.advance(timedelta(hours=5))
        assert await service.scan_once() == []
    assert metric("feed_stale", symbol=symbol) == 0
    assert service.readiness()[1]["symbols"][symbol]["state"] == "market_closed"

    feed.open = True  # reopens; the first bar is not due for a minute
    clock.advance(timedelta(minutes=4))
    assert await service.scan_once() == []
    assert metric("feed_stale", symbol=symbol) == 0
    clock.advance(timedelta(minutes=2))
    await service.scan_once()
    assert metric("feed_stale", symbol=symbol) == 1


async def test_a_plan_symbol_dropped_while_stale_clears_its_gauge():
    service, feed, bus, clock, symbol = list_service()
    await service.scan_once()
    clock.advance(timedelta(minutes=10))
    await service.scan_once()
    assert metric("feed_stale", symbol=symbol) == 1
    service.set_plan(plan())
    assert metric("feed_stale", symbol=symbol) == 0 and service.readiness()[1]["stale"] == {}


# --- the scan clock ----------------------------------------------------------------------------------------


def test_next_scan_times():
    interval = MarketDataService(bus=RecordingBus(), feed=None, clock=None, settings=settings(scan_interval_s=45))
    t = utc(2025, 3, 12, 10, 0, 20)
    assert interval.next_scan_at(after=None, now=t) == t
    assert interval.next_scan_at(after=t, now=t) == t + timedelta(seconds=45)
    assert interval.next_scan_at(after=t, now=t + timedelta(seconds=100)) == t + timedelta(seconds=135)  # missed ones skipped

    aligned = MarketDataService(bus=RecordingBus(), feed=None, clock=None, settings=settings(scan_mode="aligned"))
    assert aligned.next_scan_at(after=None, now=t) == utc(2025, 3, 12, 10, 1, 1)
    assert aligned.next_scan_at(after=None, now=utc(2025, 3, 12, 10, 1, 1)) == utc(2025, 3, 12, 10, 1, 1)
    assert aligned.next_scan_at(after=utc(2025, 3, 12, 10, 1, 1), now=utc(2025, 3, 12, 10, 1, 1)) == utc(2025, 3, 12, 10, 2, 1)
    assert aligned.next_scan_at(after=utc(2025, 3, 12, 10, 1, 1), now=utc(2025, 3, 12, 10, 4, 30)) == utc(2025, 3, 12, 10, 5, 1)

    # A clock set back (an MT5 terminal's first reading, months behind the machine's clock it was guessed from): the
    # scan due on the old time is planned again from now, or scanning would stop until the old time came round.
    months_ahead = t + timedelta(days=240)
    assert interval.next_scan_at(after=months_ahead, now=t) == t
    assert aligned.next_scan_at(after=months_ahead, now=t) == utc(2025, 3, 12, 10, 1, 1)


@pytest.fixture
async def memory_bus():
    bus = InMemoryBus(delivery_limit=3, redelivery_delay_s=0.001)
    await bus.start()
    yield bus
    await bus.close()


async def collect_windows(bus: InMemoryBus) -> list[BarWindow]:
    received: list[BarWindow] = []

    async def handler(message, delivery):
        received.append(message)

    await bus.consume(QueueSpec(f"test.bars.{uuid.uuid4().hex}", bindings=((topology.MARKET_BARS, "bars.1m.#"),), exclusive=True), handler)
    return received


async def test_plan_over_the_bus_and_interval_scans_on_the_clock(memory_bus):
    clock = ManualClock(utc(2025, 3, 12, 10, 0, 30))
    received = await collect_windows(memory_bus)
    service = MarketDataService(bus=memory_bus, feed=SyntheticFeed(), clock=clock, settings=settings(scan_interval_s=45), instance=uuid.uuid4().hex)
    await service.start()
    try:
        await memory_bus.publish(plan(("XAUUSD", 100)), exchange=topology.CONTROL_PLAN)
        await eventually(lambda: service.plan is not None, what="plan received")
        await memory_bus.idle()
        # The first scan ran at once (10:00:30), with or without the plan, depending on which task ran first.
        seen = len(received)
        assert seen in (0, 1) and all(w.closed_through == utc(2025, 3, 12, 10, 0) for w in received)
        clock.advance(timedelta(seconds=45))  # 10:01:15
        await eventually(lambda: len(received) == seen + 1, what="window of the second scan")
        assert received[-1].closed_through == utc(2025, 3, 12, 10, 1)
        clock.advance(timedelta(seconds=45))  # 10:02:00: the 10:01 bar has just closed
        await eventually(lambda: len(received) == seen + 2, what="window of the third scan")
        assert received[-1].closed_through == utc(2025, 3, 12, 10, 2)
        await eventually(lambda: service.last_scan_at == utc(2025, 3, 12, 10, 2), what="third scan done")
        scans = metric("scan_cycle_duration_seconds_count")
        clock.advance(timedelta(seconds=30))  # 10:02:30: not due
        for _ in range(10):  # let the woken scan loop run; it must go back to sleep without scanning
            await asyncio.sleep(0)
        assert service.last_scan_at == utc(2025, 3, 12, 10, 2)
        clock.advance(timedelta(seconds=15))  # 10:02:45: due
        await eventually(lambda: service.last_scan_at == utc(2025, 3, 12, 10, 2, 45), what="fourth scan")
        assert metric("scan_cycle_duration_seconds_count") == scans + 1  # no scan at 10:02:30
        await memory_bus.idle()
        assert len(received) == seen + 2  # nothing new to publish at 10:02:45
        assert service.readiness()[0] is True
    finally:
        await service.stop()


async def test_aligned_scans_one_second_after_each_close(memory_bus):
    clock = ManualClock(utc(2025, 3, 12, 10, 0, 30))
    received = await collect_windows(memory_bus)
    service = MarketDataService(bus=memory_bus, feed=SyntheticFeed(), clock=clock, settings=settings(scan_mode="aligned"), instance=uuid.uuid4().hex)
    service.set_plan(plan(("EURUSD", 100)))
    await service.start()
    try:
        clock.set(utc(2025, 3, 12, 10, 1, 0, 500_000))  # the 10:00 bar closed, but the scan waits for 10:01:01
        await memory_bus.idle()
        assert received == []
        clock.set(utc(2025, 3, 12, 10, 1, 1))
        await eventually(lambda: len(received) == 1, what="aligned scan")
        assert received[0].closed_through == utc(2025, 3, 12, 10, 1)
        clock.set(utc(2025, 3, 12, 10, 2, 1))
        await eventually(lambda: len(received) == 2, what="next aligned scan")
        assert received[1].closed_through == utc(2025, 3, 12, 10, 2)
    finally:
        await service.stop()
    assert service.readiness()[0] is False


async def test_a_foreign_message_on_the_plan_queue_is_invalid():
    service, *_ = list_service()
    signal = Signal(
        signal_id=uuid.uuid4(), bot_id=1, account_id=1, symbol="X", timeframe="1m", strategy="s", side="buy",
        bar_time=T0, entry=1, stop=0.9, target=1.2, score=0.5,
    )

    class _Delivery:
        routing_key = ""

    with pytest.raises(InvalidMessage):
        await service.on_plan_queue(signal, _Delivery())


async def test_an_older_plan_does_not_replace_a_newer_one():
    service, feed, bus, clock, symbol = list_service()
    newer = plan((symbol, 150), bot_id=5)
    older = newer.model_copy(update={"produced_at": newer.produced_at - timedelta(seconds=1), "symbols": ()})
    service.set_plan(newer)
    service.set_plan(older)  # delivered late
    assert service.plan is newer
    [window] = await service.scan_once()
    assert window.subscriptions[0].bot_id == 5
