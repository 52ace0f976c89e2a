"""`scalper tune`'s trial time (issue 19, item 3): one trial = one backtest of one strategy over a year of M1 (the real
gold file chained to 370,000 bars, bench/yeardata.py), per strategy, beside the issue's 0.5 s target and the whole
scalper engine's backtest of the same year (the reference the trial's cost is a share of). Run by `make bench`.

Median of 3 wall-clock runs in this process (warm); CPU time (process_time) too, as the machine is shared.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench.yeardata import chain  # noqa: E402
from scalper.backtest.engine import BacktestConfig, run_backtest  # noqa: E402
from scalper.calibrate import tune  # noqa: E402
from shared.loaders import load_m1  # noqa: E402
from shared.messages import StrategyConfig  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.strategies import catalog  # noqa: E402

YEAR = 370_000
TARGET_S = 0.5


def timed(fn, repeat: int = 3) -> tuple[float, float]:
    walls, cpus = [], []
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    path = Settings().data_dir / "XAUUSD_M1.csv"
    if not path.is_file():
        print(f"skipped: {path} is absent (set SCALPER_DATA_DIR)")
        return
    bars = chain(load_m1(path).bars, YEAR)
    edges = np.linspace(int(bars.time[0]), int(bars.time[-1]) + 60, 6).astype(np.int64)
    table = Table(title=f"one tune trial over a year of M1 ({len(bars):,} bars), median of 3")
    for col in ("strategy", "trial wall s", "trial CPU s", "target s", "met"):
        table.add_column(col, justify="right")
    for name in catalog.names(None):
        tune._init(bars, "XAUUSD", name, 7.0, edges)
        defaults = catalog.get(name).Params().model_dump()
        params = {s.name: defaults[s.name] for s in tune.search_space(catalog.get(name).Params)}
        wall, cpu = timed(lambda p=params: tune.evaluate(p))
        table.add_row(name, f"{wall:.2f}", f"{cpu:.2f}", f"{TARGET_S}", "yes" if wall <= TARGET_S else "no")
    config = BacktestConfig(symbol="XAUUSD", strategies=tuple(StrategyConfig(name=n) for n in catalog.names("scalper")))
    from shared.symbols import get_spec

    wall, cpu = timed(lambda: run_backtest(bars, get_spec("XAUUSD"), config), repeat=2)
    table.add_row("reference: every scalper strategy", f"{wall:.2f}", f"{cpu:.2f}", "", "")
    Console().print(table)


if __name__ == "__main__":
    main()
