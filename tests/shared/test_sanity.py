"""shared.sanity: the bar outlier rule against a plain bar-by-bar reference, crafted windows (1e308, a 10x high), the
warm-up, time gaps, rounding; the order rules the decision service and the executor call."""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import pytest

from shared.bars import Bars
from shared.sanity import ATR_FLOOR, ATR_PERIOD, WARMUP, check_bars, market_order_problem, stops_problem

T0 = 1_775_000_000 // 60 * 60


def walk(n: int, *, seed: int = 1, price: float = 2000.0, step: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    close = price + np.cumsum(rng.normal(0, step, n))
    open_ = np.concatenate(([price], close[:-1]))
    high = np.maximum(open_, close) + rng.uniform(0, step, n)
    low = np.minimum(open_, close) - rng.uniform(0, step, n)
    return {"time": T0 + 60 * np.arange(n), "open": open_, "high": high, "low": low, "close": close}


def bars_of(cols: dict[str, np.ndarray]) -> Bars:
    return Bars.from_columns(**cols)


def poison(cols, i: int, kind: str) -> None:
    if kind == "1e308":
        for f in ("open", "high", "low", "close"):
            cols[f][i] = 1e308
    elif kind == "high_x10":
        cols["high"][i] = cols["close"][i] * 10
    elif kind == "gap":  # the whole bar 60 ATR (of the walk's ~2) away
        for f in ("open", "high", "low", "close"):
            cols[f][i] += 120.0


def reference(cols, max_atr: float) -> list[tuple[int, str]]:
    """The rule as written (module comment of shared.sanity), bar by bar on the accepted bars, no shortcuts."""
    h, lo, c, t = cols["high"], cols["low"], cols["close"], cols["time"]
    warm_atr = float(np.median(h[: WARMUP + 1] - lo[: WARMUP + 1]))
    warm_close = float(np.median(c[: WARMUP + 1]))
    trs: deque = deque(maxlen=ATR_PERIOD)
    last, accepted, out = None, 0, []
    for i in range(len(h)):
        pc = warm_close if last is None else float(c[last])
        atr = sum(trs) / ATR_PERIOD if accepted >= WARMUP else warm_atr
        atr = max(atr, ATR_FLOOR * pc)
        g = 1.0 if last is None else max(1.0, (t[i] - t[last]) / 60)
        limit = max_atr * atr * math.sqrt(g)
        if h[i] - lo[i] > limit:
            out.append((i, "range_outlier"))
        elif max(abs(h[i] - pc), abs(lo[i] - pc)) > limit:
            out.append((i, "jump_outlier"))
        else:
            trs.append(h[i] - lo[i] if last is None else max(h[i], pc) - min(lo[i], pc))
            last, accepted = i, accepted + 1
    return out


def test_a_1e308_bar_and_a_10x_high_are_refused_with_their_reasons_and_do_not_poison_later_bars():
    cols = walk(400)
    poison(cols, 100, "1e308")
    poison(cols, 250, "high_x10")
    checked = check_bars(bars_of(cols), max_atr=25)
    assert checked.rejected == [(100, "jump_outlier"), (250, "range_outlier")]
    assert len(checked.bars) == 398 and checked.bars.high.max() < 3000  # the bars after each one are kept


@pytest.mark.parametrize("first", ["1e308", "high_x10", "gap"])
def test_an_absurd_first_bar_is_refused_by_the_warm_up_medians(first):
    cols = walk(100)
    poison(cols, 0, first)
    checked = check_bars(bars_of(cols), max_atr=25)
    assert [i for i, _ in checked.rejected] == [0]


@pytest.mark.parametrize("seed", range(12))
def test_the_vectorised_rule_is_the_bar_by_bar_rule(seed):
    """Outliers in bursts, near the start, back to back and after gaps: the same verdicts as the plain loop."""
    cols = walk(3000, seed=seed)
    rng = np.random.default_rng(100 + seed)
    cols["time"][1500:] += 60 * 2944  # a weekend
    for i in sorted(rng.choice(3000, 40, replace=False).tolist()) + [1, 2, 3, 1500, 1501]:
        poison(cols, i, ["1e308", "high_x10", "gap"][i % 3])
    expected = reference(cols, 25.0)
    assert len(expected) >= 20
    assert check_bars(bars_of(cols), max_atr=25.0).rejected == expected


def test_a_window_judges_its_bars_as_the_whole_series_does():
    """A bar with 15 accepted bars before it in a window gets the verdict the full history gives it."""
    cols = walk(2000, seed=7)
    for i in (300, 301, 900, 1400):
        poison(cols, i, "1e308")
    full = dict(check_bars(bars_of(cols), max_atr=25).rejected)
    for start in (250, 290, 880, 1350):
        window = bars_of({k: v[start:] for k, v in cols.items()})
        got = {start + i: r for i, r in check_bars(window, max_atr=25).rejected}
        judged = {i: r for i, r in full.items() if i >= start + WARMUP + 1 + 2}
        assert {i: r for i, r in got.items() if i >= start + WARMUP + 1 + 2} == judged


def test_a_gap_may_move_as_far_as_the_root_of_its_minutes_allows():
    cols = walk(200, step=0.5)
    shifted = {k: v.copy() for k, v in cols.items()}
    for f in ("open", "high", "low", "close"):
        shifted[f][100:] += 60.0  # about 60 ATR
    assert check_bars(bars_of(shifted), max_atr=25).rejected[:1] == [(100, "jump_outlier")]
    shifted["time"][100:] += 60 * 2944  # the same move over a weekend: 60 / sqrt(2944) ~ 1.1 ATR a minute
    assert check_bars(bars_of(shifted), max_atr=25).rejected == []


def test_flat_bars_do_not_make_a_zero_limit():
    n = 60
    cols = {"time": T0 + 60 * np.arange(n), "open": np.full(n, 1.1), "high": np.full(n, 1.1), "low": np.full(n, 1.1),
            "close": np.full(n, 1.1)}
    cols["high"][40] = 1.1 + 0.0002  # 2 pips after 40 flat bars: 0.0002 < 25 x 1e-5 x 1.1
    assert check_bars(bars_of(cols), max_atr=25).rejected == []


def test_more_decimals_than_the_digits_are_rounded_and_counted_as_repaired_not_refused():
    cols = walk(50)
    for f in ("open", "high", "low", "close"):
        cols[f] = np.round(cols[f], 2)
    cols["close"][10] += 0.004  # 2000.123 style: 3 decimals on a 2-digit symbol
    cols["high"][10] = max(cols["high"][10], cols["close"][10])
    checked = check_bars(bars_of(cols), max_atr=25, digits=2)
    assert checked.rejected == [] and checked.repaired == [10]
    assert np.array_equal(checked.bars.close, np.round(checked.bars.close, 2))
    assert check_bars(checked.bars, max_atr=25, digits=2).repaired == []  # idempotent
    assert check_bars(bars_of(cols), max_atr=25).repaired == []  # no digits, no rounding


def test_the_existing_reasons_come_first_and_inf_turns_the_outlier_test_off():
    cols = walk(100)
    cols["close"][20] = math.nan
    poison(cols, 60, "high_x10")
    assert check_bars(bars_of(cols), max_atr=25).rejected == [(20, "nan_price"), (60, "range_outlier")]
    assert check_bars(bars_of(cols), max_atr=math.inf).rejected == [(20, "nan_price")]


# --- orders ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("side", "entry", "sl", "tp", "atr", "problem", "far"),
    [
        ("buy", 100.0, 99.0, 102.0, 1.0, None, 2.0),
        ("sell", 100.0, 101.0, 97.0, 1.0, None, 3.0),
        ("buy", 100.0, 101.0, 102.0, 1.0, "sl 101.0 must be below the entry 100.0", None),
        ("sell", 100.0, 101.0, 100.5, 1.0, "tp 100.5 must be below the entry 100.0", None),
        ("buy", 100.0, 79.0, 102.0, 1.0, "sl is 21 ATR from the entry", 21.0),
        ("buy", 100.0, 8.7e304, -3.0, 1.0, "sl 8.7e+304 must be below the entry 100.0", None),
        ("buy", 100.0, 99.0, -3.0, 1.0, "tp -3.0 is not a price", None),
        ("buy", 100.0, 50.0, None, None, None, None),  # no ATR: the side only
        ("buy", 100.0, None, None, 1.0, None, None),
    ],
)
def test_stops_problem(side, entry, sl, tp, atr, problem, far):
    assert stops_problem(side=side, entry=entry, sl=sl, tp=tp, atr=atr, max_atr=20) == (problem, far)


