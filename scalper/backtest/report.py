"""What a backtest hands back: the JSON document (the `GET /stats` shape plus run metadata) and a self-contained HTML
report (inline SVG equity and drawdown curves, the stats tables, the trade list; no external assets)."""

from __future__ import annotations

import html
from typing import Any

from scalper.backtest.engine import BacktestResult
from shared.stats import STAT_KEYS
from shared.timeutil import from_epoch


def to_json(result: BacktestResult, *, file: str | None = None, file_format: str | None = None) -> dict[str, Any]:
    """`{"total": S, "by_strategy": {name: S}}` (architecture.md, "JSON answers") plus `run` and `trades`."""
    cfg = result.config
    return {
        "total": result.stats["total"],
        "by_strategy": result.stats["by_strategy"],
        "run": {
            "file": file,
            "format": file_format,
            "symbol": cfg.symbol,
            "engine": cfg.engine,
            "strategies": [c.name for c in cfg.strategies],
            "from": from_epoch(result.first).isoformat() if result.first is not None else None,
            "to": from_epoch(result.last).isoformat() if result.last is not None else None,
            "bars": result.bars,
            "lookback": result.scan.lookback,
            "balance": cfg.balance,
            "final_balance": round(cfg.balance + sum(t.pnl for t in result.trades), 2),
            "commission_per_lot": cfg.commission_per_lot,
            "swap_per_lot_day": cfg.swap_per_lot_day,
            "spread_points": cfg.spread_points,
            "min_score": cfg.rules.decision_min_score,
            "max_concurrent": cfg.rules.risk_max_concurrent_positions,
            "max_per_symbol": cfg.rules.risk_max_per_symbol,
            "max_trades_per_day": cfg.rules.max_trades_per_day,
            "kill_switch_pct": cfg.kill_switch_pct,
            "trail": cfg.trail.mode,
            "signals": len(result.signals),
            "signals_by_strategy": _count(s.strategy for s in result.signals),
            "ignored": dict(sorted(result.ignored.items())),
            "kill_switch_days": result.kill_days,
            "strategy_errors": len(result.scan.errors),
        },
        "trades": [t.as_dict() for t in result.trades],
    }


def _count(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.4f}".rstrip("0").rstrip(".") if abs(value) < 10 else f"{value:,.2f}"
    return f"{value:,}" if isinstance(value, int) else html.escape(str(value))


def _svg_curve(points: list[tuple[float, float]], *, title: str, colour: str, fill_below: bool = False, width: int = 900, height: int = 220) -> str:
    if len(points) < 2:
        return f"<p>{html.escape(title)}: not enough trades to draw.</p>"
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if y1 == y0:
        y1 = y0 + 1.0
    if x1 == x0:
        x1 = x0 + 1.0
    pad = 40

    def sx(x: float) -> float:
        return pad + (x - x0) / (x1 - x0) * (width - 2 * pad)

    def sy(y: float) -> float:
        return height - pad + -(y - y0) / (y1 - y0) * (height - 2 * pad)

    path = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for i, (x, y) in enumerate(points))
    area = ""
    if fill_below:
        area = f'<path d="{path} L{sx(xs[-1]):.1f},{sy(y1):.1f} L{sx(xs[0]):.1f},{sy(y1):.1f} Z" fill="{colour}" fill-opacity="0.25"/>'
    first_day = from_epoch(x0).date().isoformat()
    last_day = from_epoch(x1).date().isoformat()
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
        f'<text x="{pad}" y="18" font-size="14" font-weight="bold">{html.escape(title)}</text>'
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#999"/>'
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#999"/>'
        f'<text x="{pad - 4}" y="{sy(y1) + 4:.1f}" font-size="11" text-anchor="end">{y1:,.2f}</text>'
        f'<text x="{pad - 4}" y="{sy(y0) + 4:.1f}" font-size="11" text-anchor="end">{y0:,.2f}</text>'
        f'<text x="{pad}" y="{height - pad + 16}" font-size="11">{first_day}</text>'
        f'<text x="{width - pad}" y="{height - pad + 16}" font-size="11" text-anchor="end">{last_day}</text>'
        f'{area}<path d="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/></svg>'
    )


def curves(result: BacktestResult) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """(equity, drawdown) after each closed trade, from the starting balance."""
    balance = result.config.balance
    start = result.first if result.first is not None else 0
    equity = [(float(start), balance)]
    drawdown = [(float(start), 0.0)]
    peak = balance
    for t in result.trades:
        balance += t.pnl
        peak = max(peak, balance)
        equity.append((float(t.exit_time), balance))
        drawdown.append((float(t.exit_time), balance - peak))
    return equity, drawdown


def to_html(result: BacktestResult, *, file: str | None = None, file_format: str | None = None, max_trades: int = 5000) -> str:
    doc = to_json(result, file=file, file_format=file_format)
    run = doc["run"]
    equity, drawdown = curves(result)
    rows = [("total", doc["total"])] + list(doc["by_strategy"].items())
    stats_table = "<table><tr><th>strategy</th>" + "".join(f"<th>{k}</th>" for k in STAT_KEYS) + "</tr>"
    for name, s in rows:
        stats_table += f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{_fmt(s[k])}</td>" for k in STAT_KEYS) + "</tr>"
    stats_table += "</table>"
    meta = "".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt(v) if not isinstance(v, (dict, list)) else html.escape(str(v))}</td></tr>"
                   for k, v in run.items())
    trade_cols = ("opened_at", "closed_at", "strategy", "side", "score", "entry", "exit", "sl", "tp", "volume", "reason", "pips", "pnl", "r_multiple")
    trades = "<table><tr>" + "".join(f"<th>{c}</th>" for c in trade_cols) + "</tr>"
    for t in doc["trades"][:max_trades]:
        cls = "win" if t["pnl"] > 0 else "loss" if t["pnl"] < 0 else ""
        trades += f'<tr class="{cls}">' + "".join(f"<td>{_fmt(t[c])}</td>" for c in trade_cols) + "</tr>"
    trades += "</table>"
    more = f"<p>{len(doc['trades']) - max_trades} more trades in the JSON output.</p>" if len(doc["trades"]) > max_trades else ""
    title = f"Backtest {run['symbol']} {run['engine']} {run['from'] or ''} → {run['to'] or ''}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 13px; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
th {{ background: #f3f3f3; }} td:first-child, th:first-child {{ text-align: left; }}
tr.win td {{ background: #f1faf1; }} tr.loss td {{ background: #fdf2f2; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<h2>Results</h2>{stats_table}
{_svg_curve(equity, title="Equity (account currency, after each closed trade)", colour="#1f6feb")}
{_svg_curve(drawdown, title="Drawdown from the running peak", colour="#d1242f", fill_below=True)}
<h2>Run</h2><table>{meta}</table>
<h2>Trades</h2>{trades}{more}
</body></html>
"""
