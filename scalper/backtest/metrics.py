"""The figures of a backtest report beyond `shared.stats`: return and drawdown in percent, Sharpe and Sortino on daily
returns, exposure, holding times, streaks, exit reasons, a monthly returns table, per strategy and per symbol.

Pure: a BacktestResult (or anything with `config.balance`, `config.symbol`, `trades`, `first`, `last`) in, a dict of
plain numbers out, the JSON's `report` key. Conventions:
- equity moves at each trade's close (closed-trade equity, from `config.balance`); drawdown % is the largest fall
  from a running peak of that curve, as a percentage of the peak;
- daily returns are over every weekday (UTC) from the first bar's day to the last bar's, 0 on a day that closed no
  trade: r = that day's P&L / the equity at the day's start. Sharpe = mean / sample standard deviation x sqrt(252);
  Sortino = mean / downside deviation (root mean square of the negative returns over all days) x sqrt(252); None
  with fewer than two days or no spread (no losing day, for Sortino);
- exposure = the share of the tested span (first bar to last bar's close) with at least one position open;
- a streak is a run of consecutive wins (pnl > 0) or losses (pnl < 0) in closing order; a break-even trade ends both.
"""

from __future__ import annotations

import math
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from typing import Any

TRADING_DAYS = 252


def _day(epoch: int) -> date:
    return datetime.fromtimestamp(epoch, UTC).date()


def _r(value: float | None, digits: int) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, digits)


def _days(epochs) -> list[date]:
    """_day of each epoch second, computed once per distinct UTC day (a day is epoch // 86400 whole days)."""
    seen: dict[int, date] = {}
    out = []
    for x in epochs:
        k = x // 86_400
        d = seen.get(k)
        if d is None:
            d = seen[k] = _day(x)
        out.append(d)
    return out


def daily_returns(trades, *, balance: float, first: int | None, last: int | None) -> list[tuple[date, float]]:
    if first is None or last is None:
        return []
    pnl_by_day: dict[date, float] = {}
    for t, d in zip(trades, _days(t.exit_time for t in trades), strict=True):
        pnl_by_day[d] = pnl_by_day.get(d, 0.0) + t.pnl
    out, equity, day, end = [], balance, _day(first), _day(last)
    while day <= end:
        pnl = pnl_by_day.pop(day, 0.0)
        if day.weekday() < 5 or pnl:
            out.append((day, pnl / equity if equity > 0 else 0.0))
            equity += pnl
        day += timedelta(days=1)
    return out


def sharpe_sortino(returns: list[float]) -> tuple[float | None, float | None]:
    n = len(returns)
    if n < 2:
        return None, None
    mean = sum(returns) / n
    var = sum((r - mean) ** 2 for r in returns) / (n - 1)
    sharpe = mean / math.sqrt(var) * math.sqrt(TRADING_DAYS) if var > 0 else None
    downside = math.sqrt(sum(min(r, 0.0) ** 2 for r in returns) / n)
    sortino = mean / downside * math.sqrt(TRADING_DAYS) if downside > 0 else None
    return sharpe, sortino


def exposure(trades, *, first: int | None, last: int | None) -> float | None:
    """Share (0..1) of [first, last + 60 s) with a position open: the union of the trades' holding intervals."""
    if first is None or last is None or last + 60 <= first:
        return None
    covered, end = 0, first
    for start, stop in sorted((max(t.entry_time, first), min(t.exit_time, last + 60)) for t in trades):
        start = max(start, end)
        if stop > start:
            covered += stop - start
            end = stop
    return covered / (last + 60 - first)


def streaks(pnls: list[float]) -> tuple[int, int]:
    best_win = best_loss = win = loss = 0
    for pnl in pnls:
        win = win + 1 if pnl > 0 else 0
        loss = loss + 1 if pnl < 0 else 0
        best_win, best_loss = max(best_win, win), max(best_loss, loss)
    return best_win, best_loss


def _group(trades, *, balance: float) -> dict[str, Any]:
    trades = sorted(trades, key=lambda t: (t.exit_time, t.entry_time))
    pnls = [t.pnl for t in trades]
    holds = [(t.exit_time - t.entry_time) / 60 for t in trades]
    win, loss = streaks(pnls)
    return {
        "trades": len(trades),
        "net_pnl": _r(sum(pnls), 2),
        "return_pct": _r(sum(pnls) / balance * 100 if balance else None, 2),
        "win_rate": _r(sum(1 for p in pnls if p > 0) / len(pnls), 4) if pnls else 0.0,
        "avg_hold_minutes": _r(sum(holds) / len(holds), 1) if holds else None,
        "longest_win_streak": win,
        "longest_loss_streak": loss,
        "exit_reasons": dict(sorted(Counter(t.reason or "?" for t in trades).items())),
    }


def monthly(trades, *, balance: float) -> list[dict[str, Any]]:
    """One row per month that closed a trade: its P&L and its return on the equity at the month's start."""
    equity, rows = balance, {}
    trades = sorted(trades, key=lambda t: (t.exit_time, t.entry_time))
    names: dict[date, str] = {}  # strftime once per day that closed a trade
    for t, d in zip(trades, _days(t.exit_time for t in trades), strict=True):
        month = names.get(d)
        if month is None:
            month = names[d] = d.strftime("%Y-%m")
        row = rows.setdefault(month, {"month": month, "start_equity": equity, "pnl": 0.0, "trades": 0})
        row["pnl"] += t.pnl
        row["trades"] += 1
        equity += t.pnl
    return [
        {"month": r["month"], "trades": r["trades"], "pnl": _r(r["pnl"], 2),
         "return_pct": _r(r["pnl"] / r["start_equity"] * 100 if r["start_equity"] > 0 else None, 2)}
        for r in rows.values()
    ]


def report_figures(result) -> dict[str, Any]:
    cfg = result.config
    balance = float(cfg.balance)
    trades = sorted(result.trades, key=lambda t: (t.exit_time, t.entry_time))
    equity = peak = balance
    worst = 0.0
    for t in trades:
        equity += t.pnl
        peak = max(peak, equity)
        if peak > 0:
            worst = max(worst, (peak - equity) / peak)
    days = daily_returns(trades, balance=balance, first=result.first, last=result.last)
    sharpe, sortino = sharpe_sortino([r for _, r in days])
    share = exposure(trades, first=result.first, last=result.last)
    overall = _group(trades, balance=balance)
    strategies = sorted({t.strategy for t in trades})
    return {
        "start_balance": _r(balance, 2),
        "final_balance": _r(equity, 2),
        "return_pct": overall["return_pct"],
        "max_drawdown_pct": _r(worst * 100, 2),
        "sharpe": _r(sharpe, 3),
        "sortino": _r(sortino, 3),
        "days": len(days),
        "exposure_pct": _r(None if share is None else share * 100, 2),
        "avg_hold_minutes": overall["avg_hold_minutes"],
        "longest_win_streak": overall["longest_win_streak"],
        "longest_loss_streak": overall["longest_loss_streak"],
        "exit_reasons": overall["exit_reasons"],
        "monthly": monthly(trades, balance=balance),
        "by_strategy": {name: _group([t for t in trades if t.strategy == name], balance=balance) for name in strategies},
        "by_symbol": {cfg.symbol: overall},
    }
