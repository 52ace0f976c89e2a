"""Backtester speed and memory (issues 4 and 18): prints one table. Run by `make bench`.

One year of M1 (370,000 bars: the real gold file chained, bench/yeardata.py) through the scalper engine's strategies,
the risk rules and the fill model, measured in one run beside the references on the same bars:

- ours warm (in this process, median of 3) and fresh (`scalper backtest` on that year written as an MT5 rates CSV,
  parsing included; median of 3, each child's own peak RSS from wait4);
- backtesting.py 0.6 running one EMA-cross strategy: warm (in this process) and fresh (a child that reads the same
  CSV with pandas and runs it; its peak RSS too);
- the arithmetic floor: every indicator the four strategies use, TA-Lib over the whole year, once;
- all scalper strategies on one live window, and the worker's whole `scan_window` per BarWindow.

Wall-clock times are medians; CPU times (process time / the child's rusage) are shown too because this machine is shared.
"""

from __future__ import annotations

import compileall
import dataclasses
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import talib  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench.yeardata import chain, write_mt5_rates_csv  # noqa: E402
from scalper.backtest.engine import BacktestConfig, run_backtest  # noqa: E402
from services.strategy.service import scan_window  # noqa: E402
from shared.bars import Bars  # noqa: E402
from shared.levels import previous_day_levels  # noqa: E402
from shared.loaders import load_m1  # noqa: E402
from shared.messages import BarColumns, BarWindow, StrategyConfig, Subscription  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.strategies import catalog  # noqa: E402
from shared.strategies.base import EvalContext, WindowCache  # noqa: E402
from shared.symbols import get_spec  # noqa: E402
from shared.timeutil import from_epoch, utcnow  # noqa: E402

YEAR_BARS = 370_000
SPEC = get_spec("XAUUSD")
MIB = 1024 * 1024

# backtesting.py from a fresh process on the same CSV: pandas reads it, one EMA cross (SL 3, TP 6) runs over it.
BT_FRESH = """
import sys, warnings
import pandas as pd, talib
from backtesting import Backtest, Strategy
f = pd.read_csv(sys.argv[1], parse_dates=["time"], index_col="time")
f = f.rename(columns={"open": "Open", "high": "High", "low": "Low", "close": "Close", "tick_volume": "Volume"})
class EmaCross(Strategy):
    def init(self):
        self.fast = self.I(talib.EMA, self.data.Close.astype(float), 20)
        self.slow = self.I(talib.EMA, self.data.Close.astype(float), 50)
    def next(self):
        if self.position or self.orders:
            return
        f, s, c = self.fast, self.slow, self.data.Close[-1]
        if f[-2] <= s[-2] and f[-1] > s[-1]:
            self.buy(size=1, sl=c - 3.0, tp=c + 6.0)
        elif f[-2] >= s[-2] and f[-1] < s[-1]:
            self.sell(size=1, sl=c + 3.0, tp=c - 6.0)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    stats = Backtest(f[["Open", "High", "Low", "Close", "Volume"]], EmaCross, cash=1e7, finalize_trades=True).run()
print(stats["# Trades"])
"""


# What `scalper backtest FILE --json OUT` imports before it reads the file (the command imports its modules lazily).
IMPORTS = """
import scalper.cli, scalper.commands.backtest
import scalper.backtest.engine, scalper.backtest.report, scalper.backtest.jsonout, scalper.calibrate.records, shared.loaders
"""


def timed(fn, repeat: int = 3) -> tuple[float, float, object]:
    """(median wall seconds, median CPU seconds, last result)."""
    walls, cpus, out = [], [], None
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus), out


# A child's peak RSS: VmHWM of its own address space, read at exit (ru_maxrss would count the pages the fork shared
# with this big parent before exec).
PEAK = """
import atexit, os, runpy, sys
def _peak():
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
    with open(os.environ["BENCH_PEAK_FILE"], "w") as out:
        out.write(str(kb))
atexit.register(_peak)
mode, target = sys.argv[1], sys.argv[2]
sys.argv = [target] + sys.argv[3:]
if mode == "-m":
    runpy.run_module(target, run_name="__main__", alter_sys=True)
else:
    exec(compile(open(target).read(), target, "exec"), {"__name__": "__main__"})
"""


def child(args: list[str], repeat: int = 3) -> tuple[float, float, float]:
    """(median wall s, median CPU s, max peak RSS MiB) of `python <args>` (args: ["-m", module, ...] or [script, ...])."""
    walls, cpus, rss = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        peak_file = Path(tmp) / "peak"
        env = dict(os.environ, BENCH_PEAK_FILE=str(peak_file))
        argv = [sys.executable, "-c", PEAK] + (args if args[0] == "-m" else ["-f", *args])
        for _ in range(repeat):
            w0 = time.perf_counter()
            proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            _, status, usage = os.wait4(proc.pid, 0)
            walls.append(time.perf_counter() - w0)
            code = os.waitstatus_to_exitcode(status)
            err = proc.stderr.read().decode()
            proc.stderr.close()
            if code != 0:
                raise RuntimeError(f"{args[:3]} exited {code}: {err[-2000:]}")
            cpus.append(usage.ru_utime + usage.ru_stime)
            rss.append(int(peak_file.read_text()) / 1024)
    return statistics.median(walls), statistics.median(cpus), max(rss)


