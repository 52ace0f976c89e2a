"""A calibration artifact and its use at run time: numpy only (no scikit-learn, no pickle), so the strategy workers
and the backtester load a JSON file and get p_win and expected_r_net per signal.

The model per (strategy, symbol) is a logistic regression over standardised inputs: the strategy's score and its
components (`score_*` features), the reward multiple, the stop-to-spread ratio and the session of the bar (UTC).
Fitting is in fit.py (scikit-learn); this module only evaluates the fitted coefficients.
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
VERSION = 1
# Sessions by UTC hour: Asia, London, London/New York overlap, New York afternoon and the evening.
SESSIONS = (("asia", 0, 7), ("london", 7, 12), ("overlap", 12, 16), ("newyork", 16, 21), ("late", 21, 24))


class CalibrationError(ValueError):
    """A calibration file that cannot be used (wrong format or version, bad contents)."""


def session_of(at: datetime) -> str:
    hour = at.hour
    return next(name for name, a, b in SESSIONS if a <= hour < b)


def raw_inputs(*, score: float, features: Mapping[str, Any], entry: float, stop: float, target: float, bar_time: datetime,
               spread_points: float, spec: SymbolSpec) -> dict[str, float]:
    """The named inputs of one signal (what fit.py fits on and the model reads by name)."""
    risk = abs(entry - stop)
    spread = spec.points_to_price(spread_points) if spread_points > 0 else spec.point
    values = {"score": float(score), "reward_r": abs(target - entry) / risk if risk > 0 else 0.0,
              "stop_spreads": min(risk / spread, 100.0)}
    for key, value in features.items():
        if key.startswith("score_") and isinstance(value, (int, float)) and not isinstance(value, bool):
            values[key] = float(value)
    session = session_of(bar_time)
    for name, _, _ in SESSIONS:
        values[f"session_{name}"] = 1.0 if name == session else 0.0
    return values


@dataclass(frozen=True, slots=True)
class Model:
    """P(target before stop) = sigmoid(intercept + sum coef * (x - mean) / scale); an input the signal lacks is its mean."""

    inputs: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float

    def p_win(self, values: Mapping[str, float]) -> float:
        z = self.intercept
        for name, m, s, c in zip(self.inputs, self.mean, self.scale, self.coef, strict=True):
            z += c * ((values.get(name, m) - m) / s)
        return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"inputs": list(self.inputs), "mean": list(self.mean), "scale": list(self.scale), "coef": list(self.coef),
                "intercept": self.intercept}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Model:
        inputs = tuple(d["inputs"])
        parts = [tuple(float(v) for v in d[k]) for k in ("mean", "scale", "coef")]
        if any(len(p) != len(inputs) for p in parts) or any(s <= 0 for s in parts[1]):
            raise CalibrationError("a model's inputs, mean, scale and coef must be of one length, scales positive")
        return cls(inputs, *parts, float(d["intercept"]))


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
        if doc.get("version") != VERSION:
            raise CalibrationError(f"calibration version {doc.get('version')!r}; this engine reads version {VERSION}")
        try:
            models = {(m["strategy"], m["symbol"]): Model.from_dict(m) for m in doc["models"]}
        except (KeyError, TypeError, ValueError) as exc:
            raise CalibrationError(f"bad model in the calibration file: {exc}") from None
        return cls(models, float(doc.get("commission_per_lot", 0.0)), dict(doc.get("meta") or {}))


def load(path: str | Path) -> Calibration:
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as exc:
        raise CalibrationError(f"cannot read calibration {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise CalibrationError(f"calibration {path} is not JSON: {exc}") from None
    return Calibration.from_json(doc)
