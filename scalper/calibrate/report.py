"""The calibration's HTML report (plotly, imported only here): per strategy and symbol, on the later folds only, the
reliability diagram, Brier skill against the base rate with its bootstrap interval, AUC, and a plain verdict."""

from __future__ import annotations

import html
from typing import Any


def to_html(rows: list[dict[str, Any]], *, files: list[str]) -> str:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    scored = [r for r in rows if r.get("scored")]
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>scalper calibrate</title></head><body>",
             f"<h1>Calibration, walk-forward</h1><p>Files: {html.escape(', '.join(files))}. Every figure below is on the "
             "later folds only: each fold is scored by a model fitted on the folds before it. Brier skill is against "
             "always saying the scored signals' own base rate (0: no better; negative: worse); the interval is a 95 % "
             "bootstrap. R net counts spread and commission. Every model starts from the geometric prior: the "
             "probability a driftless price touches the target before the stop, from the signal's own levels and "
             "spread; a fitted deviation replaces it only when it held over a walk-forward inside the training "
             "signals. A prior with skill above 0 says the geometry ranks signals, not that the strategy has an "
             "edge: under the prior every trade expects to lose its costs.</p>", "<table border='1' cellpadding='4'>"
             "<tr><th>strategy</th><th>symbol</th><th>model (all signals)</th><th>scored</th><th>base rate</th><th>Brier skill [95 %]</th><th>AUC</th><th>hit rate by p_win "
             "quintile</th><th>mean R net</th><th>verdict</th></tr>"]
    for r in scored:
        lo, hi = r["brier_skill_95"]
        parts.append(
            f"<tr><td>{html.escape(r['strategy'])}</td><td>{html.escape(r['symbol'])}</td>"
            f"<td>{html.escape(r.get('model', ''))}</td><td>{r['scored']}</td>"
            f"<td>{r['base_rate']:.3f}</td><td>{r['brier_skill']:+.4f} [{lo:+.3f}, {hi:+.3f}]</td><td>{r['auc']:.3f}</td>"
            f"<td>{' / '.join(f'{q:.2f}' for q in r['quintile_hit_rate'])}</td><td>{r['r_net_mean']:+.3f}</td>"
            f"<td>{html.escape(r['verdict'])}</td></tr>")
    parts.append("</table>")
    if scored:
        fig = make_subplots(rows=(len(scored) + 2) // 3, cols=3, subplot_titles=[f"{r['strategy']} {r['symbol']}" for r in scored])
        for i, r in enumerate(scored):
            row, col = i // 3 + 1, i % 3 + 1
            bins = r["reliability"]
            fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"}, showlegend=False), row, col)
            fig.add_trace(go.Scatter(x=[b["p_mean"] for b in bins], y=[b["hit_rate"] for b in bins], mode="markers+lines",
                                     text=[f"n={b['n']}" for b in bins], showlegend=False), row, col)
            fig.update_xaxes(range=[0, 1], title_text="p_win", row=row, col=col)
            fig.update_yaxes(range=[0, 1], title_text="hit rate", row=row, col=col)
        fig.update_layout(height=320 * ((len(scored) + 2) // 3), title="Reliability (later folds)")
        parts.append(fig.to_html(full_html=False, include_plotlyjs=True))
    parts.append("</body></html>")
    return "\n".join(parts)
