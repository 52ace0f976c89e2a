"""The MT5 feed over the bus: fake executors answer RatesRequests on executor_rates_queue(account_id) as the real one
does (closed M1 bars in UTC, the terminal's time beside them); the feed picks the lowest serving account of the plan,
fails over, and market data scans with it. The in-memory bus always, RabbitMQ when the machine has it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from prometheus_client import REGISTRY

from services.market_data.feeds.base import PlanFollower
from services.market_data.feeds.mt5 import MT5Feed
from services.market_data.service import REJECT_MARGIN, SANITY_HISTORY, MarketDataService
from shared.bars import Bars
from shared.bus import topology
from shared.bus.base import Bus, Delivery, QueueSpec
from shared.bus.memory import InMemoryBus
from shared.messages import BarColumns, BarWindow, Message, PlanSymbol, RatesReply, RatesRequest, ScanPlan, StrategyConfig, Subscription
from shared.rates import RATES, RatesUnavailable, executor_rates_queue
from shared.symbols import UnknownSymbol
from shared.timeutil import ManualClock, TerminalClock, from_epoch, to_epoch
from tests.bus.conftest import rabbit_bus
from tests.helpers import eventually
from tests.market_data.md_helpers import make_bars, settings

T0 = datetime(2025, 3, 12, 10, 0, tzinfo=UTC)  # a Wednesday; the fake terminal's newest closed bar closes here


class FakeExecutor:
    """Answers the rates requests of one account as services/executor does: `serve` (closed bars as of the terminal's
    `now`, with `server_time`), `error` (an error reply) or `silent` (takes the request, never answers)."""

    def __init__(self, bus: Bus, account_id: int, *, mode: str = "serve", now: datetime = T0 + timedelta(seconds=20),
                 bars: Bars | None = None, server_time: bool = True) -> None:
        self.bus, self.account_id, self.mode, self.now = bus, account_id, mode, now
        self.bars = bars if bars is not None else make_bars(T0 - timedelta(minutes=3000), 3000, price=3000.0)
        self.server_time = server_time
        self.requests: list[RatesRequest] = []
        self._consumer = None

    async def start(self) -> FakeExecutor:
        self._consumer = await self.bus.consume(executor_rates_queue(self.account_id), self.handle)
        return self

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.cancel()

    def closed(self, count: int) -> Bars:
        k = int(np.searchsorted(self.bars.time, to_epoch(self.now) - 60, side="right"))
        return self.bars[max(0, k - count):k]

    async def handle(self, message: Message, delivery: Delivery) -> None:
        assert isinstance(message, RatesRequest)
        self.requests.append(message)
        if self.mode == "silent":
            return
        error = f"rates of {message.symbol} failed: the terminal is not connected" if self.mode == "error" else ""
        bars = None if error else BarColumns.from_bars(self.closed(message.count))
        reply = RatesReply(correlation_id=message.correlation_id, account_id=message.account_id, symbol=message.symbol, bars=bars,
                           error=error, server_time=self.now if self.server_time else None)
        await self.bus.publish(reply, exchange=RATES, routing_key=message.reply_to)


def sub(bot_id: int, account_id: int, symbol: str = "XAUUSDm") -> Subscription:
    return Subscription(bot_id=bot_id, account_id=account_id, symbol=symbol, strategies=(StrategyConfig(name="price_action_pinbar"),))


def mt5_plan(*subs: Subscription, symbol: str = "XAUUSD", lookback: int = 150) -> ScanPlan:
    return ScanPlan(symbols=(PlanSymbol(symbol=symbol, lookback=lookback, subscriptions=subs),))


def account_ids(n: int) -> list[int]:
    """`n` ascending account ids of this test's own (the rates queues are named after them)."""
    base = 10_000_000 + uuid.uuid4().int % 80_000_000
    return [base + 10 * i for i in range(n)]


@pytest.fixture
async def memory_bus():
    bus = InMemoryBus(delivery_limit=3, redelivery_delay_s=0.001)
    await bus.start()
    yield bus
    await bus.close()


