"""Helpers of the market-data tests: hand-made bars, a feed over them, a bus that records what is published."""

from __future__ import annotations

from datetime import datetime

import numpy as np

from shared.bars import Bars
from shared.messages import PlanSymbol, ScanPlan, StrategyConfig, Subscription
from shared.settings import Settings
from shared.symbols import UnknownSymbol
from shared.timeutil import to_epoch


def make_bars(start: datetime, n: int, *, price: float = 100.0, seed: int = 1) -> Bars:
    """`n` sound consecutive M1 bars from `start` (a small random walk)."""
    rng = np.random.default_rng(seed)
    close = price + np.cumsum(rng.normal(0, 0.1, n))
    open_ = np.concatenate(([price], close[:-1]))
    high = np.maximum(open_, close) + rng.uniform(0, 0.1, n)
    low = np.minimum(open_, close) - rng.uniform(0, 0.1, n)
    return Bars.from_columns(
        time=to_epoch(start) + 60 * np.arange(n), open=open_, high=high, low=low, close=close,
        tick_volume=np.full(n, 10), spread=np.full(n, 12),
    )


class ListFeed:
    """A feed over bars held in memory; tests append bars and switch the market open or closed."""

    name = "list"
    server_time = "utc"

    def __init__(self, symbol: str, bars: Bars, *, open_: bool = True) -> None:
        self.symbol = symbol
        self.bars = bars
        self.open = open_

    def symbols(self) -> list[str]:
        return [self.symbol]

    def closed_bars(self, symbol: str, *, until: datetime, count: int) -> Bars:
        if symbol != self.symbol:
            raise UnknownSymbol(symbol)
        k = int(np.searchsorted(self.bars.time, to_epoch(until) - 60, side="right"))
        return self.bars[max(0, k - count):k]

    def market_open(self, symbol: str, at: datetime) -> bool:
        return self.open

    def start_time(self) -> datetime:
        raise NotImplementedError


class RecordingBus:
    """Records publishes; keeps the handler of each consumed queue so a test can deliver to it."""

    def __init__(self) -> None:
        self.published: list[tuple[object, str, str]] = []
        self.handlers: dict[str, object] = {}

    async def start(self) -> None: ...

    async def publish(self, message, *, exchange: str, routing_key: str = "", headers=None) -> None:
        self.published.append((message, exchange, routing_key))

    async def consume(self, spec, handler, *, prefetch=None):
        self.handlers[spec.name] = handler
        bus = self

        class _Consumer:
            async def cancel(self) -> None:
                bus.handlers.pop(spec.name, None)

        return _Consumer()


def settings(**overrides) -> Settings:
    values = {"scan_mode": "interval", "scan_interval_s": 45.0, "stale_after_min": 5.0, "lookback_bars": 100}
    return Settings(**(values | overrides))


def plan(*entries: tuple[str, int], bot_id: int = 1) -> ScanPlan:
    return ScanPlan(
        symbols=tuple(
            PlanSymbol(
                symbol=symbol,
                lookback=lookback,
                subscriptions=(Subscription(bot_id=bot_id, account_id=1, symbol=f"{symbol}m", strategies=(StrategyConfig(name="price_action_pinbar"),)),),
            )
            for symbol, lookback in entries
        )
    )
