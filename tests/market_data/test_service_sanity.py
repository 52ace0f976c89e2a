"""Market data's scan applies shared.sanity: absurd bars refused with their reasons and counted once, prices with
too many decimals rounded and counted as repaired, and a symbol whose new bars are all refused pauses with the reason."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
from prometheus_client import REGISTRY

from shared.bars import Bars
from tests.market_data.md_helpers import ListFeed, RecordingBus, make_bars, plan, settings
from tests.market_data.test_service import T0, extend, list_service


def metric(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_1e308_bar_and_a_10x_high_are_refused_counted_once_and_kept_out_of_the_window():
    service, feed, bus, clock, symbol = list_service()
    absurd, tall = int(feed.bars.time[-40]), int(feed.bars.time[-12])
    cols = {f: getattr(feed.bars, f).copy() for f in ("open", "high", "low", "close")}
    for f in cols:
        cols[f][-40] = 1e308
    cols["high"][-12] = cols["close"][-12] * 10
    feed.bars = Bars(feed.bars.time, cols["open"], cols["high"], cols["low"], cols["close"], feed.bars.tick_volume, feed.bars.spread)

    [window] = await service.scan_once()

    assert absurd not in window.bars.time and tall not in window.bars.time and len(window.bars.time) == 150
    assert max(window.bars.high) < 200  # the walk is near 100
    assert metric("bars_rejected_total", symbol=symbol, reason="jump_outlier") == 1
    assert metric("bars_rejected_total", symbol=symbol, reason="range_outlier") == 1
    extend(feed, 1)
    clock.advance(timedelta(minutes=1))
    assert len(await service.scan_once()) == 1
    assert metric("bars_rejected_total", symbol=symbol, reason="jump_outlier") == 1  # not counted again


async def test_prices_with_more_decimals_than_the_digits_are_rounded_and_counted_as_repaired():
    bars = make_bars(T0 - timedelta(minutes=300), 300, price=2000.0)  # unrounded floats: gold has 2 digits
    for f in ("open", "high", "low", "close"):
        getattr(bars, f)[:] = np.round(getattr(bars, f), 2)
    bars.close[-5] += 0.003
    bars.high[-5] = max(bars.high[-5], bars.close[-5])
    feed = ListFeed("XAUUSD", bars)
    service = _service(feed)
    before = metric("bars_repaired_total", symbol="XAUUSD", reason="price_digits")

    [window] = await service.scan_once()
    await service.scan_once()

    assert window.bars.close[-5] == round(float(bars.close[-5]), 2) and len(window.bars.close) == 150
    assert metric("bars_repaired_total", symbol="XAUUSD", reason="price_digits") == before + 1


def _service(feed):
    from services.market_data.service import MarketDataService
    from shared.timeutil import ManualClock

    service = MarketDataService(bus=RecordingBus(), feed=feed, clock=ManualClock(T0 + timedelta(seconds=1)), settings=settings())
    service.set_plan(plan((feed.symbol, 150)))
    return service


async def test_a_symbol_whose_new_bars_are_all_refused_pauses_with_the_reason_in_readiness():
    service, feed, bus, clock, symbol = list_service()
    assert len(await service.scan_once()) == 1
    good = len(feed.bars)
    extend(feed, 10)
    cols = {f: getattr(feed.bars, f).copy() for f in ("open", "high", "low", "close")}
    for f in cols:
        cols[f][good:] *= 3  # a feed that now serves three times the price
    feed.bars = Bars(feed.bars.time, cols["open"], cols["high"], cols["low"], cols["close"], feed.bars.tick_volume, feed.bars.spread)
    clock.advance(timedelta(minutes=10))

    assert await service.scan_once() == []
    ready, details = service.readiness()
    assert symbol in details["stale"]
    assert "the newer bars are refused" in details["stale"][symbol] and "jump_outlier" in details["stale"][symbol]
    assert metric("bars_rejected_total", symbol=symbol, reason="jump_outlier") == 10
