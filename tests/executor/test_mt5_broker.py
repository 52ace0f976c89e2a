"""The MT5 broker adapter against the MT5 simulator (mt5sim), never a live terminal: suffixes, filling modes, server time,
the retcode policy, outcome-unknown reconciliation, Algo Trading off, live-account and volume guards, closes."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from services.executor.brokers.base import BrokerUnavailable, OrderRequest
from services.executor.brokers.mt5 import LiveAccountRefused, MT5Broker, filling_for, mt5_alerts_total, safe_comment
from tests.mt5sim.simdata import SYMBOL, flat, make_sim


class SimClock:
    """The simulator's clock as the executor's clock (tests only read it)."""

    speed = 1.0

    def __init__(self, sim) -> None:
        self.sim = sim

    def now(self):
        return self.sim.now()

    async def sleep_until(self, when) -> None:
        while self.sim.now() < when:  # the simulated clock moves only when a test moves it
            await asyncio.sleep(0.01)


def broker_for(sim, **options) -> MT5Broker:
    return MT5Broker(connect=lambda: sim, clock=SimClock(sim), server_time="us_dst", symbol_suffix="m", **options)


def order(cid: str = "sc7-1-abc", *, side: str = "buy", volume: float = 0.1, sl: float | None = 1990.0, tp: float | None = 2010.0,
          magic: int = 100_007, symbol: str = "XAUUSD", expires_in_s: float = 30.0, sim=None) -> OrderRequest:
    expires = sim.now() + timedelta(seconds=expires_in_s) if sim is not None else None
    return OrderRequest(client_order_id=cid, symbol=symbol, side=side, volume=volume, sl=sl, tp=tp, magic=magic, expires_at=expires)


@pytest.fixture
def sim():
    return make_sim(flat(400), select=False)


@pytest.fixture
async def broker(sim):
    b = broker_for(sim)
    await b.start()
    yield b
    await b.aclose()


async def test_a_canonical_symbol_resolves_to_the_suffixed_one_is_selected_and_fills(sim, broker):
    assert sim.symbol_info("XAUUSD") is None  # ref: on a suffix broker the bare name is unknown
    result = await broker.place(order(sim=sim))
    assert (result.status, result.retcode, result.price, result.volume) == ("filled", 10009, 2000.1, 0.1)
    assert sim.symbol_info(SYMBOL).visible  # symbol_select was called
    (pos,) = sim.positions_get()
    assert (result.ticket, result.position.ticket) == (pos.ticket, pos.ticket)
    assert (pos.comment, pos.magic, pos.sl, pos.tp) == ("sc7-1-abc", 100_007, 1990.0, 2010.0)
    # Server time (UTC+3 in July, us_dst) converted back to UTC at the adapter.
    assert result.filled_at == sim.now().replace(microsecond=0) and result.position.opened_at == result.filled_at
    spec = await broker.spec("XAUUSDm")
    assert (spec.name, spec.digits, spec.point, spec.pip_size, spec.volume_max) == ("XAUUSD", 2, 0.01, 0.1, 100.0)


@pytest.mark.parametrize(("bitmask", "filling"), [(1, 0), (2, 1), (3, 0), (0, 2)])
async def test_the_filling_mode_comes_from_the_symbols_bitmask(sim, broker, bitmask, filling):
    assert filling_for(bitmask) == filling
    sim.set_symbol("XAUUSD", filling_mode=bitmask)
    assert (await broker.place(order(sim=sim))).status == "filled"  # a wrong filling mode would answer 10030


def test_comments_are_short_and_safe():
    assert safe_comment("A" * 26) == "A" * 26
    for bad in ("A" * 27, "id:1", "id[1]", "", "caf\u00e9"):
        with pytest.raises(ValueError):
            safe_comment(bad)


async def test_a_lost_answer_of_an_executed_order_is_found_not_resent(sim, broker):
    sim.inject("order_send_lost", placed=True)
    result = await broker.place(order(sim=sim))
    assert (result.status, result.ticket) == ("filled", sim.positions_get()[0].ticket)
    assert len(sim.positions_get()) == 1


@pytest.mark.parametrize("retcode", [10031, 10012, 10011])
async def test_outcome_unknown_retcodes_reconcile_before_anything_else(sim, broker, retcode):
    sim.inject("order_send_answer", retcode=retcode, placed=True)
    found = await broker.place(order(sim=sim))
    assert found.status == "filled" and len(sim.positions_get()) == 1
    sim.inject("order_send_answer", retcode=retcode, placed=False)
    with pytest.raises(BrokerUnavailable):
        await broker.place(order("sc7-2-abc", sim=sim))
    assert len(sim.positions_get()) == 1  # not resent
    assert await broker.find_order("sc7-2-abc", 100_007) is None
    assert (await broker.find_order("sc7-1-abc", 100_007)).ticket == found.ticket
    assert await broker.find_order("sc7-1-abc", 999) is None  # another bot's magic


async def test_a_requote_is_retried_with_a_fresh_price(sim, broker):
    sim.inject("order_send_answer", retcode=10004)
    result = await broker.place(order(sim=sim))
    assert result.status == "filled" and len(sim.positions_get()) == 1


async def test_a_requote_is_not_retried_after_the_intent_expired(sim, broker):
    sim.inject("order_send_answer", retcode=10020, times=5)
    result = await broker.place(order(sim=sim, expires_in_s=-1))
    assert result.status == "rejected" and sim.positions_get() == ()


async def test_final_retcodes_are_rejections(sim, broker):
    result = await broker.place(order(sim=sim, sl=2000.05))  # stop above the bid of a buy: 10016
    assert (result.status, result.retcode) == ("rejected", 10016)
    assert sim.positions_get() == ()


async def test_algo_trading_off_alerts_and_stops_sending(sim, broker):
    before = mt5_alerts_total.labels(kind="algo_trading_off")._value.get()
    sim.set_algo_trading(False)
    result = await broker.place(order(sim=sim))
    assert (result.status, result.retcode) == ("failed", 10027)
    assert "Algo Trading" in broker.health_details()["trading_disabled"]
    assert mt5_alerts_total.labels(kind="algo_trading_off")._value.get() == before + 1
    assert len(sim.history_orders_get(ticket=None, date_from=0, date_to=2**31)) == 0  # nothing was sent
    sim.set_algo_trading(True)
    assert (await broker.place(order("sc7-3-abc", sim=sim))).status == "filled"
    assert broker.health_details()["trading_disabled"] == ""


async def test_a_real_money_account_is_refused_unless_allowed():
    live = make_sim(flat(300), trade_mode="real")
    with pytest.raises(LiveAccountRefused):
        await broker_for(live).start()
    allowed = broker_for(live, allow_live=True)
    await allowed.start()
    assert (await allowed.place(order(sim=live))).status == "filled"
    await allowed.aclose()


async def test_volume_is_capped_by_the_symbol_and_the_account(sim):
    capped = broker_for(sim, max_volume=0.5)
    result = await capped.place(order(sim=sim, volume=0.6))
    assert (result.status, result.retcode) == ("rejected", 10014) and "maximum 0.5" in result.reason
    sim.set_symbol("XAUUSD", volume_max=0.2)
    capped._symbols.clear()
    assert (await capped.place(order(sim=sim, volume=0.3))).status == "rejected"
    assert sim.positions_get() == ()
    await capped.aclose()


async def test_hedging_close_names_the_position(sim, broker):
    a = await broker.place(order("a1", sim=sim))
    b = await broker.place(order("b1", sim=sim))
    closed = await broker.close(a.ticket, "kill_switch")
    assert (closed.ticket, closed.reason, closed.close_price, closed.volume) == (a.ticket, "kill_switch", 2000.0, 0.1)
    assert closed.pnl == pytest.approx(-1.0)
    assert [p.ticket for p in sim.positions_get()] == [b.ticket]  # the other one untouched (no new opposite position)
    assert await broker.close(a.ticket, "manual") is not None  # already closed: read back from history
    assert await broker.close(999_999, "manual") is None


async def test_netting_close_is_an_opposite_deal():
    net = make_sim(flat(300), margin_mode="netting")
    b = broker_for(net)
    await b.start()
    opened = await b.place(order(sim=net))
    closed = await b.close(opened.ticket, "manual")
    assert closed.ticket == opened.ticket and net.positions_get() == ()
    await b.aclose()


async def test_a_stop_hit_at_the_broker_is_read_back_with_its_reason(broker):
    sim = make_sim([(2000.0, 2000.5, 1999.5, 2000.0)] * 101 + [(2000.0, 2000.2, 1980.0, 1985.0)] * 50)
    b = broker_for(sim)
    opened = await b.place(order(sim=sim))
    assert await b.find_close(opened.ticket) is None
    sim.step(2)
    closed = await b.find_close(opened.ticket)
    assert (closed.reason, closed.close_price) == ("sl", 1990.0)
    await b.aclose()


async def test_rates_are_closed_bars_in_utc(sim, broker):
    sim.advance(30)  # inside a bar: it is still forming
    bars = await broker.rates("XAUUSD", 5)
    newest = int(bars.time[-1])
    minute = int(sim.now().timestamp()) // 60 * 60
    assert newest == minute - 60 and len(bars) == 5


async def test_the_session_reconnects_after_the_link_drops(sim, broker):
    await broker.place(order(sim=sim))
    sim.faults.drop_connection()
    with pytest.raises(BrokerUnavailable):
        await broker.positions()
    assert not broker.health_details()["connected"]
    assert not await broker.healthy()
    sim.reconnect()
    assert len(await broker.positions()) == 1
    assert await broker.healthy()


async def test_server_time_converts_to_utc_across_the_us_dst_switch():
    # 2025-03-09 07:00 UTC: the server clock jumps from UTC+2 to UTC+3 (second Sunday of March, us_dst).
    from datetime import UTC, datetime

    from mt5sim import SimulatedMT5
    from tests.mt5sim.simdata import bars_from

    start = datetime(2025, 3, 9, 6, 0, tzinfo=UTC)
    sim = SimulatedMT5({"XAUUSD": bars_from(flat(200), start=start)}, server_time="us_dst", suffix="m", start=start + timedelta(minutes=150))
    assert sim.initialize()
    b = broker_for(sim)
    bars = await b.rates("XAUUSD", 120)
    expected = [int(start.timestamp()) + 60 * i for i in range(30, 150)]
    assert list(bars.time) == expected  # one UTC minute apart straight through the switch
    server = sim.copy_rates_from_pos(SYMBOL, sim.TIMEFRAME_M1, 1, 120)["time"]
    assert int(server[-1]) - expected[-1] == 3 * 3600 and int(server[0]) - expected[0] == 2 * 3600
    filled = await b.place(order(sim=sim))
    assert filled.filled_at == sim.now().replace(microsecond=0)
    await b.aclose()


async def test_terminal_time_reads_the_terminals_clock_even_before_market_watch_shows_a_symbol():
    sim = make_sim(flat(400), select=False)
    broker = broker_for(sim)
    await broker.start()
    try:
        # What sets a terminal-following clock at the executor's start: a just-selected symbol has no tick yet, and the
        # forming bar's minute stands in.
        at = await broker.terminal_time()
        assert at is not None and timedelta(0) <= sim.now() - at < timedelta(minutes=1)
        sim.advance(30)
        assert await broker.terminal_time("XAUUSD") == sim.now()
    finally:
        await broker.aclose()
