"""The executor's kill-switch block, lost close events, snapshot throttling and the position rules, on a real migrated
SQLite database; the MT5 part runs the MT5 adapter against the simulator (mt5sim), never a live terminal."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from services.executor.brokers.mt5 import MT5Broker
from services.executor.brokers.paper import PaperBroker
from services.executor.rules import PositionRules
from services.executor.service import ExecutorService
from shared.bus import topology
from shared.db.engine import transaction
from shared.db.models import AccountSnapshotRow, BotBlock, Order, Position
from shared.messages import AccountSnapshot, ExecutionReport, PositionEvent
from shared.timeutil import ManualClock
from tests.executor.fakes import ACCOUNT, BARS_Q, COMMANDS_Q, NOW, ORDERS_Q, CountingBroker, RecordingBus, command, intent, settings, window
from tests.executor.test_mt5_broker import SimClock
from tests.mt5sim.simdata import SYMBOL, flat, make_sim

PRICED = [(2000.0, 2001.0, 1999.0, 2000.0, 30)] * 3


class Rig:
    def __init__(self, sessions, *, paper=None, clock=None, rules: PositionRules | None = None, bus=None) -> None:
        self.clock = clock or ManualClock(NOW)
        self.paper = paper or PaperBroker(clock=self.clock, balance=10_000.0)
        self.broker = CountingBroker(self.paper)
        self.bus = bus or RecordingBus()
        self.sessions = sessions
        self.service = ExecutorService(bus=self.bus, sessions=sessions, clock=self.clock, settings=settings(), broker=self.broker,
                                       account_ids=[ACCOUNT], rules=rules or PositionRules(_env_file=None))

    async def priced(self, rows=PRICED, start=None) -> None:
        await self.bus.deliver(BARS_Q, window("XAUUSD", rows, **({"start": start} if start else {})))

    def reports(self):
        return self.bus.of(ExecutionReport, routing_key=topology.report_key(ACCOUNT))

    def events(self, kind=None):
        return [e for e in self.bus.of(PositionEvent) if kind is None or e.kind == kind]


@pytest.fixture
async def rig(sessions):
    r = Rig(sessions)
    await r.service.start()
    yield r
    await r.service.stop()


async def count(sessions, model, *where) -> int:
    async with sessions() as s:
        return (await s.execute(select(func.count()).select_from(model).where(*where))).scalar_one()


async def test_the_kill_switch_closes_the_bots_positions_and_refuses_its_orders_until_resumed_also_after_a_restart(sessions):
    rig = Rig(sessions)
    await rig.service.start()
    await rig.priced()
    await rig.bus.deliver(ORDERS_Q, intent(1, bot_id=7))
    await rig.bus.deliver(ORDERS_Q, intent(2, bot_id=7))
    await rig.bus.deliver(ORDERS_Q, intent(3, bot_id=8))
    await rig.bus.deliver(COMMANDS_Q, command("close_all", bot_id=7, reason="kill_switch"))

    closed = rig.events("closed")
    assert sorted((e.bot_id, e.close_reason) for e in closed) == [(7, "kill_switch"), (7, "kill_switch")]
    assert [p.comment for p in await rig.paper.positions()] == [intent(3, bot_id=8).client_order_id]
    calls = len(rig.broker.place_calls)
    await rig.bus.deliver(ORDERS_Q, intent(4, bot_id=7))
    assert len(rig.broker.place_calls) == calls  # never sent
    assert (rig.reports()[-1].status, rig.reports()[-1].reason) == ("rejected", "bot_killed")
    await rig.service.stop()

    # A new process: the block is in the table.
    again = Rig(sessions, paper=rig.paper, clock=rig.clock)
    await again.service.start()
    await again.bus.deliver(ORDERS_Q, intent(5, bot_id=7))
    assert again.broker.place_calls == [] and again.reports()[-1].reason == "bot_killed"
    await again.bus.deliver(ORDERS_Q, intent(6, bot_id=8))
    assert again.reports()[-1].status == "filled"  # another bot trades on

    await again.bus.deliver(COMMANDS_Q, command("resume_bot", bot_id=7))
    assert await count(sessions, BotBlock) == 0
    await again.bus.deliver(ORDERS_Q, intent(7, bot_id=7))
    assert again.reports()[-1].status == "filled"
    await again.service.stop()


async def test_a_close_event_lost_between_commit_and_publish_goes_out_after_a_restart(sessions):
    rig = Rig(sessions)
    await rig.service.start()
    await rig.priced()
    await rig.bus.deliver(ORDERS_Q, intent(1))
    rig.bus.fail_publishes = 10  # the bus is gone (or the process dies) right after the close is committed
    with pytest.raises(ConnectionError):
        await rig.bus.deliver(COMMANDS_Q, command("close_all", reason="manual"))
    assert await count(sessions, Position, Position.status == "closed", Position.close_event_sent.is_(False)) == 1
    assert rig.events("closed") == []
    rig.service.state.outbox.clear()  # the process died: its memory is gone
    await rig.service.stop()

    fresh = Rig(sessions, paper=rig.paper, clock=rig.clock)
    await fresh.service.start()
    [event] = fresh.events("closed")
    assert event.close_reason == "manual"
    assert await count(sessions, Position, Position.close_event_sent.is_(False)) == 0
    await fresh.service.monitor_once()
    assert len(fresh.events("closed")) == 1  # once
    await fresh.service.stop()


async def test_snapshots_are_published_every_cycle_and_stored_only_when_changed(rig):
    await rig.priced()
    await rig.service.monitor_once()
    published, stored = len(rig.bus.of(AccountSnapshot)), await count(rig.sessions, AccountSnapshotRow)
    for _ in range(5):
        await rig.service.monitor_once()
    assert len(rig.bus.of(AccountSnapshot)) == published + 5
    assert await count(rig.sessions, AccountSnapshotRow) == stored == 1
    await rig.bus.deliver(ORDERS_Q, intent(1))
    await rig.priced([(2000.0, 2001.0, 1999.0, 2002.0, 30)] * 4)  # the price moved: equity changed
    await rig.service.monitor_once()
    assert await count(rig.sessions, AccountSnapshotRow) == 2
    await rig.service.monitor_once()
    assert await count(rig.sessions, AccountSnapshotRow) == 2


async def test_the_monitor_trails_the_stop_and_a_stop_out_after_that_is_a_trail(sessions):
    rig = Rig(sessions, rules=PositionRules(_env_file=None, trail_mode="pips", trail_distance_pips=20))
    await rig.service.start()
    await rig.priced()
    await rig.bus.deliver(ORDERS_Q, intent(1, sl=1990.0, tp=2050.0))
    await rig.priced([(2000.0, 2006.0, 1999.0, 2005.0, 30)] * 4)
    await rig.service.monitor_once()
    [moved] = rig.events("stop_moved")
    assert moved.sl == 2003.0
    assert [p.sl for p in await rig.paper.positions()] == [2003.0]
    await rig.service.monitor_once()
    assert len(rig.events("stop_moved")) == 1  # no move without a new high
    # The price falls through the trailed stop.
    await rig.priced([(2005.0, 2005.0, 2000.0, 2001.0, 30)] * 5)
    [closed] = rig.events("closed")
    assert (closed.close_reason, closed.close_price) == ("trail", 2003.0)
    await rig.service.stop()


async def test_time_stop_and_opposite_signal_exits(sessions):
    rig = Rig(sessions, rules=PositionRules(_env_file=None, time_stop_min=30, exit_on_opposite_signal=True))
    await rig.service.start()
    await rig.priced()
    await rig.bus.deliver(ORDERS_Q, intent(1, side="buy"))
    await rig.bus.deliver(ORDERS_Q, intent(2, side="sell", sl=2010.0, tp=1990.0))
    [first] = rig.events("closed")
    assert first.close_reason == "early_exit"  # the opposite signal closed the long before the short was placed
    rig.clock.advance(timedelta(minutes=31))
    await rig.service.monitor_once()
    assert [e.close_reason for e in rig.events("closed")] == ["early_exit", "early_exit"]
    assert await rig.paper.positions() == []
    await rig.service.stop()


async def test_an_expired_intent_closes_no_opposite_position(sessions):
    """An intent past its expiry (decision's re-send of one lost on its way) is recorded expired and changes nothing
    at the broker, not even the opposite-signal exit its placing would have made."""
    rig = Rig(sessions, rules=PositionRules(_env_file=None, exit_on_opposite_signal=True))
    await rig.service.start()
    await rig.priced()
    await rig.bus.deliver(ORDERS_Q, intent(1, side="buy"))
    stale = intent(2, side="sell", sl=2010.0, tp=1990.0, produced_at=NOW - timedelta(seconds=40), expires_at=NOW - timedelta(seconds=10))
    await rig.bus.deliver(ORDERS_Q, stale)
    assert rig.events("closed") == []
    assert len(await rig.paper.positions()) == 1
    assert [r.status for r in rig.reports()] == ["filled", "expired"]
    await rig.service.stop()


# --- the executor on the MT5 adapter and the simulator -------------------------------------------------------------


class MT5Rig:
    def __init__(self, sessions, sim, **rules) -> None:
        self.sim = sim
        self.clock = SimClock(sim)
        self.broker = MT5Broker(connect=lambda: sim, clock=self.clock, server_time="us_dst", symbol_suffix="m")
        self.bus = RecordingBus()
        self.sessions = sessions
        self.service = ExecutorService(bus=self.bus, sessions=sessions, clock=self.clock, settings=settings(), broker=self.broker,
                                       account_ids=[ACCOUNT], rules=PositionRules(_env_file=None, **rules))

    def mt5_intent(self, n, **kw):
        return intent(n, produced_at=self.sim.now(), symbol=SYMBOL, **kw)

    def events(self, kind=None):
        return [e for e in self.bus.of(PositionEvent) if kind is None or e.kind == kind]


async def test_mt5_positions_opened_outside_the_engine_are_reported_and_never_touched(sessions):
    sim = make_sim(flat(400))
    outside = sim.order_send({"action": 1, "symbol": SYMBOL, "volume": 0.2, "type": 0, "type_filling": 0, "magic": 0, "comment": "by hand"})
    rig = MT5Rig(sessions, sim)
    await rig.service.start()
    [adopted] = rig.events("opened")
    assert (adopted.ticket, adopted.bot_id, adopted.volume) == (outside.order, None, 0.2)
    await rig.bus.deliver(ORDERS_Q, rig.mt5_intent(1))
    await rig.bus.deliver(COMMANDS_Q, command("close_all", reason="kill_switch"))
    assert [p.ticket for p in sim.positions_get()] == [outside.order]  # ours closed, the stranger untouched
    await rig.service.monitor_once()
    assert len(rig.events("opened")) == 2  # reported once
    await rig.service.stop()


async def test_mt5_a_stop_hit_at_the_broker_is_recorded_by_the_monitor(sessions):
    sim = make_sim([(2000.0, 2000.5, 1999.5, 2000.0)] * 101 + [(2000.0, 2000.2, 1980.0, 1985.0)] * 50)
    rig = MT5Rig(sessions, sim)
    await rig.service.start()
    await rig.bus.deliver(ORDERS_Q, rig.mt5_intent(1))
    sim.step(2)
    await rig.service.monitor_once()
    [closed] = rig.events("closed")
    assert (closed.close_reason, closed.close_price) == ("sl", 1990.0)
    assert closed.pnl == pytest.approx(-101.0)  # (1990.0 - 2000.1) x 0.1 x 100
    await rig.service.stop()


async def test_mt5_trailing_moves_the_stop_at_the_broker(sessions):
    sim = make_sim([(2000.0, 2000.5, 1999.5, 2000.0)] * 101 + [(2005.0, 2005.5, 2004.5, 2005.0)] * 50)
    rig = MT5Rig(sessions, sim, trail_mode="pips", trail_distance_pips=20)
    await rig.service.start()
    await rig.bus.deliver(ORDERS_Q, rig.mt5_intent(1))
    sim.step(1)
    await rig.service.monitor_once()
    (pos,) = sim.positions_get()
    assert pos.sl == 2003.0 and rig.events("stop_moved")[-1].sl == 2003.0
    await rig.service.stop()


async def test_sigterm_style_stop_leaves_nothing_in_sending(sessions):
    sim = make_sim(flat(400))
    rig = MT5Rig(sessions, sim)
    await rig.service.start()
    message = rig.mt5_intent(1)
    async with transaction(sessions) as s:  # the call in flight when the stop came: placed, not yet recorded
        s.add(Order(decision_id=1, client_order_id=message.client_order_id, signal_id=str(message.signal_id), bot_id=7,
                    account_id=ACCOUNT, symbol=SYMBOL, side="buy", volume=0.1, sl=1990.0, tp=2010.0, magic=message.magic,
                    status="sending", expires_at=message.expires_at, created_at=sim.now(), updated_at=sim.now()))
    sim.order_send({"action": 1, "symbol": SYMBOL, "volume": 0.1, "type": 0, "type_filling": 0, "magic": message.magic,
                    "comment": message.client_order_id, "sl": 1990.0, "tp": 2010.0})
    await rig.service.stop()
    assert await count(sessions, Order, Order.status == "sending") == 0
    async with sessions() as s:
        [order] = (await s.execute(select(Order))).scalars()
    assert sim.initialize()  # the executor shut its session down on the way out
    (pos,) = sim.positions_get()
    assert (order.status, order.ticket) == ("filled", pos.ticket)
