"""Signals through the decision service on a real SQLite database: dedupe, exposure, limits, the unknown bot."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from decision_helpers import T0, RecordingBus, add_account, add_bot, delivery, make_settings, make_signal
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from services.decision.decisions import client_order_id_for, load_exposure
from services.decision.service import DecisionService
from shared.bus import topology
from shared.db.engine import transaction
from shared.db.models import AuditLog, Bot, BrokerAccount, Decision, SignalRow
from shared.messages import ExecutionReport, InvalidMessage, OrderIntent, PositionEvent, ScanPlan
from shared.timeutil import AcceleratedClock, ManualClock


def metric(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def make_service(bus, db, clock=None, **settings) -> DecisionService:
    return DecisionService(
        bus=bus, sessions=db, clock=clock or ManualClock(T0), settings=make_settings(**settings), lookback_for=lambda configs: 100
    )


async def count(db, model, *where) -> int:
    async with db() as s:
        return (await s.execute(select(func.count()).select_from(model).where(*where))).scalar_one()


async def decisions(db, bot_id: int) -> list[Decision]:
    async with db() as s:
        return list((await s.execute(select(Decision).where(Decision.bot_id == bot_id).order_by(Decision.id))).scalars())


def intents(bus) -> list[OrderIntent]:
    return [msg for _, msg in bus.sent(topology.EXECUTION_ORDERS)]


def fill(intent: OrderIntent, *, ticket: int = 501, price: float = 2000.1) -> ExecutionReport:
    return ExecutionReport(
        client_order_id=intent.client_order_id,
        account_id=intent.account_id,
        bot_id=intent.bot_id,
        status="filled",
        ticket=ticket,
        price=price,
        volume=intent.volume,
        filled_at=T0,
    )


def position(intent: OrderIntent, kind: str, *, ticket: int = 501, **fields) -> PositionEvent:
    return PositionEvent(
        ticket=ticket,
        account_id=intent.account_id,
        bot_id=intent.bot_id,
        client_order_id=intent.client_order_id,
        symbol=intent.symbol,
        side=intent.side,
        volume=intent.volume,
        kind=kind,
        open_price=2000.1,
        at=T0 + timedelta(minutes=3),
        **fields,
    )


async def test_open_signal_publishes_one_intent_to_the_accounts_executor(db, bus, user, account):
    bot = await add_bot(db, user, account)
    service = make_service(bus, db)
    sig = make_signal(bot)
    await service.on_signals_queue(sig, delivery(sig))

    [(key, intent)] = bus.sent(topology.EXECUTION_ORDERS)
    [decision] = await decisions(db, bot.id)
    assert key == str(account.id)
    assert (decision.action, decision.reason, decision.order_status) == ("open", "ok", "sent")
    assert intent.client_order_id == decision.client_order_id == intent.comment
    assert intent.client_order_id == f"sc{bot.id}-{decision.id}-{sig.signal_id.hex[:6]}"
    assert (intent.decision_id, intent.signal_id, intent.bot_id, intent.account_id) == (decision.id, sig.signal_id, bot.id, account.id)
    assert (intent.symbol, intent.side, intent.volume, intent.sl, intent.tp) == ("XAUUSDm", "buy", 0.01, 1998.0, 2004.0)
    assert intent.magic == 7_000_000 + bot.id
    assert intent.expires_at == decision.expires_at == T0 + timedelta(seconds=30)
    assert await count(db, AuditLog, AuditLog.kind == "signal") == 1
    assert await count(db, AuditLog, AuditLog.kind == "decision") == 1


async def test_order_life_is_real_time_on_an_accelerated_clock(db, bus, user, account):
    """At 600x, 30 real seconds of order life are 5 hours of feed time: a fast replay's orders do not expire for speed."""
    bot = await add_bot(db, user, account)
    clock = AcceleratedClock(T0, speed=600)
    await make_service(bus, db, clock=clock).handle_signal(make_signal(bot))
    [(_, intent)] = bus.sent(topology.EXECUTION_ORDERS)
    life = intent.expires_at - intent.produced_at
    assert timedelta(seconds=30 * 600) <= life < timedelta(seconds=30 * 600 + 60)


