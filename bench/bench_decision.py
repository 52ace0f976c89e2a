"""Decision at the database floor: the amortised cost per signal of deciding one 300-signal scan on PostgreSQL.

Ours is the decision service deciding a scan (300 bots on 10 accounts, one signal each; most open an order, one in
five is refused on its score), with its outbox relay publishing to the in-memory bus: what a decision costs at the
database and in Python, without the broker. The floor is the same statements on raw asyncpg in one transaction: for
each account the bots and the account row locked, the signals inserted (ON CONFLICT DO NOTHING RETURNING), one
exposure read, the decisions inserted (RETURNING id) and the opened ones given their client order ids, the audit rows
and the outbox rows inserted; one commit. The floor re-inserts exactly the rows ours wrote in the same repeat, so
both write the same bytes.

Runs in a private database (created and dropped here) on the server of SCALPER_DATABASE_URL (default the machine's
PostgreSQL, 127.0.0.1:5432).

    .venv/bin/python bench/bench_decision.py [--repeats 7] [--accounts 10] [--bots-per-account 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sqlalchemy.engine import make_url  # noqa: E402

from shared.symbols import DEFAULT_SPECS  # noqa: E402

DEFAULT_URL = "postgresql+asyncpg://root@127.0.0.1:5432/test"
TABLES = ("outbox", "audit_log", "decisions", "signals")


def alias(i: int) -> str:
    return f"DEC{i:03d}"


def register_aliases(n: int) -> None:
    """Gold's spec under n alias names: a bot per (account, symbol), so one account holds many bots."""
    gold = DEFAULT_SPECS["XAUUSD"]
    for i in range(n):
        DEFAULT_SPECS.setdefault(alias(i), gold.model_copy(update={"name": alias(i)}))


def dsn(url) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


