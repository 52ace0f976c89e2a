"""`scalper data check FILE`: detect an M1 file's format, parse and validate it, and say what was found."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

data_app = typer.Typer(help="Inspect M1 bar files.", no_args_is_help=True)


@data_app.command("check")
def check(
    file: Annotated[Path, typer.Argument(help="an M1 file: MT5 rates CSV or export, MT4 history, Dukascopy, HistData, or OHLCV with a header")],
    as_json: Annotated[bool, typer.Option("--json", help="print the machine-readable summary")] = False,
    utc_offset: Annotated[float | None, typer.Option("--utc-offset", help="hours the file's times are ahead of UTC (e.g. 2 or -5)")] = None,
    tz: Annotated[str | None, typer.Option("--tz", help="IANA time zone of the file's times, e.g. Europe/Athens")] = None,
    server_time: Annotated[str | None, typer.Option("--server-time", help="a broker clock rule: utc, us_dst or an hour offset")] = None,
    max_rows: Annotated[int, typer.Option(help="rejected rows listed in the table (all in --json)")] = 20,
) -> None:
    """Detect the format, parse, validate; print rows, first and last bar in UTC, gaps, and rows rejected and why."""
    from shared.loaders import load_m1, no_bars_message

    try:
        result = load_m1(file, utc_offset_hours=utc_offset, tz=tz, server_time=server_time)
    except OSError as exc:
        typer.secho(f"error: cannot read {file}: {exc.strerror or exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=2) from None
    except ValueError as exc:  # UnknownFormat and bad options
        typer.secho(f"error: {file}: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=2) from None
    summary = result.summary()
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        _print_table(file, summary, max_rows)
    if not result.rows:  # no silent success: a file without one usable bar is an error
        typer.secho(f"error: {no_bars_message(result, file)}", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=2)


def _print_table(file: Path, s: dict, max_rows: int) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"{file}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    table.add_row("format", s["format"])
    table.add_row("rows (bars accepted)", f"{s['rows']:,}")
    table.add_row("first bar (UTC)", s["first"] or "-")
    table.add_row("last bar (UTC)", s["last"] or "-")
    table.add_row("gaps (> 1 bar)", str(s["gaps"]))
    table.add_row("dropped flat filler bars", str(s["dropped_flat"]))
    table.add_row("rejected rows", str(len(s["rejected"])))
    for w in s["warnings"]:
        table.add_row("warning", f"[yellow]{w}[/yellow]")
    console.print(table)
    if s["rejected"]:
        rej = Table(title="rejected rows")
        rej.add_column("line", justify="right")
        rej.add_column("reason")
        for row in s["rejected"][:max_rows]:
            rej.add_row(str(row["line"]), row["reason"])
        if len(s["rejected"]) > max_rows:
            rej.add_row("...", f"{len(s['rejected']) - max_rows} more (use --json for all)")
        console.print(rej)
