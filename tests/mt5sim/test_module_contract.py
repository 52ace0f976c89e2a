"""The module surface: None vs (), last_error, connection, records, constants, suffixes and Market Watch."""

from __future__ import annotations

import pytest

from mt5sim import SimulatedMT5
from mt5sim.records import RATES_DTYPE
from tests.mt5sim.simdata import SYMBOL, make_sim, market


def test_calls_before_initialize_fail_with_no_ipc_connection():
    sim = make_sim()
    sim.shutdown()
    assert sim.positions_get() is None
    assert sim.last_error() == (-10004, "No IPC connection")
    assert sim.account_info() is None
    assert market(sim, sim.ORDER_TYPE_BUY) is None


def test_last_error_is_one_global_overwritten_by_every_call(sim):
    assert sim.symbol_info("XAUUSD") is None
    assert sim.last_error() == (-4, "Terminal: Not found")
    assert sim.last_error() == (-4, "Terminal: Not found")  # reading it changes nothing
    assert sim.account_info() is not None
    assert sim.last_error() == (1, "Success")


def test_queries_return_empty_tuple_when_nothing_matches(sim):
    assert sim.positions_get() == ()
    assert sim.positions_get(symbol="EURUSDm") == ()
    assert sim.positions_get(ticket=123) == ()
    assert sim.orders_get() == ()
    assert sim.symbols_get(group="*NOSUCH*") == ()
    assert sim.history_deals_get(ticket=123) == ()
    assert sim.history_orders_get(position=123) == ()
    assert sim.last_error() == (1, "Success")
    assert sim.positions_total() == 0


def test_history_without_dates_or_ticket_is_an_error(sim):
    assert sim.history_deals_get() is None
    assert sim.last_error()[0] == -2
    assert sim.history_deals_get("yesterday", "today") is None
    assert sim.last_error() == (-2, 'Invalid "date_from" argument')


def test_initialize_and_login_check_the_account():
    sim = make_sim(password="secret", login=777)
    sim.shutdown()
    assert sim.initialize(login=777, password="wrong", server="Simulated-Demo") is False
    assert sim.last_error() == (-6, "Terminal: Authorization failed")
    assert sim.initialize(login=777, password="secret", server="Simulated-Demo") is True
    assert sim.login(778, password="secret") is False
    assert sim.login(777, password="secret") is True
    assert sim.last_error() == (1, "Success")


def test_version_terminal_and_account_records(sim):
    assert sim.version()[0] == 500
    term = sim.terminal_info()
    assert term.connected and term.trade_allowed and not term.tradeapi_disabled
    assert {"build", "maxbars", "company", "name", "path"} <= set(term._asdict())
    acc = sim.account_info()
    assert (acc.login, acc.trade_mode, acc.margin_mode, acc.leverage) == (5_000_001, 0, 2, 100)
    assert acc.balance == acc.equity == 10_000.0 and acc.margin == 0.0
    real = make_sim(trade_mode="real", margin_mode="netting", balance=500.0, leverage=30, login=9)
    acc = real.account_info()
    assert (acc.login, acc.trade_mode, acc.margin_mode, acc.leverage, acc.balance) == (9, 2, 0, 30, 500.0)


# The reference's constants table, value by value ("Many public repos get these numbers wrong").
REFERENCE_CONSTANTS = {
    "TRADE_ACTION_DEAL": 1, "TRADE_ACTION_PENDING": 5, "TRADE_ACTION_SLTP": 6, "TRADE_ACTION_MODIFY": 7,
    "TRADE_ACTION_REMOVE": 8, "TRADE_ACTION_CLOSE_BY": 10,
    "ORDER_TYPE_BUY": 0, "ORDER_TYPE_SELL": 1, "ORDER_TYPE_BUY_LIMIT": 2, "ORDER_TYPE_SELL_LIMIT": 3,
    "ORDER_TYPE_BUY_STOP": 4, "ORDER_TYPE_SELL_STOP": 5, "ORDER_TYPE_BUY_STOP_LIMIT": 6,
    "ORDER_TYPE_SELL_STOP_LIMIT": 7, "ORDER_TYPE_CLOSE_BY": 8,
    "ORDER_FILLING_FOK": 0, "ORDER_FILLING_IOC": 1, "ORDER_FILLING_RETURN": 2, "ORDER_FILLING_BOC": 3,
    "ORDER_TIME_GTC": 0, "ORDER_TIME_DAY": 1, "ORDER_TIME_SPECIFIED": 2, "ORDER_TIME_SPECIFIED_DAY": 3,
    "DEAL_ENTRY_IN": 0, "DEAL_ENTRY_OUT": 1, "DEAL_ENTRY_INOUT": 2, "DEAL_ENTRY_OUT_BY": 3,
    "DEAL_TYPE_BUY": 0, "DEAL_TYPE_SELL": 1, "DEAL_TYPE_BALANCE": 2,
    "DEAL_REASON_EXPERT": 3, "DEAL_REASON_SL": 4, "DEAL_REASON_TP": 5, "DEAL_REASON_SO": 6,
    "POSITION_TYPE_BUY": 0, "POSITION_TYPE_SELL": 1,
    "TIMEFRAME_M1": 1, "TIMEFRAME_M5": 5, "TIMEFRAME_M15": 15, "TIMEFRAME_H1": 16385, "TIMEFRAME_D1": 16408,
    "TRADE_RETCODE_REQUOTE": 10004, "TRADE_RETCODE_PLACED": 10008, "TRADE_RETCODE_DONE": 10009,
    "TRADE_RETCODE_DONE_PARTIAL": 10010, "TRADE_RETCODE_INVALID_STOPS": 10016, "TRADE_RETCODE_PRICE_CHANGED": 10020,
    "TRADE_RETCODE_PRICE_OFF": 10021, "TRADE_RETCODE_CLIENT_DISABLES_AT": 10027, "TRADE_RETCODE_FROZEN": 10029,
    "TRADE_RETCODE_INVALID_FILL": 10030, "TRADE_RETCODE_CONNECTION": 10031, "TRADE_RETCODE_POSITION_CLOSED": 10036,
    "TRADE_RETCODE_INVALID_CLOSE_VOLUME": 10038, "TRADE_RETCODE_HEDGE_PROHIBITED": 10046,
}


