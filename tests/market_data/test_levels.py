"""Previous broker day's levels: a hand computation, weekends, server time, and the real gold file."""

from __future__ import annotations

import csv
from datetime import UTC, datetime

import pytest

from shared.bars import Bars
from shared.levels import previous_day_levels, trading_day_start
from shared.loaders import load_m1
from shared.timeutil import to_epoch


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def bars_of(*rows: tuple[datetime, float, float, float, float]) -> Bars:
    return Bars.from_columns(
        time=[to_epoch(r[0]) for r in rows], open=[r[1] for r in rows], high=[r[2] for r in rows], low=[r[3] for r in rows], close=[r[4] for r in rows]
    )


WEEK = bars_of(
    (utc(2026, 1, 7, 10, 0), 90, 91, 89, 90),  # Wednesday
    (utc(2026, 1, 7, 20, 0), 90, 92, 88, 91),
    (utc(2026, 1, 8, 10, 0), 100, 105, 99, 104),  # Thursday: H 110, L 95, C 97
    (utc(2026, 1, 8, 15, 0), 104, 110, 103, 108),
    (utc(2026, 1, 8, 23, 59), 108, 109, 95, 97),
    (utc(2026, 1, 9, 0, 0), 97, 98, 96, 97.5),  # Friday
)


def test_levels_by_hand():
    levels = previous_day_levels(WEEK, utc(2026, 1, 9, 12, 0))
    assert levels is not None
    assert (levels.prev_high, levels.prev_low, levels.prev_close) == (110, 95, 97)
    p = (110 + 95 + 97) / 3  # 100.667
    assert levels.pivot == pytest.approx(100.666666667)
    assert levels.r1 == pytest.approx(2 * p - 95) and levels.r1 == pytest.approx(106.333333333)
    assert levels.s1 == pytest.approx(91.333333333)
    assert levels.r2 == pytest.approx(115.666666667)
    assert levels.s2 == pytest.approx(85.666666667)
    assert levels.day_start == utc(2026, 1, 9)


def test_day_boundaries():
    assert previous_day_levels(WEEK, utc(2026, 1, 9, 0, 0)).prev_close == 97  # Friday starts at midnight: Thursday
    assert previous_day_levels(WEEK, utc(2026, 1, 8, 23, 59, 30)).prev_high == 92  # still Thursday: Wednesday
    assert previous_day_levels(WEEK, utc(2026, 1, 7, 12, 0)) is None  # no day before the first one
    assert previous_day_levels(Bars.empty(), utc(2026, 1, 9)) is None
    # Days without bars are skipped: Monday's levels come from Friday, whose only bar is at midnight.
    assert previous_day_levels(WEEK, utc(2026, 1, 12, 9, 0)).prev_high == 98


def test_monday_looks_back_to_friday_and_sunday_evening_joins_monday():
    bars = bars_of(
        (utc(2026, 1, 9, 12, 0), 100, 120, 90, 100),  # Friday
        (utc(2026, 1, 9, 20, 59), 100, 101, 99, 100),
        (utc(2026, 1, 11, 22, 0), 100, 130, 80, 125),  # Sunday evening reopen (a UTC server)
        (utc(2026, 1, 12, 9, 0), 125, 126, 110, 115),  # Monday
        (utc(2026, 1, 13, 9, 0), 115, 116, 114, 115),  # Tuesday
    )
    monday = previous_day_levels(bars, utc(2026, 1, 12, 10, 0))
    assert (monday.prev_high, monday.prev_low, monday.prev_close) == (120, 90, 100)
    assert monday.day_start == utc(2026, 1, 10)  # the trading day they serve began Saturday 00:00
    sunday = previous_day_levels(bars, utc(2026, 1, 11, 23, 0))
    assert (sunday.prev_high, sunday.prev_low) == (120, 90)
    tuesday = previous_day_levels(bars, utc(2026, 1, 13, 10, 0))
    assert (tuesday.prev_high, tuesday.prev_low, tuesday.prev_close) == (130, 80, 115)
    assert trading_day_start(utc(2026, 1, 12, 10, 0)) == utc(2026, 1, 10)


def test_broker_day_follows_server_time():
    # us_dst in June: UTC+3, so the broker day starts at 21:00 UTC.
    bars = bars_of(
        (utc(2026, 6, 15, 20, 30), 100, 200, 1, 100),  # Monday 23:30 server: not Tuesday
        (utc(2026, 6, 15, 21, 30), 100, 104, 98, 101),  # Tuesday 00:30 server
        (utc(2026, 6, 16, 20, 0), 101, 106, 100, 102),
        (utc(2026, 6, 16, 20, 59), 102, 103, 97, 99),  # Tuesday 23:59 server
        (utc(2026, 6, 16, 21, 0), 99, 150, 50, 99),  # Wednesday 00:00 server
    )
    levels = previous_day_levels(bars, utc(2026, 6, 16, 21, 30), "us_dst")
    assert (levels.prev_high, levels.prev_low, levels.prev_close) == (106, 97, 99)
    assert levels.day_start == utc(2026, 6, 16, 21, 0)
    # The same bars read as a UTC broker: at 21:30 UTC it is still Tuesday, so Monday is the previous day.
    assert previous_day_levels(bars, utc(2026, 6, 16, 21, 30)).prev_high == 200


@pytest.mark.parametrize(
    ("at", "server_date"),
    [(utc(2026, 4, 15, 10, 0), "2026-04-14"), (utc(2026, 4, 13, 10, 0), "2026-04-10"), (utc(2026, 4, 6, 10, 0), "2026-04-02")],
)
def test_real_gold_levels_match_the_file_grouped_by_server_date(gold_file, at, server_date):
    bars = load_m1(gold_file, server_time="us_dst").bars
    with gold_file.open() as f:
        day = [r for r in csv.DictReader(f) if r["time"].startswith(server_date)]
    levels = previous_day_levels(bars, at, "us_dst")
    assert levels.prev_high == max(float(r["high"]) for r in day)
    assert levels.prev_low == min(float(r["low"]) for r in day)
    assert levels.prev_close == float(day[-1]["close"])
