"""TerminalClock: follows the terminal's observed time, runs at `speed` between observations, never goes backwards,
and wakes its sleepers when an observation moves it forward."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from shared import timeutil
from shared.timeutil import TerminalClock

T = datetime(2025, 3, 12, 10, 0, tzinfo=UTC)


class FakeMonotonic:
    """Stands in for the `time` module inside shared.timeutil only (the event loop keeps the real one)."""

    def __init__(self) -> None:
        self.value = 1000.0

    def monotonic(self) -> float:
        return self.value

    def advance(self, seconds: float) -> None:
        self.value += seconds


@pytest.fixture
def mono(monkeypatch) -> FakeMonotonic:
    fake = FakeMonotonic()
    monkeypatch.setattr(timeutil, "time", fake)
    return fake


def test_runs_at_speed_from_its_start(mono):
    clock = TerminalClock(speed=60.0, start=T)
    assert clock.speed == 60.0 and clock.now() == T and clock.observed_at is None
    mono.advance(2.0)
    assert clock.now() == T + timedelta(minutes=2)


def test_without_a_start_it_starts_at_the_system_time(mono):
    before = datetime.now(UTC)
    clock = TerminalClock()
    assert before <= clock.now() <= datetime.now(UTC)


def test_observe_reanchors_forward_and_extrapolates_from_there(mono):
    clock = TerminalClock(speed=1.0, start=T)
    mono.advance(5.0)
    correction = clock.observe(T + timedelta(hours=1))
    assert correction == timedelta(hours=1) - timedelta(seconds=5)
    assert clock.now() == T + timedelta(hours=1) and clock.observed_at == T + timedelta(hours=1)
    mono.advance(1.5)
    assert clock.now() == T + timedelta(hours=1, seconds=1.5)


def test_a_backwards_correction_holds_time_still_instead_of_jumping_back(mono):
    clock = TerminalClock(speed=1.0, start=T, max_hold_s=10.0)
    mono.advance(10.0)
    assert clock.now() == T + timedelta(seconds=10)
    correction = clock.observe(T + timedelta(seconds=4))  # the terminal says we ran 6 s ahead
    assert correction == -timedelta(seconds=6)
    assert clock.now() == T + timedelta(seconds=10)  # held, not back to :04
    mono.advance(5.0)
    assert clock.now() == T + timedelta(seconds=10)  # the anchor (:04 + 5 s = :09) has not caught up yet
    mono.advance(3.0)
    assert clock.now() == T + timedelta(seconds=12)  # from the new anchor, at speed 1


def test_a_reading_far_behind_is_stale_and_ignored(mono):
    """A terminal's newest tick time stops over a weekend: the clock keeps running instead of holding for days."""
    clock = TerminalClock(speed=1.0, start=T, max_hold_s=5.0)
    mono.advance(3600.0)
    friday_close = T + timedelta(seconds=60)
    assert clock.observe(friday_close) == -timedelta(seconds=3540)
    assert clock.ignored == 1 and clock.observed_at == friday_close
    mono.advance(2.0)
    assert clock.now() == T + timedelta(seconds=3602)  # still running from its own anchor
    assert clock.observe(T + timedelta(seconds=3600)) == -timedelta(seconds=2)  # within the hold: taken
    assert clock.ignored == 1 and clock.now() == T + timedelta(seconds=3602)


def test_the_first_observation_of_a_clock_without_start_anchors_even_backwards(mono):
    """Without `start` the clock guesses the system time; a simulator's terminal may live in another year."""
    clock = TerminalClock(speed=60.0)
    assert clock.observe(T) < -timedelta(days=1)
    assert clock.now() == T and clock.ignored == 0
    mono.advance(1.0)
    assert clock.now() == T + timedelta(minutes=1)
    clock.observe(T - timedelta(days=1))  # after the first, the rule holds: never backwards
    assert clock.now() == T + timedelta(minutes=1) and clock.ignored == 1


def test_never_goes_backwards_whatever_it_observes(mono):
    rng = random.Random(5)
    clock = TerminalClock(speed=3.0, start=T)
    shown = clock.now()
    for _ in range(2000):
        if rng.random() < 0.3:
            clock.observe(clock.now() + timedelta(seconds=rng.uniform(-30, 30)))
        mono.advance(rng.uniform(0, 0.5))
        now = clock.now()
        assert now >= shown
        shown = now