@pytest.mark.parametrize(("name", "value"), sorted(REFERENCE_CONSTANTS.items()))
def test_constants_have_the_reference_numbers(name, value):
    assert getattr(SimulatedMT5, name) == value


def test_no_retcodes_that_do_not_exist():
    names = [n for n in dir(SimulatedMT5) if n.startswith("TRADE_RETCODE_")]
    assert {getattr(SimulatedMT5, n) for n in names}.isdisjoint({10005, 10037})


def test_broker_suffix_resolved_through_symbols_get(sim):
    assert sim.symbol_info("XAUUSD") is None
    found = sim.symbols_get(group="*XAUUSD*")
    assert [s.name for s in found] == [SYMBOL]
    assert sim.symbol_info(found[0].name).name == SYMBOL
    assert sim.symbols_total() == len(sim.symbols_get())


def test_group_patterns_include_and_exclude(sim):
    names = {s.name for s in sim.symbols_get(group="*USD*,!EUR*")}
    assert {"XAUUSDm", "GBPUSDm", "USDJPYm"} <= names
    assert "EURUSDm" not in names


def test_symbol_invisible_until_selected():
    sim = make_sim(select=False)
    info = sim.symbol_info(SYMBOL)
    assert info is not None and info.visible is False and info.select is False
    assert sim.symbol_info_tick(SYMBOL) is None
    assert sim.copy_rates_from_pos(SYMBOL, sim.TIMEFRAME_M1, 1, 10) is None
    assert market(sim, sim.ORDER_TYPE_BUY) is None
    assert sim.symbol_select(SYMBOL, True) is True
    assert sim.symbol_info(SYMBOL).visible is True
    assert sim.symbol_info_tick(SYMBOL).bid == 2000.0
    assert sim.symbol_select("XAUUSD", True) is False
    assert sim.last_error()[0] == -4


def test_symbol_with_open_position_cannot_be_hidden(sim):
    assert market(sim, sim.ORDER_TYPE_BUY).retcode == sim.TRADE_RETCODE_DONE
    assert sim.symbol_select(SYMBOL, False) is False


def test_symbol_info_carries_the_fields_an_adapter_uses(sim):
    info = sim.symbol_info(SYMBOL)
    assert (info.digits, info.point, info.trade_contract_size) == (2, 0.01, 100)
    assert (info.volume_min, info.volume_max, info.volume_step) == (0.01, 100.0, 0.01)
    assert info.filling_mode == 1 and info.trade_exemode == sim.SYMBOL_TRADE_EXECUTION_MARKET
    assert (info.trade_stops_level, info.trade_freeze_level) == (0, 0)
    assert (info.bid, info.ask, info.spread) == (2000.0, 2000.1, 10)
    assert info.trade_tick_size == 0.01 and info.trade_tick_value == pytest.approx(1.0)
    assert info.path.endswith(SYMBOL) and len(info._asdict()) > 90
    fx = sim.symbol_info("EURUSDm")
    assert (fx.digits, fx.point, fx.trade_contract_size) == (5, 0.00001, 100000)


def test_tick_is_server_time_bid_and_ask(sim):
    tick = sim.symbol_info_tick(SYMBOL)
    # The clock is at 13:40 UTC on 1 July 2025; the server runs UTC+3 (us_dst, summer).
    assert tick.time == sim.copy_rates_from_pos(SYMBOL, sim.TIMEFRAME_M1, 0, 1)["time"][0]
    assert tick.time % 86400 == (16 * 60 + 40) * 60
    assert (tick.bid, tick.ask) == (2000.0, 2000.1)
    assert tick.time_msc == tick.time * 1000


def test_rates_dtype_is_the_reference_dtype(sim):
    bars = sim.copy_rates_from_pos(SYMBOL, sim.TIMEFRAME_M1, 0, 5)
    assert bars.dtype == RATES_DTYPE
    assert bars.dtype.descr == [("time", "<i8"), ("open", "<f8"), ("high", "<f8"), ("low", "<f8"), ("close", "<f8"),
                                ("tick_volume", "<u8"), ("spread", "<i4"), ("real_volume", "<u8")]
