"""The paper broker: fills at the latest bar, rejects with reasons, netting, stop/target closes, find_order, restore."""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.executor.brokers.base import (
    RETCODE_INVALID,
    RETCODE_INVALID_STOPS,
    RETCODE_INVALID_VOLUME,
    RETCODE_NO_MONEY,
    RETCODE_PRICE_OFF,
    Broker,
    BrokerPosition,
    OrderRequest,
)
from services.executor.brokers.paper import PaperBroker
from shared.symbols import get_spec
from shared.timeutil import ManualClock, from_epoch
from tests.executor.fakes import T0, bars

GOLD = get_spec("XAUUSD")


def req(cid: str, side: str = "buy", *, volume=0.1, sl=1990.0, tp=2010.0, symbol="XAUUSD", magic=7) -> OrderRequest:
    return OrderRequest(client_order_id=cid, symbol=symbol, side=side, volume=volume, sl=sl, tp=tp, magic=magic)


def make(**kw) -> tuple[PaperBroker, ManualClock]:
    clock = ManualClock(T0 + timedelta(minutes=3, seconds=1))
    return PaperBroker(clock=clock, **{"balance": 10_000.0, **kw}), clock


async def priced(broker: PaperBroker, close: float = 2000.0, spread: int = 30, symbol: str = "XAUUSD") -> None:
    """Feed three closed bars ending at 10:03 whose last close is `close` (bid)."""
    await broker.on_bars(symbol, bars([(close, close + 1, close - 1, close, spread)] * 3))


def test_the_paper_broker_is_a_broker():
    broker, _ = make()
    assert isinstance(broker, Broker)


async def test_a_buy_fills_at_the_latest_close_plus_its_spread():
    broker, clock = make()
    await priced(broker, 2000.0, spread=30)
    result = await broker.place(req("a", "buy"))
    assert result.status == "filled"
    assert result.price == 2000.30
    assert result.volume == 0.1
    assert result.filled_at == clock.now()
    assert result.position.open_price == 2000.30 and result.position.comment == "a" and result.position.magic == 7


async def test_a_sell_fills_at_the_bid_and_slippage_goes_against_the_trader():
    broker, _ = make(slippage_points=5)
    await priced(broker, 2000.0, spread=30)
    sell = await broker.place(req("s", "sell", sl=2010.0, tp=1990.0))
    buy = await broker.place(req("b", "buy"))
    assert (sell.price, buy.price) == (1999.95, 2000.35)


async def test_tickets_increase():
    broker, _ = make()
    await priced(broker)
    tickets = [(await broker.place(req(f"o{i}"))).ticket for i in range(3)]
    assert tickets == sorted(tickets) and len(set(tickets)) == 3


async def test_no_price_for_the_symbol_is_rejected_with_a_reason():
    broker, _ = make()
    await priced(broker, symbol="EURUSD", close=1.085)
    result = await broker.place(req("a"))
    assert result.status == "rejected"
    assert result.retcode == RETCODE_PRICE_OFF
    assert "no price for XAUUSD" in result.reason
    assert await broker.positions() == []


@pytest.mark.parametrize(
    ("side", "sl", "tp", "bad"),
    [("buy", 2001.0, 2010.0, "sl"), ("buy", 1990.0, 1999.0, "tp"), ("sell", 1995.0, 1990.0, "sl"), ("sell", 2010.0, 2005.0, "tp")],
)
async def test_stops_on_the_wrong_side_are_rejected(side, sl, tp, bad):
    broker, _ = make()
    await priced(broker, 2000.0, spread=30)
    result = await broker.place(req("a", side, sl=sl, tp=tp))
    assert result.status == "rejected"
    assert result.retcode == RETCODE_INVALID_STOPS
    assert f"invalid stops: {bad}" in result.reason
    assert await broker.positions() == []


