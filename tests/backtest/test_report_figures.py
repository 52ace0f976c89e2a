"""The backtest report's figures, against trades whose answers are worked out by hand."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from scalper.backtest.engine import Trade
from scalper.backtest.metrics import daily_returns, exposure, report_figures, sharpe_sortino, streaks


def _t(day: int, hour: int, minutes: int, pnl: float, *, strategy: str = "doji_breakout", reason: str = "tp", month: int = 3) -> Trade:
    opened = int(datetime(2024, month, day, hour, 0, tzinfo=UTC).timestamp())
    return Trade(strategy=strategy, side="buy", score=0.8, signal_index=0, entry_index=0, entry_price=2000.0, sl=1995.0, tp=2010.0,
                 initial_sl=1995.0, volume=0.1, reason=reason, entry_time=opened, exit_time=opened + minutes * 60, pnl=pnl)


def _result(trades, *, first=(2024, 3, 4), last=(2024, 3, 8, 23, 59)):
    return SimpleNamespace(
        config=SimpleNamespace(balance=10_000.0, symbol="XAUUSD"), trades=trades,
        first=int(datetime(*first, tzinfo=UTC).timestamp()), last=int(datetime(*last, tzinfo=UTC).timestamp()),
    )


def test_figures_of_a_small_week_worked_by_hand():
    # Monday..Friday 4-8 March 2024: +100 Mon, -50 Tue, -50 Tue, +200 Thu; Wednesday and Friday close nothing.
    trades = [_t(4, 10, 30, 100.0), _t(5, 10, 60, -50.0, reason="sl"), _t(5, 12, 30, -50.0, reason="sl", strategy="pinbar"),
              _t(7, 10, 120, 200.0)]
    got = report_figures(_result(trades))
    assert got["return_pct"] == 2.0 and got["final_balance"] == 10_200.0
    # the peak 10,100 falls to 10,000: 100 / 10,100
    assert got["max_drawdown_pct"] == round(100 / 10_100 * 100, 2)
    assert got["days"] == 5
    returns = [100 / 10_000, -100 / 10_100, 0.0, 200 / 10_000, 0.0]
    mean = sum(returns) / 5
    sd = math.sqrt(sum((r - mean) ** 2 for r in returns) / 4)
    assert got["sharpe"] == round(mean / sd * math.sqrt(252), 3)
    assert got["sortino"] == round(mean / math.sqrt((100 / 10_100) ** 2 / 5) * math.sqrt(252), 3)
    assert got["avg_hold_minutes"] == (30 + 60 + 30 + 120) / 4
    assert (got["longest_win_streak"], got["longest_loss_streak"]) == (1, 2)
    assert got["exit_reasons"] == {"sl": 2, "tp": 2}
    # 240 minutes held out of the span Monday 00:00 to Friday 23:59 + 1 minute (5 days)
    assert got["exposure_pct"] == round(240 / (5 * 1440) * 100, 2)
    assert got["monthly"] == [{"month": "2024-03", "trades": 4, "pnl": 200.0, "return_pct": 2.0}]
    assert got["by_strategy"]["pinbar"]["trades"] == 1 and got["by_strategy"]["pinbar"]["net_pnl"] == -50.0
    assert got["by_symbol"]["XAUUSD"]["trades"] == 4


def test_monthly_returns_are_on_each_months_starting_equity():
    trades = [_t(28, 10, 10, 1_000.0, month=2), _t(4, 10, 10, -550.0, month=3)]
    rows = report_figures(_result(trades, first=(2024, 2, 26), last=(2024, 3, 8))).get("monthly")
    assert rows == [{"month": "2024-02", "trades": 1, "pnl": 1000.0, "return_pct": 10.0},
                    {"month": "2024-03", "trades": 1, "pnl": -550.0, "return_pct": -5.0}]


def test_overlapping_positions_count_once_in_exposure_and_edge_cases():
    first, last = 0, 600 - 60
    a = SimpleNamespace(entry_time=0, exit_time=300, pnl=1.0)
    b = SimpleNamespace(entry_time=120, exit_time=420, pnl=1.0)
    assert exposure([a, b], first=first, last=last) == pytest.approx(420 / 600)
    assert streaks([1, 1, 0, -1, -1, -1, 2]) == (2, 3)
    assert sharpe_sortino([0.01]) == (None, None)
    assert sharpe_sortino([0.01, 0.01])[0] is None  # no spread
    assert daily_returns([], balance=1.0, first=None, last=None) == []
    empty = report_figures(_result([]))
    assert empty["return_pct"] == 0.0 and empty["sharpe"] is None and empty["exposure_pct"] == 0.0 and empty["monthly"] == []
