"""Bars: the forming bar, server-time stamps, the three copy_rates calls, longer timeframes, the real gold file."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from mt5sim import SimulatedMT5
from mt5sim.market import load_m1
from tests.mt5sim.simdata import START, SYMBOL, bars_from, flat, make_sim, market

M1 = SimulatedMT5.TIMEFRAME_M1


def wall(dt: datetime) -> int:
    """A server wall-clock time as MT5 stores it: the wall reading written as if it were UTC epoch seconds."""
    return int(dt.replace(tzinfo=UTC).timestamp())


def rising(n: int) -> list[tuple[float, float, float, float]]:
    """Bars that each close 1.00 above their open: open, low, high, close = p, p-0.2, p+1.2, p+1."""
    return [(2000.0 + i, 2001.2 + i, 1999.8 + i, 2001.0 + i) for i in range(n)]


def test_start_pos_0_is_the_forming_bar_and_1_the_last_closed():
    sim = make_sim(rising(200), at_bar=100)
    sim.advance(20)  # 20 s into bar 100: its open and its low have traded
    forming = sim.copy_rates_from_pos(SYMBOL, M1, 0, 1)[0]
    assert forming["time"] == wall(datetime(2025, 7, 1, 16, 40))  # 13:40 UTC under us_dst (UTC+3)
    assert (forming["open"], forming["low"], forming["high"], forming["close"]) == (2100.0, 2099.8, 2100.0, 2099.8)
    closed = sim.copy_rates_from_pos(SYMBOL, M1, 1, 1)[0]
    assert closed["time"] == wall(datetime(2025, 7, 1, 16, 39))
    assert (closed["open"], closed["high"], closed["low"], closed["close"]) == (2099.0, 2100.2, 2098.8, 2100.0)
    assert sim.symbol_info_tick(SYMBOL).bid == 2099.8
    sim.advance(30)  # 50 s in: the close has traded; the bar is whole but still the last row
    forming = sim.copy_rates_from_pos(SYMBOL, M1, 0, 1)[0]
    assert (forming["high"], forming["close"]) == (2101.2, 2101.0)
    sim.step()
    assert sim.copy_rates_from_pos(SYMBOL, M1, 1, 1)[0]["time"] == wall(datetime(2025, 7, 1, 16, 40))


def test_rates_are_oldest_first_and_never_from_the_future():
    sim = make_sim(rising(200), at_bar=100)
    bars = sim.copy_rates_from_pos(SYMBOL, M1, 1, 500)
    assert len(bars) == 100
    assert np.all(np.diff(bars["time"]) == 60)
    assert bars["time"][-1] == wall(datetime(2025, 7, 1, 16, 39))
    assert list(bars["open"][:3]) == [2000.0, 2001.0, 2002.0]
    assert len(sim.copy_rates_from_pos(SYMBOL, M1, 0, 500)) == 101


@pytest.mark.parametrize(
    ("rule", "utc", "server"),
    [
        ("us_dst", datetime(2025, 7, 1, 12, 0), datetime(2025, 7, 1, 15, 0)),  # summer: UTC+3
        ("us_dst", datetime(2025, 1, 7, 12, 0), datetime(2025, 1, 7, 14, 0)),  # winter: UTC+2
        ("us_dst", datetime(2025, 3, 7, 12, 0), datetime(2025, 3, 7, 14, 0)),  # before the second Sunday of March: still UTC+2
        ("+2", datetime(2025, 7, 1, 12, 0), datetime(2025, 7, 1, 14, 0)),
        ("utc", datetime(2025, 7, 1, 12, 0), datetime(2025, 7, 1, 12, 0)),
    ],
)
def test_bars_are_stamped_with_the_server_wall_clock(rule, utc, server):
    start = utc.replace(tzinfo=UTC)
    sim = SimulatedMT5({"XAUUSD": bars_from(flat(10), start)}, server_time=rule, suffix="m", start=start + timedelta(minutes=5))
    sim.initialize()
    sim.symbol_select(SYMBOL)
    assert sim.copy_rates_from_pos(SYMBOL, M1, 0, 10)["time"][0] == wall(server)


def test_copy_rates_from_and_range_compare_server_time():
    sim = make_sim(rising(200), at_bar=100)
    # 12:00-12:05 UTC is 15:00-15:05 on the server: MT5 compares the arguments with the stamps as they are.
    got = sim.copy_rates_range(SYMBOL, M1, wall(datetime(2025, 7, 1, 15, 0)), wall(datetime(2025, 7, 1, 15, 5)))
    assert len(got) == 6 and got["open"][0] == 2000.0
    naive_utc = sim.copy_rates_range(SYMBOL, M1, datetime(2025, 7, 1, 12, 0, tzinfo=UTC), datetime(2025, 7, 1, 12, 5, tzinfo=UTC))
    assert len(naive_utc) == 0  # UTC instants fall three hours before the first server stamp
    last3 = sim.copy_rates_from(SYMBOL, M1, wall(datetime(2025, 7, 1, 15, 10)), 3)
    assert list(last3["time"]) == [wall(datetime(2025, 7, 1, 15, m)) for m in (8, 9, 10)]
    assert len(sim.copy_rates_range(SYMBOL, M1, wall(datetime(2025, 7, 2)), wall(datetime(2025, 7, 3)))) == 0


def test_bad_rates_arguments_return_none(sim):
    assert sim.copy_rates_from_pos(SYMBOL, 7, 0, 10) is None
    assert sim.last_error() == (-2, 'Invalid "timeframe" argument')
    assert sim.copy_rates_from_pos(SYMBOL, M1, 0, 0) is None
    assert sim.copy_rates_from_pos("XAUUSD", M1, 0, 10) is None
    assert sim.last_error() == (-4, "Terminal: Not found")
    assert sim.copy_rates_from_pos(SYMBOL, M1, np.int64(0), 10) is None


def test_longer_timeframes_aggregate_on_the_server_clock():
    sim = make_sim(rising(200), at_bar=100)
    m5 = sim.copy_rates_from_pos(SYMBOL, sim.TIMEFRAME_M5, 1, 2)
    assert list(m5["time"]) == [wall(datetime(2025, 7, 1, 16, 30)), wall(datetime(2025, 7, 1, 16, 35))]
    last = m5[-1]  # M1 bars 95..99
    assert (last["open"], last["high"], last["low"], last["close"]) == (2095.0, 2100.2, 2094.8, 2100.0)
    assert last["tick_volume"] == 500
    h1 = sim.copy_rates_from_pos(SYMBOL, sim.TIMEFRAME_H1, 0, 5)
    assert list(h1["time"]) == [wall(datetime(2025, 7, 1, 15)), wall(datetime(2025, 7, 1, 16))]
    d1 = sim.copy_rates_from_pos(SYMBOL, sim.TIMEFRAME_D1, 0, 5)
    assert list(d1["time"]) == [wall(datetime(2025, 7, 1))]  # the broker day starts at 00:00 server time


def test_only_maxbars_bars_are_available():
    sim = make_sim(rising(200), at_bar=150, maxbars=50)
    assert sim.terminal_info().maxbars == 50
    assert len(sim.copy_rates_from_pos(SYMBOL, M1, 0, 1000)) == 50


def test_no_prices_before_the_first_bar_and_market_closed_in_a_long_gap():
    rows = flat(20)
    t0 = int(START.timestamp())
    times = [t0 + 60 * i for i in range(10)] + [t0 + 3 * 3600 + 60 * i for i in range(10)]  # a 3-hour break
    sim = SimulatedMT5({"XAUUSD": bars_from(rows, times=times)}, suffix="m", start=START - timedelta(minutes=5))
    sim.initialize()
    sim.symbol_select(SYMBOL)
    early = market(sim, sim.ORDER_TYPE_BUY)
    assert (early.retcode, early.comment, early.deal, early.order, early.price) == (10021, "No prices", 0, 0, 0.0)
    sim.advance_to(START + timedelta(minutes=30))
    closed = market(sim, sim.ORDER_TYPE_BUY)
    assert closed.retcode == sim.TRADE_RETCODE_MARKET_CLOSED
    # In the break the last row is the last bar, already closed.
    assert sim.copy_rates_from_pos(SYMBOL, M1, 0, 1)["time"][0] == times[9]
    sim.advance_to(START + timedelta(hours=3))
    assert market(sim, sim.ORDER_TYPE_BUY).retcode == sim.TRADE_RETCODE_DONE


def test_bars_from_a_shared_bars_object():
    from shared.bars import Bars

    cols = bars_from(rising(30))
    bars = Bars.from_columns(**cols)
    sim = SimulatedMT5({"XAUUSDm": bars}, suffix="m", start=START + timedelta(minutes=10))
    sim.initialize()
    sim.symbol_select(SYMBOL)
    assert sim.copy_rates_from_pos(SYMBOL, M1, 1, 1)["close"][0] == 2010.0


@pytest.mark.data
def test_real_gold_file_round_trips_its_server_stamps(gold_file):
    """Read the file's broker stamps as us_dst, run a us_dst server: the terminal hands back the file's own times."""
    bars = load_m1(gold_file, file_time="us_dst")
    assert len(bars) == 63_230
    assert datetime.fromtimestamp(int(bars["time"][0]), UTC) == datetime(2026, 3, 24, 14, 0, tzinfo=UTC)
    start = datetime(2026, 4, 1, 12, 0, 30, tzinfo=UTC)
    sim = SimulatedMT5({"XAUUSD": bars}, server_time="us_dst", suffix="m", start=start)
    assert sim.initialize() and sim.symbol_select(SYMBOL)
    closed = sim.copy_rates_from_pos(SYMBOL, M1, 1, 100)
    assert len(closed) == 100
    assert closed["time"][-1] == wall(datetime(2026, 4, 1, 14, 59))  # the file's line "2026-04-01 14:59:00"
    lines = gold_file.read_text().splitlines()
    row = next(line for line in lines if line.startswith("2026-04-01 14:59:00")).split(",")
    assert (closed["open"][-1], closed["high"][-1], closed["low"][-1], closed["close"][-1]) == tuple(float(x) for x in row[1:5])
    assert closed["spread"][-1] == int(row[6])
    forming = next(line for line in lines if line.startswith("2026-04-01 15:00:00")).split(",")
    tick = sim.symbol_info_tick(SYMBOL)  # 30 s into the 15:00 bar: its second extreme (open, low/high, ...)
    assert tick.time == wall(datetime(2026, 4, 1, 15, 0, 30))
    assert tick.bid in (float(forming[2]), float(forming[3]))
    assert tick.ask == pytest.approx(tick.bid + int(forming[6]) * 0.01)
    sim.step(60)
    assert sim.copy_rates_from_pos(SYMBOL, M1, 1, 1)["time"][0] == wall(datetime(2026, 4, 1, 15, 59))


@pytest.mark.data
def test_real_gold_file_trades_and_stops_out(gold_file):
    sim = SimulatedMT5({"XAUUSD": gold_file}, server_time="us_dst", suffix="m", data_time="us_dst",
                       start=datetime(2026, 4, 1, 12, 0, tzinfo=UTC))
    assert sim.initialize() and sim.symbol_select(SYMBOL)
    tick = sim.symbol_info_tick(SYMBOL)
    result = market(sim, sim.ORDER_TYPE_BUY, sl=round(tick.bid - 3.0, 2), tp=round(tick.bid + 3.0, 2))
    assert result.retcode == sim.TRADE_RETCODE_DONE and result.price == tick.ask
    sim.step(24 * 60)  # a day of bars: gold's median M1 range is about 2, so one of them is hit
    assert sim.positions_get() == ()
    exits = [d for d in sim.history_deals_get(position=result.order) if d.entry == sim.DEAL_ENTRY_OUT]
    assert len(exits) == 1 and exits[0].reason in (sim.DEAL_REASON_SL, sim.DEAL_REASON_TP)
    level = result.request.sl if exits[0].reason == sim.DEAL_REASON_SL else result.request.tp
    # Filled at the level, or beyond it when a bar opened through it (a long: worse for SL, better for TP).
    assert exits[0].price <= level if exits[0].reason == sim.DEAL_REASON_SL else exits[0].price >= level
    assert sim.account_info().balance == pytest.approx(10_000.0 + exits[0].profit)


def test_load_m1_reads_a_file_clock(tmp_path):
    path = tmp_path / "bars.csv"
    path.write_text("time,open,high,low,close,tick_volume,spread,real_volume\n"
                    "2025-07-01 14:00:00,2000.0,2000.5,1999.5,2000.0,100,12,0\n"
                    "2025-07-01 14:01:00,2000.0,2000.5,1999.5,2000.1,90,13,0\n")
    bars = load_m1(path, file_time="+2")
    assert list(bars["time"]) == [int(datetime(2025, 7, 1, 12, m, tzinfo=UTC).timestamp()) for m in (0, 1)]
    assert list(bars["spread"]) == [12, 13] and list(bars["tick_volume"]) == [100, 90]
    assert load_m1(path)["time"][0] == int(datetime(2025, 7, 1, 14, tzinfo=UTC).timestamp())


@pytest.mark.data
def test_load_m1_reads_the_eurusd_export(eurusd_file):
    bars = load_m1(eurusd_file)
    assert len(bars) == 30_203
    assert datetime.fromtimestamp(int(bars["time"][0]), UTC) == datetime(2018, 6, 1, tzinfo=UTC)
    sim = SimulatedMT5({"EURUSD": bars}, suffix="m", start=datetime(2018, 6, 1, 1, 0, tzinfo=UTC))
    assert sim.initialize() and sim.symbol_select("EURUSDm")
    tick = sim.symbol_info_tick("EURUSDm")
    assert round((tick.ask - tick.bid) / 0.00001) == sim.copy_rates_from_pos("EURUSDm", M1, 0, 1)["spread"][0]
