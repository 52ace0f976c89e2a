"""A scan's signals decided together (services/decision/batch.py) make exactly the decisions one at a time makes.

The recorded scan: four accounts (hedging, netting, a +2 broker clock, one switched off), ten bots each (five symbols,
two engines) with tight limits, an earlier scan already decided (orders sent, one filled, one closed), then 150-odd
signals that compete for those limits, with a signal twice in the scan, a repeat of the earlier scan's signal whose
order is still unanswered, a signal with an earlier row's dedupe key under another id, an unknown bot, another
account's bot and another symbol. The scan is replayed on a fresh database both ways, and every stored row (signals,
decisions with their checks, audit, outbox) and every published intent compared.
"""

from __future__ import annotations

import json
import random
import uuid
from datetime import timedelta

import pytest
from decision_helpers import T0, RecordingBus, add_account, add_bot, add_user, delivery, make_settings
from sqlalchemy import select, text, update
from sqlmodel import SQLModel

from services.decision.decisions import INTENT_NAMESPACE
from services.decision.service import DecisionService
from shared.bus import topology
from shared.db.engine import transaction
from shared.db.models import AuditLog, Decision, OutboxRow, SignalRow
from shared.messages import InvalidMessage, OrderIntent, Signal, signal_id_for
from shared.outbox import OutboxRelay
from shared.timeutil import ManualClock

SYMBOLS = {"XAUUSD": (2000.0, 0.01), "EURUSD": (1.1, 0.00001), "GBPUSD": (1.27, 0.00001), "USDCHF": (0.88, 0.00001), "AUDUSD": (0.66, 0.00001)}
STRATEGIES = ("price_action_pinbar", "trend_pullback", "doji_breakout", "range_reversion")


async def wipe(sessions) -> None:
    """Every table emptied and its ids started again, so both replays number their rows alike."""
    async with sessions() as session:
        dialect = session.get_bind().dialect.name
    tables = [t.name for t in reversed(SQLModel.metadata.sorted_tables)]
    async with transaction(sessions) as session:
        if dialect == "postgresql":
            await session.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        else:
            for name in tables:
                await session.execute(text(f'DELETE FROM "{name}"'))
            if (await session.execute(text("SELECT name FROM sqlite_master WHERE name = 'sqlite_sequence'"))).first():
                await session.execute(text("DELETE FROM sqlite_sequence"))


async def seed(sessions):
    """Users, accounts and bots, and an earlier scan decided one at a time; the bots by (account index, symbol, engine)."""
    alice, bob = await add_user(sessions, "alice"), await add_user(sessions, "bob")
    accounts = [
        await add_account(sessions, alice, name="hedge", symbol_suffix="m"),
        await add_account(sessions, alice, name="net", margin_mode="netting"),
        await add_account(sessions, bob, name="plus2", server_time="+2", max_volume=0.05),
        await add_account(sessions, bob, name="off", is_active=False),
    ]
    rng = random.Random(7)
    bots = {}
    for a, account in enumerate(accounts):
        user = alice if a < 2 else bob
        for symbol in SYMBOLS:
            for engine in ("scalper", "harami"):
                bots[(a, symbol, engine)] = await add_bot(
                    sessions, user, account, symbol=symbol + account.symbol_suffix, engine_mode=engine,
                    risk_max_concurrent_positions=rng.choice((1, 2, 3)), risk_max_per_symbol=rng.choice((1, 2)),
                    max_trades_per_day=rng.choice((2, 4, 25)), decision_min_score=rng.choice((0.3, 0.5, 0.7)),
                    default_qty=rng.choice((0.01, 0.02, 0.1)), sl_tp_mode=rng.choice(("strategy", "strategy", "fixed_pips")),
                    correlation_check=rng.random() < 0.7,
                )
    return accounts, bots


def signal(bot, *, strategy, bar_time, side, score, rng, window, signal_id=None, account_id=None, symbol=None) -> Signal:
    base = bot.symbol.removesuffix("m") if bot.symbol.endswith("m") and bot.symbol[:-1] in SYMBOLS else bot.symbol
    price, point = SYMBOLS[base]
    entry = round(price + rng.randint(-50, 50) * point, 5)
    risk = rng.randint(20, 300) * point
    reward = risk * rng.choice((1.0, 1.5, 2.0))
    stop, target = (entry - risk, entry + reward) if side == "buy" else (entry + risk, entry - reward)
    symbol = symbol or bot.symbol
    return Signal(
        signal_id=signal_id or signal_id_for(bot_id=bot.id, symbol=symbol, strategy=strategy, timeframe="1m", bar_time=bar_time),
        window_id=window, bot_id=bot.id, account_id=bot.account_id if account_id is None else account_id, symbol=symbol,
        timeframe="1m", strategy=strategy, side=side, bar_time=bar_time, entry=entry, stop=round(stop, 5), target=round(target, 5),
        score=score, features={"atr": round(risk * 2, 5), "spread_points": rng.randint(0, 12)},
    )


