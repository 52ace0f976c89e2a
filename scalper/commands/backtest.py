"""`scalper backtest FILE`: trade an M1 file with the live strategies, risk rules and fill model; print the stats."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from scalper.backtest.gcpause import gc_paused


def _parse_day(text: str | None, name: str) -> int | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{name} {text!r}: use YYYY-MM-DD or YYYY-MM-DDTHH:MM (UTC)") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp())


def _one_blas_thread() -> None:
    """Start numpy's OpenBLAS with one thread unless the user chose a number: a backtest does no linear algebra
    (no BLAS call: its results do not depend on it), and OpenBLAS starting a thread per core at import is CPU a
    fresh run never gets back. Only before numpy is imported: a process that has it (a test runner) is left as is."""
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=2)


@gc_paused  # the whole command: its imports, the loading, the backtest and the JSON (scalper/backtest/gcpause.py)
def backtest(
    file: Annotated[Path, typer.Argument(help="an M1 file in any format `scalper data check` reads")],
    symbol: Annotated[str | None, typer.Option(help="the symbol (default: the file name's leading letters, e.g. XAUUSD)")] = None,
    strategies: Annotated[str | None, typer.Option(help="comma-separated strategies (default: every strategy of the engine)")] = None,
    engine: Annotated[str, typer.Option(help="scalper | harami")] = "scalper",
    date_from: Annotated[str | None, typer.Option("--from", help="first day traded, UTC (YYYY-MM-DD); earlier bars still warm up")] = None,
    date_to: Annotated[str | None, typer.Option("--to", help="last day traded, UTC (inclusive)")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the stats (GET /stats shape), run metadata, trades and every signal with its outcome here ('-' for stdout)")] = None,
    html_out: Annotated[Path | None, typer.Option("--html", help="write a self-contained HTML report here")] = None,
    balance: Annotated[float, typer.Option(help="starting balance, account currency")] = 10_000.0,
    commission_per_lot: Annotated[float, typer.Option(help="commission per lot, round turn")] = 0.0,
    swap_per_lot_day: Annotated[float, typer.Option(help="swap per lot per rollover (negative: a cost)")] = 0.0,
    spread_points: Annotated[float | None, typer.Option(help="spread in points when the file has none (default: the symbol's typical)")] = None,
    min_score: Annotated[float, typer.Option(help="the bot's decision_min_score")] = 0.3,
    max_concurrent: Annotated[int, typer.Option(help="the bot's risk_max_concurrent_positions")] = 2,
    max_trades_per_day: Annotated[int, typer.Option(help="the bot's max_trades_per_day")] = 25,
    lots: Annotated[float, typer.Option(help="the bot's default_qty (lots per trade)")] = 0.01,
    kill_switch_pct: Annotated[float, typer.Option(help="daily loss limit, % of the day-start balance")] = 2.0,
    utc_offset: Annotated[float | None, typer.Option("--utc-offset", help="hours the file's times are ahead of UTC")] = None,
    tz: Annotated[str | None, typer.Option("--tz", help="IANA time zone of the file's times")] = None,
    server_time: Annotated[str | None, typer.Option("--server-time", help="the file's broker clock rule: utc, us_dst, +2 ...")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
    calibration: Annotated[Path | None, typer.Option("--calibration", help="a `scalper calibrate` file: every signal carries p_win and expected_r_net")] = None,
    min_expected_r: Annotated[float, typer.Option(help="the bot's min_expected_r (applies to calibrated signals)")] = 0.0,
    min_stop_spread_ratio: Annotated[float, typer.Option(help="the bot's min_stop_spread_ratio")] = 3.0,
) -> None:
    """Backtest on an M1 file: the live strategies on each bar's window, the decision's risk rules, the executor's fills."""
    _one_blas_thread()
    import dataclasses

    from scalper.backtest.engine import BacktestConfig, run_backtest
    from scalper.backtest.report import to_html, to_json
    from services.decision.risk import BotRules
    from services.executor.rules import PositionRules
    from shared.loaders import load_m1, no_bars_message
    from shared.messages import StrategyConfig
    from shared.strategies import catalog
    from shared.symbols import UnknownSymbol, canonical_symbol, get_spec

    import re

    if engine not in ("scalper", "harami"):
        raise _fail(f"unknown engine {engine!r}: use scalper or harami")
    engine_names = catalog.names(engine)
    if strategies:
        names = [s.strip() for s in strategies.split(",") if s.strip()]
        unknown = [n for n in names if n not in catalog.CATALOG]
        if unknown:
            raise _fail(f"unknown strategy {', '.join(unknown)}; known: {', '.join(catalog.names(None))}")
    else:
        names = engine_names
    if not names:
        raise _fail(f"the {engine} engine has no strategy in the catalog yet (known: {', '.join(catalog.names(None)) or 'none'})")
    try:
        loaded = load_m1(file, utc_offset_hours=utc_offset, tz=tz, server_time=server_time)
    except OSError as exc:
        raise _fail(f"cannot read {file}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise _fail(f"{file}: {exc}") from None
    for warning in loaded.warnings:
        typer.secho(f"warning: {warning}", err=True, fg=typer.colors.YELLOW)
    if not loaded.rows:
        raise _fail(no_bars_message(loaded, file))
    if symbol is None:
        match = re.match(r"[A-Za-z]+", file.stem)
        symbol = match.group(0).upper() if match else file.stem
    try:
        spec = get_spec(canonical_symbol(symbol))
    except UnknownSymbol as exc:
        raise _fail(f"{exc} (pass --symbol)") from None

    bars = loaded.bars
    start, end = _parse_day(date_from, "--from"), _parse_day(date_to, "--to")
    if end is not None and date_to and len(date_to) == 10:
        end += 86_400  # --to a day includes that day
    import numpy as np

    lo = 0
    if start is not None:
        # Keep the warm-up (the scan's lookback and the previous days' levels) before --from.
        first = int(np.searchsorted(bars.time, start))
        lo = max(0, first - 8 * 1440)
    hi = len(bars) if end is None else int(np.searchsorted(bars.time, end))
    bars = bars[lo:hi]
    config = BacktestConfig(
        symbol=symbol,
        strategies=tuple(StrategyConfig(name=n) for n in names),
        engine=engine,
        balance=balance,
        commission_per_lot=commission_per_lot,
        swap_per_lot_day=swap_per_lot_day,
        spread_points=spread_points,
        rules=dataclasses.replace(BotRules(), decision_min_score=min_score, risk_max_concurrent_positions=max_concurrent,
                                  max_trades_per_day=max_trades_per_day, default_qty=lots, min_expected_r=min_expected_r,
                                  min_stop_spread_ratio=min_stop_spread_ratio),
        kill_switch_pct=kill_switch_pct,
        # Broker days (levels, trades per day, kill switch, swap) on the file's clock, as the replay feed gives market
        # data: the --server-time rule or a fixed --utc-offset; UTC when the file's zone is unknown or stated per row.
        server_time=loaded.server_time,
        trail=PositionRules().trail(),
        exits=PositionRules().exits(),
    )
    loaded_calibration = None
    if calibration is not None:
        from shared.calibration import CalibrationError, load

        try:
            loaded_calibration = load(calibration)
        except CalibrationError as exc:
            raise _fail(str(exc)) from None
        fitted_on = (loaded_calibration.meta or {}).get("files") or []
        if file.name in fitted_on:
            typer.secho(f"warning: {calibration} was fitted on {file.name}: this backtest is in sample and flatters the "
                        "calibration; judge it on a file (or later months) the fit never saw", err=True, fg=typer.colors.YELLOW)
    progress_cb, finish = _progress(quiet)
    try:
        if loaded_calibration is None:
            result = run_backtest(bars, spec, config, progress=progress_cb, trade_from=start)
        else:  # the live scan, each signal estimated as the strategy worker estimates it, then the same backtest
            from scalper.backtest.engine import spreads_for
            from scalper.backtest.signals import scan_history
            from scalper.calibrate.apply import annotate
            from shared.sanity import check_bars

            bars = check_bars(bars, max_atr=config.bar_sanity_atr, digits=spec.digits).bars
            first = 0 if start is None else int(np.searchsorted(bars.time, start))
            found = scan_history(bars, spec=spec, configs=config.strategies, server_time=config.server_time,
                                 min_lookback=config.min_lookback, start=first, progress=progress_cb,
                                 score_marks=(config.rules.decision_min_score,), stop_atr_marks=(config.max_stop_atr,))
            found = annotate(found, loaded_calibration, symbol=spec.name, spec=spec,
                             spread_points=spreads_for(bars, spec, spread_points))
            result = run_backtest(bars, spec, config, signals=found, trade_from=start)
    finally:
        finish()
    doc = to_json(result, file=str(file), file_format=loaded.format)
    doc["run"].update(server_time=loaded.zone, server_time_source=loaded.server_time_source,
                      server_time_confidence=loaded.server_time_confidence)  # the clock the file was read in
    doc["run"].update(calibration=None if calibration is None else str(calibration), min_expected_r=min_expected_r,
                      min_stop_spread_ratio=min_stop_spread_ratio,
                      calibration_in_sample=None if loaded_calibration is None else file.name in fitted_on)
    if json_out is not None:
        from scalper.backtest.jsonout import dumps_document
        from scalper.calibrate.records import signal_records

        doc["signals"] = signal_records(result.traded, spec, result.signals, spread_points=spread_points)  # the bars they index
        text = dumps_document(doc)  # json.dumps(doc, indent=2)'s content, one trade a line (its C encoder: fast)
        if str(json_out) == "-":
            sys.stdout.write(text + "\n")
        else:
            json_out.write_text(text + "\n")
    if html_out is not None:
        html_out.write_text(to_html(result, file=str(file), file_format=loaded.format, bars=bars))
    if json_out is None or str(json_out) != "-":
        _print(doc)


def _progress(quiet: bool):
    """A rich progress bar on stderr for long runs; nothing when quiet or stderr is not a terminal."""
    if quiet or not sys.stderr.isatty():
        return None, lambda: None
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("evaluating windows"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,}"),
                   TimeRemainingColumn(), console=Console(stderr=True), transient=True)
    task = bar.add_task("scan", total=1)
    bar.start()

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=max(total, 1))

    return update, bar.stop


