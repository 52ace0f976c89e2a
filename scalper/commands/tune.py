"""`scalper tune FILE --strategy NAME --trials N --folds K --out PATH [--html PATH]`."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated

import typer


def tune(
    file: Annotated[Path, typer.Argument(help="an M1 file")],
    strategy: Annotated[str, typer.Option(help="the strategy to tune (GET /strategies)")],
    out: Annotated[Path, typer.Option("--out", help="write the best parameters here (loadable by `scalper bot setup --params`)")],
    trials: Annotated[int, typer.Option(min=1, max=100_000)] = 50,
    folds: Annotated[int, typer.Option(min=3, max=20, help="walk-forward folds by time; the last is a holdout")] = 5,
    html_out: Annotated[Path | None, typer.Option("--html", help="write an HTML report here")] = None,
    symbol: Annotated[str | None, typer.Option(help="the symbol (default: the file name's leading letters)")] = None,
    commission_per_lot: Annotated[float, typer.Option(help="commission per lot, round turn")] = 0.0,
    jobs: Annotated[int, typer.Option(min=1, max=64, help="worker processes")] = 2,
    min_fold_trades: Annotated[int, typer.Option(min=1, help="trades each test fold needs for a trial to count")] = 20,
) -> None:
    """Search the strategy's parameters walk-forward; the objective is out-of-sample expectancy net of costs."""
    from scalper.calibrate.tune import tune as run
    from shared.loaders import load_m1
    from shared.sanity import check_bars
    from shared.settings import get_settings
    from shared.strategies import catalog
    from shared.symbols import UnknownSymbol, canonical_symbol, get_spec

    if strategy not in catalog.CATALOG:
        typer.secho(f"error: unknown strategy {strategy!r}; known: {', '.join(catalog.names(None))}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2)
    if symbol is None:
        match = re.match(r"[A-Za-z]+", file.stem)
        symbol = match.group(0).upper() if match else file.stem
    try:
        spec = get_spec(canonical_symbol(symbol))
        loaded = load_m1(file)
    except (UnknownSymbol, OSError, ValueError) as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None
    bars = check_bars(loaded.bars, max_atr=get_settings().bar_sanity_atr, digits=spec.digits).bars
    doc = run(bars, symbol=spec.name, strategy=strategy, trials=trials, folds=folds, commission_per_lot=commission_per_lot, jobs=jobs,
              min_trades=min_fold_trades)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    if html_out is not None:
        html_out.write_text(_html(doc))
    typer.echo(f"{strategy} on {spec.name}: best trial {doc['best_trial']} of {trials}, objective {doc['best_objective']:+.3f} R "
               f"(defaults {_r(doc['default_objective'])}), holdout {_r(doc['holdout_r'])} (defaults {_r(doc['default_holdout_r'])})")
    typer.echo("fold  in-sample trades  R     out-of-sample trades  R (± standard error)")
    for row in doc["table"]:
        typer.echo(f"{row['fold']:>4}{' H' if row['holdout'] else '  '} {row['in_sample_trades']:>10}  {_r(row['in_sample_r'])}  "
                   f"{row['out_of_sample_trades']:>10}  {_r(row['out_of_sample_r'])}"
                   + ("" if row["out_of_sample_se"] is None else f" ± {row['out_of_sample_se']:.3f}"))
    typer.echo(f"{doc['feasible_trials']} of {len(doc['history'])} trials traded at least {doc['min_fold_trades']} times in every test fold")
    if doc["best_trial"] == 0:
        typer.secho(f"no trial beat the defaults (trial 0) out of sample: {out} holds the defaults", fg=typer.colors.YELLOW)
    if doc["best_objective"] is not None and doc["best_objective"] <= 0:
        typer.secho(f"the best parameters lose after costs out of sample ({doc['best_objective']:+.3f} R a trade): "
                    "nothing here is worth trading", fg=typer.colors.YELLOW)
    if doc["warning"]:
        typer.secho(f"overfitting warning: {doc['warning']}", fg=typer.colors.YELLOW)


def _r(value) -> str:
    return "  n/a " if value is None else f"{value:+.3f}"


def _html(doc: dict) -> str:
    import html

    import plotly.graph_objects as go

    rows = "".join(f"<tr><td>{r['fold']}{' (holdout)' if r['holdout'] else ''}</td><td>{r['in_sample_trades']}</td>"
                   f"<td>{_r(r['in_sample_r'])}</td><td>{r['out_of_sample_trades']}</td><td>{_r(r['out_of_sample_r'])}</td></tr>"
                   for r in doc["table"])
    fig = go.Figure(go.Scatter(y=doc["history"], mode="markers", name="objective"))
    fig.update_layout(title="Trials: out-of-sample net expectancy (R per trade)", xaxis_title="trial", yaxis_title="R")
    warning = f"<p><b>Overfitting warning:</b> {html.escape(doc['warning'])}</p>" if doc["warning"] else ""
    return ("<!doctype html><html><head><meta charset='utf-8'><title>scalper tune</title></head><body>"
            f"<h1>{html.escape(doc['strategy'])} on {html.escape(doc['symbol'])}</h1><p>{html.escape(doc['objective'])}.</p>"
            f"{warning}<table border='1' cellpadding='4'><tr><th>fold</th><th>in-sample trades</th><th>in-sample R</th>"
            f"<th>out-of-sample trades</th><th>out-of-sample R</th></tr>{rows}</table>"
            f"<pre>{html.escape(json.dumps(doc['strategy_params'], indent=1))}</pre>"
            + fig.to_html(full_html=False, include_plotlyjs=True) + "</body></html>")