async def test_same_signal_twice_one_row_one_decision_same_intent_republished(db, bus, user, account):
    bot = await add_bot(db, user, account)
    service = make_service(bus, db)
    sig = make_signal(bot)
    ingested = metric("signals_ingested_total", strategy=sig.strategy, symbol="XAUUSD")

    await service.on_signals_queue(sig, delivery(sig))
    await service.on_signals_queue(sig, delivery(sig, count=2))
    # A re-scan of the same bar by a later window: same dedupe key, a new message.
    rescanned = make_signal(bot, window_id=uuid.uuid4())
    await service.on_signals_queue(rescanned, delivery(rescanned))

    assert await count(db, SignalRow) == 1
    assert await count(db, Decision) == 1
    assert await count(db, AuditLog, AuditLog.kind == "decision") == 1
    first, second, third = intents(bus)
    assert first.client_order_id == second.client_order_id == third.client_order_id
    assert first == second  # rebuilt from the decision row: identical, message id included
    assert metric("signals_ingested_total", strategy=sig.strategy, symbol="XAUUSD") == ingested + 1


async def test_no_republish_once_the_order_is_answered(db, bus, user, account):
    bot = await add_bot(db, user, account)
    service = make_service(bus, db)
    sig = make_signal(bot)
    await service.handle_signal(sig)
    await service.handle_execution_report(fill(intents(bus)[0]))
    await service.handle_signal(sig)
    assert len(intents(bus)) == 1


async def test_two_signals_of_one_window_cannot_both_pass_max_concurrent_one(db, bus, user, account):
    bot = await add_bot(db, user, account, risk_max_concurrent_positions=1, risk_max_per_symbol=5)
    service = make_service(bus, db)
    window = uuid.uuid4()
    a = make_signal(bot, strategy="price_action_pinbar", window_id=window)
    b = make_signal(bot, strategy="trend_pullback", window_id=window)

    await asyncio.gather(service.handle_signal(a), service.handle_signal(b))

    rows = await decisions(db, bot.id)
    assert sorted(d.action for d in rows) == ["ignore", "open"]
    assert next(d for d in rows if d.action == "ignore").reason == "max_concurrent_positions"
    assert len(intents(bus)) == 1


async def test_two_decision_instances_cannot_both_pass_max_concurrent_one(db, user, account):
    """Two processes (distributed mode) share only the database: the account row lock must serialise them."""
    bot = await add_bot(db, user, account, risk_max_concurrent_positions=1, risk_max_per_symbol=5)
    bus_a, bus_b = RecordingBus(), RecordingBus()
    a, b = make_service(bus_a, db), make_service(bus_b, db)
    for minute in range(3):
        window = uuid.uuid4()
        bar = T0 + timedelta(minutes=minute)
        await asyncio.gather(
            a.handle_signal(make_signal(bot, strategy="price_action_pinbar", bar_time=bar, window_id=window)),
            b.handle_signal(make_signal(bot, strategy="trend_pullback", bar_time=bar, window_id=window)),
        )
    assert [d.action for d in await decisions(db, bot.id)].count("open") == 1
    assert len(intents(bus_a)) + len(intents(bus_b)) == 1


async def test_sent_not_filled_counts_until_the_order_is_rejected(db, bus, user, account):
    bot = await add_bot(db, user, account, risk_max_concurrent_positions=1, risk_max_per_symbol=5)
    service = make_service(bus, db)
    ignored = metric("decision_ignored_total", reason="max_concurrent_positions")
    await service.handle_signal(make_signal(bot, bar_time=T0))
    await service.handle_signal(make_signal(bot, bar_time=T0 + timedelta(minutes=1)))
    first = intents(bus)[0]
    rejected = ExecutionReport(
        client_order_id=first.client_order_id,
        account_id=account.id,
        bot_id=bot.id,
        status="rejected",
        retcode=10016,
        reason="invalid stops",
    )
    await service.handle_execution_report(rejected)
    await service.handle_signal(make_signal(bot, bar_time=T0 + timedelta(minutes=2)))

    rows = await decisions(db, bot.id)
    assert [(d.action, d.reason, d.order_status) for d in rows] == [
        ("open", "ok", "rejected"),
        ("ignore", "max_concurrent_positions", None),
        ("open", "ok", "sent"),
    ]
    assert metric("decision_ignored_total", reason="max_concurrent_positions") == ignored + 1