async def admin(url, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn(url), timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def seed(sessions, accounts: int, bots_per_account: int) -> list:
    from sqlalchemy import insert, select

    from shared.db.engine import transaction
    from shared.db.models import Bot, BrokerAccount, User

    async with transaction(sessions) as session:
        user = User(name="bench")
        session.add(user)
        await session.flush()
        made = [BrokerAccount(user_id=user.id, name=f"bench-{a}", broker="paper") for a in range(accounts)]
        session.add_all(made)
        await session.flush()
        rows = [
            {"user_id": user.id, "account_id": account.id, "symbol": alias(i), "enabled_strategies": ["price_action_pinbar"],
             "strategy_params": {}, "auto_trade": True, "name": f"{alias(i)}-{account.id}", "correlation_check": False}
            for account in made for i in range(bots_per_account)
        ]
        await session.execute(insert(Bot), rows)
    async with sessions() as session:
        return list((await session.execute(select(Bot.id, Bot.account_id, Bot.symbol).order_by(Bot.id))).all())


def scan(bots, bar_time: datetime):
    """One scan's signals (one per bot, every fifth below the bots' minimum score) and its ScanReport."""
    from shared.messages import BotScan, ScanReport, Signal, signal_id_for

    window = uuid.uuid4()
    signals = [
        Signal(
            signal_id=signal_id_for(bot_id=bot.id, symbol=bot.symbol, strategy="price_action_pinbar", timeframe="1m", bar_time=bar_time),
            window_id=window, bot_id=bot.id, account_id=bot.account_id, symbol=bot.symbol, timeframe="1m",
            strategy="price_action_pinbar", side="buy" if i % 2 else "sell", bar_time=bar_time,
            entry=2000.0, stop=1998.0 if i % 2 else 2002.0, target=2004.0 if i % 2 else 1996.0,
            score=0.2 if i % 5 == 0 else 0.8, features={"atr": 2.5, "body": 0.4},
        )
        for i, bot in enumerate(bots)
    ]
    report = ScanReport(window_id=window, symbol="DEC", timeframe="1m", bar_time=bar_time,
                        bots=tuple(BotScan(bot_id=s.bot_id, strategies=("price_action_pinbar",), signal_ids=(s.signal_id,))
                                   for s in signals))
    return signals, report


async def ours(service, signals, report) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    decide = getattr(service, "decide_scan", None)
    if decide is not None:
        await decide(signals, report)
    else:  # one at a time (the path before scans were decided together)
        for signal in signals:
            await service.handle_signal(signal)
    return time.perf_counter() - t0, time.process_time() - c0


# --- the floor: the same statements on raw asyncpg --------------------------------------------------------------

LOCK = """SELECT b.*, a.* FROM bots b JOIN broker_accounts a ON a.id = b.account_id WHERE b.id = ANY($1::int[]) FOR UPDATE OF a"""
INSERT_SIGNALS = """INSERT INTO signals (signal_id, window_id, bot_id, account_id, symbol, timeframe, strategy, side, bar_time,
    entry, stop, target, score, features, created_at)
SELECT s, w, b, a, sy, tf, st, sd, bt, e, sp, tg, sc, f::json, c FROM unnest($1::text[], $2::text[], $3::int[], $4::int[],
    $5::text[], $6::text[], $7::text[], $8::text[], $9::timestamptz[], $10::float8[], $11::float8[], $12::float8[], $13::float8[],
    $14::text[], $15::timestamptz[]) AS u(s, w, b, a, sy, tf, st, sd, bt, e, sp, tg, sc, f, c)
ON CONFLICT DO NOTHING RETURNING signal_id"""
EXPOSURE = """SELECT d.bot_id, d.symbol, d.side, d.volume, d.order_status, d.created_at,
    (d.position_status IS NULL OR d.position_status != 'closed') AS open, s.entry
FROM decisions d LEFT OUTER JOIN signals s ON s.signal_id = d.signal_id
WHERE d.account_id = $1 AND d.action = 'open' AND d.order_status IN ('sent', 'filled')
  AND ((d.position_status IS NULL OR d.position_status != 'closed') OR (d.bot_id = ANY($2::int[]) AND d.created_at >= $3))"""
INSERT_DECISIONS = """INSERT INTO decisions (signal_id, bot_id, account_id, symbol, action, reason, checks, side, volume, sl, tp,
    created_at)
SELECT s, b, a, sy, ac, r, ch::json, sd, v, sl, tp, c FROM unnest($1::text[], $2::int[], $3::int[], $4::text[], $5::text[],
    $6::text[], $7::text[], $8::text[], $9::float8[], $10::float8[], $11::float8[], $12::timestamptz[])
    AS u(s, b, a, sy, ac, r, ch, sd, v, sl, tp, c)
RETURNING id"""
OPEN_DECISIONS = """UPDATE decisions SET client_order_id = u.c, expires_at = u.e, order_status = 'sent'
FROM unnest($1::int[], $2::text[], $3::timestamptz[]) AS u(i, c, e) WHERE decisions.id = u.i"""
INSERT_AUDIT = """INSERT INTO audit_log (at, actor, user_id, bot_id, kind, entity_id, message, before, after)
SELECT t, ac, u, b, k, e, m, bf::json, af::json FROM unnest($1::timestamptz[], $2::text[], $3::int[], $4::int[], $5::text[],
    $6::text[], $7::text[], $8::text[], $9::text[]) AS x(t, ac, u, b, k, e, m, bf, af)"""
INSERT_OUTBOX = """INSERT INTO outbox (exchange, routing_key, message_type, body, created_at, attempts)
SELECT x, r, t, b, c, 0 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[]) AS u(x, r, t, b, c)
RETURNING id"""


def _json(value) -> str | None:
    return None if value is None else json.dumps(value)


async def written(conn) -> dict[int, dict[str, list]]:
    """The rows ours wrote, by account, as the floor's statements bind them."""
    by_account: dict[int, dict[str, list]] = {}

    def of(account_id: int) -> dict[str, list]:
        return by_account.setdefault(account_id, {"signals": [], "decisions": [], "audit": [], "outbox": []})

    for r in await conn.fetch("SELECT * FROM signals ORDER BY created_at, signal_id"):
        of(r["account_id"])["signals"].append(r)
    for r in await conn.fetch("SELECT * FROM decisions ORDER BY id"):
        of(r["account_id"])["decisions"].append(r)
    bot_account = {r["id"]: r["account_id"] for r in await conn.fetch("SELECT id, account_id FROM bots")}
    for r in await conn.fetch("SELECT * FROM audit_log ORDER BY id"):
        of(bot_account[r["bot_id"]])["audit"].append(r)
    for r in await conn.fetch("SELECT * FROM outbox ORDER BY id"):
        of(int(r["routing_key"]))["outbox"].append(r)
    return by_account


async def floor(conn, rows: dict[int, dict[str, list]], now: datetime) -> float:
    t0 = time.perf_counter()
    async with conn.transaction():
        for account_id, got in rows.items():
            signals, decisions = got["signals"], got["decisions"]
            bot_ids = sorted({s["bot_id"] for s in signals})
            await conn.fetch(LOCK, bot_ids)
            await conn.fetch(INSERT_SIGNALS, *(list(c) for c in zip(*(
                (s["signal_id"], s["window_id"], s["bot_id"], s["account_id"], s["symbol"], s["timeframe"], s["strategy"],
                 s["side"], s["bar_time"], s["entry"], s["stop"], s["target"], s["score"], s["features"], s["created_at"])
                for s in signals), strict=True)))
            await conn.fetch(EXPOSURE, account_id, bot_ids, now - timedelta(days=1))
            ids = await conn.fetch(INSERT_DECISIONS, *(list(c) for c in zip(*(
                (d["signal_id"], d["bot_id"], d["account_id"], d["symbol"], d["action"], d["reason"], d["checks"], d["side"],
                 d["volume"], d["sl"], d["tp"], d["created_at"]) for d in decisions), strict=True)))
            opened = [(row["id"], d["client_order_id"], d["expires_at"]) for row, d in zip(ids, decisions, strict=True)
                      if d["client_order_id"] is not None]
            if opened:
                await conn.execute(OPEN_DECISIONS, *(list(c) for c in zip(*opened, strict=True)))
            await conn.execute(INSERT_AUDIT, *(list(c) for c in zip(*(
                (a["at"], a["actor"], a["user_id"], a["bot_id"], a["kind"], a["entity_id"], a["message"], a["before"], a["after"])
                for a in got["audit"]), strict=True)))
            if got["outbox"]:
                await conn.fetch(INSERT_OUTBOX, *(list(c) for c in zip(*(
                    (o["exchange"], o["routing_key"], o["message_type"], o["body"], o["created_at"]) for o in got["outbox"]),
                    strict=True)))
    return time.perf_counter() - t0


# --- the bench -----------------------------------------------------------------------------------------------


async def run(args) -> None:
    import asyncpg

    from services.decision.service import DecisionService
    from shared.bus.memory import InMemoryBus
    from shared.db.engine import create_engine, session_factory, upgrade
    from shared.logging import configure_logging
    from shared.settings import Settings
    from shared.timeutil import SystemClock

    configure_logging("text", "WARNING")
    server = make_url(os.environ.get("SCALPER_DATABASE_URL") or DEFAULT_URL)
    if server.get_backend_name() != "postgresql":
        raise SystemExit(f"bench_decision needs PostgreSQL; SCALPER_DATABASE_URL is {server.get_backend_name()}")
    name = f"bench_decision_{uuid.uuid4().hex[:10]}"
    await admin(server, f'CREATE DATABASE "{name}"')
    url = server.set(drivername="postgresql+asyncpg", database=name)
    try:
        await asyncio.to_thread(upgrade, url.render_as_string(hide_password=False))
        register_aliases(args.bots_per_account)
        engine = create_engine(url.render_as_string(hide_password=False))
        sessions = session_factory(engine)
        bots = await seed(sessions, args.accounts, args.bots_per_account)
        bus = InMemoryBus()
        settings = Settings(_env_file=None, database_url=url.render_as_string(hide_password=False), log_level="WARNING")
        service = DecisionService(bus=bus, sessions=sessions, clock=SystemClock(), settings=settings, lookback_for=lambda c: 100)
        await bus.start()
        await service.outbox.start()
        await service.refresh_plan()  # as the plan loop does at start: the scan lines are then told from memory
        conn = await asyncpg.connect(dsn(url))
        ours_ms, ours_cpu_ms, floor_ms, opened = [], [], [], 0
        base = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
        for r in range(args.repeats + 1):  # the first round warms both sides (statement caches, pools) and is dropped
            await conn.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY")
            signals, report = scan(bots, base + timedelta(minutes=r))
            took, cpu = await ours(service, signals, report)
            rows = await written(conn)
            decided = sum(len(g["decisions"]) for g in rows.values())
            assert decided == len(signals), f"ours decided {decided} of {len(signals)} signals"
            opened = sum(len(g["outbox"]) for g in rows.values())
            await conn.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY")
            floor_took = await floor(conn, rows, datetime.now(UTC))
            if r:
                ours_ms.append(took * 1000 / len(signals))
                ours_cpu_ms.append(cpu * 1000 / len(signals))
                floor_ms.append(floor_took * 1000 / len(signals))
        await conn.close()
        await service.outbox.stop()
        await bus.close()
        await engine.dispose()
    finally:
        await admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    n = args.accounts * args.bots_per_account
    o, f = statistics.median(ours_ms), statistics.median(floor_ms)
    print(f"{n} signals over {args.accounts} accounts ({opened} opened), {args.repeats} repeats, medians; "
          f"PostgreSQL {server.host}:{server.port}")
    print(f"{'':<44}{'per signal ms':>14}{'scan ms':>10}{'min':>8}{'max':>8}")
    for label, values in (("ours (decision service, in-memory bus)", ours_ms),
                          ("  of which this process's CPU", ours_cpu_ms),
                          ("floor (same statements, raw asyncpg, 1 tx)", floor_ms)):
        med = statistics.median(values)
        print(f"{label:<44}{med:>14.3f}{med * n:>10.1f}{min(values):>8.3f}{max(values):>8.3f}")
    print(f"decision per signal: ours {o:.3f} ms, floor {f:.3f} ms, ratio {o / f:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--accounts", type=int, default=10)
    parser.add_argument("--bots-per-account", type=int, default=30)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
