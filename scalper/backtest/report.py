"""What a backtest hands back: the JSON document (the `GET /stats` shape plus run metadata and the `report` figures of
scalper/backtest/metrics.py) and a self-contained HTML report (plotly charts with plotly.js inline: the equity and
drawdown curves, the price with the entries and exits; the figures, per strategy and per symbol, the monthly returns,
a sortable and paged trade list; no external assets)."""

from __future__ import annotations

import html
import json
from typing import Any

from scalper.backtest.engine import BacktestResult, trade_rows
from scalper.backtest.metrics import report_figures
from shared.stats import STAT_KEYS
from shared.timeutil import from_epoch


def to_json(result: BacktestResult, *, file: str | None = None, file_format: str | None = None) -> dict[str, Any]:
    """`{"total": S, "by_strategy": {name: S}}` (architecture.md, "JSON answers") plus `report`, `run` and `trades`."""
    cfg = result.config
    return {
        "total": result.stats["total"],
        "by_strategy": result.stats["by_strategy"],
        "report": report_figures(result),
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
        "trades": trade_rows(result.trades),
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


CANDLES_SHOWN = 3000  # more M1 bars than this are merged into longer candles (a year of M1 is 370,000)
FRAMES_MIN = (1, 5, 15, 30, 60, 240, 1440, 10080)


def candles(bars, *, most: int = CANDLES_SHOWN) -> tuple[int, dict[str, list]]:
    """The bars as at most about `most` candles: (minutes per candle, columns time/open/high/low/close)."""
    import numpy as np

    if bars is None or len(bars) == 0:
        return 1, {"time": [], "open": [], "high": [], "low": [], "close": []}
    span_min = (int(bars.time[-1]) - int(bars.time[0])) // 60 + 1
    frame = next((f for f in FRAMES_MIN if span_min / f <= most), FRAMES_MIN[-1])
    bucket = (bars.time // (frame * 60)).astype(np.int64)
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    ends = np.r_[starts[1:], len(bars)] - 1
    return frame, {
        "time": [from_epoch(int(b) * frame * 60) for b in bucket[starts]],
        "open": bars.open[starts].tolist(), "close": bars.close[ends].tolist(),
        "high": np.maximum.reduceat(bars.high, starts).tolist(), "low": np.minimum.reduceat(bars.low, starts).tolist(),
    }


def _figures(result: BacktestResult, bars) -> dict[str, str]:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    layout = dict(template="plotly_white", margin=dict(l=70, r=20, t=40, b=40), hovermode="x unified",
                  legend=dict(orientation="h", yanchor="bottom", y=1.01, x=0))
    equity, drawdown = curves(result)
    curve = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.68, 0.32], vertical_spacing=0.06)
    curve.add_trace(go.Scatter(x=[from_epoch(int(x)) for x, _ in equity], y=[round(y, 2) for _, y in equity], name="equity",
                               line=dict(color="#1f6feb", shape="hv")), row=1, col=1)
    curve.add_trace(go.Scatter(x=[from_epoch(int(x)) for x, _ in drawdown], y=[round(y, 2) for _, y in drawdown], name="drawdown",
                               fill="tozeroy", line=dict(color="#d1242f", shape="hv")), row=2, col=1)
    curve.update_layout(**layout, height=480)
    curve.update_yaxes(tickformat=",.2f", automargin=True, title_text="equity", row=1, col=1)
    curve.update_yaxes(tickformat=",.2f", automargin=True, title_text="drawdown", row=2, col=1)
    out = {"curve": curve.to_json()}
    if bars is not None and len(bars):
        frame, cols = candles(bars)
        price = go.Figure(go.Candlestick(x=cols["time"], open=cols["open"], high=cols["high"], low=cols["low"], close=cols["close"],
                                         name=f"{result.config.symbol} {frame} min"))
        scatter = go.Scattergl if len(result.trades) > 2000 else go.Scatter
        for side, marker, colour in (("buy", "triangle-up", "#1a7f37"), ("sell", "triangle-down", "#cf222e")):
            chosen = [t for t in result.trades if t.side == side]
            if chosen:
                price.add_trace(scatter(x=[from_epoch(t.entry_time) for t in chosen], y=[t.entry_price for t in chosen], mode="markers",
                                        name=f"{side} entry", marker=dict(symbol=marker, size=9, color=colour),
                                        text=[f"{t.strategy} {t.volume}" for t in chosen]))
        if result.trades:
            price.add_trace(scatter(x=[from_epoch(t.exit_time) for t in result.trades], y=[t.exit_price for t in result.trades],
                                    mode="markers", name="exit", marker=dict(symbol="x", size=8, color="#8250df"),
                                    text=[f"{t.reason} {t.pnl:+.2f}" for t in result.trades]))
        # no empty weekend between Friday and Monday (the market is shut)
        price.update_layout(**layout, height=520, xaxis=dict(rangeslider=dict(visible=False), rangebreaks=[dict(bounds=["sat", "mon"])]))
        price.update_yaxes(automargin=True, tickformat=".5~f")
        out["price"] = price.to_json()
    return out


