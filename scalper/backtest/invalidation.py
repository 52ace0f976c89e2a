"""The strategies' invalidation exits over a whole history (shared/strategies/invalidation.py, the executor's rule):
for a signal, the first bar from its trade's entry at whose close the setup no longer holds."""

from __future__ import annotations

from typing import Any

from shared.bars import Bars
from shared.messages import StrategyConfig
from shared.strategies.base import EvalContext, WindowCache
from shared.strategies.catalog import CATALOG, Catalog
from shared.strategies.invalidation import first_invalid, invalid_mask
from shared.symbols import SymbolSpec


class Invalidations:
    """One per backtest: the indicators the rules need are computed once over the history (the cache), as the live
    window computes them on its lookback (they agree there: the strategies' declared lookbacks)."""

    def __init__(self, bars: Bars, spec: SymbolSpec, strategies: tuple[StrategyConfig, ...], *, enabled: bool = True,
                 catalog: Catalog = CATALOG) -> None:
        self._bars, self._catalog, self._enabled = bars, catalog, enabled
        self._ctx = EvalContext(spec=spec, cache=WindowCache(bars))
        self._params = {c.name: c.params for c in strategies}

    def first(self, strategy: str, features: dict[str, Any], entry_index: int) -> int | None:
        """The bar (index >= entry_index) at whose close the trade exits early, or None (no rule, or never invalid)."""
        if not self._enabled or strategy not in self._catalog or self._catalog.get(strategy).invalidation is None:
            return None
        mask = invalid_mask(strategy, self._bars, params=self._params.get(strategy), features=features, ctx=self._ctx,
                            catalog=self._catalog)
        return first_invalid(mask, entry_index)
