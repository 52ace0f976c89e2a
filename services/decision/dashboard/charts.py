"""The dashboard's charts as plotly figures (JSON the page hands to the plotly.min.js the plotly package ships):
a symbol's M1 candles with its bots' signals, fills and closes marked and the open positions' stops and targets
drawn; a bot's equity curve of closed trades."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

LAYOUT = dict(
    margin=dict(l=56, r=16, t=36, b=36), height=520, template="plotly_white", hovermode="x unified",
    legend=dict(orientation="h", yanchor="bottom", y=1.01, x=0), xaxis=dict(rangeslider=dict(visible=False), type="date"),
)


def candles(*, symbol: str, bars: list[dict[str, Any]], signals: list, trades: list, positions: list) -> go.Figure:
    """`bars` oldest first (time, open, high, low, close); `signals` SignalRow, `trades` and `positions` Decision rows."""
    fig = go.Figure()
    fig.add_trace(go.Candlestick(
        x=[b["time"] for b in bars], open=[b["open"] for b in bars], high=[b["high"] for b in bars],
        low=[b["low"] for b in bars], close=[b["close"] for b in bars], name=symbol,
    ))
    for side, symbol_name, colour in (("buy", "triangle-up", "#1a7f37"), ("sell", "triangle-down", "#cf222e")):
        chosen = [s for s in signals if s.side == side]
        if chosen:
            fig.add_trace(go.Scatter(
                x=[s.bar_time for s in chosen], y=[s.entry for s in chosen], mode="markers", name=f"{side} signal",
                marker=dict(symbol=symbol_name, size=11, color=colour, line=dict(width=1, color="#222")),
                text=[f"{s.strategy} score {s.score:.2f}" for s in chosen], hoverinfo="text+y",
            ))
    fills = [t for t in trades if t.fill_price is not None and t.filled_at is not None]
    if fills:
        fig.add_trace(go.Scatter(
            x=[t.filled_at for t in fills], y=[t.fill_price for t in fills], mode="markers", name="entry",
            marker=dict(symbol="circle", size=9, color="#0969da"), text=[f"#{t.id} {t.side} {t.volume}" for t in fills],
            hoverinfo="text+y",
        ))
    closes = [t for t in trades if t.close_price is not None and t.closed_at is not None]
    if closes:
        fig.add_trace(go.Scatter(
            x=[t.closed_at for t in closes], y=[t.close_price for t in closes], mode="markers", name="exit",
            marker=dict(symbol="x", size=10, color="#8250df"),
            text=[f"#{t.id} {t.close_reason or ''} pnl {t.pnl}" for t in closes], hoverinfo="text+y",
        ))
    # An open position's stop and target run the chart's whole width: the levels the price is measured against now.
    start, end = (bars[0]["time"], bars[-1]["time"]) if bars else (None, None)
    for p in positions:
        for level, name, colour in ((p.sl, "SL", "#cf222e"), (p.tp, "TP", "#1a7f37")):
            if level is None or end is None:
                continue
            fig.add_trace(go.Scatter(
                x=[start, end], y=[level, level], mode="lines", name=f"{name} #{p.id}",
                line=dict(color=colour, dash="dash", width=1.5), hovertemplate=f"{name} #{p.id} ({p.side} {p.volume}): %{{y}}<extra></extra>",
            ))
    fig.update_layout(**LAYOUT)  # the page's heading names the symbol
    fig.update_yaxes(tickformat=".5~f", automargin=True)
    return fig


def equity_curve(trades: list) -> go.Figure:
    """Cumulative closed P&L from 0 at the first trade's opening, one point per closed trade (shared.stats.ClosedTrade)."""
    trades = sorted(trades, key=lambda t: (t.closed_at, t.opened_at))
    xs = [min(t.opened_at for t in trades)] if trades else []
    ys, total = [0.0] if trades else [], 0.0
    for trade in trades:
        total += trade.pnl
        xs.append(trade.closed_at)
        ys.append(round(total, 2))
    fig = go.Figure(go.Scatter(x=xs, y=ys, mode="lines+markers", name="closed P&L", line=dict(color="#0969da", shape="hv")))
    fig.update_layout(**{**LAYOUT, "height": 300, "hovermode": "x", "showlegend": False}, title=dict(text="Equity (closed trades)", x=0.01))
    fig.update_yaxes(automargin=True, tickformat=",.2f")
    return fig
