"""`scalper backtest --json`'s `signals`: every signal, traded or not, with its first-touch outcome, so anyone can check
a calibration from outside."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from scalper.backtest.engine import spreads_for
from scalper.backtest.jsonout import iso_utc
from scalper.calibrate.outcomes import outcomes_of
from shared.bars import Bars
from shared.symbols import SymbolSpec


def signal_records(bars: Bars, spec: SymbolSpec, signals: Sequence, *, spread_points: float | None = None) -> list[dict[str, Any]]:
    """One object per signal: time (the judged bar's open, UTC), strategy, side, entry, sl, tp, score, p_win,
    expected_r_net (null without a calibration) and outcome ("tp", "sl" or "open"). `bars` are the bars the signals
    index (after the sanity rule)."""
    spread = spreads_for(bars, spec, spread_points)
    labels = outcomes_of(bars, spread, spec.point, signals)
    out = []
    times = iso_utc([s.bar_time for s in signals])
    for s, outcome, time in zip(signals, labels.outcome.tolist(), times, strict=True):
        out.append({
            "time": time, "strategy": s.strategy, "side": s.side,
            "entry": _price(s.entry, spec), "sl": _price(s.stop, spec), "tp": _price(s.target, spec),
            "score": round(s.score, 6),
            "p_win": None if s.p_win is None else round(s.p_win, 6),
            "expected_r_net": None if s.expected_r_net is None else round(s.expected_r_net, 6),
            "outcome": outcome,
        })
    return out


def _price(value: float | None, spec: SymbolSpec) -> float | None:
    """A level as the symbol quotes it (the outcome was judged on the unrounded level; they differ below a point)."""
    return None if value is None else round(value, spec.digits)
