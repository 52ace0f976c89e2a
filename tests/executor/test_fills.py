"""The paper-fill model, rule by rule (architecture.md, "Fills"), on gold (point 0.01) and EURUSD (point 0.00001)."""

from __future__ import annotations

import pytest

from services.executor.fills import entry_price, exit_on_bar, exit_price, stops_problem
from shared.symbols import get_spec

GOLD = get_spec("XAUUSD")
EURUSD = get_spec("EURUSD")


def test_buy_fills_at_ask_bid_plus_spread_in_points():
    assert entry_price("buy", 2000.00, 30, GOLD) == 2000.30
    assert entry_price("buy", 1.08500, 12, EURUSD) == 1.08512


def test_sell_fills_at_bid():
    assert entry_price("sell", 2000.00, 30, GOLD) == 2000.00


def test_slippage_is_always_against_the_trader():
    assert entry_price("buy", 2000.00, 30, GOLD, slippage_points=5) == 2000.35
    assert entry_price("sell", 2000.00, 30, GOLD, slippage_points=5) == 1999.95


def test_closing_a_long_sells_at_bid_and_a_short_buys_at_ask():
    assert exit_price("buy", 2000.00, 30, GOLD) == 2000.00
    assert exit_price("sell", 2000.00, 30, GOLD) == 2000.30


def test_fill_prices_are_rounded_to_the_symbols_digits():
    # 1.1 + 0.2 is 1.3000000000000003 in binary floating point.
    assert entry_price("buy", 1.1, 20000, EURUSD) == 1.3


def bar(open_, high, low, spread=0):
    return {"open": open_, "high": high, "low": low, "spread_points": spread}


def test_long_stop_triggers_on_the_bid_low():
    assert exit_on_bar("buy", 1995.0, 2010.0, **bar(1999.0, 2001.0, 1994.9), spec=GOLD) == (1995.0, "sl")
    # The ask (low + spread) never matters to a long: a bid low just above the stop is no hit, however wide the spread.
    assert exit_on_bar("buy", 1995.0, 2010.0, **bar(1999.0, 2001.0, 1995.01, spread=500), spec=GOLD) is None


def test_long_target_triggers_on_the_bid_high():
    assert exit_on_bar("buy", 1995.0, 2010.0, **bar(2005.0, 2010.0, 2004.0), spec=GOLD) == (2010.0, "tp")
    assert exit_on_bar("buy", 1995.0, 2010.0, **bar(2005.0, 2009.99, 2004.0, spread=50), spec=GOLD) is None


def test_short_stop_triggers_on_the_ask_bar_high_plus_spread():
    # Bid high 2004.80 is below the stop 2005.00, but the ask high (+30 points = 2005.10) reaches it.
    assert exit_on_bar("sell", 2005.0, 1990.0, **bar(2000.0, 2004.80, 1999.0, spread=30), spec=GOLD) == (2005.0, "sl")
    # Without the spread the same bar would not have touched it.
    assert exit_on_bar("sell", 2005.0, 1990.0, **bar(2000.0, 2004.80, 1999.0, spread=0), spec=GOLD) is None


def test_short_target_triggers_on_the_ask_bar_low_plus_spread():
    # Bid low 1989.90 is below the target 1990.00, but the ask low (+30 points = 1990.20) is not: no fill.
    assert exit_on_bar("sell", 2005.0, 1990.0, **bar(1995.0, 1996.0, 1989.90, spread=30), spec=GOLD) is None
    assert exit_on_bar("sell", 2005.0, 1990.0, **bar(1995.0, 1996.0, 1989.70, spread=30), spec=GOLD) == (1990.0, "tp")


def test_a_long_stop_gapped_through_fills_at_the_bar_open():
    assert exit_on_bar("buy", 1995.0, 2010.0, **bar(1990.0, 1992.0, 1985.0), spec=GOLD) == (1990.0, "sl")


def test_a_short_stop_gapped_through_fills_at_the_bar_open_ask():
    # Opens at bid 2008.00, ask 2008.30: above the stop 2005.00.
    assert exit_on_bar("sell", 2005.0, 1990.0, **bar(2008.0, 2009.0, 2007.0, spread=30), spec=GOLD) == (2008.30, "sl")


@pytest.mark.parametrize(
    ("side", "sl", "tp", "row", "expected"),
    [
        ("buy", 1995.0, 2010.0, bar(2000.0, 2011.0, 1994.0), (1995.0, "sl")),
        ("sell", 2005.0, 1990.0, bar(2000.0, 2006.0, 1989.0, spread=10), (2005.0, "sl")),
    ],
)
def test_a_bar_touching_both_stop_and_target_takes_the_stop(side, sl, tp, row, expected):
    assert exit_on_bar(side, sl, tp, **row, spec=GOLD) == expected


def test_a_target_gapped_through_fills_at_the_better_open():
    assert exit_on_bar("buy", 1995.0, 2010.0, **bar(2012.0, 2013.0, 2011.0), spec=GOLD) == (2012.0, "tp")
    assert exit_on_bar("sell", 2005.0, 1990.0, **bar(1988.0, 1989.0, 1987.0, spread=10), spec=GOLD) == (1988.10, "tp")


def test_no_stop_or_target_means_no_exit_on_that_side():
    assert exit_on_bar("buy", None, None, **bar(2000.0, 2100.0, 1900.0), spec=GOLD) is None
    assert exit_on_bar("buy", None, 2010.0, **bar(2000.0, 2011.0, 1900.0), spec=GOLD) == (2010.0, "tp")
    assert exit_on_bar("sell", 2005.0, None, **bar(2000.0, 2006.0, 1900.0), spec=GOLD) == (2005.0, "sl")


def test_an_untouched_bar_changes_nothing():
    assert exit_on_bar("buy", 1995.0, 2010.0, **bar(2000.0, 2005.0, 1996.0, spread=30), spec=GOLD) is None
    assert exit_on_bar("sell", 2005.0, 1990.0, **bar(2000.0, 2004.0, 1996.0, spread=30), spec=GOLD) is None


@pytest.mark.parametrize(
    ("side", "sl", "tp", "problem"),
    [
        ("buy", 1999.0, 2001.0, None),
        ("buy", 2000.5, 2010.0, "sl"),  # a long's stop above the bid
        ("buy", 1990.0, 1999.0, "tp"),  # a long's target below the bid
        ("sell", 2000.20, 1990.0, "sl"),  # a short's stop above the bid but below the ask (2000.30)
        ("sell", 2001.0, 2000.10, None),
        ("sell", 2010.0, 2000.50, "tp"),  # a short's target above the ask
    ],
)
def test_stops_must_be_on_the_right_side_of_the_price(side, sl, tp, problem):
    found = stops_problem(side, 2000.0, 30, GOLD, sl, tp)
    assert (found is None) == (problem is None)
    if problem:
        assert f"invalid stops: {problem}" in found


def test_stops_level_is_kept_away_from_the_price():
    spec = GOLD.model_copy(update={"stops_level": 50})  # 0.50 away at least
    assert stops_problem("buy", 2000.0, 0, spec, 1999.60, None) is not None
    assert stops_problem("buy", 2000.0, 0, spec, 1999.50, None) is None
