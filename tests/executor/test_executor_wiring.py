"""The executor wired to the real in-memory bus (delivery, redelivery, dead letters), netting through the service,
and its internal routes."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from services.executor.app import create_router
from services.executor.brokers.paper import PaperBroker
from services.executor.service import ExecutorService
from shared.bus import topology
from shared.bus.base import TYPE_HEADER
from shared.bus.memory import InMemoryBus
from shared.db.models import Order, Position
from shared.messages import AccountSnapshot, ExecutionReport, PositionEvent, decode
from shared.timeutil import ManualClock
from tests.executor.fakes import ACCOUNT, NOW, RecordingBus, command, intent, settings, window
from tests.helpers import eventually

PRICED = [(2000.0, 2001.0, 1999.0, 2000.0, 30)] * 3


async def events_of(bus: InMemoryBus) -> list:
    return [decode(raw.headers[TYPE_HEADER], raw.body)[0] for raw in await bus.take_raw(topology.DECISION_EVENTS.name)]


@pytest.fixture
async def stack(sessions):
    bus = InMemoryBus(delivery_limit=3, redelivery_delay_s=0.001)
    await bus.start()
    clock = ManualClock(NOW)
    paper = PaperBroker(clock=clock, balance=10_000.0)
    service = ExecutorService(bus=bus, sessions=sessions, clock=clock, settings=settings(), broker=paper, account_ids=[ACCOUNT])
    await service.start()
    yield bus, clock, paper, service
    await service.stop()
    await bus.close()


async def test_an_intent_published_twice_on_the_bus_fills_once_and_reports_its_fill_to_each_copy(stack, sessions):
    bus, _, paper, service = stack
    await bus.publish(window("XAUUSD", PRICED), exchange=topology.MARKET_BARS, routing_key=topology.bars_key("1m", "XAUUSD"))
    await bus.idle()
    message = intent(1)
    for _ in range(2):
        await bus.publish(message, exchange=topology.EXECUTION_ORDERS, routing_key=str(ACCOUNT))
    await bus.idle()

    events = await events_of(bus)
    reports = [e for e in events if isinstance(e, ExecutionReport)]
    # The copy gets the same report again (same message id: decision applies it once); it may be the one that settles
    # a decision whose first report was lost (services/decision/resend.py).
    assert [r.status for r in reports] == ["filled", "filled"] and reports[0].message_id == reports[1].message_id
    assert [e.kind for e in events if isinstance(e, PositionEvent)] == ["opened"]
    assert [type(e) for e in events if isinstance(e, AccountSnapshot)] == [AccountSnapshot]  # the start-up cycle
    assert len(await paper.positions()) == 1

    await bus.publish(command("close_all", bot_id=7, reason="kill_switch"), exchange=topology.EXECUTION_COMMANDS, routing_key=str(ACCOUNT))
    await bus.idle()
    [closed] = [e for e in await events_of(bus) if isinstance(e, PositionEvent)]
    assert (closed.kind, closed.close_reason, closed.ticket) == ("closed", "kill_switch", reports[0].ticket)
    async with sessions() as s:
        assert [p.status for p in (await s.execute(select(Position))).scalars()] == ["closed"]


async def test_an_intent_that_ran_out_of_deliveries_is_settled_by_the_monitor(stack, sessions):
    bus, clock, paper, service = stack
    message = intent(1)  # no bars yet: every delivery is told "no price" and retried, then dead-lettered
    await bus.publish(message, exchange=topology.EXECUTION_ORDERS, routing_key=str(ACCOUNT))
    await bus.idle()
    dead = await bus.take_raw(topology.DEAD_LETTER_QUEUE.name)
    assert len(dead) == 1 and "no price" in dead[0].headers["x-death-reason"]
    async with sessions() as s:
        [order] = (await s.execute(select(Order))).scalars()
    assert order.status == "sending"

    clock.advance(timedelta(seconds=60))  # the next monitor cycle finds it left in `sending`, past its expiry
    seen: list = []

    async def reported() -> list:
        seen.extend(await events_of(bus))
        return [e for e in seen if isinstance(e, ExecutionReport)]

    reports = await eventually(reported, what="a report of the stuck order")
    assert [(r.status, r.client_order_id) for r in reports] == [("expired", message.client_order_id)]
    async with sessions() as s:
        assert (await s.execute(select(Order.status))).scalar_one() == "expired"
    assert await paper.positions() == []


async def test_netting_reversal_closes_the_old_position_and_opens_the_new_one(sessions):
    clock = ManualClock(NOW)
    paper = PaperBroker(clock=clock, balance=10_000.0, margin_mode="netting")
    bus = RecordingBus()
    service = ExecutorService(bus=bus, sessions=sessions, clock=clock, settings=settings(), broker=paper, account_ids=[ACCOUNT])
    await paper.on_bars("XAUUSD", window("XAUUSD", PRICED).bars.to_bars())
    await service.handle_intent(intent(1, volume=0.1), None)
    await service.handle_intent(intent(2, side="sell", volume=0.3, sl=2010.0, tp=1990.0), None)

    first, second = bus.of(ExecutionReport)
    assert (second.status, second.volume) == ("filled", 0.3)
    closed = [e for e in bus.of(PositionEvent) if e.kind == "closed"]
    assert [(e.ticket, e.client_order_id, e.close_reason, e.close_price) for e in closed] == [
        (first.ticket, intent(1).client_order_id, "early_exit", 2000.0)]
    opened = [e for e in bus.of(PositionEvent) if e.kind == "opened"]
    assert [(e.ticket, e.side, e.volume) for e in opened] == [(first.ticket, "buy", 0.1), (second.ticket, "sell", 0.2)]
    async with sessions() as s:
        rows = {p.ticket: p for p in (await s.execute(select(Position))).scalars()}
    assert (rows[first.ticket].status, rows[second.ticket].status, rows[second.ticket].volume) == ("closed", "open", 0.2)


async def test_internal_routes_list_open_positions_and_the_latest_snapshot(stack):
    bus, clock, paper, service = stack
    await bus.publish(window("XAUUSD", PRICED), exchange=topology.MARKET_BARS, routing_key=topology.bars_key("1m", "XAUUSD"))
    await bus.idle()
    for n, bot in ((1, 7), (2, 8)):
        await bus.publish(intent(n, bot_id=bot), exchange=topology.EXECUTION_ORDERS, routing_key=str(ACCOUNT))
    await bus.idle()
    clock.advance(timedelta(seconds=60))
    await eventually(lambda: service.latest_snapshots(), what="a snapshot")

    app = FastAPI()
    app.include_router(create_router(service))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://executor") as client:
        body = (await client.get("/positions")).json()
        assert body["count"] == 2 and body["next_cursor"] is None
        assert sorted(p["bot_id"] for p in body["data"]) == [7, 8]
        assert {p["status"] for p in body["data"]} == {"open"}
        assert [p["bot_id"] for p in (await client.get("/positions", params={"bot_id": 8})).json()["data"]] == [8]
        assert (await client.get("/positions", params={"account_id": 99})).json()["count"] == 0

        await eventually(lambda: _taken_at(service, NOW + timedelta(seconds=60)), what="the second snapshot")
        account = (await client.get("/account")).json()
        assert account["count"] == 1
        [snap] = account["data"]
        assert snap["account_id"] == ACCOUNT and snap["margin"] > 0
        assert snap["taken_at"].startswith((NOW + timedelta(seconds=60)).strftime("%Y-%m-%dT%H:%M:%S"))


async def _taken_at(service: ExecutorService, when) -> bool:
    return [s.taken_at for s in await service.latest_snapshots()] == [when]
