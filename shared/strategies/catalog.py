"""The strategy registry: look strategies up, validate their parameters, size the scan's lookback, describe them.

Adding a strategy is one module with a `STRATEGY = StrategyDef(...)` and one line in `_STRATEGIES` below.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from shared.messages import StrategyConfig
from shared.strategies import doji_breakout, harami, pinbar, range_reversion, trend_pullback
from shared.strategies.base import StrategyDef

MIN_LOOKBACK = 100  # architecture.md, "Lookback": the scan never fetches fewer than 100 closed bars

_STRATEGIES: tuple[StrategyDef, ...] = (
    pinbar.STRATEGY,
    trend_pullback.STRATEGY,
    doji_breakout.STRATEGY,
    range_reversion.STRATEGY,
    harami.STRATEGY,
)

_PARAMS_CACHE_MAX = 4096


class InvalidParams(ValueError):
    """Parameters a strategy refuses; `errors` holds pydantic's error list (JSON-safe) for a 422 answer."""

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


def _freeze(value: Any) -> Any:
    """A hashable key for a JSON-like value that keeps 1, 1.0 and True apart (pydantic may treat them differently)."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return (type(value).__name__, value)


class Catalog:
    """A set of strategies by name. The module-level functions use the default catalog; tests build their own."""

    def __init__(self, strategies: Iterable[StrategyDef]) -> None:
        self._defs: dict[str, StrategyDef] = {}
        for strategy in strategies:
            if strategy.name in self._defs:
                raise ValueError(f"strategy {strategy.name!r} registered twice")
            self._defs[strategy.name] = strategy
        self._params: dict[tuple, BaseModel] = {}

    def get(self, name: str) -> StrategyDef:
        try:
            return self._defs[name]
        except KeyError:
            raise KeyError(f"unknown strategy {name!r}; known strategies: {', '.join(sorted(self._defs)) or 'none'}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._defs

    def names(self, engine: str | None = "scalper") -> list[str]:
        """Names of the strategies of one engine (`None`: every engine), sorted."""
        return sorted(name for name, d in self._defs.items() if engine is None or d.engine == engine)

    def parse_params(self, name: str, params: Mapping[str, Any] | None = None) -> BaseModel:
        """The validated, frozen parameter model (defaults filled in); cached, since every window asks again.

        Raises KeyError for an unknown strategy and InvalidParams for parameters its model refuses.
        """
        raw = params or {}
        key = (name, _freeze(raw))
        try:
            return self._params[key]
        except KeyError:
            pass
        except TypeError:  # an unhashable leaf (a dict inside a list...): validate without caching
            return self._validate(name, raw)
        model = self._validate(name, raw)
        if len(self._params) >= _PARAMS_CACHE_MAX:
            self._params.clear()
        self._params[key] = model
        return model

    def _validate(self, name: str, raw: Mapping[str, Any]) -> BaseModel:
        strategy = self.get(name)
        if not isinstance(raw, Mapping):
            raise InvalidParams(f"{name}: params must be an object, not {type(raw).__name__}")
        try:
            return strategy.Params.model_validate(dict(raw))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'params'}: {e['msg']}" for e in exc.errors())
            raise InvalidParams(f"{name}: {problems}", json.loads(exc.json(include_url=False))) from None

    def validate_params(self, name: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The full parameters (defaults filled in) as a plain dict; unknown fields are refused (InvalidParams)."""
        return self.parse_params(name, params).model_dump()

    def lookback(self, name: str, params: Mapping[str, Any] | None = None) -> int:
        strategy = self.get(name)
        return strategy.lookback(self.parse_params(name, params))

    def lookback_for(self, configs: Iterable[StrategyConfig], minimum: int = MIN_LOOKBACK) -> int:
        """Closed bars a scan must fetch: the largest lookback the configs declare, never below `minimum`.

        A config this catalog cannot judge (an unknown name from a newer catalog upstream, or parameters it refuses)
        does not stop the scan: it is skipped, or sized with its defaults, and the strategy worker reports it per bot.
        """
        needed = minimum
        for config in configs:
            if config.name not in self._defs:
                continue
            strategy = self._defs[config.name]
            try:
                params = self.parse_params(config.name, config.params)
            except InvalidParams:
                params = strategy.Params()
            needed = max(needed, strategy.lookback(params))
        return needed

    def describe(self) -> list[dict[str, Any]]:
        """What `GET /strategies` serves: name, engine, timeframe, lookback, summary, defaults and parameter schema."""
        out = []
        for name in sorted(self._defs):
            strategy = self._defs[name]
            defaults = strategy.Params()
            out.append(
                {
                    "name": name,
                    "engine": strategy.engine,
                    "timeframe": strategy.timeframe,
                    "lookback": strategy.lookback(defaults),
                    "summary": strategy.summary,
                    "defaults": defaults.model_dump(mode="json"),
                    "params_schema": strategy.Params.model_json_schema(),
                }
            )
        return out


CATALOG = Catalog(_STRATEGIES)


def get(name: str) -> StrategyDef:
    return CATALOG.get(name)


def names(engine: str | None = "scalper") -> list[str]:
    return CATALOG.names(engine)


def parse_params(name: str, params: Mapping[str, Any] | None = None) -> BaseModel:
    return CATALOG.parse_params(name, params)


def validate_params(name: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return CATALOG.validate_params(name, params)


def lookback_for(configs: Iterable[StrategyConfig], minimum: int = MIN_LOOKBACK) -> int:
    return CATALOG.lookback_for(configs, minimum)


def describe() -> list[dict[str, Any]]:
    return CATALOG.describe()
