"""The recorded reference run (tests/backtest/fixtures/reference_trades.json): every trade of `scalper backtest
--server-time utc` with default options on both shipped files, and a digest of the year benchmark's trades
(bench/yeardata.py), first recorded from main before the array rewrite (issue 18). A change that alters a rule
re-records it (`python -m tests.backtest.reference`) and says why in its commit.

Re-recorded once since: issue 19's rules (range_reversion's invalidation exit, the stop-to-spread gate
`min_stop_spread_ratio` = 3, the bar's spread now among the signal's features so `max_spread_pips` applies) change
trades by design. Before re-recording, the array backtester with those rules switched off
(`SCALPER_EXIT_ON_INVALIDATION=false`, `--min-stop-spread-ratio 0`) reproduced the first recording exactly: every
trade of both files and the year's digest; and main's own code without the arrays, run in a separate checkout,
records the same file as the array backtester does. The year is now built from the gold file read in its inferred
clock (us_dst, issue 17), as bench/bench_backtest.py builds it.

A trade is kept to the cent: [strategy, side, opened_at, closed_at, entry, exit, sl, tp, volume, reason, pnl].
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

FIXTURE = Path(__file__).parent / "fixtures" / "reference_trades.json"
ARGS = ("--server-time", "utc", "--quiet")
YEAR_BARS = 370_000


def trade_row(t: dict) -> list:
    return [t["strategy"], t["side"], t["opened_at"], t["closed_at"], t["entry"], t["exit"], t["sl"], t["tp"], t["volume"],
            t["reason"], round(t["pnl"], 2)]


def summary(doc: dict) -> dict:
    """What the fixture keeps of a run's JSON document."""
    rows = [trade_row(t) for t in doc["trades"]]
    return {
        "trades": len(rows),
        "pnl": round(sum(r[-1] for r in rows), 2),
        "signals": doc["run"]["signals"],
        "ignored": doc["run"]["ignored"],
        "kill_switch_days": doc["run"]["kill_switch_days"],
        "digest": digest(rows),
        "rows": rows,
    }


def digest(rows: list) -> str:
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()


def run_cli(path: Path, out: Path) -> dict:
    from typer.testing import CliRunner

    from scalper.cli import app

    result = CliRunner().invoke(app, ["backtest", str(path), *ARGS, "--json", str(out)])
    if result.exit_code != 0:
        raise RuntimeError(f"scalper backtest {path} exited {result.exit_code}: {result.output}")
    return json.loads(out.read_text())


def year_csv(gold: Path, folder: Path) -> Path:
    from bench.yeardata import chain, write_mt5_rates_csv
    from shared.loaders import load_m1

    path = folder / "XAUUSD_M1_year.csv"
    write_mt5_rates_csv(chain(load_m1(gold).bars, YEAR_BARS), path)
    return path


def record(data_dir: Path) -> dict:
    doc = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for key, name in (("gold", "XAUUSD_M1.csv"), ("eurusd", "EURUSD_M1.tsv")):
            doc[key] = summary(run_cli(data_dir / name, folder / f"{key}.json"))
        year = summary(run_cli(year_csv(data_dir / "XAUUSD_M1.csv", folder), folder / "year.json"))
        year.pop("rows")  # 6,700 trades: the digest and the totals stand for them (the gold rows are its first year)
        doc["year"] = year
    return doc


def write(doc: dict) -> None:
    lines = ["{"]
    for i, (key, run) in enumerate(doc.items()):
        rows = run.get("rows")
        head = {k: v for k, v in run.items() if k != "rows"}
        text = json.dumps(head, sort_keys=True)
        if rows is not None:
            body = ",\n".join("    " + json.dumps(r, separators=(",", ":")) for r in rows)
            text = text[:-1] + ', "rows": [\n' + body + "\n  ]}"
        lines.append(f"  {json.dumps(key)}: {text}" + ("," if i < len(doc) - 1 else ""))
    lines.append("}")
    FIXTURE.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from shared.settings import Settings

    write(record(Settings().data_dir))
    print(f"wrote {FIXTURE}")
