"""order_send and order_check: local refusals, retcodes, netting vs hedging, closes, history, stops and targets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
import pytest

from mt5sim import SimulatedMT5
from tests.mt5sim.simdata import START, SYMBOL, bars_from, flat, make_sim, market

BUY, SELL = SimulatedMT5.ORDER_TYPE_BUY, SimulatedMT5.ORDER_TYPE_SELL
DONE = SimulatedMT5.TRADE_RETCODE_DONE
# The clock sits at the open of a flat bar: bid 2000.00, ask 2000.10 (spread 10 points).
BID, ASK = 2000.0, 2000.1


def test_market_orders_fill_at_ask_and_bid_and_echo_the_request(sim):
    buy = market(sim, BUY, sl=1990.0, tp=2010.0)
    assert (buy.retcode, buy.price, buy.bid, buy.ask, buy.volume, buy.comment) == (DONE, ASK, BID, ASK, 0.1, "Request executed")
    assert buy.deal > 0 and buy.order > 0 and buy.deal != buy.order
    assert type(buy.request).__name__ == "TradeRequest"
    assert (buy.request.symbol, buy.request.magic, buy.request.comment, buy.request.sl) == (SYMBOL, 42, "cid-1", 1990.0)
    (pos,) = sim.positions_get()
    assert pos.ticket == buy.order == pos.identifier  # ref: on a market open result.order is the position's ticket
    assert (pos.type, pos.volume, pos.price_open, pos.sl, pos.tp) == (sim.POSITION_TYPE_BUY, 0.1, ASK, 1990.0, 2010.0)
    assert (pos.magic, pos.comment, pos.price_current, pos.profit) == (42, "cid-1", BID, -1.0)
    sell = market(sim, SELL, comment="cid-2")
    assert (sell.retcode, sell.price) == (DONE, BID)


def test_magic_and_comment_are_kept_on_orders_deals_and_positions(sim):
    result = market(sim, BUY, magic=7, comment="bot7-abc")
    (order,) = sim.history_orders_get(ticket=result.order)
    (deal,) = sim.history_deals_get(ticket=result.order)
    (pos,) = sim.positions_get(ticket=result.order)
    for record in (order, deal, pos):
        assert (record.magic, record.comment) == (7, "bot7-abc")
    assert (order.state, order.type, order.position_id) == (sim.ORDER_STATE_FILLED, BUY, result.order)
    assert (deal.entry, deal.type, deal.reason, deal.position_id) == (sim.DEAL_ENTRY_IN, sim.DEAL_TYPE_BUY, sim.DEAL_REASON_EXPERT, result.order)


@pytest.mark.parametrize("comment", ["a" * 32, "a" * 40, "id[1]", "id:1", "(x)", "caf\u00e9", "tab\there"])
def test_bad_comments_are_refused_locally(sim, comment):
    assert market(sim, BUY, comment=comment) is None
    assert sim.last_error() == (-2, 'Invalid "comment" argument')
    assert sim.positions_get() == ()


def test_a_31_character_comment_passes(sim):
    assert market(sim, BUY, comment="A" * 26 + "_-1z9").retcode == DONE


@pytest.mark.parametrize(
    ("key", "value"),
    [("volume", np.float64(0.1)), ("volume", Decimal("0.1")), ("sl", np.float32(1990.0)), ("magic", np.int64(42)),
     ("magic", True), ("deviation", 20.0), ("type", "0"), ("symbol", b"XAUUSDm"), ("comment", 5)],
)
def test_values_that_are_not_plain_python_numbers_are_refused(sim, key, value):
    assert market(sim, BUY, **{key: value}) is None
    assert sim.last_error() == (-2, f'Invalid "{key}" argument')
    assert sim.positions_get() == ()
    assert len(sim.history_deals_get(datetime(2000, 1, 1), datetime(2100, 1, 1))) == 1  # the deposit only


def test_unknown_keys_and_unknown_symbols_are_refused_locally(sim):
    assert market(sim, BUY, client_id="x") is None
    assert sim.last_error() == (-2, 'Invalid "client_id" argument')
    assert market(sim, BUY, symbol="XAUUSD") is None
    assert sim.last_error() == (-4, "Terminal: Not found")
    assert sim.order_send("buy") is None


def test_ints_are_accepted_for_price_fields(sim):
    assert market(sim, BUY, volume=1, sl=1990, tp=2010).retcode == DONE


@pytest.mark.parametrize(
    ("filling_mode", "type_filling", "retcode"),
    [(1, 0, DONE), (1, 1, 10030), (1, 2, 10030), (2, 1, DONE), (2, 0, 10030), (3, 1, DONE), (3, 0, DONE),
     (0, 2, DONE), (0, 0, 10030)],
)
def test_filling_mode_bitmask(sim, filling_mode, type_filling, retcode):
    sim.set_symbol("XAUUSD", filling_mode=filling_mode)
    assert sim.symbol_info(SYMBOL).filling_mode == filling_mode
    assert market(sim, BUY, type_filling=type_filling).retcode == retcode


@pytest.mark.parametrize("volume", [0.001, 0.015, 100.01, 0.0])
def test_volume_outside_min_step_max_is_10014(sim, volume):
    result = market(sim, BUY, volume=volume)
    assert (result.retcode, result.deal, result.order, result.volume, result.price) == (10014, 0, 0, 0.0, 0.0)
    assert result.comment == "Invalid volume"


@pytest.mark.parametrize(
    ("otype", "sl", "tp", "retcode"),
    [
        (BUY, BID - 0.49, 0.0, 10016), (BUY, BID - 0.50, 0.0, DONE), (BUY, 0.0, BID + 0.49, 10016),
        (BUY, 0.0, BID + 0.50, DONE), (BUY, BID + 1.0, 0.0, 10016), (BUY, 0.0, BID - 1.0, 10016),
        (SELL, ASK + 0.49, 0.0, 10016), (SELL, ASK + 0.50, 0.0, DONE), (SELL, 0.0, ASK - 0.49, 10016),
        (SELL, 0.0, ASK - 0.50, DONE), (SELL, BID + 0.30, 0.0, 10016),  # above the bid but inside the level from the ask
    ],
)
def test_stops_level_is_measured_from_bid_for_buys_and_ask_for_sells(sim, otype, sl, tp, retcode):
    sim.set_symbol("XAUUSD", trade_stops_level=50)  # 0.50
    assert market(sim, otype, sl=round(sl, 2), tp=round(tp, 2)).retcode == retcode


def test_stops_level_zero_still_needs_the_right_side(sim):
    assert market(sim, BUY, sl=BID).retcode == 10016
    assert market(sim, BUY, sl=BID - 0.01).retcode == DONE


def test_price_beyond_deviation_is_a_requote(sim):
    moved = market(sim, BUY, price=round(ASK + 0.21, 2), deviation=20)
    assert (moved.retcode, moved.bid, moved.ask, moved.deal, moved.order) == (10004, BID, ASK, 0, 0)
    assert sim.positions_get() == ()
    within = market(sim, BUY, price=round(ASK + 0.20, 2), deviation=20)
    assert (within.retcode, within.price) == (DONE, ASK)  # fills at the market, not the requested price


def test_no_money_is_10019(sim):
    assert market(sim, BUY, volume=100.0).retcode == sim.TRADE_RETCODE_NO_MONEY
    assert sim.positions_get() == () and sim.account_info().balance == 10_000.0


def test_account_follows_the_open_position(sim):
    market(sim, BUY)
    acc = sim.account_info()
    assert (acc.balance, acc.profit, acc.equity, acc.margin) == (10_000.0, -1.0, 9_999.0, 200.01)
    assert acc.margin_free == 9_798.99 and acc.margin_level == pytest.approx(9_999.0 / 200.01 * 100, abs=0.01)
    assert sim.order_calc_margin(BUY, SYMBOL, 0.1, ASK) == 200.01
    assert sim.order_calc_profit(BUY, SYMBOL, 0.1, 2000.0, 2001.0) == 10.0


def test_order_check_answers_without_trading(sim):
    check = sim.order_check({"action": 1, "symbol": SYMBOL, "volume": 0.1, "type": BUY, "type_filling": 0})
    assert (check.retcode, check.comment, check.margin, check.balance) == (0, "Done", 200.01, 10_000.0)
    assert check.margin_free == pytest.approx(10_000.0 - 1.0 - 200.01)
    assert check.request.volume == 0.1 and sim.positions_get() == ()
    assert sim.order_check({"action": 1, "symbol": SYMBOL, "volume": 0.1, "type": BUY, "sl": 2001.0}).retcode == 10016
    assert sim.order_check({"action": 1, "symbol": SYMBOL, "volume": np.float64(0.1), "type": BUY}) is None
    assert sim.history_deals_get(ticket=0)[0].type == sim.DEAL_TYPE_BALANCE  # only the deposit


# ---- netting vs hedging --------------------------------------------------------------------------------------


def test_netting_reverses_the_one_position(netting):
    sim = netting
    first = market(sim, BUY, volume=0.1)
    second = market(sim, SELL, volume=0.3, comment="cid-2")
    (pos,) = sim.positions_get()
    assert (pos.ticket, pos.identifier) == (first.order, first.order)  # the identifier survives the reversal
    assert (pos.type, pos.volume, pos.price_open) == (sim.POSITION_TYPE_SELL, 0.2, BID)
    deals = sim.history_deals_get(position=first.order)
    assert [d.entry for d in deals] == [sim.DEAL_ENTRY_IN, sim.DEAL_ENTRY_INOUT]
    assert deals[1].order == second.order and deals[1].volume == 0.3
    assert deals[1].profit == -1.0  # 0.1 lot x 100 x (2000.00 - 2000.10)
    assert sim.account_info().balance == 9_999.0


def test_netting_adds_reduces_and_closes(netting):
    sim = netting
    market(sim, BUY, volume=0.1)
    market(sim, BUY, volume=0.2)
    (pos,) = sim.positions_get()
    assert (pos.volume, pos.price_open) == (0.3, ASK)
    market(sim, SELL, volume=0.1)
    assert sim.positions_get()[0].volume == 0.2
    close = market(sim, SELL, volume=0.2)
    assert close.retcode == DONE and sim.positions_get() == ()
    entries = [d.entry for d in sim.history_deals_get(position=pos.ticket)]
    assert entries == [sim.DEAL_ENTRY_IN, sim.DEAL_ENTRY_IN, sim.DEAL_ENTRY_OUT, sim.DEAL_ENTRY_OUT]


def test_hedging_opens_a_position_per_deal(sim):
    buy, sell = market(sim, BUY), market(sim, SELL)
    positions = sim.positions_get(symbol=SYMBOL)
    assert [p.ticket for p in positions] == [buy.order, sell.order]
    assert [p.type for p in positions] == [sim.POSITION_TYPE_BUY, sim.POSITION_TYPE_SELL]
    assert sim.positions_total() == 2


def test_hedging_close_names_the_position_ticket(sim):
    buy = market(sim, BUY)
    sim.advance(30)  # the bar's high has traded: bid 2000.50
    close = market(sim, SELL, position=buy.order, comment="close-1")
    assert (close.retcode, close.price) == (DONE, 2000.5)
    assert sim.positions_get() == ()
    (out,) = sim.history_deals_get(ticket=close.order)
    assert (out.entry, out.position_id, out.profit, out.comment) == (sim.DEAL_ENTRY_OUT, buy.order, 4.0, "close-1")
    assert sim.account_info().balance == 10_004.0


def test_closing_a_closed_position_is_10036(sim):
    buy = market(sim, BUY)
    assert market(sim, SELL, position=buy.order).retcode == DONE
    again = market(sim, SELL, position=buy.order)
    assert (again.retcode, again.deal, again.order) == (sim.TRADE_RETCODE_POSITION_CLOSED, 0, 0)
    assert market(sim, SELL, position=424242).retcode == sim.TRADE_RETCODE_INVALID


def test_partial_close_and_too_large_a_close(sim):
    buy = market(sim, BUY, volume=0.3)
    assert market(sim, SELL, volume=0.1, position=buy.order).retcode == DONE
    assert sim.positions_get(ticket=buy.order)[0].volume == 0.2
    assert market(sim, SELL, volume=0.5, position=buy.order).retcode == sim.TRADE_RETCODE_INVALID_CLOSE_VOLUME
    assert market(sim, BUY, volume=0.1, position=buy.order).retcode == sim.TRADE_RETCODE_INVALID  # same direction


def test_close_by_on_hedging(sim):
    buy, sell = market(sim, BUY, volume=0.1), market(sim, SELL, volume=0.2)
    result = sim.order_send({"action": sim.TRADE_ACTION_CLOSE_BY, "position": buy.order, "position_by": sell.order, "magic": 42})
    assert result.retcode == DONE
    (left,) = sim.positions_get()
    assert (left.ticket, left.volume) == (sell.order, 0.1)
    legs = sim.history_deals_get(ticket=result.order)
    assert [d.entry for d in legs] == [sim.DEAL_ENTRY_OUT_BY] * 2 and {d.price for d in legs} == {BID}
    assert sim.account_info().balance == 9_999.0


def test_close_by_is_refused_on_netting(netting):
    market(netting, BUY)
    assert netting.order_send({"action": 10, "position": 1, "position_by": 2}).retcode == 10013


# ---- history ---------------------------------------------------------------------------------------------------


def test_history_deals_ticket_filters_by_order_ticket(sim):
    opened = market(sim, BUY)
    closed = market(sim, SELL, position=opened.order)
    (entry,) = sim.history_deals_get(ticket=opened.order)
    assert (entry.ticket, entry.order, entry.entry) == (opened.deal, opened.order, sim.DEAL_ENTRY_IN)
    (exit_,) = sim.history_deals_get(ticket=closed.order)
    assert exit_.ticket == closed.deal
    assert sim.history_deals_get(ticket=opened.deal) == ()  # a deal ticket is not an order ticket
    assert [d.ticket for d in sim.history_deals_get(position=opened.order)] == [opened.deal, closed.deal]
    assert [o.ticket for o in sim.history_orders_get(position=opened.order)] == [opened.order, closed.order]
    assert sim.history_orders_get(ticket=closed.order)[0].position_id == opened.order


def test_history_dates_compare_with_server_time_stamps(sim):
    result = market(sim, BUY)
    now_utc = START + timedelta(minutes=100)
    # Stamped 16:40 server time; "now in UTC" (13:40) as the upper bound misses it, as on a real UTC+3 server.
    assert sim.history_deals_get(now_utc - timedelta(hours=1), now_utc) == ()
    found = sim.history_deals_get(now_utc - timedelta(days=1), now_utc + timedelta(days=1))
    assert [d.ticket for d in found if d.symbol] == [result.deal]
    assert [d.ticket for d in sim.history_deals_get(now_utc - timedelta(days=1), now_utc + timedelta(days=1), group="*EUR*")] == []
    assert sim.history_deals_total(now_utc - timedelta(days=2), now_utc + timedelta(days=1)) == 2  # with the deposit
    assert len(sim.history_orders_get(now_utc - timedelta(days=1), now_utc + timedelta(days=1))) == 1


# ---- stops and targets as the clock advances -----------------------------------------------------------------


def dip(to_low: float, *, close: float | None = None, then: float | None = None) -> list:
    """100 flat bars, the trading bar (100), a bar that falls to `to_low`, then flat bars at its close."""
    close = to_low + 1.0 if close is None else close
    rest = then if then is not None else close
    return flat(101) + [(2000.0, 2000.5, to_low, close)] + flat(50, rest)


def test_stop_loss_hit_closes_with_reason_sl():
    sim = make_sim(dip(1994.0))
    buy = market(sim, BUY, sl=1996.0, tp=2010.0)
    sim.step(1)
    assert len(sim.positions_get()) == 1  # bar 101 has only opened
    sim.step(1)
    assert sim.positions_get() == ()
    out = sim.history_deals_get(position=buy.order)[-1]
    assert (out.entry, out.reason, out.price, out.volume, out.magic) == (sim.DEAL_ENTRY_OUT, sim.DEAL_REASON_SL, 1996.0, 0.1, 42)
    assert out.comment == "[sl 1996.00]" and out.profit == -41.0
    # Down bar path: open 00 s, high 15 s, low 30 s: the stop fired on the low tick of bar 101 (16:41:30 server).
    assert out.time == int(datetime(2025, 7, 1, 16, 41, 30, tzinfo=UTC).timestamp())
    order = sim.history_orders_get(ticket=out.order)[0]
    assert (order.reason, order.type) == (sim.ORDER_REASON_SL, SELL)
    assert sim.account_info().balance == 9_959.0


def test_take_profit_of_a_short_triggers_on_the_ask():
    sim = make_sim(flat(101) + [(2000.0, 2000.2, 1994.95, 1995.5)] + [(1995.5, 1995.6, 1994.5, 1995.0)] + flat(20, 1995.0))
    sell = market(sim, SELL, tp=1995.0)
    sim.step(2)
    assert len(sim.positions_get()) == 1  # bid 1994.95 touched 1995.00 but the ask (1995.05) did not
    sim.step(1)
    out = sim.history_deals_get(position=sell.order)[-1]
    assert (out.reason, out.price, out.profit, out.comment) == (sim.DEAL_REASON_TP, 1995.0, 50.0, "[tp 1995.00]")


def test_a_stop_the_price_gaps_through_fills_at_the_open():
    sim = make_sim(flat(101) + flat(20, 1990.0))
    buy = market(sim, BUY, sl=1996.0)
    sim.step(1)
    out = sim.history_deals_get(position=buy.order)[-1]
    assert (out.reason, out.price) == (sim.DEAL_REASON_SL, 1990.0)


def test_advance_to_and_step_only_move_forward(sim):
    with pytest.raises(ValueError):
        sim.advance_to(START)
    sim.advance_to(START + timedelta(minutes=130))
    assert sim.now() == START + timedelta(minutes=130)


def test_modify_stops_then_the_new_stop_is_hit():
    sim = make_sim(dip(1994.0))
    buy = market(sim, BUY)
    modify = {"action": SimulatedMT5.TRADE_ACTION_SLTP, "symbol": SYMBOL, "position": buy.order, "sl": 1998.0, "tp": 2010.0}
    assert sim.order_send(modify).retcode == DONE
    assert (sim.positions_get()[0].sl, sim.positions_get()[0].tp) == (1998.0, 2010.0)
    assert sim.order_send(modify).retcode == SimulatedMT5.TRADE_RETCODE_NO_CHANGES
    assert sim.order_send({**modify, "sl": 2000.5}).retcode == 10016
    sim.step(2)
    assert sim.history_deals_get(position=buy.order)[-1].price == 1998.0
    assert sim.order_send({**modify, "sl": 1990.0}).retcode == SimulatedMT5.TRADE_RETCODE_POSITION_CLOSED


def test_freeze_level_blocks_close_and_modify_near_a_stop(sim):
    sim.set_symbol("XAUUSD", trade_freeze_level=50)  # 0.50
    buy = market(sim, BUY, tp=2000.3)  # TP - bid = 0.30: inside the freeze level
    assert market(sim, SELL, position=buy.order).retcode == sim.TRADE_RETCODE_FROZEN
    sltp = {"action": sim.TRADE_ACTION_SLTP, "symbol": SYMBOL, "position": buy.order, "sl": 0.0, "tp": 2001.0}
    assert sim.order_send(sltp).retcode == sim.TRADE_RETCODE_FROZEN
    sim.advance(15)  # the bar's low: bid 1999.50, 0.80 from the target
    assert market(sim, SELL, position=buy.order).retcode == DONE


# ---- pending orders ------------------------------------------------------------------------------------------


def pending(sim, otype: int, price: float, **extra) -> dict:
    request = {"action": sim.TRADE_ACTION_PENDING, "symbol": SYMBOL, "volume": 0.1, "type": otype, "price": price,
               "magic": 42, "comment": "pend-1", "type_filling": sim.ORDER_FILLING_RETURN, "type_time": sim.ORDER_TIME_GTC}
    request.update(extra)
    return sim.order_send(request)


def test_a_buy_limit_rests_then_fills_when_the_ask_comes_down(sim):
    placed = pending(sim, sim.ORDER_TYPE_BUY_LIMIT, 1999.6, sl=1995.0)
    assert (placed.retcode, placed.deal) == (sim.TRADE_RETCODE_PLACED, 0)
    (order,) = sim.orders_get()
    assert (order.ticket, order.state, order.price_open, order.comment) == (placed.order, sim.ORDER_STATE_PLACED, 1999.6, "pend-1")
    sim.advance(20)  # the bar's low: bid 1999.50, ask 1999.60
    assert sim.orders_get() == ()
    (pos,) = sim.positions_get()
    assert (pos.ticket, pos.price_open, pos.sl, pos.comment) == (placed.order, 1999.6, 1995.0, "pend-1")
    assert sim.history_orders_get(ticket=placed.order)[0].state == sim.ORDER_STATE_FILLED


def test_pending_orders_are_checked_removed_and_expire(sim):
    assert pending(sim, sim.ORDER_TYPE_BUY_LIMIT, 2001.0).retcode == sim.TRADE_RETCODE_INVALID_PRICE
    assert pending(sim, sim.ORDER_TYPE_SELL_STOP, 1990.0, sl=1989.0).retcode == sim.TRADE_RETCODE_INVALID_STOPS
    resting = pending(sim, sim.ORDER_TYPE_SELL_LIMIT, 2005.0)
    remove = sim.order_send({"action": sim.TRADE_ACTION_REMOVE, "order": resting.order})
    assert remove.retcode == DONE and sim.orders_get() == ()
    assert sim.history_orders_get(ticket=resting.order)[0].state == sim.ORDER_STATE_CANCELED
    expires = sim.symbol_info_tick(SYMBOL).time + 120  # server time, as the request field is
    timed = pending(sim, sim.ORDER_TYPE_SELL_STOP, 1900.0, type_time=sim.ORDER_TIME_SPECIFIED, expiration=expires)
    assert timed.retcode == sim.TRADE_RETCODE_PLACED
    sim.step(5)
    assert sim.orders_get() == ()
    assert sim.history_orders_get(ticket=timed.order)[0].state == sim.ORDER_STATE_EXPIRED


def test_modify_a_pending_order(sim):
    placed = pending(sim, sim.ORDER_TYPE_BUY_STOP, 2005.0)
    change = {"action": sim.TRADE_ACTION_MODIFY, "order": placed.order, "price": 2006.0, "sl": 2001.0, "tp": 2010.0}
    assert sim.order_send(change).retcode == DONE
    assert (sim.orders_get()[0].price_open, sim.orders_get()[0].sl) == (2006.0, 2001.0)
    assert sim.order_send(change).retcode == sim.TRADE_RETCODE_NO_CHANGES


# ---- other symbols -----------------------------------------------------------------------------------------------


def test_fx_profit_uses_the_100000_contract():
    eur = bars_from(flat(200, 1.1, 0.0005), spread=10)
    gold = bars_from(flat(200))
    sim = SimulatedMT5({"XAUUSD": gold, "EURUSD": eur}, suffix="m", start=START + timedelta(minutes=100), margin_mode="hedging")
    assert sim.initialize() and sim.symbol_select("EURUSDm")
    tick = sim.symbol_info_tick("EURUSDm")
    assert (tick.bid, tick.ask) == (1.1, 1.1001)
    buy = sim.order_send({"action": 1, "symbol": "EURUSDm", "volume": 0.1, "type": BUY, "type_filling": 0})
    sim.advance(30)  # bid 1.1005
    close = sim.order_send({"action": 1, "symbol": "EURUSDm", "volume": 0.1, "type": SELL, "position": buy.order})
    assert sim.history_deals_get(ticket=close.order)[0].profit == pytest.approx(4.0)
