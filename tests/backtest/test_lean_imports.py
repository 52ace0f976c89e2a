"""`scalper backtest` starts lean (issue 18, item 3): a fresh process running it to the end has imported no
database, web or bus module (they cost a fresh backtest most of a second and a lot of memory)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from bench.yeardata import write_mt5_rates_csv
from shared.bars import Bars

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("sqlalchemy", "sqlmodel", "alembic", "aiosqlite", "asyncpg", "fastapi", "starlette", "uvicorn", "aio_pika", "aiormq")

WRAPPER = """
import json, os, sys
from scalper.cli import app
sys.argv = ["scalper", "backtest", *sys.argv[1:]]
try:
    app()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
roots = sorted({m.split(".")[0] for m in sys.modules})
print(json.dumps({"code": code, "modules": roots, "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS")}))
"""


def random_walk_csv(path: Path, n: int = 4_000) -> None:
    rng = np.random.default_rng(3)
    close = np.round(2000.0 + np.cumsum(rng.normal(0, 0.4, n)), 2)
    open_ = np.round(np.concatenate(([2000.0], close[:-1])), 2)
    high = np.round(np.maximum(open_, close) + rng.uniform(0, 0.5, n), 2)
    low = np.round(np.minimum(open_, close) - rng.uniform(0, 0.5, n), 2)
    t = 1_775_001_600 + 60 * np.arange(n, dtype=np.int64)
    bars = Bars.from_columns(time=t, open=open_, high=high, low=low, close=close, tick_volume=np.ones(n, np.int64),
                             spread=np.full(n, 20, np.int64))
    write_mt5_rates_csv(bars, path)


def test_backtest_imports_no_database_web_or_bus_module(tmp_path):
    csv = tmp_path / "XAUUSD_M1.csv"
    random_walk_csv(csv)
    out = tmp_path / "out.json"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    proc = subprocess.run([sys.executable, "-c", WRAPPER, str(csv), "--quiet", "--server-time", "utc", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["code"] == 0, proc.stderr
    assert json.loads(out.read_text())["run"]["bars"] == 4_000  # the backtest ran to the end
    loaded = [m for m in FORBIDDEN if m in report["modules"]]
    assert loaded == [], f"scalper backtest imported {loaded}"
    assert report["blas_threads"] == "1"  # numpy's OpenBLAS started with one thread (no linear algebra in a backtest)
    # A well-formed MT5 rates file takes the loader's pyarrow path and TA-Lib comes without its wrapping: no pandas.
    assert "pandas" not in report["modules"], "scalper backtest imported pandas"


TA_PROBE = """
import json, sys
import scalper.backtest.engine, scalper.backtest.report, scalper.calibrate.records
from shared.ta import talib
lean = "pandas" not in sys.modules
import numpy as np
x = np.linspace(1.0, 2.0, 300)
ours = talib.EMA(x, 20)
import pandas
print(json.dumps({"lean": lean, "pandas_imports": pandas.__name__ == "pandas", "ema": ours[-3:].tolist(), "talib": talib.__name__}))
"""


def test_backtest_modules_import_talib_without_pandas():
    """TA-Lib's pandas wrapping is not loaded by the backtest's modules (shared/ta.py), pandas stays importable,
    and the functions are TA-Lib's own (the same values as talib imported the usual way, which wraps them)."""
    proc = subprocess.run([sys.executable, "-c", TA_PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["lean"] and report["pandas_imports"] and report["talib"] == "talib"
    import talib

    assert report["ema"] == talib.EMA(np.linspace(1.0, 2.0, 300), 20)[-3:].tolist()