def _print(doc: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from shared.stats import STAT_KEYS

    run = doc["run"]
    clock = f"server time {run['server_time']} ({run['server_time_source']}, confidence {run['server_time_confidence']:.2f})"
    title = f"{run['symbol']} {run['engine']} engine, {run['from']} → {run['to']} ({run['bars']:,} bars, {clock})"
    table = Table()
    table.add_column("", overflow="fold")  # a narrow terminal folds a name or a figure, it never cuts one short
    columns = list(doc["by_strategy"].items()) + [("total", doc["total"])]
    for name, _ in columns:
        table.add_column(name, justify="right", overflow="fold")
    for key in STAT_KEYS:
        cells = []
        for _, s in columns:
            v = s[key]
            cells.append("–" if v is None else f"{v:.2%}" if key == "win_rate" else f"{v:,.2f}" if isinstance(v, float) else f"{v:,}")
        table.add_row(key, *cells)
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 200))  # piped or redirected: the table at its own width, not 80
    console.print(title, style="italic", highlight=False)  # above the table, not its title: a title wraps at its width
    console.print(table)
    console.print(f"signals {run['signals']}, ignored {run['ignored'] or 'none'}, kill switch days {len(run['kill_switch_days'])}, "
                  f"final balance {run['final_balance']:,.2f}")
