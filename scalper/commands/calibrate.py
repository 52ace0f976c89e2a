"""`scalper calibrate FILE... --out PATH [--html PATH]`: a walk-forward win probability per strategy and symbol."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def calibrate(
    files: Annotated[list[Path], typer.Argument(help="M1 files (the symbol is the file name's leading letters)")],
    out: Annotated[Path, typer.Option("--out", help="write the calibration (JSON, versioned) here")],
    html_out: Annotated[Path | None, typer.Option("--html", help="write the HTML report (reliability, Brier skill, AUC) here")] = None,
    folds: Annotated[int, typer.Option(help="walk-forward folds (time order); folds 2..K are scored", min=2, max=20)] = 5,
    strategies: Annotated[str | None, typer.Option(help="comma-separated (default: every strategy of both engines)")] = None,
    commission_per_lot: Annotated[float, typer.Option(help="commission per lot, round turn, for expected_r_net")] = 0.0,
) -> None:
    """Fit P(target before stop) per strategy and symbol, walk-forward, and say plainly where there is no skill."""
    from scalper.calibrate.fit import calibrate as run
    from shared.strategies import catalog

    names = [s.strip() for s in strategies.split(",") if s.strip()] if strategies else catalog.names(None)
    unknown = [n for n in names if n not in catalog.CATALOG]
    if unknown:
        typer.secho(f"error: unknown strategy {', '.join(unknown)}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2)
    for f in files:
        if not f.is_file():
            typer.secho(f"error: {f} is not a file", err=True, fg=typer.colors.RED)
            raise typer.Exit(2)
    calibration, rows = run(files, strategies=names, folds=folds, commission_per_lot=commission_per_lot)
    out.write_text(json.dumps(calibration.to_json(), indent=1) + "\n")
    if html_out is not None:
        from scalper.calibrate.report import to_html

        html_out.write_text(to_html(rows, files=[f.name for f in files]))
    for r in rows:
        if not r.get("scored"):
            typer.echo(f"{r['strategy']:20s} {r['symbol']:8s} too few signals to score ({r['labelled']} labelled)")
            continue
        lo, hi = r["brier_skill_95"]
        typer.echo(f"{r['strategy']:20s} {r['symbol']:8s} scored {r['scored']:5d}  base {r['base_rate']:.3f}  "
                   f"Brier skill {r['brier_skill']:+.4f} [{lo:+.3f}, {hi:+.3f}]  AUC {r['auc']:.3f}  "
                   f"R net {r['r_net_mean']:+.3f}  model: {r['model']}  {r['verdict']}")
