"""Trade statistics in the one shape `GET /stats` and `scalper backtest --json` share (architecture.md, "JSON answers").

`compute_stats(trades)` -> `{"total": S, "by_strategy": {name: S}}`, S = trades, wins, win_rate, profit_factor,
expectancy_r, max_drawdown, net_pnl, net_pips. Pure: no I/O, no clock.

Conventions (so the API and the backtester never disagree):
- a win is a trade with pnl > 0 (a break-even trade of pnl == 0 is neither a win nor a loss);
- win_rate = wins / trades, in [0, 1]; 0.0 when there are no trades;
- profit_factor = gross profit / gross loss (both from pnl, account currency); null (None) when there is no losing
  trade (undefined, not infinite: JSON has no infinity); 0.0 when there are losses and no profit;
- expectancy_r = mean of r_multiple over the trades that carry one (r_multiple not None); None when none do;
- max_drawdown = the largest fall of the cumulative closed P&L curve from its running peak (the curve starts at 0,
  trades ordered by closed_at, then opened_at), in account currency, reported as a positive number (0.0 if none);
- net_pnl = sum of pnl (account currency, after commission and swap); net_pips = sum of pips;
- money and pips are rounded to 2 decimals, ratios to 4 (display; the totals are computed unrounded).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class ClosedTrade:
    """One closed trade. `pnl` in account currency (net of costs), `pips` signed, `r_multiple` = pnl in units of the
    money the initial stop risked (None when the trade had no stop)."""

    strategy: str
    side: Literal["buy", "sell"]
    pnl: float
    pips: float
    r_multiple: float | None
    opened_at: datetime
    closed_at: datetime


STAT_KEYS = ("trades", "wins", "win_rate", "profit_factor", "expectancy_r", "max_drawdown", "net_pnl", "net_pips")


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)


def max_drawdown(pnls: Iterable[float]) -> float:
    """Largest peak-to-trough fall of the cumulative P&L curve (starting at 0), as a positive number."""
    equity = peak = worst = 0.0
    for pnl in pnls:
        equity += pnl
        if equity > peak:
            peak = equity
        elif peak - equity > worst:
            worst = peak - equity
    return worst


def _stats(trades: list[ClosedTrade]) -> dict[str, Any]:
    trades = sorted(trades, key=lambda t: (t.closed_at, t.opened_at))
    pnls = [t.pnl for t in trades]
    wins = sum(1 for p in pnls if p > 0)
    gross_profit = sum(p for p in pnls if p > 0)
    gross_loss = -sum(p for p in pnls if p < 0)
    rs = [t.r_multiple for t in trades if t.r_multiple is not None]
    n = len(trades)
    return {
        "trades": n,
        "wins": wins,
        "win_rate": _round(wins / n if n else 0.0, 4),
        "profit_factor": _round(gross_profit / gross_loss, 4) if gross_loss > 0 else None,
        "expectancy_r": _round(sum(rs) / len(rs), 4) if rs else None,
        "max_drawdown": _round(max_drawdown(pnls), 2),
        "net_pnl": _round(sum(pnls), 2),
        "net_pips": _round(sum(t.pips for t in trades), 2),
    }


def compute_stats(trades: Iterable[ClosedTrade]) -> dict[str, Any]:
    """`{"total": S, "by_strategy": {name: S}}` over closed trades (any order); by_strategy sorted by name."""
    trades = list(trades)
    groups: dict[str, list[ClosedTrade]] = {}
    for trade in trades:
        groups.setdefault(trade.strategy, []).append(trade)
    return {"total": _stats(trades), "by_strategy": {name: _stats(groups[name]) for name in sorted(groups)}}


def _sum(x) -> float:
    """sum() of the values in order (a running sum, as Python's sum adds them; numpy's sum would pair them)."""
    import numpy as np

    return float(np.cumsum(x)[-1]) if len(x) else 0.0


def compute_stats_arrays(strategy, pnl, pips, r_multiple, closed_at, opened_at) -> dict[str, Any]:
    """compute_stats over trades given as arrays (the backtester's): strategy names, pnl, pips, r_multiple (NaN where
    a trade has none), closed_at and opened_at (epoch seconds). The same sums in the same order, so the same figures."""
    import numpy as np

    strategy, pnl, pips, r_multiple = np.asarray(strategy), np.asarray(pnl, float), np.asarray(pips, float), np.asarray(r_multiple, float)
    order = np.lexsort((np.asarray(opened_at), np.asarray(closed_at)))  # stable, as sorted() is

    def stats(rows: np.ndarray) -> dict[str, Any]:
        p = pnl[rows]
        n = len(p)
        wins = int(np.count_nonzero(p > 0))
        gross_profit, gross_loss = _sum(p[p > 0]), -_sum(p[p < 0])
        r = r_multiple[rows]
        r = r[~np.isnan(r)]
        equity = np.cumsum(p)
        drawdown = float(np.max(np.maximum.accumulate(np.maximum(equity, 0.0)) - equity)) if n else 0.0
        return {
            "trades": n,
            "wins": wins,
            "win_rate": _round(wins / n if n else 0.0, 4),
            "profit_factor": _round(gross_profit / gross_loss, 4) if gross_loss > 0 else None,
            "expectancy_r": _round(_sum(r) / len(r), 4) if len(r) else None,
            "max_drawdown": _round(max(drawdown, 0.0), 2),
            "net_pnl": _round(_sum(p), 2),
            "net_pips": _round(_sum(pips[rows]), 2),
        }

    names = strategy[order]
    return {"total": stats(order), "by_strategy": {str(name): stats(order[names == name]) for name in sorted(set(names.tolist()))}}
