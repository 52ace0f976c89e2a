"""M1 loader speed and memory: `load_m1` (detection, validation, UTC) beside pandas' plain `read_csv` on the same
files in the same run: the gold file and one year of M1 (bench/yeardata.py). Run by `make bench`.

Each reader runs in its own fresh process; peak memory is tracemalloc's peak over one more read (numpy and pandas buffers are traced); times are the best of 3."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = r"""
import sys, time, tracemalloc
sys.path.insert(0, sys.argv[3])
import pandas, numpy
from shared.loaders import load_m1
path, which = sys.argv[1], sys.argv[2]
best = 1e9
for _ in range(3):
    t = time.perf_counter()
    rows = load_m1(path).rows if which == "ours" else len(pandas.read_csv(path))
    best = min(best, time.perf_counter() - t)
tracemalloc.start()
load_m1(path) if which == "ours" else pandas.read_csv(path)
peak = tracemalloc.get_traced_memory()[1]
print(rows, best, peak / 2**20)
"""


def measure(path: Path, which: str) -> tuple[int, float, float]:
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), which, str(ROOT)], capture_output=True, text=True, check=True)
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
    table = Table(title="M1 loader: ours vs pandas.read_csv (best of 3, own process each)")
    for name in ("file", "reader", "rows", "seconds", "rows/s", "peak MB (traced)"):
        table.add_column(name, justify="right" if name not in ("file", "reader") else "left")
    with tempfile.TemporaryDirectory() as tmp:
        year = Path(tmp) / "XAUUSD_year.csv"
        write_mt5_rates_csv(chain(load_m1(gold).bars, 370_000), year)
        for label, path in (("gold (63k)", gold), ("one year", year)):
            for which in ("ours", "read_csv"):
                rows, seconds, peak = measure(path, which)
                table.add_row(label, "load_m1" if which == "ours" else "pandas.read_csv", f"{rows:,}", f"{seconds:.3f}",
                              f"{rows / seconds:,.0f}", f"{peak:.0f}")
    Console().print(table)


if __name__ == "__main__":
    os.environ.setdefault("SCALPER_LOG_FORMAT", "text")
    main()