@pytest.mark.parametrize("volume", [0.001, 0.015, 1000.0])
async def test_volumes_off_the_symbols_lot_grid_are_rejected(volume):
    broker, _ = make()
    await priced(broker)
    result = await broker.place(req("a", volume=volume))
    assert (result.status, result.retcode) == ("rejected", RETCODE_INVALID_VOLUME)


async def test_an_unknown_symbol_is_rejected():
    broker, _ = make()
    result = await broker.place(req("a", symbol="NOPE"))
    assert (result.status, result.retcode) == ("rejected", RETCODE_INVALID)
    assert "NOPE" in result.reason


async def test_an_order_needing_more_margin_than_is_free_is_rejected():
    broker, _ = make(balance=1_000.0, leverage=100)
    await priced(broker, 2000.0)
    # 1 lot of gold = 100 oz x 2000 = 200,000 notional; at 1:100 it needs 2,000 margin.
    result = await broker.place(req("a", volume=1.0))
    assert (result.status, result.retcode) == ("rejected", RETCODE_NO_MONEY)
    assert (await broker.place(req("b", volume=0.4))).status == "filled"


async def test_a_broker_suffix_is_priced_from_the_canonical_bars():
    broker, _ = make()
    await priced(broker, 2000.0, spread=30)  # bars come as XAUUSD
    result = await broker.place(req("a", symbol="XAUUSDm"))
    assert result.status == "filled" and result.position.symbol == "XAUUSDm"


async def test_find_order_by_comment_and_magic():
    broker, _ = make()
    await priced(broker)
    placed = await broker.place(req("abc", magic=7))
    found = await broker.find_order("abc", 7)
    assert (found.status, found.ticket, found.price, found.volume) == ("filled", placed.ticket, placed.price, placed.volume)
    assert await broker.find_order("abc", 8) is None
    assert await broker.find_order("other", 7) is None


async def test_find_order_still_knows_an_order_whose_position_closed():
    broker, _ = make()
    await priced(broker)
    placed = await broker.place(req("abc"))
    await broker.close(placed.ticket, "manual")
    found = await broker.find_order("abc", 7)
    assert found is not None and found.ticket == placed.ticket and found.position is None


async def test_a_stop_hit_on_a_later_bar_closes_at_the_stop_and_books_the_loss():
    broker, _ = make(commission_per_lot=7.0)
    await priced(broker, 2000.0, spread=30)  # bars 10:00..10:02
    placed = await broker.place(req("a", sl=1995.0, tp=2010.0, volume=0.1))  # long at 2000.30
    # 10:03 is untouched, 10:04 dips to 1994.
    closed = await broker.on_bars("XAUUSD", bars([(2000, 2001, 1999, 2000, 30), (1999, 2000, 1994, 1996, 30)], start=T0 + timedelta(minutes=3)))
    assert len(closed) == 1
    c = closed[0]
    assert (c.ticket, c.reason, c.close_price) == (placed.ticket, "sl", 1995.0)
    assert c.closed_at == T0 + timedelta(minutes=5)  # known when the 10:04 bar closes
    profit = GOLD.profit("buy", 0.1, 2000.30, 1995.0)  # -53.00
    assert c.commission == 0.70
    assert c.pnl == pytest.approx(profit - 0.70)
    assert (await broker.account()).balance == pytest.approx(10_000 + profit - 0.70)
    assert await broker.positions() == []


async def test_bars_before_the_fill_never_close_the_position():
    broker, _ = make()
    await priced(broker, 2000.0, spread=0)
    await broker.place(req("a", sl=1999.5, tp=2010.0))
    # The same window again (its bars dip to 1999, below the stop) is history older than the fill.
    closed = await broker.on_bars("XAUUSD", bars([(2000, 2001, 1999, 2000)] * 3))
    assert closed == []
    assert len(await broker.positions()) == 1