def per_call_us(fn, items, repeat: int = 3) -> float:
    """Best mean microseconds per call of fn(item) over items."""
    results = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for item in items:
            fn(item)
        results.append((time.perf_counter() - t0) / len(items) * 1e6)
    return min(results)


def scalper_config(**overrides) -> BacktestConfig:
    return BacktestConfig(symbol="XAUUSD", strategies=tuple(StrategyConfig(name=n) for n in catalog.names("scalper")), **overrides)


def talib_floor(bars: Bars) -> tuple[float, float]:
    """Every indicator the four scalper strategies compute, once over the whole history (TA-Lib, default parameters):
    ATR(14), EMA(20), EMA(50), ADX(14), RSI(14), BBANDS(20, 2), STOCH(14, 3, 3), the Donchian MAX/MIN(20) and (5),
    MAX/MIN(10), and the candle rules CDLDOJI, CDLHAMMER, CDLENGULFING."""
    o, h, lo, c = bars.open, bars.high, bars.low, bars.close

    def run():
        talib.ATR(h, lo, c, 14)
        talib.EMA(c, 20)
        talib.EMA(c, 50)
        talib.ADX(h, lo, c, 14)
        talib.RSI(c, 14)
        talib.BBANDS(c, 20, 2.0, 2.0, 0)
        talib.STOCH(h, lo, c, 14, 3, 0, 3, 0)
        for n in (20, 10, 5):
            talib.MAX(h, n)
            talib.MIN(lo, n)
        talib.CDLDOJI(o, h, lo, c)
        talib.CDLHAMMER(o, h, lo, c)
        talib.CDLENGULFING(o, h, lo, c)

    wall, cpu, _ = timed(run, repeat=7)
    return wall, cpu


def backtesting_py_warm(bars: Bars) -> tuple[float, float] | None:
    try:
        import pandas as pd
        from backtesting import Backtest, Strategy
    except ImportError:
        return None

    frame = pd.DataFrame({"Open": bars.open, "High": bars.high, "Low": bars.low, "Close": bars.close,
                          "Volume": bars.tick_volume.astype(float)}, index=pd.to_datetime(bars.time, unit="s"))

    class EmaCross(Strategy):
        def init(self):
            self.fast = self.I(talib.EMA, self.data.Close.astype(float), 20)
            self.slow = self.I(talib.EMA, self.data.Close.astype(float), 50)

        def next(self):
            if self.position or self.orders:
                return
            f, s, c = self.fast, self.slow, self.data.Close[-1]
            if f[-2] <= s[-2] and f[-1] > s[-1]:
                self.buy(size=1, sl=c - 3.0, tp=c + 6.0)
            elif f[-2] >= s[-2] and f[-1] < s[-1]:
                self.sell(size=1, sl=c + 3.0, tp=c - 6.0)

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Backtest(frame, EmaCross, cash=1e7, finalize_trades=True).run()

    wall, cpu, _ = timed(run, repeat=2)
    return wall, cpu


def live_window_figures(bars: Bars) -> dict[str, float]:
    configs = [StrategyConfig(name=n) for n in catalog.names("scalper")]
    lookback = catalog.lookback_for(configs)
    rng = np.random.default_rng(7)
    ends = rng.integers(lookback + 2 * 1440, len(bars), 1000)
    windows, messages = [], []
    sub = Subscription(bot_id=1, account_id=1, symbol="XAUUSD", strategies=tuple(configs))
    for end in ends.tolist():
        w = bars[end - lookback : end]
        levels = previous_day_levels(bars[max(0, end - 7200) : end], from_epoch(int(bars.time[end - 1])))
        windows.append((w, levels))
        if len(messages) < 300:
            messages.append(BarWindow(symbol="XAUUSD", bars=BarColumns.from_bars(w), closed_through=from_epoch(int(w.time[-1]) + 60),
                                      source="bench", levels=levels, subscriptions=(sub,)))
    resolved = [(catalog.get(c.name), catalog.parse_params(c.name)) for c in configs]

    def evaluate_all(item):
        w, levels = item
        ctx = EvalContext(spec=SPEC, levels=levels, cache=WindowCache(w))
        for strategy, params in resolved:
            strategy.evaluate(w, ctx, params)

    now = utcnow()
    return {
        "lookback": lookback,
        "evaluate_all_us": per_call_us(evaluate_all, windows),
        "scan_window_us": per_call_us(lambda m: scan_window(m, catalog=catalog.CATALOG, now=now), messages),
    }