def test_refuses_bad_arguments():
    with pytest.raises(ValueError, match="speed"):
        TerminalClock(speed=0)
    with pytest.raises(ValueError, match="naive"):
        TerminalClock(start=datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="naive"):
        TerminalClock().observe(datetime(2025, 1, 1))


async def test_sleep_until_wakes_when_the_time_comes():
    clock = TerminalClock(speed=600.0, start=T)
    started = time.monotonic()
    await clock.sleep_until(T + timedelta(seconds=30))  # 0.05 s real at speed 600
    assert clock.now() >= T + timedelta(seconds=30)
    assert time.monotonic() - started < 2.0
    await clock.sleep_until(T)  # in the past: at once


async def test_sleep_until_wakes_at_once_when_an_observation_moves_the_clock_past_it():
    clock = TerminalClock(speed=1.0, start=T, max_sleep_s=30.0)  # no periodic re-check to help
    sleeper = asyncio.create_task(clock.sleep_until(T + timedelta(hours=1)))
    await asyncio.sleep(0.05)
    assert not sleeper.done()
    clock.observe(T + timedelta(minutes=30))  # forward, but not far enough
    await asyncio.sleep(0.05)
    assert not sleeper.done()
    started = time.monotonic()
    clock.observe(T + timedelta(hours=1, seconds=1))
    async with asyncio.timeout(2):
        await sleeper
    assert time.monotonic() - started < 0.5


async def test_an_observation_from_another_thread_wakes_the_sleeper():
    clock = TerminalClock(speed=1.0, start=T, max_sleep_s=30.0)
    sleeper = asyncio.create_task(clock.sleep_until(T + timedelta(hours=1)))
    await asyncio.sleep(0.05)
    thread = threading.Thread(target=clock.observe, args=(T + timedelta(hours=2),))
    thread.start()
    async with asyncio.timeout(2):
        await sleeper
    thread.join()
    assert clock.now() >= T + timedelta(hours=2)


async def test_sleep_until_rechecks_at_least_every_max_sleep_s():
    """A sleeper computed its wait before the clock's anchor moved without a wake-up (here: the anchor is replaced
    behind the clock's back); the periodic re-check still ends the sleep in time."""
    clock = TerminalClock(speed=1.0, start=T, max_sleep_s=0.05)
    sleeper = asyncio.create_task(clock.sleep_until(T + timedelta(hours=1)))
    await asyncio.sleep(0.02)
    clock._anchor = T + timedelta(hours=2)  # noqa: SLF001  no observe(): nobody is woken
    async with asyncio.timeout(1):
        await sleeper


async def test_a_cancelled_sleeper_leaves_no_waker_behind():
    clock = TerminalClock(speed=1.0, start=T)
    sleeper = asyncio.create_task(clock.sleep_until(T + timedelta(hours=1)))
    await asyncio.sleep(0.02)
    sleeper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sleeper
    assert not clock._wakers  # noqa: SLF001


async def test_a_sleeper_returns_when_the_first_reading_sets_a_guessed_clock_back():
    """Planned on the machine's clock (the guess), a sleep until `now + 45 s` would otherwise last until the terminal's
    time, months behind, came round to it; it returns, and the caller plans again on the terminal's time."""
    clock = TerminalClock(speed=1.0)  # no start: a guess
    sleeper = asyncio.create_task(clock.sleep_until(clock.now() + timedelta(seconds=45)))
    await asyncio.sleep(0.05)
    assert not sleeper.done()
    clock.observe(datetime(2026, 4, 1, 17, 0, tzinfo=UTC))
    async with asyncio.timeout(1):
        await sleeper
    # From now on the clock only holds still or ignores readings behind it: sleepers are not cut short again.
    again = asyncio.create_task(clock.sleep_until(clock.now() + timedelta(seconds=0.3)))
    clock.observe(datetime(2026, 4, 1, 16, 0, tzinfo=UTC))
    await asyncio.sleep(0.1)
    assert not again.done()
    await again
