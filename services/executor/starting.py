"""Broker sessions that would not open (a changed password, a terminal that is down, a live account not allowed):
kept out of service and tried again later, each wait twice the one before, so that one account neither stops the
executor's start nor keeps its other accounts' positions unwatched.

An account out of service has no consumer on its queues: its intents wait there and expire unsent (the intent's TTL),
its orders left in `sending` are settled once its session opens, and readiness says which account is down and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from services.executor.brokers.base import Broker

LONGEST_WAIT = timedelta(minutes=15)  # a person fixing a password should not wait long for the retry to see it


@dataclass(slots=True)
class Unstarted:
    accounts: tuple[int, ...]
    broker: Broker | None  # None when the broker could not even be built (e.g. its stored credentials)
    failures: int
    retry_at: datetime
    error: str  # the exception's type only: readiness is open to anyone, and MT5's messages name the login


class SessionStarts:
    """The accounts whose session failed to open, and when each is tried again (first after `first`, then doubling
    up to LONGEST_WAIT, until it opens)."""

    def __init__(self, *, first: timedelta) -> None:
        self._first = first
        self._waiting: dict[int, Unstarted] = {}
        self._failures: dict[int, int] = {}  # failures in a row, kept while an account is tried again

    def failed(self, accounts: tuple[int, ...], broker: Broker | None, error: BaseException, now: datetime) -> Unstarted:
        failures = 1 + max((self._failures.get(a, 0) for a in accounts), default=0)
        wait = min(self._first * 2 ** (failures - 1), LONGEST_WAIT)
        entry = Unstarted(accounts=accounts, broker=broker, failures=failures, retry_at=now + wait,
                          error=type(error).__name__)
        for a in accounts:
            self._waiting[a] = entry
            self._failures[a] = failures
        return entry

    def due(self, now: datetime) -> list[Unstarted]:
        """The entries whose wait is over, each once, taken out to be tried (a failure is recorded anew)."""
        due = list({id(e): e for e in self._waiting.values() if e.retry_at <= now}.values())
        for entry in due:
            for a in entry.accounts:
                del self._waiting[a]
        return due

    def started(self, accounts) -> None:
        for a in accounts:
            self._waiting.pop(a, None)
            self._failures.pop(a, None)

    def forget(self, accounts) -> list[Broker]:
        """Try these accounts no more (deactivated); the brokers no other waiting account shares, to be closed."""
        dropped = {id(e): e for a in accounts if (e := self._waiting.get(a)) is not None}
        self.started(accounts)
        kept = {id(e) for e in self._waiting.values()}
        return [e.broker for key, e in dropped.items() if key not in kept and e.broker is not None]

    def waiting(self) -> set[int]:
        return set(self._waiting)

    def brokers(self) -> list[Broker]:
        return list({id(e.broker): e.broker for e in self._waiting.values() if e.broker is not None}.values())

    def details(self) -> list[dict]:
        entries = {id(e): e for e in self._waiting.values()}.values()
        return [{"accounts": list(e.accounts), "failures": e.failures, "retry_at": e.retry_at.isoformat(), "error": e.error}
                for e in entries]

    def __bool__(self) -> bool:
        return bool(self._waiting)
