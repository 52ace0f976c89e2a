"""`scalper backtest --json`'s `signals`: every signal, traded or not, with its first-touch outcome, so anyone can check
a calibration from outside."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from scalper.backtest.engine import spreads_for
from scalper.backtest.jsonout import iso_utc, rounded
from scalper.calibrate.outcomes import outcomes_of
from shared.bars import Bars
from shared.symbols import SymbolSpec


def signal_records(bars: Bars, spec: SymbolSpec, signals: Sequence, *, spread_points: float | None = None) -> list[dict[str, Any]]:
    """One object per signal: time (the judged bar's open, UTC), strategy, side, entry, sl, tp, score, p_win,
    expected_r_net (null without a calibration) and outcome ("tp", "sl" or "open"). `bars` are the bars the signals
    index (after the sanity rule)."""
    spread = spreads_for(bars, spec, spread_points)
    labels = outcomes_of(bars, spread, spec.point, signals)
    # Each number rounded a column at a time (jsonout.rounded: round()'s values); a level as the symbol quotes it
    # (the outcome was judged on the unrounded level; they differ below a point).
    columns = (
        iso_utc([s.bar_time for s in signals]), rounded([s.entry for s in signals], spec.digits),
        rounded([s.stop for s in signals], spec.digits), rounded([s.target for s in signals], spec.digits),
        rounded([s.score for s in signals], 6), rounded([s.p_win for s in signals], 6),
        rounded([s.expected_r_net for s in signals], 6), labels.outcome.tolist(),
    )
    return [
        {"time": time, "strategy": s.strategy, "side": s.side, "entry": entry, "sl": sl, "tp": tp, "score": score,
         "p_win": p_win, "expected_r_net": expected_r_net, "outcome": outcome}
        for s, time, entry, sl, tp, score, p_win, expected_r_net, outcome in zip(signals, *columns, strict=True)
    ]
