"""The first-touch labels against a plain per-signal loop of the fill model's rule, on synthetic and real bars."""

from __future__ import annotations

import numpy as np
import pytest

from scalper.calibrate.outcomes import first_touch
from shared.bars import Bars
from shared.loaders import load_m1


def naive(bars: Bars, spread: np.ndarray, i: int, buy: bool, stop: float, target: float) -> tuple[str, int]:
    for k in range(i + 1, len(bars)):
        add = 0.0 if buy else spread[k]
        h, lo = bars.high[k] + add, bars.low[k] + add
        s_hit = lo <= stop if buy else h >= stop
        t_hit = h >= target if buy else lo <= target
        if s_hit:
            return "sl", k
        if t_hit:
            return "tp", k
    return "open", -1


def walk(n: int, seed: int) -> Bars:
    rng = np.random.default_rng(seed)
    c = 100 + np.cumsum(rng.normal(0, 0.1, n))
    o = np.concatenate(([100.0], c[:-1]))
    h = np.maximum(o, c) + rng.uniform(0, 0.1, n)
    lo = np.minimum(o, c) - rng.uniform(0, 0.1, n)
    return Bars.from_columns(time=60 * np.arange(n, dtype=np.int64), open=o, high=h, low=lo, close=c,
                             tick_volume=np.ones(n, np.int64), spread=np.full(n, 3, np.int64))


def _check(bars: Bars, spread: np.ndarray, index, buy, stop, target):
    got = first_touch(bars, spread, index=index, buy=buy, stop=stop, target=target, max_cells=5_000)
    for j in range(len(index)):
        assert (got.outcome[j], got.touch_index[j]) == naive(bars, spread, int(index[j]), bool(buy[j]), stop[j], target[j]), j


def test_first_touch_equals_the_loop_on_random_walks():
    bars = walk(3_000, 1)
    spread = np.full(len(bars), 0.03)
    rng = np.random.default_rng(2)
    index = rng.integers(0, len(bars), 400)
    buy = rng.random(400) < 0.5
    entry = bars.close[index]
    dist = rng.uniform(0.05, 3.0, 400)
    reward = rng.uniform(0.5, 3.0, 400)
    stop = np.where(buy, entry - dist, entry + dist)
    target = np.where(buy, entry + reward * dist, entry - reward * dist)
    _check(bars, spread, index, buy, stop, target)


def test_a_bar_touching_both_is_the_stop_and_the_short_side_sees_the_ask():
    bars = Bars.from_columns(time=[0, 60, 120], open=[10.0, 10.0, 10.0], high=[10.1, 11.0, 10.1], low=[9.9, 9.0, 9.9],
                             close=[10.0, 10.0, 10.0], tick_volume=[1, 1, 1], spread=[0, 0, 0])
    spread = np.array([0.0, 0.0, 0.25])
    both = first_touch(bars, spread, index=np.array([0]), buy=np.array([True]), stop=np.array([9.5]), target=np.array([10.5]))
    assert (both.outcome[0], both.touch_index[0]) == ("sl", 1)
    # A short from bar 1: bar 2's ask high is 10.35, over a 10.3 stop; its bid high (10.1) is not.
    short = first_touch(bars, spread, index=np.array([1, 2]), buy=np.array([False, False]), stop=np.array([10.3, 10.3]),
                        target=np.array([5.0, 5.0]))
    assert list(short.outcome) == ["sl", "open"] and list(short.touch_index) == [2, -1]


@pytest.mark.data
def test_first_touch_equals_the_loop_on_gold(gold_file):
    bars = load_m1(gold_file).bars[:20_000]
    spread = bars.spread * 0.01
    rng = np.random.default_rng(3)
    index = rng.integers(0, len(bars), 300)
    buy = rng.random(300) < 0.5
    entry = bars.close[index]
    dist = rng.uniform(0.3, 20.0, 300)
    stop = np.where(buy, entry - dist, entry + dist)
    target = np.where(buy, entry + 2 * dist, entry - 2 * dist)
    _check(bars, spread, index, buy, stop, target)