@pytest.fixture(params=["memory", pytest.param("rabbitmq", marks=pytest.mark.services)])
async def any_bus(request):
    if request.param == "memory":
        bus = InMemoryBus(delivery_limit=3, redelivery_delay_s=0.001)
        await bus.start()
        yield bus
        await bus.close()
        return
    async for bus in rabbit_bus():
        yield bus


@pytest.fixture
async def executors():
    started: list[FakeExecutor] = []

    async def make(bus: Bus, account_id: int, **kw) -> FakeExecutor:
        executor = await FakeExecutor(bus, account_id, **kw).start()
        started.append(executor)
        return executor

    yield make
    for executor in started:
        await executor.stop()


@pytest.fixture
async def feeds():
    made: list[MT5Feed] = []

    def make(bus: Bus, **kw) -> MT5Feed:
        kw.setdefault("clock", ManualClock(T0 + timedelta(seconds=1)))
        kw.setdefault("timeout_s", 5.0)
        feed = MT5Feed(bus=bus, **kw)
        made.append(feed)
        return feed

    yield make
    for feed in made:
        await feed.close()


# --- which session reads a symbol ----------------------------------------------------------------------------


async def test_the_lowest_serving_account_reads_past_a_paper_account(any_bus, executors, feeds):
    paper, low, high = account_ids(3)  # the paper account's executor consumes no rates: its publish is unroutable
    low_executor = await executors(any_bus, low)
    high_executor = await executors(any_bus, high)
    feed = feeds(any_bus)
    feed.update_plan(mt5_plan(sub(1, high, "XAUUSD.r"), sub(2, paper), sub(3, low, "XAUUSDm"), sub(4, low, "XAUUSD")))

    bars = await feed.closed_bars("XAUUSD", until=T0 + timedelta(seconds=1), count=120)

    assert list(bars.time) == list(low_executor.closed(120).time)
    assert int(bars.time[-1]) == to_epoch(T0) - 60  # the newest closed bar: 09:59, closed at 10:00
    assert [(r.account_id, r.symbol, r.count) for r in low_executor.requests] == [(low, "XAUUSDm", 120)]  # its bot's own name
    assert high_executor.requests == []
    assert feed.accounts_for("XAUUSD") == [low, high, paper]  # the paper account failed: asked last for a while


async def test_an_executor_that_does_not_answer_in_time_is_passed_over_and_asked_last(memory_bus, executors, feeds):
    first, second = account_ids(2)
    silent = await executors(memory_bus, first, mode="silent")
    serving = await executors(memory_bus, second)
    feed = feeds(memory_bus, timeout_s=0.2)
    feed.update_plan(mt5_plan(sub(1, first), sub(2, second)))

    bars = await feed.closed_bars("XAUUSD", until=T0 + timedelta(seconds=1), count=50)
    again = await feed.closed_bars("XAUUSD", until=T0 + timedelta(seconds=1), count=50)

    assert len(bars) == len(again) == 50
    assert len(silent.requests) == 1 and len(serving.requests) == 2  # the second scan did not wait on the silent one
    assert feed.accounts_for("XAUUSD") == [second, first]


async def test_a_failed_account_is_asked_first_again_once_its_back_off_ends(memory_bus, executors, feeds):
    first, second = account_ids(2)
    broken = await executors(memory_bus, first, mode="error")
    serving = await executors(memory_bus, second)
    feed = feeds(memory_bus, retry_after_s=0.0)
    feed.update_plan(mt5_plan(sub(1, first), sub(2, second)))

    await feed.closed_bars("XAUUSD", until=T0 + timedelta(seconds=1), count=10)
    broken.mode = "serve"
    await feed.closed_bars("XAUUSD", until=T0 + timedelta(seconds=1), count=10)

    assert len(broken.requests) == 2 and len(serving.requests) == 1


async def test_every_account_failing_raises_rates_unavailable_naming_each(memory_bus, executors, feeds):
    paper, broken = account_ids(2)
    await executors(memory_bus, broken, mode="error")
    feed = feeds(memory_bus)
    feed.update_plan(mt5_plan(sub(1, paper), sub(2, broken)))

    with pytest.raises(RatesUnavailable) as caught:
        await feed.closed_bars("XAUUSD", until=T0, count=10)
    text = str(caught.value)
    assert f"account {paper}: no executor serves rates" in text and f"account {broken}: rates of XAUUSDm failed" in text