async def test_filled_position_counts_until_it_closes(db, bus, user, account):
    bot = await add_bot(db, user, account, risk_max_concurrent_positions=1, risk_max_per_symbol=5)
    service = make_service(bus, db)
    await service.handle_signal(make_signal(bot, bar_time=T0))
    first = intents(bus)[0]
    await service.handle_execution_report(fill(first))
    await service.handle_position_event(position(first, "opened"))
    await service.handle_signal(make_signal(bot, bar_time=T0 + timedelta(minutes=1)))
    await service.handle_position_event(position(first, "closed", close_price=2004.0, pnl=3.9, close_reason="tp"))
    await service.handle_signal(make_signal(bot, bar_time=T0 + timedelta(minutes=2)))
    assert [d.reason for d in await decisions(db, bot.id)] == ["ok", "max_concurrent_positions", "ok"]


async def test_per_symbol_limit_spans_the_accounts_bots(db, bus, user, account):
    scalper = await add_bot(db, user, account, risk_max_per_symbol=1)
    harami = await add_bot(db, user, account, engine_mode="harami", default_timeframe="5m", risk_max_per_symbol=1)
    euro = await add_bot(db, user, account, symbol="EURUSDm", risk_max_per_symbol=1)
    service = make_service(bus, db)
    await service.handle_signal(make_signal(scalper))
    await service.handle_signal(make_signal(harami))
    await service.handle_signal(make_signal(euro, entry=1.085, stop=1.084, target=1.087))
    assert [d.reason for d in await decisions(db, scalper.id)] == ["ok"]
    assert [d.reason for d in await decisions(db, harami.id)] == ["max_per_symbol"]
    assert [d.reason for d in await decisions(db, euro.id)] == ["ok"]


@pytest.mark.parametrize(("server_time", "after_midnight"), [("+2", "open"), ("utc", "ignore")])
async def test_trades_per_day_reset_at_the_broker_day_start(db, bus, user, server_time, after_midnight):
    account = await add_account(db, user, server_time=server_time)
    bot = await add_bot(db, user, account, max_trades_per_day=1, risk_max_concurrent_positions=10, risk_max_per_symbol=10)
    clock = ManualClock(datetime(2024, 3, 1, 21, 50, tzinfo=UTC))  # 23:50 on a UTC+2 server
    service = make_service(bus, db, clock)

    await service.handle_signal(make_signal(bot, bar_time=clock.now() - timedelta(minutes=1)))
    clock.set(datetime(2024, 3, 1, 21, 55, tzinfo=UTC))
    await service.handle_signal(make_signal(bot, bar_time=clock.now() - timedelta(minutes=1)))
    clock.set(datetime(2024, 3, 1, 22, 5, tzinfo=UTC))  # 00:05 on the UTC+2 server: a new broker day
    await service.handle_signal(make_signal(bot, bar_time=clock.now() - timedelta(minutes=1)))

    rows = await decisions(db, bot.id)
    assert [d.action for d in rows] == ["open", "ignore", after_midnight]
    assert rows[1].reason == "max_trades_per_day"
    check = next(c for c in rows[1].checks if c["name"] == "max_trades_per_day")
    assert (check["value"], check["limit"]) == (1, 1)


async def test_exposure_from_the_read_model(db, bus, user, account):
    bot = await add_bot(db, user, account)
    other = await add_bot(db, user, account, engine_mode="harami")
    rows = [  # (bot, order_status, position_status, created_at)
        (bot, "rejected", None, T0),  # never a trade, never open
        (bot, "filled", "closed", T0),  # a trade of the day, no longer open
        (bot, "sent", None, T0),  # sent, not filled: open and a trade
        (bot, "filled", "open", T0 - timedelta(days=1)),  # open, but yesterday's trade
        (other, "sent", None, T0),  # the other bot's: counts on the symbol only
    ]
    async with transaction(db) as s:
        for i, (owner, order_status, position_status, created_at) in enumerate(rows):
            s.add(
                SignalRow(
                    signal_id=f"s{i}",
                    bot_id=owner.id,
                    account_id=account.id,
                    symbol="XAUUSDm",
                    timeframe="1m",
                    strategy="x",
                    side="buy",
                    bar_time=T0 + timedelta(minutes=i),
                    entry=1,
                    stop=0.5,
                    target=2,
                    score=1,
                )
            )
            await s.flush()
            s.add(
                Decision(
                    signal_id=f"s{i}",
                    bot_id=owner.id,
                    account_id=account.id,
                    symbol="XAUUSDm",
                    action="open",
                    reason="ok",
                    order_status=order_status,
                    position_status=position_status,
                    created_at=created_at,
                )
            )
            await s.flush()
    async with db() as s:
        loaded_bot, loaded_account = await s.get(Bot, bot.id), await s.get(BrokerAccount, account.id)
        exposure = await load_exposure(session=s, bot=loaded_bot, account=loaded_account, now=T0 + timedelta(hours=1))
    assert (exposure.open_positions, exposure.open_on_symbol, exposure.trades_today) == (2, 3, 2)