def recorded_scan(bots, *, bar_time, rng, earlier: list[Signal]) -> list[Signal]:
    window = uuid.UUID(int=rng.getrandbits(128))
    out = []
    for bot in bots.values():
        for strategy in rng.sample(STRATEGIES, rng.randint(1, 4)):
            out.append(signal(bot, strategy=strategy, bar_time=bar_time, side=rng.choice(("buy", "sell")),
                              score=round(rng.uniform(0.25, 1.0), 3), rng=rng, window=window))
    rng.shuffle(out)
    some = next(iter(bots.values()))
    out.insert(5, out[3])  # the same signal twice in one scan (a redelivered window's copy)
    out.append(earlier[0])  # the earlier scan's signal again: its decision, and its intent while unanswered
    first = earlier[1]
    out.append(first.model_copy(update={"signal_id": uuid.UUID(int=rng.getrandbits(128)), "entry": first.entry + 1.0}))  # dedupe key
    out.append(signal(some, strategy="trend_pullback", bar_time=bar_time, side="buy", score=0.9, rng=rng,
                      window=window).model_copy(update={"bot_id": 9_999}))  # a bot nobody has
    other = bots[(1, "EURUSD", "scalper")]
    out.insert(10, signal(some, strategy="doji_breakout", bar_time=bar_time, side="buy", score=0.9, rng=rng, window=window,
                          account_id=other.account_id))  # names another account than its bot's
    out.insert(20, signal(some, strategy="range_reversion", bar_time=bar_time, side="sell", score=0.9, rng=rng, window=window,
                          symbol="GBPUSD"))  # another symbol than its bot's
    return out


async def replay(sessions, *, together: bool):
    """Seed, decide the earlier scan one at a time, then the recorded scan both ways; every row and intent after."""
    await wipe(sessions)
    accounts, bots = await seed(sessions)
    bus = RecordingBus()
    clock = ManualClock(T0)
    service = DecisionService(bus=bus, sessions=sessions, clock=clock, settings=make_settings(), lookback_for=lambda c: 100,
                              outbox=OutboxRelay(bus=bus, sessions=sessions, retry_min_s=0.01, retry_max_s=0.05))
    rng = random.Random(2024)
    earlier = [signal(bot, strategy=s, bar_time=T0 - timedelta(minutes=1), side=rng.choice(("buy", "sell")), score=0.95, rng=rng,
                      window=None) for bot in list(bots.values())[:16] for s in STRATEGIES[:1]]
    for s in earlier:
        await service.handle_signal(s)
    async with transaction(sessions) as session:  # the broker answered some: a fill, a close
        ids = (await session.execute(select(Decision.id).where(Decision.action == "open").order_by(Decision.id))).scalars().all()
        assert len(ids) >= 6, "the earlier scan opened too few orders to test against"
        await session.execute(update(Decision).where(Decision.id.in_(ids[1:4])).values(order_status="filled", position_status="open"))
        await session.execute(update(Decision).where(Decision.id == ids[4]).values(order_status="filled", position_status="closed"))
    open_first = await _first_sent(sessions, earlier)
    clock.set(T0 + timedelta(seconds=20))
    scan = recorded_scan(bots, bar_time=T0, rng=rng, earlier=[open_first, earlier[-1]])
    bus.published.clear()
    refused = 0
    if together:
        await service.decide_scan(scan)
    else:
        for s in scan:
            try:
                await service.handle_signal(s)
            except InvalidMessage:
                refused += 1
    await service.outbox.stop()
    async with sessions() as session:
        tables = {}
        for model, order in ((SignalRow, SignalRow.signal_id), (Decision, Decision.id), (AuditLog, AuditLog.id), (OutboxRow, OutboxRow.id)):
            rows = (await session.execute(select(model.__table__).order_by(order))).all()
            tables[model.__tablename__] = [_comparable(model, r) for r in rows]
    intents = [(key, m.model_dump()) for key, m in bus.sent(topology.EXECUTION_ORDERS) if isinstance(m, OrderIntent)]
    return scan, tables, intents, refused


def _comparable(model, row) -> dict:
    values = dict(row._mapping)
    if model is OutboxRow:
        values.pop("published_at")  # when the row was written and confirmed: wall time, not the decision's
        values.pop("created_at")
        values["body"] = json.loads(values["body"])
    return values


