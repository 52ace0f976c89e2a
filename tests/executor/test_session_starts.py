"""An account whose MT5 session will not open (a wrong password, a terminal that is down): the executor starts anyway,
serves and watches its other accounts, names the failing one in readiness and tries it again later, each wait twice
the one before; a fixed password is picked up at the next try, and a deactivated account is tried no more.

The brokers are the real MT5 adapter over the MT5 simulator (in process)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from types import SimpleNamespace

import pytest

from services.executor.brokers.mt5 import MT5Broker
from services.executor.service import ExecutorService
from services.executor.starting import LONGEST_WAIT, SessionStarts
from shared.bus import topology
from shared.http import without_account_data
from shared.timeutil import ManualClock
from tests.executor.fakes import RecordingBus, settings
from tests.helpers import eventually
from tests.mt5sim.simdata import START, make_sim

GOOD, BAD = 1, 2
SCAN_S = 45.0


def sim_with_password(password: str):
    return make_sim(login=5_000_000, password=password)


def mt5(sim, clock, password: str) -> MT5Broker:
    return MT5Broker(connect=lambda: sim, clock=clock, server_time="us_dst", symbol_suffix="m", login=5_000_000,
                     password=password, reconnect_attempts=1, reconnect_max_wait_s=0.01)


class Source:
    """The accounts table as the executor sees it: active accounts, and a broker built from each one's row."""

    def __init__(self, clock) -> None:
        self.clock = clock
        self.sims = {GOOD: sim_with_password("good"), BAD: sim_with_password("right")}
        self.passwords = {GOOD: "good", BAD: "wrong"}
        self.active = {GOOD, BAD}
        self.built: list[int] = []
        self.brokers: list[MT5Broker] = []

    async def active_accounts(self):
        return [SimpleNamespace(id=a) for a in sorted(self.active)]

    async def broker_for(self, account) -> MT5Broker:
        self.built.append(account.id)
        broker = mt5(self.sims[account.id], self.clock, self.passwords[account.id])
        self.brokers.append(broker)
        return broker


async def start(service) -> None:
    await service.start()
    await asyncio.sleep(0.05)  # its loops plan their first wake-up on the clock before the test moves it


async def not_open(service):
    _, details = await service.readiness()
    return next(iter(details.get("sessions_not_open", [])), None)


def consumed(bus: RecordingBus, account: int) -> bool:
    return topology.executor_orders_queue(account).name in bus.handlers


@pytest.fixture
def clock():
    return ManualClock(START + timedelta(minutes=100))


@pytest.fixture
async def rig(sessions, clock):
    source, bus = Source(clock), RecordingBus()
    service = ExecutorService(bus=bus, sessions=sessions, clock=clock, settings=settings(scan_interval_s=SCAN_S),
                              accounts=source)
    yield SimpleNamespace(source=source, bus=bus, service=service)
    await service.stop()


async def test_a_session_that_will_not_open_stops_neither_the_start_nor_the_other_account(rig):
    await rig.service.start()

    assert rig.service.accounts == [GOOD]
    assert consumed(rig.bus, GOOD) and not consumed(rig.bus, BAD)  # BAD's intents wait in its queue and expire there
    ready, details = await rig.service.readiness()
    assert not ready and details["broker"] is False
    [down] = details["sessions_not_open"]
    assert (down["accounts"], down["failures"], down["error"]) == ([BAD], 1, "BrokerUnavailable")
    public = str(without_account_data(details))  # what /readyz, open to anyone, answers
    assert "wrong" not in public and "5000000" not in public and "Authorization" not in public

    await rig.service.monitor_once()  # the good account is watched
    assert rig.service.state.stored_snapshots.keys() == {GOOD}


async def test_a_fixed_password_is_picked_up_at_the_next_try_after_a_growing_wait(rig, clock):
    await start(rig.service)  # its account loop tries BAD again as the clock moves
    assert rig.source.built == [GOOD, BAD]

    clock.advance(timedelta(seconds=SCAN_S - 1))
    await asyncio.sleep(0.2)
    assert rig.source.built == [GOOD, BAD]  # not yet due
    clock.advance(timedelta(seconds=1))
    await eventually(lambda: rig.source.built == [GOOD, BAD, BAD], what="BAD built anew")
    down = await eventually(lambda: not_open(rig.service), what="the second failure recorded")
    assert down["failures"] == 2 and down["retry_at"] == (clock.now() + timedelta(seconds=2 * SCAN_S)).isoformat()

    rig.source.passwords[BAD] = "right"  # the trader fixes the password
    clock.advance(timedelta(seconds=2 * SCAN_S))
    await eventually(lambda: rig.service.accounts == [GOOD, BAD] and consumed(rig.bus, BAD), what="BAD served")
    ready, details = await rig.service.readiness()
    assert ready and "sessions_not_open" not in details
    assert rig.source.built == [GOOD, BAD, BAD, BAD]


async def test_a_deactivated_account_is_tried_no_more(rig, clock):
    await start(rig.service)
    rig.source.active.discard(BAD)
    clock.advance(timedelta(seconds=SCAN_S))
    await eventually(lambda: not rig.service._starts, what="BAD forgotten")
    clock.advance(LONGEST_WAIT)
    await asyncio.sleep(0.2)
    assert rig.source.built == [GOOD, BAD]
    assert rig.source.brokers[1].health.connected is False
    ready, details = await rig.service.readiness()
    assert ready and "sessions_not_open" not in details


async def test_without_an_account_source_the_same_broker_is_opened_again(sessions, clock):
    good_sim, bad_sim = sim_with_password("good"), sim_with_password("right")
    bad = mt5(bad_sim, clock, "right")
    bad_sim.terminal.link_up = False  # the terminal is down when the executor starts
    bus = RecordingBus()
    service = ExecutorService(bus=bus, sessions=sessions, clock=clock, settings=settings(scan_interval_s=SCAN_S),
                              broker={GOOD: mt5(good_sim, clock, "good"), BAD: bad}, account_ids=[GOOD, BAD])
    try:
        await start(service)
        assert service.accounts == [GOOD]
        bad_sim.terminal.link_up = True
        clock.advance(timedelta(seconds=SCAN_S))
        await eventually(lambda: service.accounts == [GOOD, BAD] and consumed(bus, BAD), what="BAD served")
        assert service.state.brokers[BAD] is bad
    finally:
        await service.stop()


def test_each_wait_is_twice_the_one_before_up_to_the_longest_and_an_opened_session_starts_over():
    starts, now, error = SessionStarts(first=timedelta(seconds=45)), START, RuntimeError("down")
    waits = []
    for _ in range(8):
        entry = starts.failed((BAD,), None, error, now)
        waits.append((entry.retry_at - now).total_seconds())
        assert starts.due(now) == [] and starts.due(entry.retry_at) == [entry]
        assert not starts  # taken out while it is tried
        now = entry.retry_at
    assert waits == [45, 90, 180, 360, 720, 900, 900, 900]
    starts.started((BAD,))
    assert (starts.failed((BAD,), None, error, now).retry_at - now).total_seconds() == 45
