"""A strategy's invalidation as an early exit: the one rule the executor's position monitor and the backtester share.

A strategy that defines `invalidation` (StrategyDef) says, per closed bar, whether an open trade's setup still holds;
where it no longer does, the position closes at the next price (the executor: its monitor cycle after the bar; the
backtester: the next bar's open, as for the time stop). Both call `invalid_mask` on closed M1 bars.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from shared.bars import Bars
from shared.messages import StrategyExit
from shared.strategies.base import EvalContext
from shared.strategies.catalog import CATALOG, Catalog
from shared.symbols import SymbolSpec


def has_invalidation(strategy: str, catalog: Catalog = CATALOG) -> bool:
    return strategy in catalog and catalog.get(strategy).invalidation is not None


def strategy_exit(strategy: str, params: Mapping[str, Any] | None, features: Mapping[str, Any],
                  catalog: Catalog = CATALOG) -> StrategyExit | None:
    """What an OrderIntent carries for the executor's early exit, or None for a strategy without an invalidation."""
    if not has_invalidation(strategy, catalog):
        return None
    return StrategyExit(strategy=strategy, params=dict(params or {}), features=dict(features))


def invalid_mask(
    strategy: str, bars: Bars, *, params: Mapping[str, Any] | None, features: Mapping[str, Any], ctx: EvalContext,
    catalog: Catalog = CATALOG,
) -> np.ndarray | None:
    """Per bar of `bars`, True where the setup of a `strategy` signal with these features is invalid at that bar's
    close; None for a strategy without an invalidation rule. Raises InvalidParams / KeyError as the catalog does."""
    definition = catalog.get(strategy)
    if definition.invalidation is None:
        return None
    model = catalog.parse_params(strategy, params)
    return np.asarray(definition.invalidation(bars, ctx, model, features), dtype=bool)


def invalid_now(
    strategy: str, bars: Bars, *, params: Mapping[str, Any] | None, features: Mapping[str, Any], spec: SymbolSpec,
    opened_bar: int, catalog: Catalog = CATALOG,
) -> bool:
    """The executor's question: is the setup invalid at the close of the window's newest bar? Only a bar that opened
    at or after `opened_bar` (epoch seconds, the minute the position opened) counts: the signal bar itself closed
    inside the setup by definition, and a window older than the position says nothing about it."""
    if len(bars) == 0 or int(bars.time[-1]) < opened_bar:
        return False
    mask = invalid_mask(strategy, bars, params=params, features=features, ctx=EvalContext(spec=spec), catalog=catalog)
    return bool(mask is not None and mask[-1])


def first_invalid(mask: np.ndarray | None, start: int) -> int | None:
    """The backtester's question: the first bar from `start` on at whose close the setup is invalid, or None."""
    if mask is None or start >= len(mask):
        return None
    hits = np.flatnonzero(mask[start:])
    return int(hits[0]) + start if len(hits) else None
