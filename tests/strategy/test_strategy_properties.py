"""Properties of trend_pullback, doji_breakout, range_reversion and harami (hypothesis), as for the pin bar: a window
of `lookback` bars judges every bar as the whole history does, and appending future bars never changes an answer."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategy_testkit import assert_same_match, regime_bars

from shared.bars import Bars
from shared.strategies import catalog
from shared.strategies.base import EvalContext, WindowCache
from shared.strategies.doji_breakout import DojiBreakoutParams
from shared.strategies.harami import HaramiParams
from shared.strategies.range_reversion import RangeReversionParams
from shared.strategies.trend_pullback import TrendPullbackParams
from shared.symbols import get_spec

GOLD = EvalContext(spec=get_spec("XAUUSD"))

# Parameters hypothesis varies (periods move the lookback; loose gates make the synthetic series fire often).
PARAMS = {
    "trend_pullback": st.builds(TrendPullbackParams, fast_ema=st.integers(5, 25), slow_ema=st.integers(30, 60),
                                atr_period=st.integers(5, 20), pullback_bars=st.integers(1, 4),
                                min_slope_atr=st.floats(0.0, 1.5), min_gap_atr=st.floats(0.0, 1.0)),
    "doji_breakout": st.builds(DojiBreakoutParams, atr_period=st.integers(5, 20), box_bars=st.integers(3, 8),
                               setup_bars=st.integers(2, 8), box_max_atr=st.floats(1.0, 3.0), squeeze=st.booleans(),
                               consolidation=st.sampled_from(["box", "inside_or_nr"])),
    "range_reversion": st.builds(RangeReversionParams, adx_period=st.integers(7, 20), rsi_period=st.integers(7, 20),
                                 adx_max=st.floats(25.0, 45.0), max_width_atr=st.floats(3.0, 8.0),
                                 channel_bars=st.integers(10, 30), min_reward_r=st.floats(0.0, 1.0)),
    "harami": st.builds(HaramiParams, atr_period=st.integers(5, 14), trend_bars=st.integers(2, 8),
                        move_atr=st.floats(0.0, 3.0)),
}
EXTRA = {"harami": 900}  # M1 bars judged beyond the lookback: the harami engine judges one in five
NAMES = sorted(PARAMS)


@pytest.mark.parametrize("name", NAMES)
def test_window_judges_like_history(name):
    strategy = catalog.get(name)

    @settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(seed=st.integers(0, 2**32 - 1), params=PARAMS[name])
    def check(seed, params):
        window = strategy.lookback(params)
        bars = regime_bars(seed, window + EXTRA.get(name, 300))
        for i in range(window - 1, len(bars)):
            on_window = strategy.evaluate(bars[i - window + 1 : i + 1], GOLD, params)
            on_history = strategy.evaluate(bars[: i + 1], GOLD, params)
            assert_same_match(on_window, on_history, f"{name} bar {i}")

    check()


@pytest.mark.parametrize("name", NAMES)
def test_appending_future_bars_never_changes_an_earlier_answer(name):
    strategy = catalog.get(name)
    params = strategy.Params()
    window = strategy.lookback(params)

    @settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(seed=st.integers(0, 2**32 - 1), future_seed=st.integers(0, 2**32 - 1), n_future=st.integers(1, 40))
    def check(seed, future_seed, n_future):
        past = regime_bars(seed, window + 200)
        future = regime_bars(future_seed, n_future, start=float(past.close[-1]), t0=int(past.time[-1]) + 60)
        extended = past.concat(future)
        for i in range(window - 1, len(past)):
            before = strategy.evaluate(past[i - window + 1 : i + 1], GOLD, params)
            after = strategy.evaluate(extended[i - window + 1 : i + 1], GOLD, params)
            assert before == after, f"{name} bar {i}"
            # the history up to the bar, whatever follows it in the file
            assert_same_match(strategy.evaluate(extended[: i + 1], GOLD, params), before, f"{name} bar {i}")

    check()


@pytest.mark.parametrize("name", [*NAMES, "price_action_pinbar"])
def test_the_window_cache_changes_nothing(name):
    """The worker shares indicator arrays between strategies through a WindowCache: answers are the same without it."""
    strategy = catalog.get(name)
    params = strategy.Params()
    window = strategy.lookback(params)
    bars = regime_bars(11, window + 600)
    for i in range(window - 1, len(bars)):
        w = bars[i - window + 1 : i + 1]
        shared = EvalContext(spec=GOLD.spec, cache=WindowCache(w))
        for other in catalog.names(None):  # fill the cache the way a window with every strategy would
            catalog.get(other).evaluate(w, shared, catalog.get(other).Params())
        assert strategy.evaluate(w, shared, params) == strategy.evaluate(w, GOLD, params), f"{name} bar {i}"


def test_the_synthetic_series_fire_often_enough_to_test_something():
    """Guard for the properties above: on their series every strategy fires, buys and sells, with its defaults or
    (range_reversion, which needs a real range regime) with the loose gates the window property draws from."""
    bars = regime_bars(7, 8000)
    loose = {"range_reversion": RangeReversionParams(adx_max=40.0, max_width_atr=6.0)}
    for name in NAMES:
        strategy = catalog.get(name)
        params = loose.get(name, strategy.Params())
        window = strategy.lookback(params)
        matches = [m for i in range(window - 1, len(bars))
                   if (m := strategy.evaluate(bars[i - window + 1 : i + 1], GOLD, params))]
        assert len(matches) >= 20, name
        assert {m.side for m in matches} == {"buy", "sell"}, name


def test_regime_bars_skip_minutes_now_and_then():
    bars: Bars = regime_bars(3, 2000)
    steps = set((bars.time[1:] - bars.time[:-1]).tolist())
    assert steps == {60, 120}


def test_a_window_cache_serves_only_the_bars_it_was_made_for():
    bars = regime_bars(5, 50)
    cache = WindowCache(bars)
    calls = []
    assert cache.get(bars, ("x",), lambda: calls.append(1) or 1.0) == 1.0
    assert cache.get(bars, ("x",), lambda: calls.append(2) or 2.0) == 1.0  # served from the cache
    assert cache.get(bars[:], ("x",), lambda: calls.append(3) or 3.0) == 3.0  # equal bars, another object: computed
    assert calls == [1, 3]
