"""Properties of price_action_pinbar (hypothesis): no lookahead, and a `lookback` window judges as the whole history."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategy_testkit import assert_same, synthetic_bars

from shared.bars import Bars
from shared.strategies.base import EvalContext
from shared.strategies.pinbar import PinbarParams, evaluate, lookback
from shared.symbols import get_spec

GOLD = EvalContext(spec=get_spec("XAUUSD"))


params_strategy = st.builds(
    PinbarParams,
    atr_period=st.integers(5, 30),
    swing_horizon=st.integers(20, 200),
    level_atr=st.floats(0.1, 1.0),
    extreme_bars=st.integers(2, 30),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), extra=st.integers(1, 60), params=params_strategy)
def test_a_lookback_window_judges_like_the_whole_history(seed, extra, params):
    window = lookback(params)
    bars = synthetic_bars(seed, window + extra + 100, pin_rate=0.1)
    for i in range(window - 1, len(bars)):
        on_window = evaluate(bars[i - window + 1 : i + 1], GOLD, params)
        on_history = evaluate(bars[: i + 1], GOLD, params)
        assert_same(on_window, on_history, f"bar {i}")


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), future_seed=st.integers(0, 2**32 - 1), n_future=st.integers(1, 50))
def test_appending_future_bars_never_changes_an_earlier_answer(seed, future_seed, n_future):
    params = PinbarParams()
    window = lookback(params)
    past = synthetic_bars(seed, window + 80, pin_rate=0.1)
    future = synthetic_bars(future_seed, n_future, pin_rate=0.3, start=float(past.close[-1]))
    future = Bars.from_columns(**{**future.columns(), "time": [int(past.time[-1]) + 60 * (k + 1) for k in range(n_future)]})
    extended = past.concat(future)
    for i in range(window - 1, len(past)):
        before = evaluate(past[i - window + 1 : i + 1], GOLD, params)
        after = evaluate(extended[i - window + 1 : i + 1], GOLD, params)
        assert before == after, f"bar {i}"


def test_the_synthetic_series_fire_often_enough_to_test_something():
    """Guard for the two properties above: their series do produce matches, buys and sells, at several level kinds."""
    params = PinbarParams()
    window = lookback(params)
    bars = synthetic_bars(7, window + 1000, pin_rate=0.1)
    matches = [m for i in range(window - 1, len(bars)) if (m := evaluate(bars[i - window + 1 : i + 1], GOLD, params))]
    assert len(matches) >= 30
    assert {m.side for m in matches} == {"buy", "sell"}
    assert {"round"} < {m.features["level_kind"] for m in matches}