@pytest.mark.parametrize(
    ("side", "entry", "sl", "tp", "bid", "ask", "expected"),
    [
        ("buy", 2000.0, 1998.0, 2004.0, 2000.0, 2000.2, None),
        ("sell", 2000.0, 2002.0, 1996.0, 2000.0, 2000.2, None),
        ("buy", 2000.0, None, None, 2000.0, 2000.2, None),
        # the wrong side of the current quote (a long's stop and target from the bid, a short's from the ask)
        ("buy", 2000.0, 2001.0, 2004.0, 2000.0, 2000.2, "sl 2001.0 must be below the bid 2000.0"),
        ("buy", 2000.0, 2000.0, 2004.0, 2000.0, 2000.2, "sl 2000.0 must be below the bid 2000.0"),
        ("buy", 2000.0, 1998.0, 1999.0, 2000.0, 2000.2, "tp 1999.0 must be above the bid 2000.0"),
        ("buy", 2000.0, 1998.0, -5.0, 2000.0, 2000.2, "tp -5.0 must be above the bid 2000.0"),
        ("sell", 2000.0, 2000.1, 1996.0, 2000.0, 2000.2, "sl 2000.1 must be above the ask 2000.2"),
        ("sell", 2000.0, 2002.0, 2000.5, 2000.0, 2000.2, "tp 2000.5 must be below the ask 2000.2"),
        ("sell", 2000.0, math.nan, 1996.0, 2000.0, 2000.2, "sl nan must be above the ask 2000.2"),
        # the signal's entry against the fill price: 2 % of it
        ("buy", 1959.0, 1950.0, 2100.0, 2000.0, 2000.2, "signal entry 1959.0 is more than 2.00% from the ask 2000.2"),
        ("buy", 1961.0, 1950.0, 2100.0, 2000.0, 2000.2, None),
        ("sell", 2041.0, 2100.0, 1950.0, 2000.0, 2000.2, "signal entry 2041.0 is more than 2.00% from the bid 2000.0"),
        ("buy", 8.7e304, 1950.0, 2100.0, 2000.0, 2000.2, "signal entry 8.7e+304 is more than 2.00% from the ask 2000.2"),
        # no market
        ("buy", 2000.0, 1998.0, 2004.0, 2000.3, 2000.2, "no market: bid 2000.3, ask 2000.2"),
        ("buy", 2000.0, 1998.0, 2004.0, 0.0, 2000.2, "no market: bid 0.0, ask 2000.2"),
    ],
)
def test_market_order_problem(side, entry, sl, tp, bid, ask, expected):
    assert market_order_problem(side, entry, sl, tp, bid, ask, 0.02) == expected
