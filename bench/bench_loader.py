"""M1 loader speed and memory: `load_m1` (format detection, line scan, time parsing, the broker's clock inferred and
applied, price check) beside pandas' plain `read_csv` on the same files in the same run: the gold file, one year of M1
and a ~200 MB file of 3.5 M rows (both chained from the gold file by bench/yeardata.py into a temporary folder, in the
gold file's own broker time). Run by `make bench`.

"Plain read_csv" is `pandas.read_csv(path)` with its default options: the C engine, the header, every column, the time
column left as text (no date parsing, no validation): with pyarrow installed (a dependency since the loader's fast
path), pandas 3 keeps that text as pyarrow strings. "(read_csv, python str)" is the same read with
`mode.string_storage = "python"`, the text as Python strings: plain read_csv as it was before pyarrow was installed,
shown for the record (its ratio is to plain read_csv too; the target is against plain read_csv). Each reader runs in
fresh processes, alternating, ROUNDS rounds, so each figure is a median over processes that saw the same machine; a
process's peak memory is its peak RSS (VmHWM, which unlike ru_maxrss is not inherited from this parent; interpreter
and imports included: the idle figure is that of a process that imports both and reads nothing)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = r"""
import sys, time
sys.path.insert(0, sys.argv[3])
import numpy, pandas
from shared.loaders import load_m1
path, which, reads = sys.argv[1], sys.argv[2], int(sys.argv[4])
times, rows = [], 0
for _ in range(reads):
    t = time.perf_counter()
    if which == "ours":
        rows = load_m1(path).rows
    elif which == "read_csv":
        rows = len(pandas.read_csv(path))
    elif which == "read_csv_python_str":
        pandas.set_option("mode.string_storage", "python")
        rows = len(pandas.read_csv(path))
    times.append(time.perf_counter() - t)
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(rows, min(times) if times else 0.0, peak_kb / 1024)
"""

ROUNDS = 5  # fresh processes per reader and file: on a shared machine one process's time swings by 2x
BIG_ROWS = 3_500_000
YEAR_ROWS = 370_000


def measure(path: Path, which: str, reads: int) -> tuple[int, float, float]:
    """(rows, best seconds over `reads` reads in one fresh process, its peak RSS in MB)."""
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), which, str(ROOT), str(reads)],
                         capture_output=True, text=True, check=True)
    rows, seconds, peak_mb = out.stdout.split()
    return int(rows), float(seconds), float(peak_mb)


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    from bench.yeardata import chain, write_mt5_rates_csv
    from shared.loaders import load_m1
    from shared.settings import Settings

    gold = Settings().data_dir / "XAUUSD_M1.csv"
    if not gold.is_file():
        print(f"skipped: {gold} is absent (set SCALPER_DATA_DIR)")
        return
    table = Table(title="M1 loader: load_m1 vs pandas' plain read_csv (fresh processes, alternating; medians)")
    for name in ("file", "MB", "reader", "rows", "seconds", "rows/s", "time ratio", "peak RSS MB"):
        table.add_column(name, justify="left" if name in ("file", "reader") else "right")
    with tempfile.TemporaryDirectory() as tmp:
        wall = load_m1(gold, server_time="utc").bars  # the gold file's own clock: the copies stay broker time
        idle = measure(gold, "none", 0)[2]
        files = [("gold", gold, ROUNDS, 3)]
        for label, rows in (("one year", YEAR_ROWS), ("3.5 M rows", BIG_ROWS)):
            path = Path(tmp) / f"XAUUSD_{rows}.csv"
            write_mt5_rates_csv(chain(wall, rows), path)
            files.append((label, path, ROUNDS, 3) if rows == YEAR_ROWS else (label, path, ROUNDS, 1))
        for label, path, rounds, reads in files:
            got: dict[str, list[tuple[int, float, float]]] = {"ours": [], "read_csv": [], "read_csv_python_str": []}
            for _ in range(rounds):
                for which in got:
                    got[which].append(measure(path, which, reads))
            medians = {w: (runs[0][0], statistics.median(r[1] for r in runs), statistics.median(r[2] for r in runs))
                       for w, runs in got.items()}
            base = medians["read_csv"][1]
            for which, (rows, seconds, peak) in medians.items():
                name = {"ours": "load_m1", "read_csv": "pandas.read_csv", "read_csv_python_str": "(read_csv, python str)"}[which]
                table.add_row(label, f"{path.stat().st_size / 2**20:.0f}", name,
                              f"{rows:,}", f"{seconds:.3f}", f"{rows / seconds:,.0f}", f"{seconds / base:.2f}x", f"{peak:.0f}")
    Console().print(table)
    print(f"idle process (python, numpy, pandas and shared.loaders imported, nothing read): {idle:.0f} MB RSS")


if __name__ == "__main__":
    os.environ.setdefault("SCALPER_LOG_FORMAT", "text")
    main()
