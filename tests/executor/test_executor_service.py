"""The executor service on a real migrated SQLite database, a recording bus and the paper broker behind a counting fake."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from services.executor.brokers.base import OrderRequest
from services.executor.brokers.paper import PaperBroker
from services.executor.service import ExecutorService, close_reason_for
from shared.bus import topology
from shared.bus.base import TransientError
from shared.db.engine import transaction
from shared.db.models import AccountSnapshotRow, Order, Position
from shared.messages import AccountSnapshot, ExecutionReport, InvalidMessage, PositionEvent
from shared.metrics import orders_placed_total
from shared.symbols import get_spec
from shared.timeutil import ManualClock
from tests.executor.fakes import ACCOUNT, BARS_Q, COMMANDS_Q, NOW, ORDERS_Q, T0, CountingBroker, RecordingBus, command, intent, settings, window
from tests.helpers import eventually

GOLD = get_spec("XAUUSD")
PRICED = [(2000.0, 2001.0, 1999.0, 2000.0, 30)] * 3  # bars 10:00..10:02, last close 2000.00, spread 30 points


class Rig:
    def __init__(self, sessions, *, paper: PaperBroker | None = None, clock: ManualClock | None = None) -> None:
        self.clock = clock or ManualClock(NOW)
        self.paper = paper or PaperBroker(clock=self.clock, balance=10_000.0)
        self.broker = CountingBroker(self.paper)
        self.bus = RecordingBus()
        self.sessions = sessions
        self.service = ExecutorService(
            bus=self.bus, sessions=sessions, clock=self.clock, settings=settings(), broker=self.broker, account_ids=[ACCOUNT]
        )

    async def priced(self) -> None:
        await self.paper.on_bars("XAUUSD", window("XAUUSD", PRICED).bars.to_bars())

    async def orders(self) -> list[Order]:
        async with self.sessions() as s:
            return list((await s.execute(select(Order).order_by(Order.id))).scalars())

    async def positions(self) -> list[Position]:
        async with self.sessions() as s:
            return list((await s.execute(select(Position).order_by(Position.ticket))).scalars())

    def reports(self) -> list[ExecutionReport]:
        return self.bus.of(ExecutionReport, routing_key=topology.report_key(ACCOUNT))

    def events(self, kind: str | None = None) -> list[PositionEvent]:
        return [e for e in self.bus.of(PositionEvent, routing_key=topology.position_key(ACCOUNT)) if kind is None or e.kind == kind]


@pytest.fixture
async def rig(sessions):
    # Not started: the tests drive the handlers by hand, without the monitor task (the tests that need it start it).
    return Rig(sessions)


async def test_a_fill_records_the_order_and_position_then_reports_both(rig):
    await rig.priced()
    message = intent(1)
    await rig.service.handle_intent(message, None)

    [order] = await rig.orders()
    assert (order.status, order.price, order.filled_volume, order.retcode, order.report_sent) == ("filled", 2000.30, 0.1, 10009, True)
    [position] = await rig.positions()
    assert (position.ticket, position.bot_id, position.client_order_id, position.open_price, position.sl, position.tp) == (
        order.ticket, 7, message.client_order_id, 2000.30, 1990.0, 2010.0)
    [report] = rig.reports()
    assert (report.status, report.ticket, report.price, report.volume, report.client_order_id) == ("filled", order.ticket, 2000.30, 0.1, message.client_order_id)
    assert report.filled_at == NOW
    [opened] = rig.events("opened")
    assert (opened.ticket, opened.bot_id, opened.open_price, opened.at) == (order.ticket, 7, 2000.30, NOW)
    request = rig.broker.place_calls[0]
    assert (request.client_order_id, request.magic) == (message.client_order_id, message.magic)


async def test_an_intent_delivered_twice_makes_one_order_and_one_position_and_reports_its_status_again(rig):
    await rig.priced()
    message = intent(1)
    await rig.service.handle_intent(message, None)
    await rig.service.handle_intent(message, None)

    assert len(rig.broker.place_calls) == 1
    assert len(await rig.orders()) == 1
    assert len(await rig.positions()) == 1
    # Reported again although the bus confirmed the first report: decision re-sends an intent only while its decision
    # is still `sent` (the report was lost), and this copy is what settles it. Same message id: decision drops repeats.
    first, again = rig.reports()
    assert (first.status, again.status, again.message_id, again.ticket) == ("filled", "filled", first.message_id, first.ticket)
    assert len(rig.events("opened")) == 1


async def test_a_re_sent_intent_past_its_expiry_for_a_filled_order_gets_filled_again_and_places_nothing(rig):
    """Decision's re-send (services/decision/resend.py) comes after the intent expired: an order the executor holds
    is answered with its real status, never expired and never placed twice."""
    await rig.priced()
    message = intent(1)
    await rig.service.handle_intent(message, None)
    rig.clock.advance(timedelta(minutes=5))  # well past message.expires_at
    assert rig.clock.now() > message.expires_at
    await rig.service.handle_intent(message, None)

    assert len(rig.broker.place_calls) == 1
    [order] = await rig.orders()
    assert order.status == "filled"
    assert [r.status for r in rig.reports()] == ["filled", "filled"]


async def test_an_intent_whose_report_was_not_confirmed_publishes_the_same_report_again(rig):
    await rig.priced()
    message = intent(1)
    rig.bus.fail_publishes = 1
    with pytest.raises(ConnectionError):
        await rig.service.handle_intent(message, None)
    rig.service.state.outbox.clear()  # as after a crash
    await rig.service.handle_intent(message, None)
    [report] = rig.reports()
    assert report.status == "filled" and len(rig.broker.place_calls) == 1


async def test_an_expired_intent_is_never_sent_and_is_reported_expired(rig):
    await rig.priced()
    before = orders_placed_total.labels(status="expired")._value.get()
    stale = intent(1, produced_at=NOW - timedelta(seconds=40), expires_at=NOW - timedelta(seconds=10))
    await rig.service.handle_intent(stale, None)

    assert rig.broker.place_calls == []
    [order] = await rig.orders()
    assert order.status == "expired" and "expired" in order.reason
    [report] = rig.reports()
    assert (report.status, report.client_order_id, report.ticket) == ("expired", stale.client_order_id, None)
    assert await rig.positions() == []
    assert orders_placed_total.labels(status="expired")._value.get() == before + 1
    # Delivered again, still never sent; reported expired again.
    await rig.service.handle_intent(stale, None)
    assert rig.broker.place_calls == [] and [r.status for r in rig.reports()] == ["expired", "expired"]
    assert orders_placed_total.labels(status="expired")._value.get() == before + 1


async def test_an_order_left_in_sending_is_found_at_the_broker_on_start_up_and_never_sent_again(sessions):
    rig = Rig(sessions)
    await rig.priced()
    message = intent(1)
    # The previous process recorded `sending` and the broker filled it, then the process died before recording the fill.
    async with transaction(sessions) as s:
        s.add(Order(decision_id=1, client_order_id=message.client_order_id, signal_id=str(message.signal_id), bot_id=7,
                    account_id=ACCOUNT, symbol="XAUUSD", side="buy", volume=0.1, sl=1990.0, tp=2010.0, magic=message.magic,
                    status="sending", expires_at=message.expires_at, created_at=NOW, updated_at=NOW))
    placed = await rig.paper.place(OrderRequest(message.client_order_id, "XAUUSD", "buy", 0.1, 1990.0, 2010.0, message.magic))

    await rig.service.start()
    try:
        [order] = await rig.orders()
        assert (order.status, order.ticket, order.price) == ("filled", placed.ticket, placed.price)
        assert rig.broker.place_calls == [] and rig.broker.find_calls >= 1
        assert [p.ticket for p in await rig.positions()] == [placed.ticket]
        assert [r.status for r in rig.reports()] == ["filled"]
        # The intent itself, redelivered after the restart, changes nothing and sends nothing.
        await rig.bus.deliver(ORDERS_Q, message, count=2)
        assert rig.broker.place_calls == [] and len(await rig.positions()) == 1
    finally:
        await rig.service.stop()


async def test_an_order_left_in_sending_that_the_broker_never_saw_is_sent_once(sessions):
    rig = Rig(sessions)
    await rig.priced()
    message = intent(1)
    async with transaction(sessions) as s:
        s.add(Order(decision_id=1, client_order_id=message.client_order_id, signal_id=str(message.signal_id), bot_id=7,
                    account_id=ACCOUNT, symbol="XAUUSD", side="buy", volume=0.1, sl=1990.0, tp=2010.0, magic=message.magic,
                    status="sending", expires_at=message.expires_at, created_at=NOW, updated_at=NOW))
    await rig.service.start()
    try:
        assert len(rig.broker.place_calls) == 1
        assert [o.status for o in await rig.orders()] == ["filled"]
    finally:
        await rig.service.stop()


async def test_the_monitor_leaves_a_young_sending_order_alone_and_settles_a_stuck_one(rig):
    await rig.priced()
    await rig.service.monitor_once()  # takes the lead (and settles what it finds then: nothing yet)
    message = intent(1, expires_at=NOW + timedelta(minutes=5))
    async with transaction(rig.sessions) as s:
        s.add(Order(decision_id=1, client_order_id=message.client_order_id, signal_id=str(message.signal_id), bot_id=7,
                    account_id=ACCOUNT, symbol="XAUUSD", side="buy", volume=0.1, sl=1990.0, tp=2010.0, magic=message.magic,
                    status="sending", expires_at=message.expires_at, created_at=NOW, updated_at=NOW))
    await rig.service.monitor_once()  # it may be in flight in another executor process: not touched
    assert rig.broker.find_calls == 0 and rig.broker.place_calls == []
    assert [o.status for o in await rig.orders()] == ["sending"]

    rig.clock.advance(timedelta(seconds=31))
    await rig.service.monitor_once()  # stuck: asked for at the broker (no trace), then sent once
    assert rig.broker.find_calls == 1 and len(rig.broker.place_calls) == 1
    assert [o.status for o in await rig.orders()] == ["filled"]


async def test_a_lost_broker_answer_is_reconciled_on_redelivery_without_a_second_send(rig):
    await rig.priced()
    message = intent(1)
    rig.broker.lose_next_answer = True
    with pytest.raises(TransientError):
        await rig.service.handle_intent(message, None)
    [order] = await rig.orders()
    assert order.status == "sending"  # recorded before the call, left there when the answer was lost
    assert rig.reports() == []

    await rig.service.handle_intent(message, None)
    assert len(rig.broker.place_calls) == 1
    [order] = await rig.orders()
    assert order.status == "filled"
    assert len(await rig.positions()) == 1 and len(await rig.paper.positions()) == 1
    assert [r.status for r in rig.reports()] == ["filled"]


async def test_no_price_yet_is_retried_until_a_bar_arrives(rig):
    message = intent(1)
    with pytest.raises(TransientError, match="no price"):
        await rig.service.handle_intent(message, None)
    [order] = await rig.orders()
    assert order.status == "sending" and "no price" in order.reason
    assert rig.reports() == []

    await rig.priced()
    await rig.service.handle_intent(message, None)
    assert [o.status for o in await rig.orders()] == ["filled"]
    assert len(rig.broker.place_calls) == 2


async def test_no_price_until_expiry_ends_expired_with_the_brokers_reason(rig):
    message = intent(1)
    with pytest.raises(TransientError):
        await rig.service.handle_intent(message, None)
    rig.clock.advance(timedelta(seconds=31))
    await rig.service.handle_intent(message, None)
    [report] = rig.reports()
    assert report.status == "expired" and "no price for XAUUSD" in report.reason
    assert len(rig.broker.place_calls) == 1


async def test_a_rejected_order_is_final_and_reported(rig):
    await rig.priced()
    bad = intent(1, volume=0.013)  # off the lot step: the broker refuses it (the quote check cannot know)
    await rig.service.handle_intent(bad, None)
    [order] = await rig.orders()
    assert (order.status, order.retcode) == ("rejected", 10014)
    [report] = rig.reports()
    assert report.status == "rejected" and "invalid volume" in report.reason
    assert await rig.positions() == [] and rig.events() == []
    await rig.service.handle_intent(bad, None)
    assert len(rig.broker.place_calls) == 1


async def test_a_publish_that_fails_after_the_commit_is_repeated_on_redelivery(rig):
    await rig.priced()
    message = intent(1)
    rig.bus.fail_publishes = 1
    with pytest.raises(ConnectionError):
        await rig.service.handle_intent(message, None)
    [order] = await rig.orders()
    assert order.status == "filled" and not order.report_sent
    assert rig.reports() == []

    await rig.service.handle_intent(message, None)
    assert len(rig.broker.place_calls) == 1
    assert [r.status for r in rig.reports()] == ["filled"]
    assert len(rig.events("opened")) == 1
    assert (await rig.orders())[0].report_sent


async def test_messages_the_executor_can_never_handle_are_invalid(rig):
    with pytest.raises(InvalidMessage, match="not served"):
        await rig.service.handle_intent(intent(1, account_id=99), None)
    with pytest.raises(InvalidMessage, match="not an OrderIntent"):
        await rig.service.handle_intent(command("close_all"), None)
    with pytest.raises(InvalidMessage, match="not served"):
        await rig.service.handle_command(command("close_all", account_id=99), None)
    assert await rig.orders() == [] and rig.broker.place_calls == []


async def test_a_second_intent_for_the_same_decision_is_invalid(rig):
    await rig.priced()
    await rig.service.handle_intent(intent(1), None)
    other = intent(1, bot_id=8)  # another client order id, same decision id
    with pytest.raises(InvalidMessage, match="already has order"):
        await rig.service.handle_intent(other, None)


async def test_close_all_closes_every_position_of_the_bot_and_reports_each(rig):
    await rig.priced()
    for n, bot in ((1, 7), (2, 7), (3, 8)):
        await rig.service.handle_intent(intent(n, bot_id=bot), None)
    assert len(await rig.positions()) == 3

    await rig.service.handle_command(command("close_all", bot_id=7, reason="kill_switch: daily loss 2.1% > 2.0%"), None)

    closed = rig.events("closed")
    assert sorted(e.bot_id for e in closed) == [7, 7]
    for event in closed:
        assert event.close_reason == "kill_switch"
        assert event.close_price == 2000.0  # a long closes at the bid
        assert event.pnl == pytest.approx(GOLD.profit("buy", 0.1, 2000.30, 2000.0))
    rows = {p.ticket: p for p in await rig.positions()}
    assert sorted(p.bot_id for p in rows.values() if p.status == "closed") == [7, 7]
    assert [p.bot_id for p in rows.values() if p.status == "open"] == [8]
    assert [p.ticket for p in await rig.paper.positions()] == [t for t, p in rows.items() if p.bot_id == 8]

    # Run twice: nothing more to close, nothing more reported.
    await rig.service.handle_command(command("close_all", bot_id=7, reason="kill_switch"), None)
    assert len(rig.events("closed")) == 2


async def test_close_all_without_a_bot_closes_the_whole_account_as_manual(rig):
    await rig.priced()
    for n, bot in ((1, 7), (2, 8)):
        await rig.service.handle_intent(intent(n, bot_id=bot), None)
    await rig.service.handle_command(command("close_all", reason="operator"), None)
    assert sorted((e.bot_id, e.close_reason) for e in rig.events("closed")) == [(7, "manual"), (8, "manual")]
    assert await rig.paper.positions() == []


async def test_close_position_by_ticket(rig):
    await rig.priced()
    await rig.service.handle_intent(intent(1), None)
    await rig.service.handle_intent(intent(2), None)
    first, second = await rig.positions()
    await rig.service.handle_command(command("close_position", ticket=first.ticket), None)
    assert [(e.ticket, e.close_reason) for e in rig.events("closed")] == [(first.ticket, "manual")]
    assert [p.ticket for p in await rig.paper.positions()] == [second.ticket]
    with pytest.raises(InvalidMessage):
        await rig.service.handle_command(command("close_position"), None)
    with pytest.raises(InvalidMessage):
        await rig.service.handle_command(command("close_position", ticket=12345), None)


async def test_move_stop_modifies_the_broker_and_reports_stop_moved(rig):
    await rig.priced()
    await rig.service.handle_intent(intent(1), None)
    [position] = await rig.positions()
    await rig.service.handle_command(command("move_stop", ticket=position.ticket, sl=1995.123), None)
    [moved] = rig.events("stop_moved")
    assert (moved.ticket, moved.sl, moved.tp) == (position.ticket, 1995.12, 2010.0)
    assert (await rig.positions())[0].sl == 1995.12
    assert (await rig.paper.positions())[0].sl == 1995.12
    with pytest.raises(InvalidMessage, match="refused by the broker"):
        await rig.service.handle_command(command("move_stop", ticket=position.ticket, sl=2005.0), None)
    assert (await rig.positions())[0].sl == 1995.12


async def test_a_bar_through_the_stop_closes_the_position_and_reports_it(sessions):
    rig = Rig(sessions)
    await rig.service.start()
    try:
        await rig.bus.deliver(BARS_Q, window("XAUUSD", PRICED))
        await rig.bus.deliver(ORDERS_Q, intent(1, sl=1995.0, tp=2010.0))
        [position] = await rig.positions()
        # The 10:03 bar dips through the stop; the window still holds the older bars.
        await rig.bus.deliver(BARS_Q, window("XAUUSD", [*PRICED, (1999.0, 1999.5, 1994.0, 1996.0, 30)]))
        [closed] = rig.events("closed")
        assert (closed.ticket, closed.close_reason, closed.close_price) == (position.ticket, "sl", 1995.0)
        assert closed.pnl == pytest.approx(GOLD.profit("buy", 0.1, 2000.30, 1995.0))
        assert closed.at == T0 + timedelta(minutes=4)
        [row] = await rig.positions()
        assert (row.status, row.close_reason, row.close_price, row.pnl) == ("closed", "sl", 1995.0, closed.pnl)
        # The same window again: nothing new.
        await rig.bus.deliver(BARS_Q, window("XAUUSD", [*PRICED, (1999.0, 1999.5, 1994.0, 1996.0, 30)]), count=2)
        assert len(rig.events("closed")) == 1
    finally:
        await rig.service.stop()


async def test_a_close_whose_event_could_not_be_published_is_published_on_redelivery(rig):
    await rig.priced()
    await rig.service.handle_intent(intent(1, sl=1995.0), None)
    hit = window("XAUUSD", [*PRICED, (1999.0, 1999.5, 1994.0, 1996.0, 30)])
    rig.bus.fail_publishes = 1
    with pytest.raises(ConnectionError):
        await rig.service.handle_bars(hit, None)
    assert [p.status for p in await rig.positions()] == ["closed"]  # recorded and committed before the publish
    await rig.service.handle_bars(hit, None)  # the broker has nothing new to say; the event is still queued
    assert [(e.kind, e.close_reason) for e in rig.events("closed")] == [("closed", "sl")]


async def test_an_account_snapshot_each_monitor_cycle(sessions):
    rig = Rig(sessions)
    await rig.service.start()
    try:
        snapshots = lambda: rig.bus.of(AccountSnapshot, routing_key=topology.account_key(ACCOUNT))  # noqa: E731
        await eventually(lambda: len(snapshots()) == 1, what="first snapshot")
        rig.clock.advance(timedelta(seconds=30))
        await rig.bus.deliver(BARS_Q, window("XAUUSD", PRICED))
        assert len(snapshots()) == 1  # half a cycle: none yet
        await rig.bus.deliver(ORDERS_Q, intent(1, produced_at=rig.clock.now()))
        rig.clock.advance(timedelta(seconds=30))
        await eventually(lambda: len(snapshots()) == 2, what="second snapshot")
        first, second = snapshots()
        assert (first.balance, first.equity, first.margin, first.taken_at) == (10_000.0, 10_000.0, 0.0, NOW)
        assert second.taken_at == NOW + timedelta(seconds=60)
        assert second.margin > 0 and second.equity == pytest.approx(10_000 + GOLD.profit("buy", 0.1, 2000.30, 2000.0))
        async with sessions() as s:
            stored = (await s.execute(select(func.count()).select_from(AccountSnapshotRow))).scalar_one()
        assert stored == 2
        [latest] = await rig.service.latest_snapshots()
        assert latest.taken_at == second.taken_at
    finally:
        await rig.service.stop()


async def test_start_restores_an_empty_paper_broker_from_the_tables(sessions):
    async with transaction(sessions) as s:
        s.add(Position(ticket=5, account_id=ACCOUNT, bot_id=7, client_order_id="sc7-1-abc", symbol="XAUUSD", side="buy", volume=0.1,
                       open_price=2000.0, sl=1995.0, tp=2010.0, opened_at=NOW))
        s.add(Position(ticket=4, account_id=ACCOUNT, bot_id=7, client_order_id="sc7-0-abc", symbol="XAUUSD", side="buy", volume=0.1,
                       open_price=2000.0, sl=1995.0, tp=2010.0, opened_at=NOW, status="closed", pnl=-51.5,
                       close_event_sent=True))  # closed and reported before the restart
    rig = Rig(sessions)
    await rig.service.start()
    try:
        assert [p.ticket for p in await rig.paper.positions()] == [5]
        assert (await rig.paper.account()).balance == pytest.approx(10_000 - 51.5)
        # No bar since the restart: no price to close at, so the kill switch waits (redelivered) rather than guess.
        with pytest.raises(TransientError, match="no price"):
            await rig.bus.deliver(COMMANDS_Q, command("close_all", reason="kill_switch"))
        await rig.bus.deliver(BARS_Q, window("XAUUSD", PRICED))
        await rig.bus.deliver(COMMANDS_Q, command("close_all", reason="kill_switch"), count=2)
        assert [(e.ticket, e.close_reason) for e in rig.events("closed")] == [(5, "kill_switch")]
    finally:
        await rig.service.stop()


async def test_tickets_go_on_past_every_ticket_ever_issued_after_restarts_with_nothing_open(sessions):
    """The bug of the first crash runs: with no position open at a restart the counter started at 1 again, and the
    next fill matched an old closed row and was dropped. Three lives, each opening and closing one position."""
    tickets = []
    for life in range(3):
        rig = Rig(sessions)
        await rig.service.start()
        try:
            await rig.priced()
            await rig.service.handle_intent(intent(life + 1), None)
            await rig.bus.deliver(COMMANDS_Q, command("close_all", reason="manual"))
        finally:
            await rig.service.stop()
        tickets.append((await rig.orders())[-1].ticket)
    assert len(set(tickets)) == 3, tickets
    positions = await rig.positions()
    assert [(p.ticket, p.client_order_id, p.status) for p in positions] == [
        (t, intent(n + 1).client_order_id, "closed") for n, t in enumerate(tickets)]


async def test_a_broker_ticket_the_tables_hold_closed_is_a_counted_conflict_never_a_silent_skip(rig, caplog):
    from shared.metrics import executor_state_conflicts_total

    await rig.service.monitor_once()  # takes the lead and restores the paper book from empty tables: ticket 1 next
    # A row the broker does not know of holds ticket 1 already (a broker that reuses tickets, or tables restored
    # from another account's backup): the next fill names it.
    async with transaction(rig.sessions) as s:
        s.add(Position(ticket=1, account_id=ACCOUNT, bot_id=7, client_order_id="sc7-0-old", symbol="XAUUSD", side="buy",
                       volume=0.1, open_price=1990.0, opened_at=NOW - timedelta(hours=1), status="closed", pnl=1.0,
                       close_event_sent=True))
    before = executor_state_conflicts_total.labels(kind="ticket_reused")._value.get()
    await rig.priced()
    await rig.service.handle_intent(intent(1), None)
    [order] = await rig.orders()
    assert (order.status, order.ticket) == ("filled", 1)
    assert executor_state_conflicts_total.labels(kind="ticket_reused")._value.get() == before + 1
    [row] = await rig.positions()
    assert row.client_order_id == "sc7-0-old"  # the old row is left as it was, not overwritten


async def test_readiness_reports_the_broker_and_the_database(rig):
    ok, details = await rig.service.readiness()
    assert ok and details["broker"] and details["database"]
    rig.broker.is_healthy = False
    ok, details = await rig.service.readiness()
    assert not ok and not details["broker"] and details["database"]


@pytest.mark.parametrize(
    ("reason", "expected"),
    [("kill_switch", "kill_switch"), ("Kill switch: daily loss", "kill_switch"), ("manual", "manual"), ("user asked", "manual"), ("trail", "trail")],
)
def test_command_reasons_map_to_close_reasons(reason, expected):
    assert close_reason_for(reason) == expected


async def test_a_window_is_fed_only_to_the_paper_brokers_that_need_it(sessions):
    clock = ManualClock(NOW)
    quotes: dict = {}
    accounts = [ACCOUNT, ACCOUNT + 1, ACCOUNT + 2]
    papers = {a: PaperBroker(clock=clock, balance=10_000.0, quotes=quotes) for a in accounts}
    fed: list[int] = []

    def spy(account_id: int, paper: PaperBroker):
        original = paper.on_bars

        async def on_bars(symbol, bars):
            fed.append(account_id)
            return await original(symbol, bars)

        paper.on_bars = on_bars  # type: ignore[method-assign]

    for account_id, paper in papers.items():
        spy(account_id, paper)
    service = ExecutorService(bus=RecordingBus(), sessions=sessions, clock=clock, settings=settings(), broker=papers, account_ids=accounts)
    await service.handle_bars(window("XAUUSD", PRICED), None)
    assert fed == [ACCOUNT]  # the first broker fills the shared book; the others have nothing to check
    await service.handle_intent(intent(1), None)  # a position on ACCOUNT
    fed.clear()
    await service.handle_bars(window("XAUUSD", PRICED), None)
    assert fed == [ACCOUNT]  # only the broker with a position on the symbol checks its stop and target
    fed.clear()
    later = window("XAUUSD", [*PRICED, (2000.0, 2001.0, 1999.0, 2000.5, 30)])
    await service.handle_bars(later, None)
    assert fed == [ACCOUNT]  # a newer window: the holder goes first and moves the shared quote for everyone
    assert quotes["XAUUSD"].close == 2000.5
    assert [p.status for p in await Rig(sessions).positions()] == ["open"]


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"entry": 2100.0}, "signal entry 2100.0 is more than 2.00% from the ask 2000.3"),  # a poisoned window's price
        ({"sl": 2005.0, "entry": 2000.0}, "sl 2005.0 must be below the bid 2000.0"),  # the market moved through the stop
        ({"tp": 1995.0, "sl": 1990.0, "entry": 2000.0}, "tp 1995.0 must be above the bid 2000.0"),
    ],
)
async def test_an_order_the_brokers_quote_refutes_is_rejected_unsent(rig, changes, reason):
    await rig.priced()  # bid 2000.00, ask 2000.30
    message = intent(1).model_copy(update=changes)
    await rig.service.handle_intent(message, None)
    [order] = await rig.orders()
    assert (order.status, order.reason) == ("rejected", f"refused at the quote: {reason}")
    assert rig.broker.place_calls == []
    [report] = rig.reports()
    assert report.status == "rejected" and reason in report.reason


async def test_an_order_near_the_quote_is_sent(rig):
    await rig.priced()
    await rig.service.handle_intent(intent(1).model_copy(update={"entry": 2010.0}), None)  # 0.5 % away: within 2 %
    [order] = await rig.orders()
    assert order.status == "filled" and len(rig.broker.place_calls) == 1


async def test_fill_and_close_log_lines_say_bot_symbol_side_volume_and_price(rig):
    from structlog.testing import capture_logs

    await rig.priced()
    with capture_logs() as logs:
        await rig.service.handle_intent(intent(1), None)
        [position] = await rig.positions()
        await rig.service.handle_command(command("close_position", ticket=position.ticket), None)
    (filled,) = [e for e in logs if e["event"] == "order filled"]
    assert (filled["bot"], filled["symbol"], filled["side"], filled["volume"], filled["price"]) == (7, "XAUUSD", "buy", 0.1, 2000.30)
    (closed,) = [e for e in logs if e["event"] == "position closed"]
    assert (closed["bot"], closed["symbol"], closed["side"], closed["volume"]) == (7, "XAUUSD", "buy", 0.1)
    assert closed["price"] is not None and closed["reason"] == "manual" and closed["pnl"] is not None