def normalised(tables: dict, intents: list) -> dict:
    """The rows with every decision id (and what is made of it: the client order id, the intent's message id) named
    by its signal instead: accounts decided side by side number their decisions in whichever order they commit, and
    one account's rows keep their order. Rows sorted by signal, bot or account (stably)."""
    names: dict[str, str] = {}
    for d in tables["decisions"]:
        names[str(d["id"])] = f"decision-of-{d['signal_id']}"
        if d["client_order_id"]:
            names[d["client_order_id"]] = f"order-of-{d['signal_id']}"
            names[str(uuid.uuid5(INTENT_NAMESPACE, d["client_order_id"]))] = f"intent-of-{d['signal_id']}"

    def name(value, key=None):
        if isinstance(value, dict):
            return {k: name(v, k) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [name(v) for v in value]
        if key in ("id", "decision_id", "entity_id", "client_order_id", "message_id", "comment") and str(value) in names:
            return names[str(value)]
        if isinstance(value, str):
            for raw, token in names.items():
                if raw.startswith("sc") and raw in value:
                    value = value.replace(raw, token)
        return value

    out = {
        "signals": tables["signals"],
        "decisions": sorted((name(d) for d in tables["decisions"]), key=lambda d: d["signal_id"]),
        "audit_log": sorted(({k: v for k, v in name(a).items() if k != "id"} for a in tables["audit_log"]), key=lambda a: a["bot_id"] or 0),
        "outbox": sorted(({k: v for k, v in name(o).items() if k != "id"} for o in tables["outbox"]), key=lambda o: o["routing_key"]),
        "intents": sorted(([key, name(i)] for key, i in intents), key=lambda ki: ki[0]),
    }
    return out


async def _first_sent(sessions, earlier: list[Signal]) -> Signal:
    async with sessions() as session:
        sent = set((await session.execute(select(Decision.signal_id).where(Decision.order_status == "sent"))).scalars())
    return next(s for s in earlier if str(s.signal_id) in sent)


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgresql", marks=pytest.mark.services)], indirect=True)
async def test_a_scan_decided_together_makes_the_decisions_of_one_at_a_time(db):
    scan, alone, alone_intents, refused = await replay(db, together=False)
    scan_again, together, together_intents, _ = await replay(db, together=True)
    same = {"message_id", "produced_at"}  # each Signal's own envelope; the decision reads neither
    assert [s.model_dump(exclude=same) for s in scan] == [s.model_dump(exclude=same) for s in scan_again]  # the same scan

    assert refused == 2  # another account's bot, another symbol: refused alone, both ways
    alone_rows, together_rows = normalised(alone, alone_intents), normalised(together, together_intents)
    for table in ("signals", "decisions", "audit_log", "outbox", "intents"):
        assert len(together_rows[table]) == len(alone_rows[table]), table
        for a, b in zip(alone_rows[table], together_rows[table], strict=True):
            assert a == b, f"{table}: one at a time {a} != together {b}"

    # The scan exercised the limits, not only the happy path: several reasons, opens, and a repeat's intent resent.
    decided_now = [d for d in alone["decisions"] if d["created_at"] == T0 + timedelta(seconds=20)]
    reasons = {d["reason"] for d in decided_now}
    assert sum(d["action"] == "open" for d in decided_now) >= 8
    assert {"max_concurrent_positions", "score_below_min", "account_not_active", "stop_within_spread"} <= reasons, reasons
    assert len(reasons) >= 6, reasons
    assert len(decided_now) >= 90
    repeats = [i for _, i in alone_intents if i["produced_at"] < T0 + timedelta(seconds=20)]
    assert repeats, "the earlier scan's unanswered order was not sent again"


async def test_a_scan_result_on_the_bus_is_decided_and_its_refused_signal_counted_not_waited_for(sessions):
    from services.decision.service import signals_refused_total
    from shared.messages import BotScan, ScanReport, ScanResult

    user = await add_user(sessions)
    account = await add_account(sessions, user)
    gold = await add_bot(sessions, user, account, symbol="XAUUSD")
    euro = await add_bot(sessions, user, account, symbol="EURUSD")
    window = uuid.uuid4()
    rng = random.Random(1)
    good = signal(gold, strategy="trend_pullback", bar_time=T0, side="buy", score=0.9, rng=rng, window=window)
    other = signal(euro, strategy="trend_pullback", bar_time=T0, side="sell", score=0.9, rng=rng, window=window)
    wrong = signal(gold, strategy="doji_breakout", bar_time=T0, side="buy", score=0.9, rng=rng, window=window, symbol="GBPUSD")
    report = ScanReport(window_id=window, symbol="XAUUSD", timeframe="1m", bar_time=T0, bots=(
        BotScan(bot_id=gold.id, strategies=("trend_pullback", "doji_breakout"), signal_ids=(good.signal_id, wrong.signal_id)),
        BotScan(bot_id=euro.id, strategies=("trend_pullback",), signal_ids=(other.signal_id,)),
    ))
    bus = RecordingBus()
    service = DecisionService(bus=bus, sessions=sessions, clock=ManualClock(T0), settings=make_settings(), lookback_for=lambda c: 100,
                              outbox=OutboxRelay(bus=bus, sessions=sessions, retry_min_s=0.01, retry_max_s=0.05))
    before = signals_refused_total.labels(reason="invalid_signal")._value.get()
    result = ScanResult(signals=(good, wrong, other), report=report)
    await service.on_signals_queue(result, delivery(result))  # decided, and its scan lines logged: no redelivery asked

    async with sessions() as session:
        decided = dict((await session.execute(select(Decision.signal_id, Decision.action))).all())
    assert decided == {str(good.signal_id): "open", str(other.signal_id): "open"}
    assert signals_refused_total.labels(reason="invalid_signal")._value.get() == before + 1
    intents = bus.of(OrderIntent)
    assert sorted(i.bot_id for i in intents) == sorted([gold.id, euro.id])
    await service.outbox.stop()
