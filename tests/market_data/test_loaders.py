"""The M1 loaders on the real files and on small hand-written ones with bad rows."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.bars import Bars, bar_problem
from shared.loaders import UnknownFormat, load_m1, validate_bars, wall_to_utc
from shared.timeutil import server_to_utc, to_epoch


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


# --- the real files ----------------------------------------------------------------------------------------


def test_gold_file_loads_fast_with_every_bar(gold_file):
    started = time.perf_counter()
    result = load_m1(gold_file)
    elapsed = time.perf_counter() - started

    assert result.format == "mt5_rates_csv"
    assert result.rows == 63_230
    assert result.rejected == [] and result.dropped_flat == 0
    # Broker time: the daily break and the weekly close at 00:00 server time are 17:00 New York, so us_dst (UTC+3 in
    # this file's months): the first row `2026-03-24 17:00:00` is 14:00 UTC.
    assert (result.zone, result.server_time) == ("us_dst", "us_dst") and result.server_time_confidence > 0.9
    assert result.first == utc(2026, 3, 24, 14, 0) and result.last == utc(2026, 5, 28, 14, 0)
    assert result.gaps == 46
    assert int(np.diff(result.bars.time).max()) == 4_383 * 60  # the longest gap (Good Friday), as the data README says
    assert any("inferred as us_dst" in w for w in result.warnings)
    assert result.bars.spread[0] == 12 and result.bars.tick_volume[0] == 611
    assert elapsed < 1.0, f"63k rows took {elapsed:.2f}s"


def test_gold_file_in_broker_time_converts_to_utc(gold_file):
    result = load_m1(gold_file, server_time="us_dst")
    assert result.warnings == []
    assert result.first == utc(2026, 3, 24, 14, 0)  # 17:00 at UTC+3 (US summer time since 8 March)
    assert result.last == utc(2026, 5, 28, 14, 0)
    # Gold's daily break (23:57-01:00 server) falls at 20:57-22:00 UTC, and the week opens Sunday 22:00 UTC.
    assert datetime.fromtimestamp(int(result.bars.time[np.searchsorted(result.bars.time, to_epoch(utc(2026, 3, 29)))]), UTC) == utc(2026, 3, 29, 22, 0)


def test_eurusd_export_keeps_flat_bars_with_ticks(eurusd_file):
    result = load_m1(eurusd_file)
    assert result.format == "mt5_export"
    assert result.rows == 30_203
    assert result.zone == "us_dst" and result.server_time_confidence > 0.75  # four weekly closes at 00:00 server time
    assert result.first == utc(2018, 5, 31, 21, 0) and result.last == utc(2018, 6, 29, 20, 59)
    assert result.gaps == 12
    b = result.bars
    flat = (b.open == b.high) & (b.high == b.low) & (b.low == b.close)
    assert int(flat.sum()) == 305 and result.dropped_flat == 0
    assert b.open[0] == pytest.approx(1.16879) and b.spread[0] == 47 and b.tick_volume[0] == 8


def test_fixed_utc_offset(eurusd_file):
    result = load_m1(eurusd_file, utc_offset_hours=2)
    assert result.first == utc(2018, 5, 31, 22, 0)
    assert result.server_time == "+2"
    with pytest.raises(ValueError, match="not both"):
        load_m1(eurusd_file, utc_offset_hours=2, server_time="us_dst")


# --- hand-written files ------------------------------------------------------------------------------------

RATES_HEADER = "time,open,high,low,close,tick_volume,spread,real_volume\n"


def test_bad_rows_are_reported_with_line_and_reason(tmp_path):
    rows = [
        "2026-01-05 10:00:00,100,101,99,100.5,10,12,0",  # line 2: good
        "2026-01-05 10:01:00,100,99,101,100,10,12,0",  # 3: high below low
        "2026-01-05 10:02:00,100,101,99,nan,10,12,0",  # 4: NaN close
        "2026-01-05 10:03:00,-1,101,-2,100,10,12,0",  # 5: non-positive
        "2026-01-05 10:04:00,100,abc,99,100,10,12,0",  # 6: not a number
        "2026-13-05 10:05:00,100,101,99,100,10,12,0",  # 7: bad time
        "2026-01-05 10:06:00,100,101,99,100,10,12",  # 8: a field missing
        "2026-01-05 10:00:00,100,101,99,100,10,12,0",  # 9: not after the last accepted bar (10:00)
        "2026-01-05 10:07:00,100,100,100,100,0,12,0",  # 10: flat filler: dropped and counted, not rejected
        "2026-01-05 10:08:00,100,100,100,100,3,12,0",  # 11: flat with ticks: kept
        "",  # 12: blank: ignored
        "2026-01-05 10:09:00,100,100.5,99.5,102,10,12,0",  # 13: close above high
        "2026-01-05 10:10:00,100,101,99,100,10,12,0",  # 14: good
    ]
    path = tmp_path / "bad.csv"
    path.write_text(RATES_HEADER + "\n".join(rows) + "\n")

    result = load_m1(path, server_time="utc")

    assert result.rejected == [
        (3, "high_below_low"),
        (4, "nan_price"),
        (5, "non_positive_price"),
        (6, "bad high 'abc'"),
        (7, "bad time '2026-13-05 10:05:00'"),
        (8, "expected 8 fields, got 7"),
        (9, "time_not_increasing"),
        (13, "open_close_outside_range"),
    ]
    assert result.dropped_flat == 1
    assert [datetime.fromtimestamp(int(t), UTC).minute for t in result.bars.time] == [0, 8, 10]
    assert result.warnings == ["8 rows rejected (first at line 3: high_below_low)"]
    assert result.summary()["rejected"][0] == {"line": 3, "reason": "high_below_low"}


def test_mt5_native_export_header_with_crlf(tmp_path):
    text = (
        "<DATE>\t<TIME>\t<OPEN>\t<HIGH>\t<LOW>\t<CLOSE>\t<TICKVOL>\t<VOL>\t<SPREAD>\r\n"
        "2024.05.29\t00:00:00\t1.08500\t1.08520\t1.08490\t1.08510\t25\t0\t8\r\n"
        "2024.05.29\t00:01\t1.08510\t1.08530\t1.08500\t1.08525\t30\t0\t9\r\n"
        "2024.05.29\t00:02:00\t1.08525\t1.08520\t1.08530\t1.08525\t30\t0\t9\r\n"
    )
    path = tmp_path / "EURUSD.tsv"
    path.write_bytes(text.encode())

    result = load_m1(path, utc_offset_hours=3)

    assert result.format == "mt5_export"
    assert result.rows == 2
    assert result.first == utc(2024, 5, 28, 21, 0) and result.last == utc(2024, 5, 28, 21, 1)
    assert result.bars.tick_volume.tolist() == [25, 30] and result.bars.spread.tolist() == [8, 9]
    assert result.rejected == [(4, "high_below_low")]


def test_utf16_export_is_read(tmp_path):
    text = "<DATE>\t<TIME>\t<OPEN>\t<HIGH>\t<LOW>\t<CLOSE>\t<TICKVOL>\t<VOL>\t<SPREAD>\r\n2024.05.29\t00:00:00\t2.0\t2.1\t1.9\t2.05\t5\t0\t3\r\n"
    path = tmp_path / "x.tsv"
    path.write_bytes(text.encode("utf-16"))
    assert load_m1(path).rows == 1


def test_unknown_header_is_refused(tmp_path):
    path = tmp_path / "odd.csv"
    path.write_text("when;o;h;l;c\n2024-01-01 00:00;1;1;1;1\n")
    with pytest.raises(UnknownFormat, match="mt5_rates_csv"):
        load_m1(path)


def test_wall_to_utc_agrees_with_server_to_utc_across_dst_switches():
    walls = []
    for day in (datetime(2026, 3, 8), datetime(2026, 11, 1), datetime(2026, 6, 15)):
        walls.extend(day + timedelta(minutes=m) for m in range(0, 24 * 60, 7))
    wall = np.array([int(w.replace(tzinfo=UTC).timestamp()) for w in walls], np.int64)
    for rule in ("us_dst", "+2", "-5", "5.5", "utc"):
        expected = [to_epoch(server_to_utc(rule, w)) for w in walls]
        assert wall_to_utc(rule, wall).tolist() == expected, rule


# --- validate_bars agrees with a row-by-row bar_problem ------------------------------------------------------

price = st.one_of(st.floats(min_value=0.5, max_value=2.0), st.sampled_from([math.nan, math.inf, 0.0, -1.0]))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), price, price, price, price), max_size=30), st.one_of(st.none(), st.integers(0, 20)))
def test_validate_bars_matches_sequential_bar_problem(rows, previous_time):
    bars = Bars.from_columns(
        time=[r[0] for r in rows], open=[r[1] for r in rows], high=[r[2] for r in rows], low=[r[3] for r in rows], close=[r[4] for r in rows]
    )
    expected_rejected, expected_kept, last = [], [], previous_time
    for i, (t, o, h, lo, c) in enumerate(rows):
        problem = bar_problem(time=t, open=o, high=h, low=lo, close=c, previous_time=last)
        if problem:
            expected_rejected.append((i, problem))
        else:
            expected_kept.append(t)
            last = t

    good, rejected = validate_bars(bars, previous_time=previous_time, max_atr=math.inf)  # bar_problem alone

    assert rejected == expected_rejected
    assert good.time.tolist() == expected_kept
