"""The strategies' invalidation exits over a whole history (shared/strategies/invalidation.py, the executor's rule):
for a signal, the first bar from its trade's entry at whose close the setup no longer holds.

A rule is a function of a bar and the history's indicators at that bar (range_reversion: ADX above a limit, or the
close outside the signal's channel), so the first invalid bar after an entry is found by asking the rule of short
stretches of the history from the entry on, with the history's own indicator arrays served to it sliced: the same
values, bar by bar, as asking it of the whole history, without comparing every bar of the year for every trade.
Only rules known to be bar by bar (ELEMENTWISE) are asked so; any other is asked of the whole history.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shared.bars import Bars
from shared.messages import StrategyConfig
from shared.strategies import range_reversion
from shared.strategies.base import EvalContext, WindowCache
from shared.strategies.catalog import CATALOG, Catalog
from shared.strategies.invalidation import first_invalid, invalid_mask
from shared.symbols import SymbolSpec

# Rules whose value at a bar depends on that bar's prices and the indicators they read through the context's cache
# only (no rolling window of their own): keyed by the function, so a changed rule is asked of the whole history.
ELEMENTWISE = frozenset({range_reversion.invalidation})
_FIRST_STRETCH = 256  # bars; each further stretch is 4x longer (most setups break within a few hundred bars)


class _Unsliced(LookupError):
    """A rule asked for an indicator the history's cache does not hold yet: it cannot be served sliced."""


class _HistorySlice:
    """The cache a stretch bars[a:b] of the history is judged with: an indicator the rule reads is the history's own
    array (computed on the whole history, as the first whole-history ask left it in `full`), sliced to a:b."""

    __slots__ = ("_full", "_history", "_view", "_a", "_b")

    def __init__(self, full: WindowCache, history: Bars, view: Bars, a: int, b: int) -> None:
        self._full, self._history, self._view, self._a, self._b = full, history, view, a, b

    def get(self, bars: Bars, key: tuple, compute: Any) -> Any:
        if bars is not self._view:
            return compute()
        value = self._full.get(self._history, key, _missing)
        return value[self._a : self._b]


def _missing() -> Any:
    raise _Unsliced


class Invalidations:
    """One per backtest: the indicators the rules need are computed once over the history (the cache), as the live
    window computes them on its lookback (they agree there: the strategies' declared lookbacks)."""

    def __init__(self, bars: Bars, spec: SymbolSpec, strategies: tuple[StrategyConfig, ...], *, enabled: bool = True,
                 catalog: Catalog = CATALOG) -> None:
        self._bars, self._catalog, self._enabled, self._spec = bars, catalog, enabled, spec
        self._cache = WindowCache(bars)
        self._ctx = EvalContext(spec=spec, cache=self._cache)
        self._params = {c.name: c.params for c in strategies}
        self._warm: set[str] = set()  # strategies whose indicators the history's cache holds

    def first(self, strategy: str, features: dict[str, Any], entry_index: int) -> int | None:
        """The bar (index >= entry_index) at whose close the trade exits early, or None (no rule, or never invalid)."""
        if not self._enabled or strategy not in self._catalog:
            return None
        rule = self._catalog.get(strategy).invalidation
        if rule is None:
            return None
        if rule in ELEMENTWISE and strategy in self._warm:
            try:
                return self._first_by_stretches(rule, strategy, features, entry_index)
            except _Unsliced:
                pass
        mask = invalid_mask(strategy, self._bars, params=self._params.get(strategy), features=features, ctx=self._ctx,
                            catalog=self._catalog)
        self._warm.add(strategy)
        return first_invalid(mask, entry_index)

    def _first_by_stretches(self, rule: Any, strategy: str, features: dict[str, Any], start: int) -> int | None:
        params = self._catalog.parse_params(strategy, self._params.get(strategy))
        n, k, size = len(self._bars), start, _FIRST_STRETCH
        while k < n:
            stop = min(n, k + size)
            view = self._bars[k:stop]
            ctx = EvalContext(spec=self._spec, cache=_HistorySlice(self._cache, self._bars, view, k, stop))
            hits = np.flatnonzero(np.asarray(rule(view, ctx, params, features), dtype=bool))
            if len(hits):
                return k + int(hits[0])
            k, size = stop, size * 4
        return None