@pytest.mark.parametrize("status", ["paused", "killed"])
async def test_signal_of_a_stopped_bot_is_recorded_and_ignored(db, bus, user, account, status):
    bot = await add_bot(db, user, account, status=status)
    service = make_service(bus, db)
    before = metric("decision_ignored_total", reason="bot_not_active")
    await service.handle_signal(make_signal(bot))
    [decision] = await decisions(db, bot.id)
    assert (decision.action, decision.reason) == ("ignore", "bot_not_active")
    assert intents(bus) == []
    assert metric("decision_ignored_total", reason="bot_not_active") == before + 1


async def test_signal_for_an_inactive_account_is_ignored(db, bus, user):
    closed = await add_account(db, user, is_active=False)
    bot = await add_bot(db, user, closed)
    await make_service(bus, db).handle_signal(make_signal(bot))
    [decision] = await decisions(db, bot.id)
    assert (decision.action, decision.reason) == ("ignore", "account_not_active")
    assert intents(bus) == []


async def test_fixed_pips_bot_sends_converted_stops(db, bus, user, account):
    bot = await add_bot(db, user, account, sl_tp_mode="fixed_pips", default_sl_pips=3, default_tp_pips=5, default_qty=0.037)
    service = make_service(bus, db)
    await service.handle_signal(make_signal(bot, side="sell", entry=2000.0, stop=2010.0, target=1990.0))
    [intent] = intents(bus)
    assert (intent.sl, intent.tp, intent.volume) == (2000.3, 1999.5, 0.03)


async def test_signal_for_an_unknown_bot_is_ignored_without_error(db, bus, user, account):
    bot = await add_bot(db, user, account)
    service = make_service(bus, db)
    stranger = make_signal(bot).model_copy(update={"bot_id": bot.id + 100})
    await service.on_signals_queue(stranger, delivery(stranger))
    assert await count(db, SignalRow) == 0
    assert await count(db, Decision) == 0
    assert bus.published == []


async def test_signal_naming_another_account_is_invalid(db, bus, user, account):
    bot = await add_bot(db, user, account)
    service = make_service(bus, db)
    with pytest.raises(InvalidMessage):
        await service.handle_signal(make_signal(bot, account_id=account.id + 1))
    with pytest.raises(InvalidMessage):
        await service.handle_signal(make_signal(bot, symbol="EURUSDm"))
    assert await count(db, SignalRow) == 0


async def test_wrong_message_on_a_queue_is_invalid(db, bus):
    service = make_service(bus, db)
    plan = ScanPlan(symbols=())
    with pytest.raises(InvalidMessage):
        await service.on_signals_queue(plan, delivery(plan))
    with pytest.raises(InvalidMessage):
        await service.on_events_queue(plan, delivery(plan))


def test_client_order_id_fits_26_characters():
    sid = uuid.uuid4()
    assert client_order_id_for(bot_id=3, decision_id=42, signal_id=sid) == f"sc3-42-{sid.hex[:6]}"
    for bot_id, decision_id in [(10**6, 10**9), (10**9, 10**12), (1, 10**20)]:
        coid = client_order_id_for(bot_id=bot_id, decision_id=decision_id, signal_id=sid)
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,26}", coid) and str(decision_id) in coid


async def test_database_failure_is_transient_and_publishes_nothing(db, bus, user, account):
    bot = await add_bot(db, user, account)

    class Broken:
        def __call__(self):
            raise ConnectionError("database unreachable")

    service = make_service(bus, Broken())
    with pytest.raises(ConnectionError):
        await service.handle_signal(make_signal(bot))
    assert bus.published == []
    ok, details = await service.readiness()
    assert ok is False and details["database"] is False
    ok, details = await make_service(bus, db).readiness()
    assert ok is True and details["database"] is True


async def test_decision_rows_use_the_injected_clock(db, bus, user, account):
    bot = await add_bot(db, user, account)
    clock = ManualClock(datetime(2031, 1, 2, 3, 4, tzinfo=UTC))
    await make_service(bus, db, clock).handle_signal(make_signal(bot))
    [decision] = await decisions(db, bot.id)
    assert decision.created_at == clock.now()
    async with transaction(db) as s:
        row = (await s.execute(select(SignalRow))).scalar_one()
    assert row.created_at == clock.now()
