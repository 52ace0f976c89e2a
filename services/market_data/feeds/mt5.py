"""The MT5 feed: closed M1 bars read from an executor's MT5 session over the bus (the rates RPC, shared/rates.py).

The executor alone holds the terminal session, in both run modes; this feed only asks it. It serves what the scan
plan names, so market data hands it every plan it keeps (`update_plan`, the base.PlanFollower capability).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

import numpy as np

from services.market_data.feeds.base import BAR_SECONDS, weekend_closed
from shared.bars import Bars
from shared.bus.base import Bus
from shared.logging import get_logger
from shared.messages import ScanPlan
from shared.rates import RatesClient, RatesUnavailable
from shared.symbols import UnknownSymbol
from shared.timeutil import Clock, from_epoch, to_epoch

log = get_logger(__name__)

MAX_COUNT = 100_000  # RatesRequest.count's bound
AHEAD_WARNING_S = 2 * BAR_SECONDS  # bars closing this far past `until` mean the clock and the terminal disagree


class MT5Feed:
    """Closed M1 bars of the plan's symbols, read through the executors' MT5 sessions.

    Which session reads a symbol: the lowest account id among the plan's subscriptions to that symbol whose executor
    answers rates; on RatesUnavailable (no executor consumes that account's rates, as for a paper account; no answer
    within `timeout_s`; or an error answer) the next account in id order. An account that failed is asked after the
    others for the next `retry_after_s` seconds, so one executor that is down does not cost every scan a time-out.
    Each account is asked for the symbol as its subscription spells it (the bot's `XAUUSDm`): that is the broker's
    own name on that account, and the executor's MT5 adapter also resolves the canonical `XAUUSD`.

    Lifecycle: the reply queue is made on the first request (or `await feed.start()` once the bus has started);
    `await feed.close()` before the bus closes. Errors raise RatesUnavailable, which market data treats as any feed
    failure (the symbol's state `error`, and `stale` once no bar has closed for stale_after_min while it is open).
    """

    name = "mt5"

    def __init__(
        self,
        *,
        bus: Bus,
        clock: Clock,
        timeout_s: float = 10.0,
        server_time: str = "utc",
        on_terminal_time: Callable[[datetime], object] | None = None,
        retry_after_s: float = 60.0,
    ) -> None:
        """`server_time` is the accounts' broker server-time rule (utc, us_dst, +2, ...): bars arrive in UTC
        already, but the previous broker day's levels start at 00:00 server time. `on_terminal_time` is called with
        the terminal's time (UTC) that each reply carries, e.g. a TerminalClock's `observe`."""
        self.server_time = server_time
        self._clock = clock
        self._client = RatesClient(bus, timeout_s=timeout_s, on_terminal_time=on_terminal_time)
        self._retry_after_s = retry_after_s
        self._readers: dict[str, list[tuple[int, str]]] = {}  # canonical -> [(account id, its symbol)], by id
        self._failed_at: dict[int, float] = {}  # account id -> monotonic time of its last failure
        self._serving: dict[str, int] = {}  # canonical -> account whose session answered last
        self._warned_ahead: set[str] = set()

    async def start(self) -> None:
        await self._client.start()

    async def close(self) -> None:
        await self._client.close()

    def update_plan(self, plan: ScanPlan) -> None:
        readers: dict[str, list[tuple[int, str]]] = {}
        for entry in plan.symbols:
            by_account: dict[int, str] = {}
            for sub in entry.subscriptions:
                by_account.setdefault(sub.account_id, sub.symbol)
            readers[entry.symbol] = sorted(by_account.items())
        self._readers = readers

    def symbols(self) -> list[str]:
        return list(self._readers)

    def market_open(self, symbol: str, at: datetime) -> bool:
        return not weekend_closed(at)

    def start_time(self) -> datetime:
        return self._clock.now()

    def accounts_for(self, symbol: str) -> list[int]:
        """The accounts to ask for `symbol`, in the order they are asked now."""
        readers = self._readers.get(symbol)
        if readers is None:
            raise UnknownSymbol(f"the mt5 feed serves the plan's symbols ({', '.join(self._readers) or 'none yet'}), not {symbol!r}")
        now = time.monotonic()
        recent = {a for a, at in self._failed_at.items() if now - at < self._retry_after_s}
        return [a for a, _ in sorted(readers, key=lambda r: (r[0] in recent, r[0]))]

    async def closed_bars(self, symbol: str, *, until: datetime, count: int) -> Bars:
        order = self.accounts_for(symbol)
        names = dict(self._readers[symbol])
        if not order:
            raise RatesUnavailable(f"no account of the plan trades {symbol}: no session to read it from")
        failures: list[str] = []
        for account_id in order:
            try:
                bars = await self._client.fetch(account_id=account_id, symbol=names[account_id], count=min(count, MAX_COUNT))
            except RatesUnavailable as exc:
                self._failed_at[account_id] = time.monotonic()
                failures.append(f"account {account_id}: {exc}")
                continue
            self._failed_at.pop(account_id, None)
            if self._serving.get(symbol) != account_id:
                log.info("mt5 feed reads symbol", symbol=symbol, account_id=account_id, tried=failures or None)
                self._serving[symbol] = account_id
            return self._closed_by(symbol, bars, until)
        self._serving.pop(symbol, None)
        raise RatesUnavailable(f"no executor served rates of {symbol}: {'; '.join(failures)}")

    def _closed_by(self, symbol: str, bars: Bars, until: datetime) -> Bars:
        """The bars closed by `until` (the terminal answers as of its own now, which may be a little ahead)."""
        if not len(bars):
            return bars
        limit = to_epoch(until) - BAR_SECONDS
        k = int(np.searchsorted(bars.time, limit, side="right"))
        if k < len(bars) and int(bars.time[-1]) - limit > AHEAD_WARNING_S and symbol not in self._warned_ahead:
            self._warned_ahead.add(symbol)
            log.warning("mt5 bars close after the clock's time: is the clock the terminal's, and the account's server "
                        "time rule right?", symbol=symbol, until=until.isoformat(), newest_bar_open=from_epoch(int(bars.time[-1])).isoformat())
        return bars[:k]