async def test_a_moved_stop_is_not_tested_on_bars_already_checked():
    broker, _ = make()
    await priced(broker, 2000.0)
    placed = await broker.place(req("a", sl=1990.0, tp=2010.0))
    later = bars([(2000, 2001, 1996, 2000), (2000, 2003, 1999, 2002)], start=T0 + timedelta(minutes=3))
    assert await broker.on_bars("XAUUSD", later) == []
    assert (await broker.modify(placed.ticket, 1997.0, 2010.0)).ok
    # A window that still holds the 10:03 bar (low 1996 < new stop) must not close it retroactively...
    assert await broker.on_bars("XAUUSD", later) == []
    # ...but a new bar through the new stop does.
    closed = await broker.on_bars("XAUUSD", bars([(2001, 2001, 1996.5, 1998)], start=T0 + timedelta(minutes=5)))
    assert [(c.reason, c.close_price) for c in closed] == [("sl", 1997.0)]


async def test_a_short_target_needs_the_ask_to_reach_it():
    broker, _ = make()
    await priced(broker, 2000.0, spread=30)
    await broker.place(req("a", "sell", sl=2010.0, tp=1995.0))  # short at 2000.00
    next_bar = T0 + timedelta(minutes=3)
    assert await broker.on_bars("XAUUSD", bars([(1998, 1999, 1994.8, 1996, 30)], start=next_bar)) == []  # ask low 1995.10
    closed = await broker.on_bars("XAUUSD", bars([(1996, 1997, 1994.5, 1995, 30)], start=next_bar + timedelta(minutes=1)))
    assert [(c.reason, c.close_price) for c in closed] == [("tp", 1995.0)]
    assert closed[0].pnl == pytest.approx(GOLD.profit("sell", 0.1, 2000.0, 1995.0))


async def test_modify_refuses_a_stop_on_the_wrong_side():
    broker, _ = make()
    await priced(broker, 2000.0)
    placed = await broker.place(req("a"))
    result = await broker.modify(placed.ticket, 2001.0, 2010.0)
    assert not result.ok and result.retcode == RETCODE_INVALID_STOPS
    assert (await broker.positions())[0].sl == 1990.0
    assert not (await broker.modify(999, 1995.0, None)).ok


async def test_hedging_keeps_one_position_per_order():
    broker, _ = make(margin_mode="hedging")
    await priced(broker, 2000.0, spread=0)
    await broker.place(req("a", "buy"))
    await broker.place(req("b", "sell", sl=2010.0, tp=1990.0))
    assert sorted(p.side for p in await broker.positions()) == ["buy", "sell"]


async def test_netting_an_opposite_larger_order_reverses_the_position():
    broker, _ = make(margin_mode="netting")
    await priced(broker, 2000.0, spread=0)
    first = await broker.place(req("a", "buy", volume=0.1))
    await priced(broker, 2003.0, spread=0)
    second = await broker.place(req("b", "sell", volume=0.3, sl=2010.0, tp=1990.0))
    assert second.status == "filled" and second.volume == 0.3
    # The deal closed the 0.1 long at the bid...
    assert [(c.ticket, c.volume, c.close_price, c.reason) for c in second.closed] == [(first.ticket, 0.1, 2003.0, "early_exit")]
    assert second.closed[0].pnl == pytest.approx(GOLD.profit("buy", 0.1, 2000.0, 2003.0))
    # ...and what was left of it opened a 0.2 short under a new ticket.
    positions = await broker.positions()
    assert [(p.ticket, p.side, p.volume, p.open_price) for p in positions] == [(second.ticket, "sell", 0.2, 2003.0)]
    assert second.position.ticket == second.ticket != first.ticket


async def test_netting_an_opposite_equal_order_just_closes():
    broker, _ = make(margin_mode="netting")
    await priced(broker, 2000.0, spread=0)
    first = await broker.place(req("a", "buy", volume=0.1))
    second = await broker.place(req("b", "sell", volume=0.1, sl=2010.0, tp=1990.0))
    assert second.position is None and second.ticket == first.ticket and len(second.closed) == 1
    assert await broker.positions() == []


