"""The rates RPC over the real in-memory bus: market data's client (shared.rates) asks, the executor answers from the MT5
adapter on the simulator (closed M1 bars only, times in UTC)."""

from __future__ import annotations

import pytest

from services.executor.brokers.mt5 import MT5Broker
from services.executor.rules import PositionRules
from services.executor.service import ExecutorService
from shared.bus import topology
from shared.bus.memory import InMemoryBus
from shared.rates import RatesClient, RatesUnavailable, fetch_rates
from tests.executor.fakes import ACCOUNT, settings
from tests.executor.test_mt5_broker import SimClock
from tests.mt5sim.simdata import START, bars_from, flat, make_sim


@pytest.fixture
async def stack(sessions):
    bus = InMemoryBus(delivery_limit=3, redelivery_delay_s=0.001)
    await bus.start()
    await bus.declare_queue(topology.DECISION_EVENTS)  # the events' consumer (decision) exists
    sim = make_sim(flat(400), at_bar=120)
    sim.advance(20)  # the 120th bar is forming
    broker = MT5Broker(connect=lambda: sim, clock=SimClock(sim), server_time="us_dst", symbol_suffix="m")
    service = ExecutorService(bus=bus, sessions=sessions, clock=SimClock(sim), settings=settings(), broker=broker, account_ids=[ACCOUNT],
                              rules=PositionRules(_env_file=None))
    await service.start()
    yield bus, sim
    await service.stop()
    await bus.close()


async def test_market_data_gets_closed_bars_in_utc(stack):
    bus, sim = stack
    client = RatesClient(bus, timeout_s=5)
    bars = await client.fetch(account_id=ACCOUNT, symbol="XAUUSD", count=50)
    expected = bars_from(flat(400))["time"][70:120]  # UTC epochs of bars 70..119: the forming bar 120 is left out
    assert list(bars.time) == list(expected)
    assert int(bars.time[-1]) == int(START.timestamp()) + 119 * 60
    again = await client.fetch(account_id=ACCOUNT, symbol="XAUUSDm", count=3)
    assert list(again.time) == list(expected[-3:])
    await client.close()


async def test_errors_and_absent_executors_are_reported_not_hung(stack):
    bus, _ = stack
    with pytest.raises(RatesUnavailable, match="no symbol|failed"):
        await fetch_rates(bus, account_id=ACCOUNT, symbol="NOPE", count=5, timeout_s=5)
    with pytest.raises(RatesUnavailable, match="no executor"):
        await fetch_rates(bus, account_id=99, symbol="XAUUSD", count=5, timeout_s=5)