def main() -> int:
    path = Settings().data_dir / "XAUUSD_M1.csv"
    if not path.is_file():
        print(f"skipped: {path} is absent (set SCALPER_DATA_DIR)")
        return 0
    console = Console(width=170)
    gold = load_m1(path).bars
    year = chain(gold, YEAR_BARS)
    zero_spread = dataclasses.replace(year, spread=np.zeros(len(year), np.int64))

    run_backtest(year[:50_000], SPEC, scalper_config())  # warm caches and imports
    warm_wall, warm_cpu, result = timed(lambda: run_backtest(year, SPEC, scalper_config()), repeat=5)
    evaluated = sum(result.scan.evaluated.values())
    floor = talib_floor(year)
    bt_warm = backtesting_py_warm(zero_spread)

    # The project's bytecode, as an install has it (pip compiles site-packages, and a first run writes the rest):
    # under PYTHONDONTWRITEBYTECODE every fresh child would compile the project's sources again, which no user's
    # second run does and backtesting.py's installed modules never pay.
    for package in ("scalper", "shared", "services"):
        compileall.compile_dir(ROOT / package, quiet=1)
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "XAUUSD_M1_year.csv"
        write_mt5_rates_csv(year, csv)
        w0 = time.perf_counter()
        loaded = load_m1(csv)
        load_s = time.perf_counter() - w0
        assert loaded.rows == YEAR_BARS, loaded.summary()
        fresh = child(["-m", "scalper.cli", "backtest", str(csv), "--symbol", "XAUUSD", "--quiet",
                       "--json", str(Path(tmp) / "out.json")])
        imports_py = Path(tmp) / "imports.py"
        imports_py.write_text(IMPORTS)
        imports = child([str(imports_py)])
        imports_pd_py = Path(tmp) / "imports_pd.py"
        imports_pd_py.write_text(IMPORTS + "import pandas\n")
        imports_pd = child([str(imports_pd_py)])
        try:
            import backtesting  # noqa: F401
            bt_py = Path(tmp) / "bt_fresh.py"
            bt_py.write_text(BT_FRESH)
            bt_fresh = child([str(bt_py), str(csv)])
        except ImportError:
            bt_fresh = None

    live = live_window_figures(gold)

    table = Table(title=f"Backtest speed and memory ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                        f"load avg {os.getloadavg()[0]:.1f}); medians; ratios as wall / CPU")
    for name, justify in (("what", "left"), ("ours", "right"), ("reference", "right"), ("ratio", "right"), ("goal", "right")):
        table.add_column(name, justify=justify)

    def ratio(ours: tuple, ref: tuple | None) -> str:
        return "" if ref is None else f"{ours[0] / ref[0]:.2f}x / {ours[1] / ref[1]:.2f}x"

    n_strat = len(catalog.names("scalper"))
    warm = (warm_wall, warm_cpu)
    table.add_row(f"1 year M1 ({len(year):,} bars), {n_strat} scalper strategies + risk + fills, warm",
                  f"{warm_wall:.3f} s (CPU {warm_cpu:.3f} s)",
                  "backtesting.py, one EMA cross: " + ("n/a" if bt_warm is None else f"{bt_warm[0]:.2f} s (CPU {bt_warm[1]:.2f} s)"),
                  ratio(warm, bt_warm), "<= 0.3 s")
    table.add_row("  the arithmetic floor: every indicator the strategies use, TA-Lib over the year", "",
                  f"{floor[0] * 1000:.1f} ms (CPU {floor[1] * 1000:.1f} ms)", ratio(warm, floor) + " the floor", "<= 10x")
    table.add_row("fresh `scalper backtest` on the year as a CSV (parsing included)", f"{fresh[0]:.2f} s (CPU {fresh[1]:.2f} s)",
                  "backtesting.py fresh (pandas read_csv + run): " + ("n/a" if bt_fresh is None else f"{bt_fresh[0]:.2f} s (CPU {bt_fresh[1]:.2f} s)"),
                  ratio(fresh, bt_fresh), "<= 0.5x")
    table.add_row("  peak RSS of that process", f"{fresh[2]:.0f} MiB", "" if bt_fresh is None else f"backtesting.py {bt_fresh[2]:.0f} MiB",
                  "" if bt_fresh is None else f"{fresh[2] / bt_fresh[2]:.2f}x", "<= 250 MiB")
    table.add_row("  of which: interpreter + the command's imports (IMPORTS) / with pandas (the loader's parser) / load_m1 of the CSV, warm",
                  f"{imports[0]:.2f} s (CPU {imports[1]:.2f} s, {imports[2]:.0f} MiB) / {imports_pd[0]:.2f} s (CPU {imports_pd[1]:.2f} s) / {load_s:.2f} s",
                  "", "", "")
    from_arrays = sum(getattr(result.scan, "from_arrays", {}).values())  # 0 on a backtester without arrays
    table.add_row("  signals from arrays / windows evaluate judged / signals / trades",
                  f"{from_arrays:,} / {evaluated:,} / {len(result.signals):,} / {len(result.trades):,}", "", "", "")
    table.add_row(f"all {n_strat} scalper strategies on one live window ({live['lookback']} bars)", f"{live['evaluate_all_us']:.1f} µs", "", "", "")
    table.add_row("strategy worker: scan_window per BarWindow (to_bars, strategies, Signals)", f"{live['scan_window_us']:.1f} µs", "", "", "")
    console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