async def test_netting_a_same_side_order_adds_at_the_average_price():
    broker, _ = make(margin_mode="netting")
    await priced(broker, 2000.0, spread=0)
    first = await broker.place(req("a", "buy", volume=0.1))
    await priced(broker, 2002.0, spread=0)
    second = await broker.place(req("b", "buy", volume=0.3, sl=1995.0, tp=2012.0))
    [pos] = await broker.positions()
    assert (second.ticket, pos.ticket) == (first.ticket, first.ticket)
    assert (pos.volume, pos.open_price, pos.sl, pos.tp) == (0.4, 2001.5, 1995.0, 2012.0)


async def test_account_equity_follows_open_positions_at_their_closing_price():
    broker, _ = make(leverage=100)
    await priced(broker, 2000.0, spread=30)
    await broker.place(req("a", "buy", volume=0.1))  # at 2000.30, marked at the bid 2000.00
    info = await broker.account()
    assert info.balance == 10_000.0
    assert info.equity == pytest.approx(10_000 + GOLD.profit("buy", 0.1, 2000.30, 2000.0))
    assert info.margin == pytest.approx(0.1 * 100 * 2000.30 / 100)
    assert info.margin_free == pytest.approx(info.equity - info.margin)


async def test_close_at_market_and_unknown_tickets():
    broker, _ = make()
    await priced(broker, 2000.0, spread=30)
    placed = await broker.place(req("a", "sell", sl=2010.0, tp=1990.0))
    closed = await broker.close(placed.ticket, "kill_switch")
    assert (closed.reason, closed.close_price) == ("kill_switch", 2000.30)  # a short buys back at the ask
    assert await broker.close(placed.ticket, "manual") is None


async def test_restore_rebuilds_positions_balance_and_tickets():
    broker, _ = make()
    opened_at = T0 + timedelta(minutes=2, seconds=30)
    broker.restore(
        [BrokerPosition(ticket=41, symbol="XAUUSD", side="buy", volume=0.1, open_price=2000.0, sl=1995.0, tp=2010.0, opened_at=opened_at, comment="x")],
        balance=9_500.0,
    )
    assert (await broker.account()).balance == 9_500.0
    assert (await broker.find_order("x")).ticket == 41
    # Checked from the bar it opened in (10:02) on: that bar's dip closes it.
    closed = await broker.on_bars("XAUUSD", bars([(2000, 2001, 1999, 2000), (2000, 2001, 1994, 1996)], start=T0 + timedelta(minutes=1)))
    assert [(c.ticket, c.reason, c.closed_at) for c in closed] == [(41, "sl", from_epoch((T0 + timedelta(minutes=3)).timestamp()))]
    await priced(broker)
    assert (await broker.place(req("new"))).ticket == 42


async def test_paper_brokers_sharing_a_quote_book_are_all_priced_by_one_feed():
    quotes: dict = {}
    first, _ = make(quotes=quotes)
    second, _ = make(quotes=quotes, symbol_suffix="m")
    await priced(first, 2000.0, spread=30)
    filled = await second.place(req("b", "buy", symbol="XAUUSDm"))
    assert filled.status == "filled" and filled.price == 2000.30


async def test_wants_bars_only_for_a_newer_quote_or_a_position_to_check():
    quotes: dict = {}
    holder, _ = make(quotes=quotes)
    idle, _ = make(quotes=quotes)
    window = bars([(2000.0, 2001.0, 1999.0, 2000.0, 30)] * 3)
    newest = int(window.time[-1])
    assert idle.wants_bars("XAUUSD", newest)  # no quote yet
    await holder.on_bars("XAUUSD", window)
    assert not idle.wants_bars("XAUUSD", newest)  # the shared book has this window already
    assert idle.wants_bars("XAUUSD", newest + 60)  # a newer one
    assert not holder.wants_bars("XAUUSD", newest)
    await holder.place(req("h", "buy"))
    assert holder.wants_bars("XAUUSD", newest)  # a position on the symbol: its stop and target are checked
    assert holder.wants_bars("EURUSD", newest)  # another symbol, never quoted
