"""price_action_pinbar on hand-built bars: each gate shown to block, next to the same bars passing without it."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
import talib
from strategy_testkit import (
    BEAR_PIN,
    BULL_PIN,
    SWING_LOW_2001,
    background,
    make_bars,
    pin_at_swing_low,
    with_bar,
)

from shared.bars import Bars
from shared.messages import Levels
from shared.strategies.base import EvalContext, Match
from shared.strategies.pinbar import NAME, PinbarParams, evaluate, lookback
from shared.symbols import get_spec

GOLD = EvalContext(spec=get_spec("XAUUSD"))
DEFAULTS = PinbarParams()


def atr_of(bars: Bars) -> float:
    return float(talib.ATR(bars.high, bars.low, bars.close, 14)[-1])


def test_bullish_pin_at_a_swing_low_buys_with_the_stop_below_the_tail():
    bars = pin_at_swing_low()  # swing low 2001.0 30 bars back; the pin's tail tip at 2001.1
    match = evaluate(bars, GOLD, DEFAULTS)
    assert isinstance(match, Match)
    a = atr_of(bars)
    assert match.side == "buy"
    assert match.entry == 2002.95
    assert match.stop == pytest.approx(2001.1 - 0.1 * a, rel=1e-12)
    assert match.stop < 2001.1  # below the tail
    assert match.target == pytest.approx(2002.95 + 2 * (2002.95 - match.stop), rel=1e-12)
    f = match.features
    assert (f["level_kind"], f["level_price"]) == ("swing_low", 2001.0)
    assert f["level_dist_atr"] == pytest.approx(0.1 / a)
    assert f["score_location"] == pytest.approx(1 - 0.1 / (0.3 * a))
    assert f["score_shape"] == pytest.approx((1.65 / 2.0 - 0.6) / 0.4)
    assert f["score_volatility"] == 1.0
    assert match.score == pytest.approx(0.4 * f["score_shape"] + 0.4 * f["score_location"] + 0.2 * f["score_volatility"])
    assert 0.0 <= match.score <= 1.0
    assert f["extreme_of_bars"] is True and f["beyond_prev_bar"] is False


def test_bearish_pin_at_a_swing_high_sells_with_the_stop_above_the_tail():
    rows = with_bar(background(), 30, (2002.4, 2004.0, 2002.0, 2002.6)) + [BEAR_PIN]  # swing high 2004.0
    bars = make_bars(rows)
    match = evaluate(bars, GOLD, DEFAULTS)
    assert match is not None and match.side == "sell"
    a = atr_of(bars)
    assert match.stop == pytest.approx(2003.9 + 0.1 * a, rel=1e-12)
    assert match.target == pytest.approx(2002.05 - 2 * (match.stop - 2002.05), rel=1e-12)
    assert (match.features["level_kind"], match.features["level_price"]) == ("swing_high", 2004.0)


def test_the_same_pin_mid_range_away_from_every_level_does_not_fire():
    bars = make_bars(background() + [BULL_PIN])
    assert evaluate(bars, GOLD, DEFAULTS) is None
    # The shape is fine: only the location blocks. With a wide tolerance the round number 2000 (1.1 away) counts.
    wide = evaluate(bars, GOLD, PinbarParams(level_atr=1.5))
    assert wide is not None and wide.features["level_kind"] == "round" and wide.features["level_price"] == 2000.0


def test_a_pin_on_a_dead_market_does_not_fire():
    # Background range 4.0 (ATR 4.0); a swing low at 2002.4; the pin's range 1.6 is 0.4 ATR, under the 0.5 ATR gate.
    busy = (2004.6, 2006.6, 2002.6, 2005.0)
    rows = with_bar(background(bar=busy), 30, (2004.6, 2006.6, 2002.4, 2005.0)) + [(2003.7, 2004.1, 2002.5, 2003.9)]
    bars = make_bars(rows)
    assert atr_of(bars) == pytest.approx(4.0, rel=0.05)
    assert evaluate(bars, GOLD, DEFAULTS) is None
    lowered = evaluate(bars, GOLD, PinbarParams(min_range_atr=0.3))
    assert lowered is not None and lowered.features["level_kind"] == "swing_low"


def test_a_swing_low_that_was_traded_through_is_no_support():
    rows = with_bar(background(), 30, SWING_LOW_2001)
    rows = with_bar(rows, 20, (2002.4, 2003.0, 2000.5, 2002.6))  # broke 2001.0; its own low 2000.5 is 0.6 from the tip
    bars = make_bars(rows + [BULL_PIN])
    assert evaluate(bars, GOLD, DEFAULTS) is None
    assert evaluate(bars, GOLD, PinbarParams(swing_intact=False)).features["level_price"] == 2001.0


def test_a_swing_younger_than_swing_min_age_is_the_move_itself_not_a_level():
    rows = with_bar(background(), 5, (2002.4, 2003.0, 2001.2, 2002.6)) + [BULL_PIN]  # above the tip: the pin is still the low
    bars = make_bars(rows)
    assert evaluate(bars, GOLD, DEFAULTS) is None
    assert evaluate(bars, GOLD, PinbarParams(swing_min_age=5)).features["level_kind"] == "swing_low"


def test_a_swing_beyond_the_horizon_is_forgotten():
    rows = with_bar(background(), 150, SWING_LOW_2001) + [BULL_PIN]
    bars = make_bars(rows)
    assert evaluate(bars, GOLD, DEFAULTS) is None
    assert evaluate(bars, GOLD, PinbarParams(swing_horizon=200)) is not None


def levels(day_start: datetime, s1: float) -> Levels:
    return Levels(day_start=day_start, prev_high=2030.0, prev_low=1990.0, prev_close=2010.0, pivot=2010.0,
                  r1=2020.0, s1=s1, r2=2050.0, s2=1970.0)


def test_the_previous_days_s1_is_support_and_a_future_days_levels_are_never_used():
    bars = make_bars(background() + [BULL_PIN])
    today = datetime(2026, 3, 2, tzinfo=UTC)
    match = evaluate(bars, EvalContext(spec=GOLD.spec, levels=levels(today, s1=2001.2)), DEFAULTS)
    assert match is not None
    assert (match.features["level_kind"], match.features["level_price"], match.features["day_levels"]) == ("s1", 2001.2, "used")
    tomorrow = datetime(2026, 3, 3, tzinfo=UTC)
    assert evaluate(bars, EvalContext(spec=GOLD.spec, levels=levels(tomorrow, s1=2001.2)), DEFAULTS) is None


def test_monday_uses_the_levels_of_the_trading_day_folded_from_saturday_and_stale_ones_are_ignored():
    bars = make_bars(background() + [BULL_PIN])  # the pin closes on Monday 2026-03-02
    saturday = datetime(2026, 2, 28, tzinfo=UTC)  # shared.levels folds Saturday to Monday into one trading day
    match = evaluate(bars, EvalContext(spec=GOLD.spec, levels=levels(saturday, s1=2001.2)), DEFAULTS)
    assert match is not None and match.features["level_kind"] == "s1"
    week_before = datetime(2026, 2, 23, tzinfo=UTC)
    assert evaluate(bars, EvalContext(spec=GOLD.spec, levels=levels(week_before, s1=2001.2)), DEFAULTS) is None


def test_a_level_above_a_bullish_body_is_resistance_not_support():
    # With a wide tolerance (2 ATR) both levels are near the tip (2001.1); only the one under the body (2002.75) counts.
    bars = make_bars(background() + [BULL_PIN])
    today = datetime(2026, 3, 2, tzinfo=UTC)
    wide = PinbarParams(level_atr=2.0, use_round_numbers=False)
    below_body = evaluate(bars, EvalContext(spec=GOLD.spec, levels=levels(today, s1=2002.7)), wide)
    assert below_body is not None and below_body.features["level_price"] == 2002.7
    assert evaluate(bars, EvalContext(spec=GOLD.spec, levels=levels(today, s1=2002.8)), wide) is None


@pytest.mark.parametrize(
    ("pin", "why"),
    [
        ((2002.3, 2003.1, 2001.1, 2002.95), "body 0.65 is more than tail / 2.5"),
        ((2002.75, 2003.6, 2001.1, 2002.95), "nose 0.65 is more than 20 % of the range"),
        ((2002.75, 2003.1, 2002.1, 2002.95), "tail 0.65 is less than 2/3 of the range"),
    ],
)
def test_shapes_that_are_not_pins(pin, why):
    rows = with_bar(background(), 30, SWING_LOW_2001) + [pin]
    assert evaluate(make_bars(rows), GOLD, DEFAULTS) is None, why


def test_a_pin_neither_beyond_the_previous_bar_nor_the_extreme_of_ten_bars_does_not_fire():
    rows = with_bar(background(), 30, SWING_LOW_2001)
    rows = with_bar(rows, 4, (2002.4, 2003.0, 2000.9, 2002.6))  # a lower low 4 bars back: the pin is no 10-bar low
    rows = with_bar(rows, 1, (2002.4, 2003.0, 2001.4, 2002.6))  # the pin's 2001.1 is 0.3 (0.15 range) beyond 2001.4
    bars = make_bars(rows + [BULL_PIN])
    assert evaluate(bars, GOLD, PinbarParams(swing_intact=False)) is None
    assert evaluate(bars, GOLD, PinbarParams(swing_intact=False, protrusion_min=0.1)) is not None


def test_too_short_a_history_is_not_judged():
    rows = with_bar(background(150), 30, SWING_LOW_2001) + [BULL_PIN]
    assert evaluate(make_bars(rows), GOLD, DEFAULTS) is not None
    assert evaluate(make_bars(rows[-100:]), GOLD, DEFAULTS) is None  # swings need swing_horizon + swing_n + 1 bars


def test_lookback_covers_the_atr_warmup_and_the_swing_horizon():
    assert lookback(DEFAULTS) == 357
    assert lookback(PinbarParams(atr_period=20)) > 357
    assert lookback(PinbarParams(swing_horizon=500)) == 503
    assert lookback(PinbarParams(atr_period=2, swing_horizon=20, swing_min_age=10)) == 100


def test_params_refuse_nonsense():
    with pytest.raises(ValueError, match="sum to 1"):
        PinbarParams(weight_shape=0.5)
    with pytest.raises(ValueError, match="swing_min_age"):
        PinbarParams(swing_n=5, swing_min_age=3)
    with pytest.raises(ValueError):
        PinbarParams(level_atr=0)
    with pytest.raises(ValueError):
        PinbarParams(levels=3)  # unknown field
    assert NAME == "price_action_pinbar"


def test_flat_bars_are_not_pins():
    rows = background() + [(2002.5, 2002.5, 2002.5, 2002.5)]
    assert evaluate(make_bars(rows), GOLD, DEFAULTS) is None
    assert np.isfinite(atr_of(make_bars(rows)))
