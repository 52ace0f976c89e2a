"""A calibration artifact and its use at run time: numpy only (no scikit-learn, no pickle), so the strategy workers
and the backtester load a JSON file and get p_win and expected_r_net per signal.

The model per (strategy, symbol) is a logistic regression over standardised inputs: the strategy's score and its
components (`score_*` features), the reward multiple, the stop-to-spread ratio and the session of the bar (UTC).
From version 2 a model may carry an offset: the log-odds of the signal's geometric prior (`geometric_prior`), added
with its coefficient fixed at 1, so the regression learns only the deviation from what the levels alone imply.
Fitting is in fit.py (scikit-learn, scipy); this module only evaluates the fitted coefficients.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from shared.costs import cost_r, expected_r_net
from shared.symbols import SymbolSpec

FORMAT = "scalper.calibration"
VERSION = 2
READS = (1, 2)  # version 1 is version 2 without an offset: it loads and gives the p_win it always gave
PRIOR = "prior_logit"  # the input raw_inputs gives the geometric prior's log-odds under
PRIOR_EPS = 1e-3  # the prior is clipped to [eps, 1 - eps]: a stop inside the spread is near-certain loss, not a log of 0
# Sessions by UTC hour: Asia, London, London/New York overlap, New York afternoon and the evening.
SESSIONS = (("asia", 0, 7), ("london", 7, 12), ("overlap", 12, 16), ("newyork", 16, 21), ("late", 21, 24))


class CalibrationError(ValueError):
    """A calibration file that cannot be used (wrong format or version, bad contents)."""


def session_of(at: datetime) -> str:
    hour = at.hour
    return next(name for name, a, b in SESSIONS if a <= hour < b)


def geometric_prior(*, entry: float, stop: float, target: float, spread_price: float) -> float:
    """P(target before stop) for a driftless continuous price, judged as scalper/calibrate/outcomes.py judges it: the
    gambler's-ruin ratio (distance to the stop over the distance between the two) in the price the exits trigger on.
    A long's levels trigger on the bid, which starts at the entry (the signal bar's close, a bid): S / (S + T). A
    short's trigger on the ask, which starts a spread above the entry: (S - s) / (S + T). S is the stop's distance from
    the entry, T the target's, s the spread."""
    buy = stop < entry
    s_dist, t_dist = (entry - stop, target - entry) if buy else (stop - entry, entry - target)
    total = s_dist + t_dist
    if not total > 0:
        return PRIOR_EPS
    p = s_dist / total if buy else (s_dist - max(spread_price, 0.0)) / total
    return min(max(p, PRIOR_EPS), 1.0 - PRIOR_EPS)


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def raw_inputs(*, score: float, features: Mapping[str, Any], entry: float, stop: float, target: float, bar_time: datetime,
               spread_points: float, spec: SymbolSpec) -> dict[str, float]:
    """The named inputs of one signal (what fit.py fits on and the model reads by name); PRIOR is the geometric prior's
    log-odds, which fit.py uses as the offset, never as a fitted input."""
    risk = abs(entry - stop)
    spread = spec.points_to_price(spread_points) if spread_points > 0 else spec.point
    values = {"score": float(score), "reward_r": abs(target - entry) / risk if risk > 0 else 0.0,
              "stop_spreads": min(risk / spread, 100.0),
              PRIOR: logit(geometric_prior(entry=entry, stop=stop, target=target,
                                           spread_price=spec.points_to_price(max(spread_points, 0.0))))}
    for key, value in features.items():
        if key.startswith("score_") and isinstance(value, (int, float)) and not isinstance(value, bool):
            values[key] = float(value)
    session = session_of(bar_time)
    for name, _, _ in SESSIONS:
        values[f"session_{name}"] = 1.0 if name == session else 0.0
    return values


@dataclass(frozen=True, slots=True)
class Model:
    """P(target before stop) = sigmoid(offset + intercept + sum coef * (x - mean) / scale), where offset is the value of
    the input named `offset` (coefficient 1; none: 0); an input the signal lacks is its mean. The offset input cannot be
    missing: raw_inputs always gives it, so a signal without it is a programming error (KeyError), not a mean."""

    inputs: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    offset: str | None = None

    def p_win(self, values: Mapping[str, float]) -> float:
        z = self.intercept + (values[self.offset] if self.offset is not None else 0.0)
        for name, m, s, c in zip(self.inputs, self.mean, self.scale, self.coef, strict=True):
            z += c * ((values.get(name, m) - m) / s)
        return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"inputs": list(self.inputs), "mean": list(self.mean), "scale": list(self.scale), "coef": list(self.coef),
                "intercept": self.intercept, "offset": self.offset}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Model:
        inputs = tuple(d["inputs"])
        parts = [tuple(float(v) for v in d[k]) for k in ("mean", "scale", "coef")]
        if any(len(p) != len(inputs) for p in parts) or any(s <= 0 for s in parts[1]):
            raise CalibrationError("a model's inputs, mean, scale and coef must be of one length, scales positive")
        offset = d.get("offset")
        if offset is not None and (not isinstance(offset, str) or offset in inputs):
            raise CalibrationError(f"a model's offset must be the name of an input it does not fit, not {offset!r}")
        return cls(inputs, *parts, float(d["intercept"]), offset)


@dataclass(frozen=True, slots=True)
class Calibration:
    models: dict[tuple[str, str], Model]  # (strategy, canonical symbol)
    commission_per_lot: float = 0.0
    meta: dict[str, Any] | None = None

    def estimate(self, *, strategy: str, symbol: str, score: float, features: Mapping[str, Any], entry: float, stop: float,
                 target: float, bar_time: datetime, spread_points: float, spec: SymbolSpec) -> tuple[float, float] | None:
        """(p_win, expected_r_net) of one signal, or None when the calibration has no model for its strategy and symbol."""
        model = self.models.get((strategy, symbol))
        if model is None:
            return None
        values = raw_inputs(score=score, features=features, entry=entry, stop=stop, target=target, bar_time=bar_time,
                            spread_points=spread_points, spec=spec)
        p = model.p_win(values)
        cost = cost_r(entry=entry, stop=stop, spread_points=spread_points, spec=spec, commission_per_lot=self.commission_per_lot)
        return p, expected_r_net(p, reward_r=values["reward_r"], cost=cost)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "commission_per_lot": self.commission_per_lot, "meta": self.meta or {},
                "models": [{"strategy": s, "symbol": sym, **m.as_dict()} for (s, sym), m in sorted(self.models.items())]}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Calibration:
        if not isinstance(doc, Mapping) or doc.get("format") != FORMAT:
            raise CalibrationError(f"not a calibration file (format must be {FORMAT!r})")
        version = doc.get("version")
        if isinstance(version, bool) or version not in READS:
            raise CalibrationError(f"calibration version {version!r}; this engine reads versions "
                                   f"{', '.join(map(str, READS))} (recalibrate with `scalper calibrate`)")
        try:
            models = {(m["strategy"], m["symbol"]): Model.from_dict(m) for m in doc["models"]}
        except (KeyError, TypeError, ValueError) as exc:
            raise CalibrationError(f"bad model in the calibration file: {exc}") from None
        if version == 1 and any(m.offset is not None for m in models.values()):
            raise CalibrationError("a version 1 calibration cannot carry an offset (version 2 introduced it)")
        return cls(models, float(doc.get("commission_per_lot", 0.0)), dict(doc.get("meta") or {}))


def load(path: str | Path) -> Calibration:
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as exc:
        raise CalibrationError(f"cannot read calibration {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise CalibrationError(f"calibration {path} is not JSON: {exc}") from None
    return Calibration.from_json(doc)
