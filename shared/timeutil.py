"""UTC time helpers and the injectable clock: live code asks a clock, never `datetime.now()`."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Protocol

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def utcnow() -> datetime:
    return datetime.now(UTC)


def ensure_utc(value: datetime) -> datetime:
    """Return `value` as an aware UTC datetime; a naive one is refused (inside, every time is aware)."""
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: every time inside is timezone-aware UTC")
    return value.astimezone(UTC)


def to_epoch(value: datetime) -> int:
    return int(ensure_utc(value).timestamp())


def from_epoch(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def floor_minute(value: datetime) -> datetime:
    return ensure_utc(value).replace(second=0, microsecond=0)


def nth_sunday(year: int, month: int, n: int) -> date:
    first = date(year, month, 1)
    first_sunday = first + timedelta(days=(6 - first.weekday()) % 7)
    return first_sunday + timedelta(weeks=n - 1)


def server_offset(rule: str, at_utc: datetime) -> timedelta:
    """UTC offset of a broker's server clock at `at_utc`.

    `rule` is `utc`, a fixed offset in hours (`+2`, `-5`, `3`), or `us_dst`: UTC+2 in winter and UTC+3 from
    the second Sunday of March to the first Sunday of November, as most MT5 brokers run (the switch is taken
    at 02:00 New York time, i.e. 07:00 UTC in March and 06:00 UTC in November).
    """
    rule = rule.strip().lower()
    if rule in ("", "utc", "0"):
        return timedelta(0)
    if rule == "us_dst":
        at = ensure_utc(at_utc)
        start = datetime.combine(nth_sunday(at.year, 3, 2), datetime.min.time(), UTC) + timedelta(hours=7)
        end = datetime.combine(nth_sunday(at.year, 11, 1), datetime.min.time(), UTC) + timedelta(hours=6)
        return timedelta(hours=3) if start <= at < end else timedelta(hours=2)
    try:
        return timedelta(hours=float(rule))
    except ValueError:
        raise ValueError(f"unknown server time rule {rule!r}: use utc, us_dst or an hour offset like +2") from None


def server_to_utc(rule: str, server_wall: datetime) -> datetime:
    """Convert a broker wall-clock time (naive, or epoch read as if UTC) to aware UTC."""
    naive = server_wall.replace(tzinfo=UTC)
    guess = naive - server_offset(rule, naive)
    return naive - server_offset(rule, guess)


def broker_day_start(rule: str, at_utc: datetime) -> datetime:
    """UTC instant at which the broker day containing `at_utc` began (00:00 server time)."""
    at = ensure_utc(at_utc)
    wall = at + server_offset(rule, at)
    midnight_wall = wall.replace(hour=0, minute=0, second=0, microsecond=0)
    return server_to_utc(rule, midnight_wall.replace(tzinfo=None))


class Clock(Protocol):
    """What every live component asks for the time; tests and replays inject a simulated one."""

    @property
    def speed(self) -> float:
        """Simulated seconds per real second (1.0 for the wall clock): real-time budgets are scaled by it."""

    def now(self) -> datetime: ...

    async def sleep_until(self, when: datetime) -> None: ...


class SystemClock:
    speed = 1.0

    def now(self) -> datetime:
        return utcnow()

    async def sleep_until(self, when: datetime) -> None:
        delay = (ensure_utc(when) - utcnow()).total_seconds()
        if delay > 0:
            await asyncio.sleep(delay)


class AcceleratedClock:
    """Simulated time that starts at `start` and runs `speed` times faster than the wall clock."""

    def __init__(self, start: datetime, speed: float = 1.0) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self._start = ensure_utc(start)
        self._speed = speed
        self._t0 = time.monotonic()

    @property
    def speed(self) -> float:
        return self._speed

    def now(self) -> datetime:
        return self._start + timedelta(seconds=(time.monotonic() - self._t0) * self._speed)

    async def sleep_until(self, when: datetime) -> None:
        delay = (ensure_utc(when) - self.now()).total_seconds() / self._speed
        if delay > 0:
            await asyncio.sleep(delay)


class ManualClock:
    """A clock that moves only when told: for tests and the backtester."""

    speed = 1.0  # time moves only when told; a real-time budget counts as is

    def __init__(self, start: datetime) -> None:
        self._now = ensure_utc(start)
        self._moved = asyncio.Event()

    def now(self) -> datetime:
        return self._now

    def set(self, when: datetime) -> None:
        self._now = ensure_utc(when)
        self._moved.set()

    def advance(self, delta: timedelta) -> None:
        self.set(self._now + delta)

    async def sleep_until(self, when: datetime) -> None:
        while self._now < ensure_utc(when):
            self._moved.clear()
            await self._moved.wait()


class TerminalClock:
    """The broker terminal's time, in UTC: extrapolated from its last observed value with the monotonic clock.

    `observe(terminal_now_utc)` re-anchors it (the MT5 feed calls it with the `server_time` a rates reply carries).
    Between observations it runs `speed` times the monotonic clock (1.0 for a real terminal, more for a simulator).

    It never goes backwards. An observation up to `max_hold_s` behind the time already shown re-anchors and holds the
    clock still until the new anchor catches up, rather than making a scan or a sleeper see time run back. One further
    behind is taken for a stale reading and ignored: a terminal's newest tick time stops while its market is closed
    or quiet, and holding still for a weekend would stop the scans. The exception is the first observation of a clock
    made without `start` (which then starts from the system's UTC time, a guess): it anchors even backwards, so
    observe once before anything sleeps on such a clock. Safe to observe from any thread.
    """

    def __init__(self, speed: float = 1.0, start: datetime | None = None, *, max_hold_s: float = 5.0, max_sleep_s: float = 0.5) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        if max_sleep_s <= 0 or max_hold_s < 0:
            raise ValueError("max_sleep_s must be positive and max_hold_s not negative")
        self._speed = speed
        self._max_hold = timedelta(seconds=max_hold_s)
        self._max_sleep_s = max_sleep_s
        self._lock = threading.Lock()
        self._anchor = ensure_utc(start) if start is not None else utcnow()
        self._anchor_mono = time.monotonic()
        self._shown = self._anchor  # the latest time now() returned: the floor of every later answer
        self._guessing = start is None  # no time known yet: the first observation anchors whatever it says
        self._set_backs = 0  # how often the clock was set back (only the first observation of a guess may)
        self._observed_at: datetime | None = None
        self._ignored = 0
        self._wakers: set[asyncio.Future[None]] = set()

    @property
    def speed(self) -> float:
        return self._speed

    @property
    def observed_at(self) -> datetime | None:
        """The last terminal time observed (None before the first observation)."""
        return self._observed_at

    @property
    def ignored(self) -> int:
        """Observations ignored as stale (more than max_hold_s behind the clock)."""
        return self._ignored

    def now(self) -> datetime:
        with self._lock:
            return self._now_locked()

    def _now_locked(self) -> datetime:
        t = self._anchor + timedelta(seconds=(time.monotonic() - self._anchor_mono) * self._speed)
        if t > self._shown:
            self._shown = t
        return self._shown

    def observe(self, terminal_now_utc: datetime) -> timedelta:
        """Re-anchor at the terminal's current time; return the correction: positive, the clock jumped forward;
        negative down to -max_hold_s, it holds still that long; further back, the reading was ignored."""
        observed = ensure_utc(terminal_now_utc)
        wakers: set[asyncio.Future[None]] = set()
        with self._lock:
            correction = observed - self._now_locked()
            self._observed_at = observed
            if self._guessing or correction > timedelta(0):
                self._anchor, self._anchor_mono, self._shown = observed, time.monotonic(), observed
                wakers, self._wakers = self._wakers, set()
                if correction < timedelta(0):
                    self._set_backs += 1  # the guess was ahead: sleepers return and their callers plan again
            elif -correction <= self._max_hold:
                self._anchor, self._anchor_mono = observed, time.monotonic()
            else:
                self._ignored += 1
            self._guessing = False
        for waker in wakers:  # sleepers re-check at once (on their loop's thread)
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits any more
                waker.get_loop().call_soon_threadsafe(_wake, waker)
        return correction

    async def sleep_until(self, when: datetime) -> None:
        """Sleep until the clock shows `when`; wake early on a forward re-anchor, and at least every max_sleep_s
        real seconds to re-check (a terminal's time may move in ways no sleep computed up front foresees). Return at
        once when the clock is set back (a first reading behind the guess): `when` was planned on the wrong time, and
        the caller plans again from the new one."""
        when = ensure_utc(when)
        loop = asyncio.get_running_loop()
        set_backs = self._set_backs
        while True:
            remaining = (when - self.now()).total_seconds()
            if remaining <= 0 or self._set_backs != set_backs:
                return
            waker: asyncio.Future[None] = loop.create_future()
            with self._lock:
                self._wakers.add(waker)
            try:
                async with asyncio.timeout(min(remaining / self._speed, self._max_sleep_s)):
                    await waker
            except TimeoutError:
                pass
            finally:
                with self._lock:
                    self._wakers.discard(waker)


def _wake(waker: asyncio.Future[None]) -> None:
    if not waker.done():
        waker.set_result(None)


def terminal_observer(clock: Clock) -> Callable[[datetime], object] | None:
    """What tells `clock` the time a terminal showed: a TerminalClock's `observe`; None for the clocks that follow none."""
    return clock.observe if isinstance(clock, TerminalClock) else None