async def test_bars_closing_after_until_are_left_out(memory_bus, executors, feeds):
    (account,) = account_ids(1)
    bars_on = make_bars(T0 - timedelta(minutes=3000), 3010, price=3000.0)
    executor = await executors(memory_bus, account, now=T0 + timedelta(minutes=3, seconds=5), bars=bars_on)  # the terminal is ahead
    feed = feeds(memory_bus)
    feed.update_plan(mt5_plan(sub(1, account)))

    bars = await feed.closed_bars("XAUUSD", until=T0 + timedelta(seconds=30), count=100)

    assert from_epoch(int(bars.time[-1]) + 60) == T0  # the bars of 10:00, 10:01 and 10:02 have not closed by 10:00:30
    assert len(bars) == 97 and len(executor.requests) == 1


async def test_the_terminal_time_of_each_reply_reaches_the_callback(memory_bus, executors, feeds):
    (account,) = account_ids(1)
    executor = await executors(memory_bus, account, now=T0 + timedelta(hours=2, seconds=20))
    clock = TerminalClock(start=T0)
    seen: list[datetime] = []
    feed = feeds(memory_bus, clock=clock, on_terminal_time=lambda t: (seen.append(t), clock.observe(t)))
    feed.update_plan(mt5_plan(sub(1, account)))

    await feed.closed_bars("XAUUSD", until=clock.now(), count=5)

    assert seen == [executor.now]
    assert clock.now() >= executor.now  # the clock follows the terminal
    executor.server_time = False  # an executor that does not fill it yet: nothing to report, the bars still come
    assert len(await feed.closed_bars("XAUUSD", until=clock.now(), count=5)) == 5
    assert seen == [executor.now]


async def test_what_the_feed_serves_follows_the_plan(memory_bus, feeds):
    clock = ManualClock(T0)
    feed = feeds(memory_bus, clock=clock, server_time="us_dst")
    assert isinstance(feed, PlanFollower) and feed.name == "mt5" and feed.server_time == "us_dst"
    assert feed.symbols() == [] and feed.start_time() == T0
    with pytest.raises(UnknownSymbol):
        await feed.closed_bars("XAUUSD", until=T0, count=10)
    feed.update_plan(ScanPlan(symbols=(
        PlanSymbol(symbol="XAUUSD", lookback=100, subscriptions=(sub(1, 7),)),
        PlanSymbol(symbol="EURUSD", lookback=100, subscriptions=(sub(2, 3, "EURUSDm"), sub(3, 1, "EURUSD"))),
    )))
    assert feed.symbols() == ["XAUUSD", "EURUSD"]
    assert feed.accounts_for("EURUSD") == [1, 3]
    feed.update_plan(mt5_plan(sub(1, 7), symbol="EURUSD"))
    assert feed.symbols() == ["EURUSD"]
    with pytest.raises(UnknownSymbol):
        feed.accounts_for("XAUUSD")
    assert feed.market_open("EURUSD", T0)
    assert not feed.market_open("EURUSD", datetime(2025, 3, 15, 12, 0, tzinfo=UTC))  # a Saturday


# --- market data scanning with the MT5 feed ------------------------------------------------------------------


