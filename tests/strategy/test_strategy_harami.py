"""The harami engine: 5m bars built from the M1 window (UTC-aligned, complete buckets only), TA-Lib's harami rule with
a trend context, judged once per 5m bar, and stamped with the 5m bar's open time."""

from __future__ import annotations

import numpy as np
import pytest
import talib
from strategy_testkit import T0, harami_after_a_fall, m1_from_5m

from shared.bars import Bars
from shared.strategies.base import EvalContext
from shared.strategies.harami import HaramiParams, evaluate, lookback
from shared.strategies.resample import aggregate, newly_complete
from shared.symbols import get_spec

GOLD = EvalContext(spec=get_spec("XAUUSD"))


def naive_aggregate(bars: Bars, seconds: int = 300) -> list[tuple]:
    """Plain-loop reference: complete UTC buckets, the first dropped unless the data starts on its boundary."""
    buckets: dict[int, list[int]] = {}
    for i, t in enumerate(bars.time.tolist()):
        buckets.setdefault(t // seconds, []).append(i)
    last_close = int(bars.time[-1]) + 60
    out = []
    for k, (b, idx) in enumerate(sorted(buckets.items())):
        if k == 0 and int(bars.time[0]) % seconds:
            continue
        if (b + 1) * seconds > last_close:
            continue
        out.append((b * seconds, bars.open[idx[0]], max(bars.high[idx]), min(bars.low[idx]), bars.close[idx[-1]],
                    int(sum(bars.tick_volume[idx])), int(max(bars.spread[idx]))))
    return out


def as_rows(b: Bars) -> list[tuple]:
    return list(zip(b.time.tolist(), b.open.tolist(), b.high.tolist(), b.low.tolist(), b.close.tolist(),
                    b.tick_volume.tolist(), b.spread.tolist(), strict=True))


@pytest.mark.data
def test_aggregation_matches_a_plain_loop_on_the_real_files(gold_bars, eurusd_bars):
    for bars in (gold_bars, eurusd_bars):
        for start, stop in ((0, 20000), (3, 20004), (17, len(bars))):
            b = bars[start:stop]
            assert as_rows(aggregate(b)) == naive_aggregate(b)


def test_a_partial_first_bucket_and_the_open_last_bucket_are_dropped():
    times = [T0 + 120 + 60 * k for k in range(14)]  # 08:02 .. 08:15: buckets 08:00 (partial), 08:05, 08:10, 08:15 (open)
    b = Bars.from_columns(time=times, open=np.arange(14.0) + 10, high=np.arange(14.0) + 11, low=np.arange(14.0) + 9,
                          close=np.arange(14.0) + 10.5)
    b5 = aggregate(b)
    assert b5.time.tolist() == [T0 + 300, T0 + 600]
    assert (b5.open.tolist(), b5.close.tolist()) == ([13.0, 18.0], [17.5, 22.5])
    assert (b5.high.tolist(), b5.low.tolist()) == ([18.0, 23.0], [12.0, 17.0])
    assert aggregate(b[:-1]).time.tolist() == [T0 + 300, T0 + 600]  # 08:14 closes the 08:10 bucket
    assert aggregate(b[:-2]).time.tolist() == [T0 + 300]


def test_a_gap_completes_the_bucket_it_leaves():
    # M1 bars at 08:00, 08:01, 08:02 then nothing until 08:07: the 08:00 bucket completes with the 08:07 bar.
    times = [T0, T0 + 60, T0 + 120, T0 + 420]
    b = Bars.from_columns(time=times, open=[1.0] * 4, high=[2.0] * 4, low=[0.5] * 4, close=[1.5] * 4)
    assert aggregate(b[:3]).time.tolist() == []
    b5 = aggregate(b)
    assert b5.time.tolist() == [T0] and newly_complete(b, b5)
    assert not newly_complete(b[:3], aggregate(b[:3]))


def test_a_harami_after_a_fall_buys_on_the_m1_bar_that_completes_the_baby():
    rows = harami_after_a_fall()
    m1 = m1_from_5m(rows)
    b5 = aggregate(m1)
    assert talib.CDLHARAMI(b5.open, b5.high, b5.low, b5.close)[-1] == 100
    params = HaramiParams()
    assert len(m1) >= lookback(params) == 1795
    match = evaluate(m1, GOLD, params)
    assert match is not None and match.side == "buy"
    assert match.bar_time == int(b5.time[-1]) == T0 + 300 * (len(rows) - 1)  # the baby's open time, not the M1 bar's
    assert match.bar_time % 300 == 0 and match.bar_time != int(m1.time[-1])
    assert match.stop < rows[-2][2] and match.entry == rows[-1][3] and match.target > match.entry
    assert match.features["talib_harami"] == 100 and match.features["move_atr"] >= 3.0
    assert 0.0 <= match.score <= 1.0
    # The four earlier M1 bars of the baby's bucket judge nothing; nor does the next one.
    for cut in range(1, 5):
        assert evaluate(m1[:-cut], GOLD, params) is None
    later = m1_from_5m([*rows, rows[-1]])
    assert evaluate(later[: len(m1) + 1], GOLD, params) is None


def test_no_trend_no_harami():
    rows = harami_after_a_fall()
    # The same long black mother and small white baby, straight after the quiet background: a fall of ~2.4 ATR.
    flat = rows[:-7] + [(2003.0, 2003.1, 2000.4, 2000.5), (2001.5, 2001.8, 2001.2, 2001.6)]
    assert evaluate(m1_from_5m(flat), GOLD, HaramiParams()) is None
    assert evaluate(m1_from_5m(flat), GOLD, HaramiParams(move_atr=0.0)) is not None


def test_the_summary_states_the_move_the_code_asks():
    import re

    from shared.strategies.catalog import describe

    [entry] = [d for d in describe() if d["name"] == "harami"]
    stated = float(re.search(r"a move of at least ([0-9.]+) ATR", entry["summary"]).group(1))
    assert stated == HaramiParams().move_atr == entry["defaults"]["move_atr"]
    assert HaramiParams().target_r == float(re.search(r"([0-9.]+)R target", entry["summary"]).group(1))