def _table(headers: list[str], rows: list[list[Any]], *, cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _run_value(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{html.escape(str(k))}: {_fmt(v)}" for k, v in value.items()) or "–"
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value) or "–"
    return _fmt(value)


def _day_text(iso: str | None) -> str:
    return iso[:10] if iso else "?"


def to_html(result: BacktestResult, *, file: str | None = None, file_format: str | None = None, bars=None) -> str:
    """The report; `bars` (the backtested Bars) adds the price chart with the entries and exits."""
    from plotly.offline import get_plotlyjs

    doc = to_json(result, file=file, file_format=file_format)
    run, rep = doc["run"], doc["report"]
    title = f"Backtest {run['symbol']} · {run['engine']} · {_day_text(run['from'])} to {_day_text(run['to'])}"
    figures = _figures(result, bars)
    headline = [
        ("return", f"{_fmt(rep['return_pct'])} %"), ("final balance", _fmt(rep["final_balance"])),
        ("max drawdown", f"{_fmt(rep['max_drawdown_pct'])} %"), ("Sharpe (daily)", _fmt(rep["sharpe"])),
        ("Sortino (daily)", _fmt(rep["sortino"])), ("exposure", f"{_fmt(rep['exposure_pct'])} %"),
        ("average hold", f"{_fmt(rep['avg_hold_minutes'])} min"), ("trades", _fmt(doc["total"]["trades"])),
        ("win rate", f"{_fmt(doc['total']['win_rate'] * 100)} %"), ("profit factor", _fmt(doc["total"]["profit_factor"])),
        ("longest win streak", _fmt(rep["longest_win_streak"])), ("longest loss streak", _fmt(rep["longest_loss_streak"])),
    ]
    cards = "".join(f'<div class="card"><span>{html.escape(k)}</span><strong>{v}</strong></div>' for k, v in headline)
    stat_rows = [["all", *[doc["total"][k] for k in STAT_KEYS]]] + [[n, *[s[k] for k in STAT_KEYS]] for n, s in doc["by_strategy"].items()]
    stats = _table(["strategy", *STAT_KEYS], stat_rows)
    group_keys = ("trades", "net_pnl", "return_pct", "win_rate", "avg_hold_minutes", "longest_win_streak", "longest_loss_streak")
    per = [[f"strategy {n}", *[g[k] for k in group_keys], _run_value(g["exit_reasons"])] for n, g in rep["by_strategy"].items()]
    per += [[f"symbol {n}", *[g[k] for k in group_keys], _run_value(g["exit_reasons"])] for n, g in rep["by_symbol"].items()]
    groups = _table(["", *group_keys, "exit reasons"], per)
    months = _table(["month", "trades", "P&L", "return %"], [[m["month"], m["trades"], m["pnl"], m["return_pct"]] for m in rep["monthly"]])
    reasons = _table(["exit reason", "trades"], [[k, v] for k, v in rep["exit_reasons"].items()])
    meta = "".join(f"<tr><th>{html.escape(k)}</th><td>{_run_value(v)}</td></tr>" for k, v in run.items())
    trade_cols = ("opened_at", "closed_at", "strategy", "side", "score", "entry", "exit", "sl", "tp", "volume", "reason", "pips", "pnl", "r_multiple")
    trades = [{c: (t[c][:16].replace("T", " ") if c in ("opened_at", "closed_at") else t[c]) for c in trade_cols} for t in doc["trades"]]
    data = json.dumps({"figures": figures, "trades": trades, "columns": trade_cols}).replace("</", "<\\/")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1400px; }}