def metric(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_market_data_scans_through_the_executor_and_publishes_a_bar_window(any_bus, executors, feeds):
    paper, account = account_ids(2)
    executor = await executors(any_bus, account)
    clock = ManualClock(T0 + timedelta(seconds=1))
    feed = feeds(any_bus, clock=clock)
    service = MarketDataService(bus=any_bus, feed=feed, clock=clock, settings=settings(lookback_bars=100),
                                instance=f"md-{uuid.uuid4().hex[:8]}")
    symbol = f"X{uuid.uuid4().hex[:7].upper()}"
    windows: list[BarWindow] = []

    async def collect(message: Message, delivery: Delivery) -> None:
        windows.append(message)  # type: ignore[arg-type]

    catcher = await any_bus.consume(QueueSpec(f"test.bars.{uuid.uuid4().hex}", bindings=((topology.MARKET_BARS, topology.bars_key("1m", symbol)),),
                                              exclusive=True), collect)
    try:
        plan = mt5_plan(sub(1, paper, f"{symbol}m"), sub(2, account, f"{symbol}m"), symbol=symbol, lookback=150)
        service.set_plan(plan)  # the service hands its plan to the feed
        assert feed.symbols() == [symbol] and service.resolve_symbol(symbol) == symbol

        published = await service.scan_once()

        await eventually(lambda: windows, what="the bar window on market.bars")
        (window,) = windows
        assert published[0].message_id == window.message_id
        assert window.source == "mt5" and window.symbol == symbol and window.subscriptions == plan.symbols[0].subscriptions
        assert window.bars.time == executor.closed(150).time.tolist() and window.closed_through == T0
        assert window.levels is not None  # the previous day's, from 7200 bars asked once
        assert [r.count for r in executor.requests] == [150 + REJECT_MARGIN + SANITY_HISTORY, 5 * 1440]  # the window, its margins
        assert {r.symbol for r in executor.requests} == {f"{symbol}m"}
        assert service.readiness()[1]["symbols"][symbol]["state"] == "ok"
    finally:
        await catcher.cancel()


async def test_an_executor_that_stops_answering_makes_the_symbol_fail_then_go_stale(memory_bus, executors, feeds):
    (account,) = account_ids(1)
    executor = await executors(memory_bus, account)
    clock = ManualClock(T0 + timedelta(seconds=1))
    feed = feeds(memory_bus, clock=clock, timeout_s=0.2)
    service = MarketDataService(bus=memory_bus, feed=feed, clock=clock, settings=settings(stale_after_min=5.0))
    symbol = f"X{uuid.uuid4().hex[:7].upper()}"
    service.set_plan(mt5_plan(sub(1, account, symbol), symbol=symbol, lookback=100))
    await memory_bus.declare_queue(topology.STRATEGY_BARS)  # the strategy workers' queue, so the window routes
    assert len(await service.scan_once()) == 1

    await executor.stop()  # the executor is gone: its queue stays, nobody answers (time-outs)
    clock.advance(timedelta(minutes=1))
    assert await service.scan_once() == []
    state = service.readiness()[1]["symbols"][symbol]
    assert state["state"] == "error" and "no rates answer" in state["detail"]
    assert service.readiness()[1]["stale"] == {}  # failing, not yet stale

    clock.advance(timedelta(minutes=5))
    assert await service.scan_once() == []
    details = service.readiness()[1]
    assert details["symbols"][symbol]["state"] == "stale"
    assert "the feed fails: RatesUnavailable" in details["stale"][symbol]
    assert metric("feed_stale", symbol=symbol) == 1.0


async def test_get_bars_answers_503_when_no_executor_serves_the_symbol(memory_bus, executors, feeds):
    import httpx
    from fastapi import FastAPI

    from services.market_data.app import create_router

    paper, account = account_ids(2)
    executor = await executors(memory_bus, account)
    clock = ManualClock(T0 + timedelta(seconds=1))
    service = MarketDataService(bus=memory_bus, feed=feeds(memory_bus, clock=clock), clock=clock, settings=settings())
    service.set_plan(mt5_plan(sub(1, paper), sub(2, account)))
    app = FastAPI()
    app.include_router(create_router(service), prefix="/api/v1")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        ok = await http.get("/api/v1/bars/XAUUSDm", params={"count": 3})
        assert ok.status_code == 200 and ok.json()["count"] == 3
        executor.mode = "error"  # the terminal lost its connection
        gone = await http.get("/api/v1/bars/XAUUSD", params={"count": 3})
    detail = gone.json()["detail"]
    assert gone.status_code == 503 and f"account {paper}: no executor serves rates" in detail and f"account {account}: rates of" in detail


async def test_a_callback_that_raises_does_not_lose_the_bars(memory_bus, executors, feeds):
    (account,) = account_ids(1)
    await executors(memory_bus, account)

    def broken(_: datetime) -> None:
        raise RuntimeError("clock unplugged")

    feed = feeds(memory_bus, on_terminal_time=broken)
    feed.update_plan(mt5_plan(sub(1, account)))
    assert len(await feed.closed_bars("XAUUSD", until=T0 + timedelta(seconds=1), count=5)) == 5
