"""Symbol specs from the broker: an MT5 session's symbol_info overrides the shipped default and describes symbols the
shipped table lacks, in the session's process and, through the messages that carry them, in the others."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.executor.brokers.mt5 import MT5Broker
from mt5sim.module import SimulatedMT5
from shared.messages import AccountSnapshot, BarWindow, decode
from shared.symbols import DEFAULT_SPECS, SymbolSpec, UnknownSymbol, broker_spec, get_spec, learn_spec
from tests.executor.test_mt5_broker import SimClock
from tests.mt5sim.simdata import START, bars_from, flat


def test_a_learnt_spec_overrides_the_default_and_an_unknown_symbol_needs_one():
    assert get_spec("XAUUSDm", "m") is DEFAULT_SPECS["XAUUSD"] and broker_spec("XAUUSD") is None
    wider = DEFAULT_SPECS["XAUUSD"].model_copy(update={"stops_level": 40, "volume_step": 0.1})
    learn_spec(wider)
    assert get_spec("XAUUSDm", "m") == wider and broker_spec("XAUUSDm", "m") == wider
    with pytest.raises(UnknownSymbol, match="no broker has described it"):
        get_spec("XAGUSD")


async def test_an_mt5_session_describes_a_symbol_the_shipped_table_lacks():
    sim = SimulatedMT5({"XAUUSD": bars_from(flat(300)), "XAGUSD": bars_from(flat(300, price=25.0))}, server_time="utc",
                       suffix="m", start=START)
    assert sim.initialize()
    broker = MT5Broker(connect=lambda: sim, clock=SimClock(sim), server_time="utc", symbol_suffix="m")
    await broker.start()
    try:
        with pytest.raises(UnknownSymbol):
            get_spec("XAGUSDm", "m")  # nobody has described it yet: a bot on it is refused with this reason
        spec = await broker.spec("XAGUSDm")
        assert spec.name == "XAGUSD"
        assert get_spec("XAGUSDm", "m") == spec  # this process (the embedded stack) trades it from now on
        assert [s.name for s in broker.specs()] == ["XAGUSD"]
    finally:
        await broker.aclose()


async def test_the_specs_travel_to_decision_in_the_snapshot_and_to_the_strategy_workers_in_the_window():
    """Distributed mode: the executor's process learnt the spec; decision learns it from the AccountSnapshot, a
    strategy worker from the BarWindow (market data learnt it from the rates reply)."""
    from services.strategy.service import scan_window
    from shared.messages import StrategyConfig, Subscription
    from shared.strategies import catalog
    from shared.bars import Bars
    from shared.messages import BarColumns

    spec = SymbolSpec(name="XAGUSD", digits=3, point=0.001, pip_size=0.01, contract_size=5000, volume_min=0.01,
                      volume_step=0.01, volume_max=50, stops_level=10, round_number_step=0.5)
    snapshot = AccountSnapshot(account_id=2, balance=1.0, equity=1.0, margin=0.0, margin_free=1.0,
                               taken_at=datetime(2026, 1, 5, tzinfo=UTC), specs=(spec,))
    received, unknown = decode(snapshot.type_name, snapshot.encode())
    assert received.specs == (spec,) and unknown == []

    window = BarWindow(symbol="XAGUSD", timeframe="1m", bars=BarColumns.from_bars(Bars.from_columns(
        time=[0], open=[25.0], high=[25.1], low=[24.9], close=[25.0], tick_volume=[1], spread=[10])),
        closed_through=datetime(1970, 1, 1, 0, 1, tzinfo=UTC), source="mt5", spec=spec,
        subscriptions=(Subscription(bot_id=1, account_id=2, symbol="XAGUSD", strategies=(StrategyConfig(name="price_action_pinbar"),)),))
    received, _ = decode(window.type_name, window.encode())
    assert received.spec == spec
    signals, report = scan_window(received, catalog=catalog.CATALOG, now=datetime(1970, 1, 1, 0, 2, tzinfo=UTC))
    assert signals == [] and [b.bot_id for b in report.bots] == [1]  # evaluated, not refused as an unknown symbol
    assert get_spec("XAGUSD") == spec
