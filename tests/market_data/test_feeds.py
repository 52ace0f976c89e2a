"""The synthetic and replay feeds: determinism, realism, closed bars only, the market-hours rule."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from services.market_data.feeds.base import weekend_closed
from services.market_data.feeds.replay import ReplayFeed
from services.market_data.feeds.synthetic import SyntheticFeed
from shared.bars import FIELDS
from shared.loaders import validate_bars
from shared.symbols import UnknownSymbol
from shared.timeutil import from_epoch, to_epoch


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


FRIDAY_CLOSE = utc(2025, 3, 14, 21, 0)
FOUR_WEEKS = 4 * 5 * 1380  # four weeks of bars (a trading week holds about 5 x 23 hours)


@pytest.fixture(scope="module")
def feed() -> SyntheticFeed:
    return SyntheticFeed()


@pytest.fixture(scope="module")
def month(feed) -> dict:
    return {s: feed.closed_bars(s, until=FRIDAY_CLOSE, count=FOUR_WEEKS) for s in ("XAUUSD", "EURUSD")}


def same(a, b) -> bool:
    return all(np.array_equal(getattr(a, f), getattr(b, f)) for f in FIELDS)


# --- the weekend rule --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("at", "closed"),
    [
        (utc(2025, 3, 14, 20, 59), False),
        (utc(2025, 3, 14, 21, 0), True),
        (utc(2025, 3, 15, 12, 0), True),
        (utc(2025, 3, 16, 21, 59), True),
        (utc(2025, 3, 16, 22, 0), False),
        (utc(2025, 3, 17, 3, 0), False),
    ],
)
def test_weekend_rule(at, closed):
    assert weekend_closed(at) is closed


# --- synthetic ---------------------------------------------------------------------------------------------


def test_synthetic_is_deterministic_whatever_the_call_order():
    late = SyntheticFeed().closed_bars("XAUUSD", until=utc(2025, 6, 4, 12, 0), count=3000)
    other = SyntheticFeed()
    other.closed_bars("XAUUSD", until=utc(2031, 1, 1), count=10)  # another day generated first
    early = other.closed_bars("XAUUSD", until=utc(2025, 6, 3, 12, 0), count=1000)
    assert same(late, SyntheticFeed().closed_bars("XAUUSD", until=utc(2025, 6, 4, 12, 0), count=3000))
    start = int(np.searchsorted(late.time, early.time[0]))
    assert same(late[start:start + len(early)], early)  # an earlier window is exactly a slice of a later one
    assert not np.array_equal(late.close, SyntheticFeed(seed=8).closed_bars("XAUUSD", until=utc(2025, 6, 4, 12, 0), count=3000).close)


def test_synthetic_bars_are_sound_and_never_on_weekends(month):
    for symbol, bars in month.items():
        assert len(bars) == FOUR_WEEKS
        assert validate_bars(bars)[1] == [], symbol
        steps = np.diff(bars.time)
        assert (steps > 0).all() and (steps % 60 == 0).all()
        assert not any(weekend_closed(from_epoch(int(t))) for t in bars.time), symbol
        assert (bars.spread > 0).all() and (bars.tick_volume > 0).all()
        assert int(steps.max()) == 49 * 3600 + 60  # Friday 20:59 -> Sunday 22:00


def test_synthetic_scale_matches_the_real_files(month):
    gold, eur = month["XAUUSD"], month["EURUSD"]
    assert 2_000 < gold.low.min() and gold.high.max() < 4_500
    assert 1.2 < np.median(gold.high - gold.low) < 3.0  # the gold file: 2.08
    assert 0.95 < eur.low.min() and eur.high.max() < 1.3
    assert 0.00011 < np.median(eur.high - eur.low) < 0.00022  # the EURUSD file: 0.00016
    assert np.all(np.round(gold.close, 2) == gold.close) and np.all(np.round(eur.close, 5) == eur.close)
    assert np.median(gold.spread) == pytest.approx(12, abs=1)
    assert 10 <= np.median(eur.spread) <= 20


def test_synthetic_has_a_session_rhythm_clustering_and_pin_bars(month):
    for symbol, bars in month.items():
        hour = (bars.time // 3600) % 24
        rng = bars.high - bars.low
        assert np.median(rng[(hour >= 13) & (hour < 16)]) > 1.8 * np.median(rng[hour < 6]), symbol  # overlap vs Asia
        assert np.median(bars.spread[hour == 21]) > 1.8 * np.median(bars.spread[(hour >= 13) & (hour < 16)]), symbol  # rollover
        consecutive = np.diff(bars.time) == 60
        r = np.abs(np.diff(np.log(bars.close))[consecutive])
        r = r - r.mean()
        assert (r[:-5] * r[5:]).mean() / r.var() > 0.1, symbol  # volatility clusters: |r| autocorrelated at lag 5
        body_top, body_bottom = np.maximum(bars.open, bars.close), np.minimum(bars.open, bars.close)
        upper, lower = bars.high - body_top, body_bottom - bars.low
        pin = ((lower >= 0.6 * rng) & (upper <= 0.2 * rng)) | ((upper >= 0.6 * rng) & (lower <= 0.2 * rng))
        assert 0.04 < pin[rng > 0].mean() < 0.25, symbol  # the real files: 9-16 %


def test_synthetic_days_join_up(feed):
    bars = feed.closed_bars("EURUSD", until=utc(2025, 3, 13, 1, 0), count=1500)
    midnight = int(np.searchsorted(bars.time, to_epoch(utc(2025, 3, 13))))
    jump = abs(bars.open[midnight] - bars.close[midnight - 1])
    assert jump < np.median(bars.high - bars.low)


def test_synthetic_serves_closed_bars_only(feed):
    for until, newest in [
        (utc(2025, 3, 12, 10, 30, 0), utc(2025, 3, 12, 10, 29)),  # the 10:29 bar closes at 10:30: closed
        (utc(2025, 3, 12, 10, 30, 59), utc(2025, 3, 12, 10, 29)),  # the 10:30 bar is still forming
        (utc(2025, 3, 12, 10, 29, 59), utc(2025, 3, 12, 10, 28)),
        (utc(2025, 3, 15, 12, 0), utc(2025, 3, 14, 20, 59)),  # Saturday: Friday's last bar
    ]:
        bars = feed.closed_bars("XAUUSD", until=until, count=50)
        assert from_epoch(int(bars.time[-1])) == newest and len(bars) == 50


def test_synthetic_refuses_unknown_symbols(feed):
    with pytest.raises(UnknownSymbol):
        feed.closed_bars("BTCUSD", until=FRIDAY_CLOSE, count=10)
    with pytest.raises(ValueError, match="no synthetic profile"):
        SyntheticFeed(symbols=("XAGUSD",))
    assert feed.symbols() == ["XAUUSD", "EURUSD"]
    assert feed.market_open("XAUUSD", utc(2025, 3, 15)) is False


# --- replay ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gold_replay(gold_file) -> ReplayFeed:
    return ReplayFeed(gold_file, "XAUUSD", server_time="us_dst")


def test_replay_never_serves_a_forming_bar(gold_replay):
    t = gold_replay.load.bars.time
    forming = from_epoch(int(t[1000]) + 30)  # bar 1000 opened 30 s ago
    bars = gold_replay.closed_bars("XAUUSD", until=forming, count=100)
    assert int(bars.time[-1]) == t[999] and len(bars) == 100
    closed = gold_replay.closed_bars("XAUUSD", until=from_epoch(int(t[1000]) + 60), count=100)
    assert int(closed.time[-1]) == t[1000]
    assert len(gold_replay.closed_bars("XAUUSD", until=from_epoch(int(t[0]) + 59), count=100)) == 0


def test_replay_starts_after_a_full_window(gold_replay):
    start = gold_replay.start_time()
    t = gold_replay.load.bars.time
    assert start == from_epoch(int(t[599]) + 60)
    assert len(gold_replay.closed_bars("XAUUSD", until=start, count=600)) == 600
    assert gold_replay.ends_at() == utc(2026, 5, 28, 14, 1)
    assert gold_replay.server_time == "us_dst"


def test_replay_market_hours(gold_replay):
    assert gold_replay.market_open("XAUUSD", utc(2026, 4, 14, 10, 0)) is True
    assert gold_replay.market_open("XAUUSD", utc(2026, 4, 14, 21, 30)) is False  # gold's daily break in the file
    assert gold_replay.market_open("XAUUSD", utc(2026, 4, 18, 12, 0)) is False  # Saturday
    assert gold_replay.market_open("XAUUSD", utc(2026, 6, 2, 12, 0)) is True  # after the file ends: bars are due
    with pytest.raises(UnknownSymbol):
        gold_replay.closed_bars("EURUSD", until=utc(2026, 4, 14), count=1)


def test_replay_of_a_small_file_names_its_symbol(tmp_path):
    rows = [f"2026-01-05 10:{m:02d}:00,100,101,99,100,10,12,0" for m in range(5)]
    path = tmp_path / "GBPUSD_M1.csv"
    path.write_text("time,open,high,low,close,tick_volume,spread,real_volume\n" + "\n".join(rows) + "\n")
    feed = ReplayFeed(path)
    assert feed.symbols() == ["GBPUSD"]
    assert feed.start_time() == utc(2026, 1, 5, 10, 5)  # fewer than 600 bars: after the last one
    assert len(feed.closed_bars("GBPUSD", until=utc(2026, 1, 5, 10, 3), count=10)) == 3
    assert feed.market_open("GBPUSD", utc(2026, 1, 5, 10, 2, 30)) is True
