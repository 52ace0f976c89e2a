"""The strategy worker: one evaluation per distinct (strategy, params), one Signal per subscribed bot, then the report."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY
from pydantic import BaseModel, ConfigDict, Field
from strategy_testkit import FLAT, harami_after_a_fall, m1_from_5m, make_bars, pin_at_swing_low

from services.strategy.service import StrategyWorker
from shared.bars import Bars
from shared.bus import topology
from shared.bus.base import Delivery, Outgoing, QueueSpec
from shared.bus.memory import InMemoryBus
from shared.messages import (
    BarColumns,
    BarWindow,
    InvalidMessage,
    Message,
    ScanReport,
    ScanResult,
    Signal,
    StrategyConfig,
    Subscription,
    signal_id_for,
)
from shared.settings import Settings
from shared.strategies import harami, pinbar
from shared.strategies.base import EvalContext, Match, StrategyDef
from shared.strategies.catalog import Catalog
from shared.timeutil import ManualClock, from_epoch
from tests.helpers import eventually

NOW = datetime(2026, 3, 2, 15, 0, 1, tzinfo=UTC)


class ThresholdParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    threshold: float = Field(0.5, ge=0.0, le=1.0)


def counting_strategy(calls: list) -> StrategyDef:
    """Buys every window at its close, scoring `threshold`; records each evaluation in `calls`."""

    def evaluate(bars: Bars, ctx: EvalContext, params: ThresholdParams) -> Match:
        calls.append(params)
        close = float(bars.close[-1])
        return Match(side="buy", entry=close, stop=close - 1.0, target=close + 2.0, score=params.threshold,
                     features={"threshold": params.threshold, "symbol": ctx.spec.name})

    return StrategyDef(name="counting", engine="scalper", timeframe="1m", Params=ThresholdParams,
                       lookback=lambda params: 100, evaluate=evaluate)


def raising_strategy() -> StrategyDef:
    def evaluate(bars, ctx, params):
        raise RuntimeError("boom")

    return StrategyDef(name="raising", engine="scalper", timeframe="1m", Params=ThresholdParams,
                       lookback=lambda params: 100, evaluate=evaluate)


@pytest.fixture
def calls() -> list:
    return []


@pytest.fixture
def worker(calls) -> StrategyWorker:
    catalog = Catalog([pinbar.STRATEGY, harami.STRATEGY, counting_strategy(calls), raising_strategy()])
    return StrategyWorker(bus=FakeBus(), settings=Settings(prefetch=7), catalog=catalog, clock=ManualClock(NOW))


def sub(bot_id: int, *configs: tuple[str, dict], symbol: str = "XAUUSDm") -> Subscription:
    return Subscription(bot_id=bot_id, account_id=100 + bot_id, symbol=symbol,
                        strategies=tuple(StrategyConfig(name=n, params=p) for n, p in configs))


def window_of(*subs: Subscription, bars: Bars | None = None, symbol: str = "XAUUSD") -> BarWindow:
    bars = bars if bars is not None else make_bars([FLAT] * 120)
    return BarWindow(
        symbol=symbol,
        bars=BarColumns.from_bars(bars),
        closed_through=NOW.replace(second=0),
        source="test",
        subscriptions=subs,
        produced_at=NOW - timedelta(milliseconds=5),
    )


def bar_time_of(window: BarWindow) -> datetime:
    return from_epoch(window.bars.time[-1])


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_match_fans_out_to_every_subscribed_bot_from_one_evaluation(worker, calls):
    window = window_of(sub(1, ("counting", {})), sub(2, ("counting", {"threshold": 0.5}), symbol="XAUUSD"))
    signals, report = await worker.handle_window(window)

    assert len(calls) == 1  # {} and the explicit default are the same parameters
    assert [(s.bot_id, s.account_id, s.symbol) for s in signals] == [(1, 101, "XAUUSDm"), (2, 102, "XAUUSD")]
    bar_time = bar_time_of(window)
    for signal in signals:
        assert signal.signal_id == signal_id_for(bot_id=signal.bot_id, symbol=signal.symbol, strategy="counting",
                                                 timeframe="1m", bar_time=bar_time)
        assert (signal.window_id, signal.bar_time, signal.timeframe) == (window.message_id, bar_time, "1m")
        assert (signal.strategy, signal.side, signal.score) == ("counting", "buy", 0.5)
        assert (signal.entry, signal.stop, signal.target) == (FLAT[3], FLAT[3] - 1, FLAT[3] + 2)
        # the worker adds the bar's spread (a window without spreads: the symbol's typical 12 points) for the cost gates
        assert signal.features == {"threshold": 0.5, "symbol": "XAUUSD", "spread_points": 12.0}
        assert signal.produced_at == NOW
    assert (report.window_id, report.symbol, report.timeframe) == (window.message_id, "XAUUSD", "1m")
    assert report.bar_time == bar_time
    assert [(b.bot_id, b.strategies, b.signal_ids, b.errors) for b in report.bots] == [
        (1, ("counting",), (signals[0].signal_id,), ()),
        (2, ("counting",), (signals[1].signal_id,), ()),
    ]


async def test_distinct_parameters_are_evaluated_separately(worker, calls):
    seventy = ("counting", {"threshold": 0.7})
    window = window_of(sub(1, ("counting", {})), sub(2, seventy), sub(3, seventy))
    signals, _ = await worker.handle_window(window)
    assert sorted(p.threshold for p in calls) == [0.5, 0.7]
    assert [(s.bot_id, s.score) for s in signals] == [(1, 0.5), (2, 0.7), (3, 0.7)]


async def test_a_raising_strategy_is_counted_and_the_others_still_run(worker, calls):
    before = metric("strategy_errors_total", strategy="raising")
    window = window_of(sub(1, ("raising", {}), ("counting", {})), sub(2, ("raising", {"threshold": 0.9})))
    signals, report = await worker.handle_window(window)

    assert metric("strategy_errors_total", strategy="raising") == before + 2  # two distinct parameter sets raised
    assert [(s.bot_id, s.strategy) for s in signals] == [(1, "counting")]
    assert len(calls) == 1
    bot1, bot2 = report.bots
    assert bot1.strategies == ("raising", "counting") and bot1.errors == ("raising: RuntimeError: boom",)
    assert bot2.signal_ids == () and bot2.errors == ("raising: RuntimeError: boom",)


@pytest.mark.parametrize("params", [{"threshold": "high"}, {"threshold": 2.0}, {"thresold": 0.5}])
async def test_a_malformed_subscription_parameter_is_that_bots_error_and_the_others_still_run(worker, calls, params):
    before = metric("strategy_errors_total", strategy="counting")
    window = window_of(sub(1, ("counting", {})), sub(2, ("counting", params), ("price_action_pinbar", {})),
                       sub(3, ("counting", {"threshold": 0.7})))
    signals, report = await worker.handle_window(window)

    assert [(s.bot_id, s.score) for s in signals] == [(1, 0.5), (3, 0.7)]
    bot1, bot2, bot3 = report.bots
    assert bot1.errors == () and bot3.errors == ()
    assert bot2.strategies == ("price_action_pinbar",) and bot2.signal_ids == ()
    [error] = bot2.errors
    assert error.startswith("counting: invalid parameters: thres")
    assert metric("strategy_errors_total", strategy="counting") == before + 1


async def test_defaults_a_strategy_refuses_are_each_bots_error(calls):
    class Required(BaseModel):
        model_config = ConfigDict(frozen=True, extra="forbid")

        threshold: float

    needy = StrategyDef(name="needy", engine="scalper", timeframe="1m", Params=Required, lookback=lambda params: 100,
                        evaluate=lambda bars, ctx, params: calls.append(params))
    worker = StrategyWorker(bus=FakeBus(), settings=Settings(), catalog=Catalog([needy]), clock=ManualClock(NOW))
    before = metric("strategy_errors_total", strategy="needy")
    signals, report = await worker.handle_window(window_of(sub(1, ("needy", {})), sub(2, ("needy", {})),
                                                           sub(3, ("needy", {"threshold": 0.5}))))
    assert signals == [] and len(calls) == 1
    assert [b.errors for b in report.bots] == [("needy: invalid parameters: threshold: Field required",)] * 2 + [()]
    assert metric("strategy_errors_total", strategy="needy") == before + 2  # counted for each bot, as before


async def test_an_unknown_strategy_is_reported_for_its_bot_and_the_rest_run(worker, calls):
    window = window_of(sub(1, ("trend_pullback", {}), ("counting", {}), ("counting", {"threshold": 0.9})))
    signals, report = await worker.handle_window(window)
    assert [s.score for s in signals] == [0.5]  # the bot's first counting entry; a repeat of a name is refused
    assert report.bots[0].strategies == ("counting",)
    assert report.bots[0].errors == ("trend_pullback: unknown strategy", "counting: listed twice; the first entry is used")


async def test_the_real_pinbar_through_the_worker(worker):
    window = window_of(sub(1, ("price_action_pinbar", {})), sub(2, ("price_action_pinbar", {"level_atr": 0.05})),
                       bars=pin_at_swing_low())
    signals, report = await worker.handle_window(window)
    assert [(s.bot_id, s.side, s.features["level_kind"]) for s in signals] == [(1, "buy", "swing_low")]
    assert signals[0].stop < 2001.1 < signals[0].entry < signals[0].target
    assert report.bots[1].strategies == ("price_action_pinbar",) and report.bots[1].signal_ids == ()


async def test_a_harami_subscription_is_judged_on_its_5m_bars_and_stamped_5m(worker):
    m1 = m1_from_5m(harami_after_a_fall())
    window = window_of(sub(1, ("harami", {})), sub(2, ("counting", {})), bars=m1)
    signals, report = await worker.handle_window(window)
    by_strategy = {s.strategy: s for s in signals}
    five, one = by_strategy["harami"], by_strategy["counting"]
    baby_open = from_epoch(int(m1.time[-1]) - 240)  # the 5m bar that the window's last M1 bar completes
    assert (five.timeframe, five.bar_time, five.side) == ("5m", baby_open, "buy")
    assert five.signal_id == signal_id_for(bot_id=1, symbol="XAUUSDm", strategy="harami", timeframe="5m",
                                           bar_time=baby_open)
    assert (one.timeframe, one.bar_time) == ("1m", bar_time_of(window))
    assert report.bar_time == bar_time_of(window) and report.bots[0].signal_ids == (five.signal_id,)
    # One M1 bar earlier no 5m bar completes: the harami bot is scanned and gets nothing.
    signals, report = await worker.handle_window(window_of(sub(1, ("harami", {})), bars=m1[:-1]))
    assert signals == [] and report.bots[0].strategies == ("harami",) and report.bots[0].errors == ()


async def test_no_match_still_reports_every_bot(worker):
    window = window_of(sub(1, ("price_action_pinbar", {})), sub(2))
    signals, report = await worker.handle_window(window)
    assert signals == []
    assert [(b.bot_id, b.strategies, b.signal_ids) for b in report.bots] == [(1, ("price_action_pinbar",), ()), (2, (), ())]


@pytest.mark.parametrize(
    ("window", "reason"),
    [
        (window_of(sub(1, ("counting", {})), bars=Bars.empty()), "no bars"),
        (window_of(sub(1, ("counting", {})), symbol="NOSUCH"), "no symbol spec"),
    ],
)
async def test_a_window_that_can_never_be_judged_is_invalid(worker, window, reason):
    with pytest.raises(InvalidMessage, match=reason):
        await worker.handle_window(window)


async def test_the_hop_latency_is_observed(worker):
    count = metric("bar_to_signal_latency_seconds_count")
    total = metric("bar_to_signal_latency_seconds_sum")
    await worker.handle_window(window_of(sub(1, ("counting", {}))))
    assert metric("bar_to_signal_latency_seconds_count") == count + 1
    assert metric("bar_to_signal_latency_seconds_sum") - total == pytest.approx(0.005)


# --- through the bus ------------------------------------------------------------------------------------------


class FakeConsumer:
    def __init__(self) -> None:
        self.cancelled = False

    async def cancel(self) -> None:
        self.cancelled = True


class FakeBus:
    """Records what the worker asks of the bus; the test delivers messages to the registered handler itself."""

    def __init__(self) -> None:
        self.published: list[tuple[Message, str, str]] = []
        self.batches: list[int] = []  # the size of each publish_many
        self.consumers: list[tuple[QueueSpec, object, int | None, FakeConsumer]] = []
        self.concurrency: list[int] = []

    async def publish(self, message: Message, *, exchange: str, routing_key: str = "", headers=None) -> None:
        self.published.append((message, exchange, routing_key))

    async def publish_many(self, batch: list[Outgoing]) -> None:
        self.batches.append(len(batch))
        for out in batch:
            await self.publish(out.message, exchange=out.exchange, routing_key=out.routing_key, headers=out.headers)

    async def consume(self, spec: QueueSpec, handler, *, prefetch: int | None = None, concurrency: int = 1) -> FakeConsumer:
        consumer = FakeConsumer()
        self.concurrency.append(concurrency)
        self.consumers.append((spec, handler, prefetch, consumer))
        return consumer


async def test_the_worker_consumes_strategy_bars_and_publishes_the_windows_signals_with_its_report(worker):
    bus = worker._bus
    await worker.start()
    [(spec, handler, prefetch, consumer)] = bus.consumers
    assert (spec, prefetch) == (topology.STRATEGY_BARS, 7)
    assert bus.concurrency == [Settings().strategy_concurrency] == [2]

    window = window_of(sub(1, ("counting", {})), sub(2, ("counting", {})), symbol="XAUUSD")
    await handler(window, Delivery(message=window, exchange=topology.MARKET_BARS, routing_key="bars.1m.XAUUSD"))
    kinds = [(type(m).__name__, exchange, key) for m, exchange, key in bus.published]
    assert kinds == [("ScanResult", "strategy.signals", "scan.XAUUSD")]  # one message: decision takes the window at once
    result = bus.published[0][0]
    assert [s.bot_id for s in result.signals] == [1, 2]
    assert [sid for bot in result.report.bots for sid in bot.signal_ids] == [s.signal_id for s in result.signals]
    assert result.report.window_id == window.message_id

    await worker.stop()
    assert consumer.cancelled


async def test_over_the_in_memory_bus_a_windows_signals_reach_decision_with_their_report(calls):
    bus = InMemoryBus()
    await bus.start()
    catalog = Catalog([counting_strategy(calls)])
    worker = StrategyWorker(bus=bus, settings=Settings(), catalog=catalog, clock=ManualClock(NOW))
    await worker.start()
    received: list[Message] = []

    async def record(message: Message, delivery: Delivery) -> None:
        received.append(message)

    await bus.consume(topology.DECISION_SIGNALS, record)
    window = window_of(sub(1, ("counting", {})), sub(2, ("counting", {})), sub(3, ("counting", {"threshold": 0.9})))
    await bus.publish(window, exchange=topology.MARKET_BARS, routing_key=topology.bars_key("1m", "XAUUSD"))
    await eventually(lambda: len(received) == 1, what="the window's result")
    await bus.close()
    [result] = received
    assert isinstance(result, ScanResult)
    assert [s.bot_id for s in result.signals] == [1, 2, 3]
    assert [sid for bot in result.report.bots for sid in bot.signal_ids] == [s.signal_id for s in result.signals]


async def test_the_next_window_is_evaluated_while_the_last_ones_publishes_wait_for_the_broker(calls):
    class SlowConfirms(InMemoryBus):
        """The first batch's confirms do not come until the test says so, as from a busy broker."""

        def __init__(self) -> None:
            super().__init__()
            self.confirm_first = asyncio.Event()
            self.batches = 0

        async def publish_many(self, batch: list[Outgoing]) -> None:
            self.batches += 1
            if self.batches == 1:
                await self.confirm_first.wait()
            await super().publish_many(batch)

    bus = SlowConfirms()
    await bus.start()
    worker = StrategyWorker(bus=bus, settings=Settings(strategy_concurrency=2), catalog=Catalog([counting_strategy(calls)]),
                            clock=ManualClock(NOW))
    await worker.start()
    reports: list[ScanReport] = []

    async def record(message: Message, delivery: Delivery) -> None:
        if isinstance(message, ScanResult):
            reports.append(message.report)

    await bus.consume(topology.DECISION_SIGNALS, record)
    first, second = window_of(sub(1, ("counting", {}))), window_of(sub(2, ("counting", {})), symbol="EURUSD")
    for window in (first, second):
        await bus.publish(window, exchange=topology.MARKET_BARS, routing_key=topology.bars_key("1m", window.symbol))
    await eventually(lambda: [r.window_id for r in reports] == [second.message_id], what="the second window's report")
    bus.confirm_first.set()
    await eventually(lambda: len(reports) == 2, what="the first window's report once confirmed")
    await bus.close()
    assert await bus.queue_depth(topology.STRATEGY_BARS.name) == 0


async def test_the_handler_refuses_a_message_that_is_not_a_bar_window(worker):
    await worker.start()
    handler = worker._bus.consumers[0][1]
    stray = Signal(signal_id=signal_id_for(bot_id=1, symbol="X", strategy="s", timeframe="1m", bar_time=NOW), bot_id=1,
                   account_id=1, symbol="X", timeframe="1m", strategy="s", side="buy", bar_time=NOW, entry=2.0, stop=1.0,
                   target=3.0, score=0.5)
    with pytest.raises(InvalidMessage, match="not Signal"):
        await handler(stray, Delivery(message=stray, exchange=topology.MARKET_BARS, routing_key="bars.1m.X"))
    assert worker._bus.published == []
