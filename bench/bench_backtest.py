"""Backtester and live-window speed (issue 4, item 9): prints one table. Run by `make bench`.

- one year of M1 (370,000 bars: the real gold file chained, bench/yeardata.py) through the scalper engine's strategies,
  the risk rules and the fill model: warm (in this process, best of 3) and from a fresh process (`scalper backtest` on
  that year written as an MT5 rates CSV), beside backtesting.py 0.6 running one EMA-cross strategy on the same bars;
- all scalper strategies on one live window, and the worker's whole `scan_window` per BarWindow, beside TA-Lib's
  EMA20 + EMA50 + ATR14 on a 100-bar window; and BarColumns.to_bars() before and after its speed-up.

Wall-clock times are the best of several runs; CPU times (process_time) are shown too because this machine is shared.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import resource
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
from services.decision.risk import BotRules  # noqa: E402
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


def best(fn, repeat: int = 3) -> tuple[float, float, object]:
    """(best wall seconds, CPU seconds of that run, result)."""
    best_wall, best_cpu, out = float("inf"), 0.0, None
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        if wall < best_wall:
            best_wall, best_cpu = wall, cpu
    return best_wall, best_cpu, out


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


def backtesting_py_seconds(bars: Bars) -> float | None:
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

    wall, _, _ = best(run, repeat=2)
    return wall


def live_window_figures(bars: Bars) -> dict[str, float]:
    configs = [StrategyConfig(name=n) for n in catalog.names("scalper")]
    lookback = catalog.lookback_for(configs)
    rng = np.random.default_rng(7)
    ends = rng.integers(lookback + 2 * 1440, len(bars), 2000)
    windows, messages = [], []
    sub = Subscription(bot_id=1, account_id=1, symbol="XAUUSD", strategies=tuple(configs))
    for end in ends.tolist():
        w = bars[end - lookback : end]
        levels = previous_day_levels(bars[max(0, end - 7200) : end], from_epoch(int(bars.time[end - 1])))
        windows.append((w, levels))
        if len(messages) < 500:
            messages.append(BarWindow(symbol="XAUUSD", bars=BarColumns.from_bars(w), closed_through=from_epoch(int(w.time[-1]) + 60),
                                      source="bench", levels=levels, subscriptions=(sub,)))
    resolved = [(catalog.get(c.name), catalog.parse_params(c.name)) for c in configs]

    def evaluate_all(item):
        w, levels = item
        ctx = EvalContext(spec=SPEC, levels=levels, cache=WindowCache(w))
        for strategy, params in resolved:
            strategy.evaluate(w, ctx, params)

    now = utcnow()
    columns = [m.bars for m in messages]
    w100 = [bars[e - 100 : e] for e in ends[:2000].tolist()]

    def talib_three(w):
        talib.EMA(w.close, 20)
        talib.EMA(w.close, 50)
        talib.ATR(w.high, w.low, w.close, 14)

    return {
        "lookback": lookback,
        "evaluate_all_us": per_call_us(evaluate_all, windows),
        "scan_window_us": per_call_us(lambda m: scan_window(m, catalog=catalog.CATALOG, now=now), messages),
        "to_bars_us": per_call_us(lambda c: c.to_bars(), columns),
        "talib_us": per_call_us(talib_three, w100),
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
    warm_wall, warm_cpu, result = best(lambda: run_backtest(year, SPEC, scalper_config()))
    evaluated = sum(result.scan.evaluated.values())

    ema_rules = dataclasses.replace(BotRules(), max_trades_per_day=1_000_000)
    ema_wall = None
    try:  # our backtester on the same EMA cross as backtesting.py (its strategy module is test-only)
        from tests.backtest.test_vs_backtesting_py import CROSS
        from shared.strategies.catalog import Catalog

        from scalper.backtest.prefilters import PREFILTERS

        def crossings(bars, params):  # a crossing of the full-history EMAs, with a slack (they equal the windows')
            d = talib.EMA(bars.close, 10) - talib.EMA(bars.close, 30)
            tol = 1e-9 * bars.close
            prev = np.concatenate(([np.nan], d[:-1]))
            with np.errstate(invalid="ignore"):
                return ((prev <= tol) & (d > -tol)) | ((prev >= -tol) & (d < tol)) | np.isnan(prev)

        PREFILTERS["ema_cross"] = crossings
        cross_catalog = Catalog([CROSS])
        cfg = BacktestConfig(symbol="XAUUSD", strategies=(StrategyConfig(name="ema_cross"),), spread_points=0.0, rules=ema_rules,
                             kill_switch_pct=1e9)
        ema_wall, _, _ = best(lambda: run_backtest(zero_spread, SPEC, cfg, catalog=cross_catalog), repeat=1)
    except ImportError:
        pass
    bt_wall = backtesting_py_seconds(zero_spread)

    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "XAUUSD_M1_year.csv"
        write_mt5_rates_csv(year, csv)
        w0 = time.perf_counter()
        loaded = load_m1(csv)
        load_s = time.perf_counter() - w0
        assert loaded.rows == YEAR_BARS, loaded.summary()
        fresh, fresh_cpu = [], []
        for _ in range(2):
            w0, c0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
            subprocess.run([sys.executable, "-m", "scalper.cli", "backtest", str(csv), "--symbol", "XAUUSD", "--quiet",
                            "--json", str(Path(tmp) / "out.json")], cwd=ROOT, check=True, capture_output=True)
            c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            fresh.append(time.perf_counter() - w0)
            fresh_cpu.append(c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime)
        w0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import scalper.cli"], cwd=ROOT, check=True)
        import_s = time.perf_counter() - w0

    live = live_window_figures(gold)

    table = Table(title=f"Backtest and live-window speed ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                        f"load avg {os.getloadavg()[0]:.1f})")
    table.add_column("what")
    table.add_column("ours", justify="right")
    table.add_column("reference", justify="right")
    table.add_column("target", justify="right")
    table.add_row(f"1 year M1 ({len(year):,} bars), {len(catalog.names('scalper'))} scalper strategies + risk + fills, warm",
                  f"{warm_wall:.2f} s (CPU {warm_cpu:.2f} s)", "", "0.5 s")
    table.add_row("  the same from a fresh process (`scalper backtest` on the year as a CSV, incl. parsing it)",
                  f"{min(fresh):.2f} s (CPU {min(fresh_cpu):.2f} s)", "", "3 s")
    table.add_row("  of which: interpreter + imports / parsing the 370k-row CSV", f"{import_s:.2f} s / {load_s:.2f} s", "", "")
    table.add_row(f"  windows evaluated (prefilters skip the rest) / signals / trades",
                  f"{evaluated:,} / {len(result.signals):,} / {len(result.trades):,}", "", "")
    table.add_row("1 year M1, one EMA-cross strategy (SL 3, TP 6)", "" if ema_wall is None else f"{ema_wall:.2f} s",
                  "backtesting.py " + ("n/a" if bt_wall is None else f"{bt_wall:.2f} s"), "")
    table.add_row(f"all {len(catalog.names('scalper'))} scalper strategies on one live window ({live['lookback']} bars)",
                  f"{live['evaluate_all_us']:.1f} µs", f"TA-Lib EMA20+EMA50+ATR14 on 100 bars: {live['talib_us']:.1f} µs", "50 µs")
    table.add_row("strategy worker: scan_window per BarWindow (to_bars, strategies, Signals)", f"{live['scan_window_us']:.1f} µs", "", "")
    table.add_row(f"BarColumns.to_bars() ({live['lookback']} bars x 7 columns)", f"{live['to_bars_us']:.1f} µs",
                  "", "")
    console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
