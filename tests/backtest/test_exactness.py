"""Item 7: the backtester emits exactly the live path's signals. The live path here is the real one: market data's
service scanning a feed at each bar's close (aligned scanning), publishing BarWindows (lookback, levels), and the
strategy worker's `scan_window` on each; the backtester runs over the same bars with its prefilters on."""

from __future__ import annotations

import asyncio
import math
from datetime import timedelta

import pytest

from scalper.backtest.signals import scan_history
from services.market_data.service import MarketDataService
from services.strategy.service import scan_window
from shared.loaders import load_m1
from shared.messages import BarWindow, PlanSymbol, ScanPlan, StrategyConfig, Subscription
from shared.strategies import catalog
from shared.symbols import get_spec
from shared.timeutil import ManualClock, from_epoch
from tests.market_data.md_helpers import ListFeed, RecordingBus, settings

START, COUNT = 30_000, 4_000  # a slice of the gold file: about three trading days, two day changes


def live_signals(bars, configs, start: int, end: int, spec_symbol: str = "XAUUSD"):
    lookback = catalog.CATALOG.lookback_for(configs)
    plan = ScanPlan(symbols=(PlanSymbol(symbol=spec_symbol, lookback=lookback, subscriptions=(
        Subscription(bot_id=1, account_id=1, symbol=spec_symbol, strategies=tuple(configs)),)),))
    clock = ManualClock(from_epoch(int(bars.time[start]) + 61))
    service = MarketDataService(bus=RecordingBus(), feed=ListFeed(spec_symbol, bars), clock=clock, settings=settings(lookback_bars=100))
    service.set_plan(plan)
    out = []

    async def replay():
        for i in range(start, end):
            clock.set(from_epoch(int(bars.time[i]) + 60) + timedelta(seconds=1))  # aligned: a second after the close
            for window in await service.scan_once():
                assert isinstance(window, BarWindow)
                signals, _ = scan_window(window, catalog=catalog.CATALOG, now=clock.now())
                out.extend(signals)

    asyncio.run(replay())
    return out


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)


@pytest.mark.parametrize("which", ["gold", "eurusd", "generated"])
def test_backtester_signals_equal_the_live_path(which, request):
    if which == "generated":
        from tests.backtest.test_over_history import generated

        bars, symbol, start = generated(START + COUNT + 10), "XAUUSD", START
    else:
        path = request.getfixturevalue("gold_file" if which == "gold" else "eurusd_file")
        bars, symbol = load_m1(path).bars, "XAUUSD" if which == "gold" else "EURUSD"
        start = START if which == "gold" else 20_000
    names = catalog.names("scalper")
    configs = [StrategyConfig(name=n) for n in names]
    end = start + COUNT
    live = live_signals(bars, configs, start, end, symbol)
    ours = scan_history(bars, spec=get_spec(symbol), configs=configs, start=start, end=end)

    assert len(live) > 20, "the slice must hold signals for the comparison to mean anything"
    live_keys = [(int(s.bar_time.timestamp()), s.strategy, s.side) for s in live]
    our_keys = [(s.bar_time, s.strategy, s.side) for s in ours]
    assert our_keys == live_keys
    for a, b in zip(live, ours, strict=True):
        assert close(a.entry, b.entry) and close(a.stop, b.stop) and close(a.target, b.target), (a, b)
        assert close(a.score, b.score), (a.score, b.score)
        assert a.timeframe == b.timeframe


def same_signals(ours, evaluated) -> None:
    """The same bars, strategies and sides; prices and scores within 1e-9 relative (architecture.md); numeric features
    (reported, not traded on) within 1e-9 relative or absolute: a score component near 0 has no relative precision."""
    assert [(s.index, s.bar_time, s.strategy, s.side, s.timeframe) for s in ours] == \
        [(s.index, s.bar_time, s.strategy, s.side, s.timeframe) for s in evaluated]
    for a, b in zip(ours, evaluated, strict=True):
        assert close(a.entry, b.entry) and close(a.stop, b.stop) and close(a.target, b.target) and close(a.score, b.score), (a, b)
        assert list(a.features) == list(b.features), (a.features, b.features)
        for key, value in b.features.items():
            got = a.features[key]
            ok = (close(got, value) or abs(got - value) <= 1e-9) if isinstance(value, float) else got == value
            assert ok, (a.strategy, a.bar_time, key, got, value)


@pytest.mark.parametrize("which", ["gold", "eurusd", "gapped"])
def test_prefilters_and_arrays_never_drop_or_change_a_signal(which, request):
    """With prefilters and arrays off every window is evaluated: the signals are the same (the prefilters only skip
    bars; the arrays give evaluate's matches within 1e-9 and leave the rest to it). Every engine's strategies, so
    harami's 5-minute signals too (their bar_time is the 5-minute bar's); `gapped`: generated bars on a thin
    market's clock (tests/backtest/test_over_history.py)."""
    if which == "gapped":
        from tests.backtest.test_over_history import gapped

        bars, symbol = gapped(24_000), "XAUUSD"
    else:
        path = request.getfixturevalue("gold_file" if which == "gold" else "eurusd_file")
        bars, symbol = load_m1(path).bars, "XAUUSD" if which == "gold" else "EURUSD"
    configs = [StrategyConfig(name=n) for n in catalog.names(None)]
    kwargs = {"spec": get_spec(symbol), "configs": configs, "start": 8_000, "end": 20_000}
    filtered = scan_history(bars, prefilter=True, **kwargs)
    assert len(filtered) > 50
    assert sum(s.strategy == "harami" for s in filtered) > 5
    same_signals(filtered, scan_history(bars, prefilter=False, **kwargs))
    same_signals(scan_history(bars, arrays=False, **kwargs), scan_history(bars, prefilter=False, **kwargs))


@pytest.mark.parametrize("which", ["gold", "eurusd", "generated"])
def test_harami_engine_equals_the_live_path(which, request):
    """The harami engine's signals (its array form, evaluate where the arrays leave a bar) against market data and
    the strategy worker replaying the same bars: same 5-minute bar times, strategies, sides; prices and scores within
    1e-9 relative."""
    names = catalog.names("harami")
    assert names, "the harami engine has a strategy"
    if which == "generated":
        from tests.backtest.test_over_history import generated

        bars, symbol, start = generated(START + 8_010), "XAUUSD", START
    else:
        path = request.getfixturevalue("gold_file" if which == "gold" else "eurusd_file")
        bars, symbol = load_m1(path).bars, "XAUUSD" if which == "gold" else "EURUSD"
        start = START if which == "gold" else 20_000
    configs = [StrategyConfig(name=n) for n in names]
    end = min(start + 8_000, len(bars))
    live = live_signals(bars, configs, start, end, symbol)
    ours = scan_history(bars, spec=get_spec(symbol), configs=configs, start=start, end=end)
    assert len(live) > 5, "the slice must hold signals for the comparison to mean anything"
    assert [(int(s.bar_time.timestamp()), s.strategy, s.side) for s in live] == [(s.bar_time, s.strategy, s.side) for s in ours]
    for a, b in zip(live, ours, strict=True):
        assert close(a.entry, b.entry) and close(a.stop, b.stop) and close(a.target, b.target), (a, b)
        assert close(a.score, b.score), (a.score, b.score)
        assert a.timeframe == b.timeframe == "5m"
