"""The trailing stop and early exits as pure functions (the backtester calls the same ones)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.executor.trailing import ExitRule, TrailRule, opposite_signal_exit, time_stop_hit, trailing_stop
from shared.symbols import get_spec

GOLD = get_spec("XAUUSD")  # pip 0.1, point 0.01
PIPS = TrailRule(mode="pips", distance_pips=20)  # 2.00 behind the price


def test_a_long_stop_follows_the_bid_and_a_short_stop_the_ask():
    assert trailing_stop(side="buy", open_price=2000.0, sl=1990.0, bid=2005.0, ask=2005.3, spec=GOLD, rule=PIPS) == 2003.0
    assert trailing_stop(side="sell", open_price=2000.0, sl=2010.0, bid=1995.0, ask=1995.3, spec=GOLD, rule=PIPS) == 1997.3


def test_it_only_ever_tightens():
    assert trailing_stop(side="buy", open_price=2000.0, sl=2004.0, bid=2005.0, ask=2005.3, spec=GOLD, rule=PIPS) is None
    assert trailing_stop(side="sell", open_price=2000.0, sl=1996.0, bid=1995.0, ask=1995.3, spec=GOLD, rule=PIPS) is None


def test_off_activation_and_step():
    assert trailing_stop(side="buy", open_price=2000.0, sl=1990.0, bid=2005.0, ask=2005.3, spec=GOLD, rule=TrailRule()) is None
    later = TrailRule(mode="pips", distance_pips=20, activation_pips=100)
    assert trailing_stop(side="buy", open_price=2000.0, sl=1990.0, bid=2005.0, ask=2005.3, spec=GOLD, rule=later) is None
    coarse = TrailRule(mode="pips", distance_pips=20, step_pips=50)
    assert trailing_stop(side="buy", open_price=2000.0, sl=1999.0, bid=2005.0, ask=2005.3, spec=GOLD, rule=coarse) is None


def test_the_stops_level_is_kept_and_the_freeze_level_blocks_a_modify():
    wide = GOLD.model_copy(update={"stops_level": 300})  # 3.00
    tight = TrailRule(mode="pips", distance_pips=5)  # 0.50 wanted, 3.00 required
    assert trailing_stop(side="buy", open_price=2000.0, sl=1990.0, bid=2005.0, ask=2005.3, spec=wide, rule=tight) == 2002.0
    frozen = GOLD.model_copy(update={"freeze_level": 500})  # 5.00
    assert trailing_stop(side="buy", open_price=2000.0, sl=2001.0, bid=2005.0, ask=2005.3, spec=frozen, rule=PIPS) is None


def test_atr_mode_needs_an_atr():
    rule = TrailRule(mode="atr", atr_multiple=2.0)
    assert trailing_stop(side="buy", open_price=2000.0, sl=1990.0, bid=2005.0, ask=2005.3, spec=GOLD, rule=rule) is None
    assert trailing_stop(side="buy", open_price=2000.0, sl=1990.0, bid=2005.0, ask=2005.3, spec=GOLD, rule=rule, atr=1.5) == 2002.0


@given(
    side=st.sampled_from(["buy", "sell"]),
    sl_offset=st.floats(0.5, 30),
    move=st.floats(-20, 20),
    distance=st.floats(1, 100),
    stops=st.integers(0, 500),
)
def test_never_loosens_and_never_inside_the_stops_level(side, sl_offset, move, distance, stops):
    spec = GOLD.model_copy(update={"stops_level": stops})
    bid = round(2000.0 + move, 2)
    ask = round(bid + 0.3, 2)
    sl = round((bid - sl_offset) if side == "buy" else (ask + sl_offset), 2)
    new = trailing_stop(side=side, open_price=2000.0, sl=sl, bid=bid, ask=ask, spec=spec, rule=TrailRule(mode="pips", distance_pips=distance))
    if new is None:
        return
    gap = max(spec.stops_distance, spec.point) - 1e-9
    if side == "buy":
        assert new > sl and bid - new >= gap
    else:
        assert new < sl and new - ask >= gap


def test_early_exit_rules():
    t0 = datetime(2025, 7, 1, 12, tzinfo=UTC)
    rule = ExitRule(time_stop_min=30, opposite_signal=True)
    assert not time_stop_hit(opened_at=t0, now=t0 + timedelta(minutes=29), rule=rule)
    assert time_stop_hit(opened_at=t0, now=t0 + timedelta(minutes=30), rule=rule)
    assert not time_stop_hit(opened_at=t0, now=t0 + timedelta(days=9), rule=ExitRule())
    assert opposite_signal_exit(position_side="buy", order_side="sell", rule=rule)
    assert not opposite_signal_exit(position_side="buy", order_side="buy", rule=rule)
    assert not opposite_signal_exit(position_side="buy", order_side="sell", rule=ExitRule())


@pytest.mark.parametrize("side", ["buy", "sell"])
def test_rounding_to_digits(side):
    opened = 2000.0 if side == "buy" else 2010.0  # in profit either way
    new = trailing_stop(side=side, open_price=opened, sl=None, bid=2005.004, ask=2005.304, spec=GOLD, rule=PIPS)
    assert new is not None and new == round(new, 2)


def test_a_position_not_yet_in_profit_is_not_trailed():
    assert trailing_stop(side="sell", open_price=2000.0, sl=2010.0, bid=2005.0, ask=2005.3, spec=GOLD, rule=PIPS) is None
