"""shared.stats.compute_stats: the GET /stats and `scalper backtest --json` shape and its conventions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.stats import STAT_KEYS, ClosedTrade, compute_stats, compute_stats_arrays, max_drawdown

T0 = datetime(2026, 4, 1, tzinfo=UTC)


def trade(strategy: str, pnl: float, minute: int, *, r: float | None = None, pips: float | None = None) -> ClosedTrade:
    return ClosedTrade(strategy=strategy, side="buy", pnl=pnl, pips=pnl * 10 if pips is None else pips, r_multiple=r,
                       opened_at=T0 + timedelta(minutes=minute), closed_at=T0 + timedelta(minutes=minute + 1))


def test_shape_and_values():
    trades = [trade("a", 10, 0, r=1.0), trade("a", -5, 2, r=-0.5), trade("b", -20, 4, r=-1.0), trade("a", 30, 6, r=3.0), trade("b", 0, 8)]
    stats = compute_stats(trades)
    assert set(stats) == {"total", "by_strategy"} and list(stats["by_strategy"]) == ["a", "b"]
    total = stats["total"]
    assert set(total) == set(STAT_KEYS)
    assert total == {
        "trades": 5, "wins": 2, "win_rate": 0.4, "profit_factor": 1.6, "expectancy_r": 0.625,
        "max_drawdown": 25.0,  # equity 10, 5, -15, 15, 15: peak 10 -> trough -15
        "net_pnl": 15.0, "net_pips": 150.0,
    }
    assert stats["by_strategy"]["b"]["wins"] == 0 and stats["by_strategy"]["b"]["profit_factor"] == 0.0


def test_no_losses_gives_null_profit_factor_and_empty_is_zeroes():
    assert compute_stats([trade("a", 5, 0)])["total"]["profit_factor"] is None
    empty = compute_stats([])
    assert empty == {"total": {"trades": 0, "wins": 0, "win_rate": 0.0, "profit_factor": None, "expectancy_r": None,
                               "max_drawdown": 0.0, "net_pnl": 0.0, "net_pips": 0.0}, "by_strategy": {}}


def test_drawdown_follows_close_order_not_input_order():
    late_loss, early_win = trade("a", -10, 5), trade("a", 10, 0)
    assert compute_stats([late_loss, early_win])["total"]["max_drawdown"] == 10.0
    assert max_drawdown([-3, -4, 10, -2]) == pytest.approx(7.0)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.floats(-500, 500, allow_nan=False), st.integers(0, 50),
                          st.integers(0, 30), st.one_of(st.none(), st.floats(-5, 5, allow_nan=False)),
                          st.floats(-100, 100, allow_nan=False)), max_size=60))
def test_array_stats_equal_compute_stats(rows):
    """The backtester's numpy statistics give compute_stats' figures exactly, ties in closing time included."""
    trades = [ClosedTrade(strategy=s, side="buy", pnl=pnl, pips=pips, r_multiple=r, opened_at=T0 + timedelta(minutes=o),
                          closed_at=T0 + timedelta(minutes=o + d)) for s, pnl, o, d, r, pips in rows]
    got = compute_stats_arrays(
        [t.strategy for t in trades], [t.pnl for t in trades], [t.pips for t in trades],
        [np.nan if t.r_multiple is None else t.r_multiple for t in trades],
        [int(t.closed_at.timestamp()) for t in trades], [int(t.opened_at.timestamp()) for t in trades])
    assert got == compute_stats(trades)
