"""A loaded calibration on the backtester's signals: the same estimate the strategy worker puts on a live Signal."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from shared.calibration import Calibration
from shared.symbols import SymbolSpec
from shared.timeutil import from_epoch


def annotate(signals: Sequence, calibration: Calibration, *, symbol: str, spec: SymbolSpec, spread_points: np.ndarray) -> list:
    """The signals with p_win and expected_r_net set (left null for a strategy the calibration has no model of)."""
    out = []
    for s in signals:
        got = calibration.estimate(strategy=s.strategy, symbol=symbol, score=s.score, features=s.features, entry=s.entry,
                                   stop=s.stop, target=s.target, bar_time=from_epoch(s.bar_time),
                                   spread_points=float(spread_points[s.index]), spec=spec)
        out.append(s if got is None else dataclasses.replace(s, p_win=got[0], expected_r_net=got[1]))
    return out
