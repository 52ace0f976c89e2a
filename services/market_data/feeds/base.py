"""The feed interface market data scans (synthetic, replay, MT5), and the weekend rule they share."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol, runtime_checkable

from shared.bars import Bars
from shared.messages import ScanPlan
from shared.timeutil import ensure_utc

BAR_SECONDS = 60


class Feed(Protocol):
    name: str
    server_time: str  # the broker's server-time rule, for broker days (levels): utc, us_dst or an hour offset

    def symbols(self) -> list[str]:
        """Canonical instruments this feed serves."""

    def closed_bars(self, symbol: str, *, until: datetime, count: int) -> Bars:
        """The last `count` bars whose close time (open time + 60 s) is <= `until`, oldest first.

        Raises `shared.symbols.UnknownSymbol` for a symbol the feed does not serve. (An MT5 feed, which asks the
        executor over the bus, may return an awaitable instead: the service awaits it.)
        """

    def market_open(self, symbol: str, at: datetime) -> bool:
        """Whether bars are expected at `at` (staleness is judged only then)."""

    def start_time(self) -> datetime:
        """Where an accelerated clock should start so the first scan already has a full window of history."""


@runtime_checkable
class PlanFollower(Protocol):
    """A feed that serves what the scan plan names (MT5: the plan's symbols, read through its accounts' sessions).

    Market data hands it every plan it keeps, before its next scan."""

    def update_plan(self, plan: ScanPlan) -> None: ...


def weekend_closed(at: datetime) -> bool:
    """FX and metals close Friday 21:00 UTC and reopen Sunday 22:00 UTC."""
    at = ensure_utc(at)
    weekday, minutes = at.weekday(), at.hour * 60 + at.minute
    return weekday == 5 or (weekday == 4 and minutes >= 21 * 60) or (weekday == 6 and minutes < 22 * 60)
