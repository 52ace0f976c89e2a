"""One year of M1 bars for the benchmarks: the real gold file chained end to end (bench/bench_backtest.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shared.bars import FIELDS, Bars

WEEK_S = 7 * 86_400


def chain(bars: Bars, total: int) -> Bars:
    """Copies of `bars` one after another until `total` bars: each copy is shifted by whole weeks (weekdays, sessions
    and weekends stay where they were) and its prices by a constant, so its first open is the previous copy's last
    close (no price jump at a seam)."""
    span = int(bars.time[-1] - bars.time[0]) + 60
    shift_s = -(-span // WEEK_S) * WEEK_S
    parts = {f: [] for f in FIELDS}
    have, k, price_shift = 0, 0, 0.0
    while have < total:
        take = min(len(bars), total - have)
        parts["time"].append(bars.time[:take] + k * shift_s)
        for f in ("open", "high", "low", "close"):
            parts[f].append(np.round(getattr(bars, f)[:take] + price_shift, 2))
        parts["tick_volume"].append(bars.tick_volume[:take])
        parts["spread"].append(bars.spread[:take])
        price_shift += float(bars.close[-1] - bars.open[0])
        have += take
        k += 1
    return Bars(*(np.concatenate(parts[f]) for f in FIELDS))


def write_mt5_rates_csv(bars: Bars, path: Path) -> None:
    """The gold file's own format (time,open,high,low,close,tick_volume,spread,real_volume)."""
    times = np.array(bars.time, dtype="datetime64[s]").astype(str)
    with path.open("w") as out:
        out.write("time,open,high,low,close,tick_volume,spread,real_volume\n")
        rows = zip(np.char.replace(times, "T", " ").tolist(), bars.open.tolist(), bars.high.tolist(), bars.low.tolist(),
                   bars.close.tolist(), bars.tick_volume.tolist(), bars.spread.tolist())
        out.writelines(f"{t},{o:.2f},{h:.2f},{lo:.2f},{c:.2f},{v},{s},0\n" for t, o, h, lo, c, v, s in rows)
