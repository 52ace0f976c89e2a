"""Injected faults: IPC errors, a failing initialize, requotes, the 10031 answer to a placed order, a lost answer,
Algo Trading off, a partial fill and a dropped connection."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from mt5sim import SimulatedMT5
from tests.mt5sim.simdata import SYMBOL, make_sim, market

FAR_PAST, FAR_FUTURE = datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)


def find_by_comment(sim, comment: str):
    """What reconciliation does before any resend: look for the order's tag in positions and deals."""
    positions = [p for p in sim.positions_get() if p.comment == comment]
    deals = [d for d in sim.history_deals_get(FAR_PAST, FAR_FUTURE) if d.comment == comment]
    return positions, deals


@pytest.mark.parametrize(("code", "text"), [(-10004, "No IPC connection"), (-10005, "IPC timeout")])
def test_a_query_fails_once_with_an_ipc_error(sim, code, text):
    sim.faults.fail_call("positions_get", code=code)
    assert sim.account_info() is not None  # another function is not hit
    assert sim.positions_get() is None
    assert sim.last_error() == (code, text)
    assert sim.positions_get() == ()
    assert sim.last_error() == (1, "Success")


def test_a_fault_for_any_call_with_a_delay(sim):
    sim.inject("fail_call", name="*", code=-10005, times=2, delay_s=0.05)
    began = time.monotonic()
    assert sim.symbol_info_tick(SYMBOL) is None
    assert sim.copy_rates_from_pos(SYMBOL, sim.TIMEFRAME_M1, 1, 10) is None
    assert time.monotonic() - began >= 0.1
    assert sim.symbol_info_tick(SYMBOL) is not None


def test_initialize_fails_then_succeeds():
    sim = make_sim()
    sim.shutdown()
    sim.faults.fail_initialize(code=-10003, times=2)
    assert sim.initialize() is False
    assert sim.last_error() == (-10003, "IPC initialize failed, MetaTrader 5 x64 not found")
    assert sim.initialize() is False
    assert sim.positions_get() is None
    assert sim.initialize() is True
    assert sim.positions_get() == ()


@pytest.mark.parametrize(("retcode", "comment"), [(10004, "Requote"), (10020, "Prices changed")])
def test_requote_and_price_changed_place_nothing(sim, retcode, comment):
    sim.faults.order_send_answer(retcode)
    result = market(sim, sim.ORDER_TYPE_BUY)
    assert (result.retcode, result.comment, result.deal, result.order) == (retcode, comment, 0, 0)
    assert (result.bid, result.ask) == (2000.0, 2000.1)  # fresh prices to retry with
    assert sim.positions_get() == () and find_by_comment(sim, "cid-1") == ([], [])
    assert market(sim, sim.ORDER_TYPE_BUY).retcode == sim.TRADE_RETCODE_DONE  # used up: the retry goes through


def test_10031_although_the_order_was_placed(sim):
    """The nasty case: the answer says CONNECTION, yet the trade server opened the position."""
    sim.faults.order_send_answer(10031, placed=True)
    result = market(sim, sim.ORDER_TYPE_BUY, comment="c-7f3a9", magic=11)
    assert (result.retcode, result.deal, result.order, result.volume, result.price) == (10031, 0, 0, 0.0, 0.0)
    assert result.request.comment == "c-7f3a9"
    positions, deals = find_by_comment(sim, "c-7f3a9")
    assert len(positions) == 1 and positions[0].magic == 11 and positions[0].volume == 0.1
    assert len(deals) == 1 and deals[0].entry == sim.DEAL_ENTRY_IN and deals[0].order == positions[0].ticket
    assert sim.history_deals_get(ticket=positions[0].ticket) == (deals[0],)


def test_10031_with_nothing_placed(sim):
    sim.faults.order_send_answer(10031, placed=False)
    assert market(sim, sim.ORDER_TYPE_BUY).retcode == 10031
    assert sim.positions_get() == ()


def test_order_send_answer_lost_like_a_bridge_timeout(sim):
    sim.faults.order_send_lost(placed=True)
    assert market(sim, sim.ORDER_TYPE_BUY, comment="c-lost") is None
    assert sim.last_error() == (-10005, "IPC timeout")
    positions, deals = find_by_comment(sim, "c-lost")
    assert len(positions) == 1 and len(deals) == 1
    sim.faults.order_send_lost(placed=False, code=-10004)
    assert market(sim, sim.ORDER_TYPE_BUY, comment="c-gone") is None
    assert sim.last_error() == (-10004, "No IPC connection")
    assert find_by_comment(sim, "c-gone") == ([], [])


def test_algo_trading_off_is_10027(sim):
    sim.inject("algo_trading_off")
    assert sim.terminal_info().trade_allowed is False
    result = market(sim, sim.ORDER_TYPE_BUY)
    assert (result.retcode, result.comment) == (10027, "AutoTrading disabled by client")
    assert sim.positions_get() == ()
    sim.set_algo_trading(True)
    assert market(sim, sim.ORDER_TYPE_BUY).retcode == sim.TRADE_RETCODE_DONE


def test_partial_fill_is_10010_with_the_filled_volume(sim):
    sim.faults.order_send_partial(0.04)
    result = market(sim, sim.ORDER_TYPE_BUY, volume=0.1)
    assert (result.retcode, result.volume) == (sim.TRADE_RETCODE_DONE_PARTIAL, 0.04)
    assert sim.positions_get()[0].volume == 0.04


def test_dropped_connection_fails_every_call_until_reconnect_and_initialize(sim):
    opened = market(sim, sim.ORDER_TYPE_BUY)
    sim.faults.drop_connection()
    for call in (sim.positions_get, sim.account_info, sim.terminal_info, lambda: sim.symbol_info_tick(SYMBOL)):
        assert call() is None
        assert sim.last_error() == (-10004, "No IPC connection")
    assert market(sim, sim.ORDER_TYPE_SELL, position=opened.order) is None
    assert sim.initialize() is False  # the terminal is still unreachable
    sim.reconnect()
    assert sim.positions_get() is None  # the link is back, but this session must initialise again
    assert sim.initialize() is True
    assert [p.ticket for p in sim.positions_get()] == [opened.order]


def test_inject_rejects_unknown_faults(sim):
    with pytest.raises(ValueError, match="unknown fault"):
        sim.inject("meteor_strike")


def test_faults_are_shared_by_sessions_of_one_terminal(sim):
    other = SimulatedMT5(terminal=sim.terminal)
    assert other.positions_get() is None  # a new session starts uninitialised
    assert other.initialize() and other.symbol_select(SYMBOL)
    market(other, other.ORDER_TYPE_BUY)
    assert len(sim.positions_get()) == 1
    assert other.symbol_info("XAUUSD") is None
    assert sim.last_error() == (1, "Success")  # last_error belongs to each session