.cards {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: .5em; }}
.card {{ border: 1px solid #ddd; border-radius: 6px; padding: .5em .75em; display: grid; }}
.card span {{ color: #666; font-size: 12px; }} .card strong {{ font-size: 18px; font-variant-numeric: tabular-nums; }}
.scroll {{ overflow-x: auto; }}
table {{ border-collapse: collapse; margin: .5em 0 1em; font-size: 13px; font-variant-numeric: tabular-nums; }}
th, td {{ border: 1px solid #ddd; padding: 3px 8px; text-align: right; white-space: nowrap; }}
th {{ background: #f3f3f3; }} td:first-child, th:first-child {{ text-align: left; }}
#trades th {{ cursor: pointer; }} tr.win td {{ background: #f1faf1; }} tr.loss td {{ background: #fdf2f2; }}
.pager {{ display: flex; gap: .5em; align-items: center; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<div class="cards">{cards}</div>
<h2>Equity and drawdown</h2><div id="curve"></div>
{'<h2>Price with entries and exits</h2><div id="price"></div>' if "price" in figures else ""}
<h2>Per strategy and symbol</h2>{groups}
<h2>Statistics (as GET /stats)</h2>{stats}
<h2>Monthly returns</h2>{months}
<h2>Exit reasons</h2>{reasons}
<h2>Trades</h2>
<div class="pager"><button id="prev">&larr;</button><span id="page"></span><button id="next">&rarr;</button>
<span>click a column to sort</span></div>
<div class="scroll"><table id="trades"><thead></thead><tbody></tbody></table></div>
<h2>Run</h2><div class="scroll"><table>{meta}</table></div>
<script id="plotly-js">{get_plotlyjs()}</script>
<script type="application/json" id="data">{data}</script>
<script>
(function () {{
  const data = JSON.parse(document.getElementById("data").textContent);
  for (const [id, fig] of Object.entries(data.figures)) {{
    const f = JSON.parse(fig);
    Plotly.newPlot(id, f.data, f.layout, {{responsive: true, displaylogo: false}});
  }}
  const rows = data.trades, cols = data.columns, size = 100;
  let page = 0, key = null, dir = 1;
  const head = document.querySelector("#trades thead"), body = document.querySelector("#trades tbody");
  head.innerHTML = "<tr>" + cols.map(c => `<th data-col="${{c}}">${{c}}</th>`).join("") + "</tr>";
  const cell = v => v === null ? "–" : (typeof v === "number" ? String(Math.round(v * 10000) / 10000) : String(v));
  function draw() {{
    const pages = Math.max(1, Math.ceil(rows.length / size));
    page = Math.min(Math.max(page, 0), pages - 1);
    body.innerHTML = rows.slice(page * size, page * size + size).map(t =>
      `<tr class="${{t.pnl > 0 ? "win" : t.pnl < 0 ? "loss" : ""}}">` + cols.map(c => `<td>${{cell(t[c])}}</td>`).join("") + "</tr>").join("");
    document.getElementById("page").textContent = `page ${{page + 1}} of ${{pages}} (${{rows.length}} trades)`;
  }}
  head.addEventListener("click", e => {{
    const c = e.target.dataset.col; if (!c) return;
    dir = key === c ? -dir : 1; key = c;
    rows.sort((a, b) => (a[c] === b[c] ? 0 : a[c] === null ? 1 : b[c] === null ? -1 : a[c] < b[c] ? -dir : dir));
    page = 0; draw();
  }});
  document.getElementById("prev").onclick = () => {{ page--; draw(); }};
  document.getElementById("next").onclick = () => {{ page++; draw(); }};
  draw();
}})();
</script>
</body></html>
"""
