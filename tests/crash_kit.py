"""Crash-loop kit: snapshots of the executor's tables between lives, and the money path's invariants after them.

Used by tests/e2e/test_crash_loop.py (embedded `scalper run`, SIGKILLed and restarted on one SQLite file) and
tests/distributed/test_crash_loop.py (the active executor SIGKILLed, a standby taking over, on PostgreSQL).

A "life" is the time one process holds the broker session: an embedded process between its start and its kill, or
the active executor between its take-over and its kill. Between two lives nothing writes `orders` or `positions`
(the dead process cannot, the next one has not started or not taken over yet), so a snapshot taken there is
exactly what the next life's paper broker is rebuilt from (the open position rows) and tells which orders were
filled before it.

The checks (each failure lists its first offending rows):

1. every filled order has exactly one position row, with its account, client_order_id and ticket (hedging
   accounts; on a netting account a deal may add to another order's position and is not checked);
2. no broker ticket is shared by two orders of one account (architecture.md, idempotency chain, step 7);
3. no order is left `received` or `sending` once the pipeline has settled;
4. every decision to open has an order, and that order is filled, rejected, failed or expired;
5. no position row is left without the filled order that opened it (a row the engine wrote, not `external`);
6. no bot is blocked by phantoms: every leg the decision service's risk counts as open (decisions read model:
   action `open`, order_status `sent` or `filled`, position_status not `closed`) is a position row that is open;
7. the open position rows are explained by the paper broker's state: the paper broker keeps its positions in memory
   and is rebuilt, at each life's start, from the open rows; so at the end the only positions it can hold are the
   rows open when the final life started (restored) and the positions of orders filled during the final life.
   An open row that is neither is a position the broker does not have (it would block its bot for good).
   What cannot be checked from outside: that a restored or final-life position the table shows open has not been
   closed by the broker unseen; check 1 and 6 catch the usual way that happens (a fill or close matched to an
   older row of the same ticket).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

FINAL = ("filled", "rejected", "failed", "expired")
LIVE_ORDER_STATUSES = ("sent", "filled")  # what decision's risk counts as a live leg (services/decision/decisions.py)
SHOW = 5  # offending rows shown per failed check


def seed() -> int:
    """The kill moments' seed: SCALPER_CRASH_SEED, or a fixed one so a failure can be replayed."""
    return int(os.environ.get("SCALPER_CRASH_SEED", "20260325"))


def kill_delays(rng: random.Random, n: int, low: float, high: float) -> list[float]:
    return [round(rng.uniform(low, high), 2) for _ in range(n)]


# --- tables ------------------------------------------------------------------------------------------------


@dataclass
class Tables:
    orders: list
    positions: list
    decisions: list
    bots: list
    accounts: list


async def _load(url: str) -> Tables:
    from shared.db.engine import create_engine, session_factory
    from shared.db.models import Bot, BrokerAccount, Decision, Order, Position

    engine = create_engine(url)
    try:
        async with session_factory(engine)() as session:
            got = [list((await session.execute(select(m))).scalars()) for m in (Order, Position, Decision, Bot, BrokerAccount)]
    finally:
        await engine.dispose()
    return Tables(*got)


def load(url: str) -> Tables:
    """Every row of the tables the checks read (sync: call it from a test, not from a running loop)."""
    return asyncio.run(_load(url))


@dataclass
class Boundary:
    """The tables between two lives (after life `after_life`, before the next)."""

    after_life: int
    filled: frozenset[str]  # client_order_ids of filled orders
    orders: frozenset[str]  # client_order_ids of every order row
    open_positions: frozenset[tuple[int, int, str | None]]  # (account_id, ticket, client_order_id)
    max_decision_id: int


def boundary(url: str, after_life: int) -> Boundary:
    t = load(url)
    return Boundary(
        after_life=after_life,
        filled=frozenset(o.client_order_id for o in t.orders if o.status == "filled"),
        orders=frozenset(o.client_order_id for o in t.orders),
        open_positions=frozenset((p.account_id, p.ticket, p.client_order_id) for p in t.positions if p.status == "open"),
        max_decision_id=max((d.id for d in t.decisions), default=0),
    )


# --- the checks ----------------------------------------------------------------------------------------------


def _order(o) -> dict:
    return {"id": o.id, "account": o.account_id, "bot": o.bot_id, "coid": o.client_order_id, "status": o.status,
            "ticket": o.ticket, "price": o.price, "decision": o.decision_id, "reason": (o.reason or "")[:80]}


def _position(p) -> dict:
    return {"id": p.id, "account": p.account_id, "bot": p.bot_id, "ticket": p.ticket, "coid": p.client_order_id,
            "status": p.status, "opened_at": str(p.opened_at), "closed_at": str(p.closed_at), "close_reason": p.close_reason}


def _decision(d) -> dict:
    return {"id": d.id, "bot": d.bot_id, "coid": d.client_order_id, "order_status": d.order_status, "ticket": d.ticket,
            "position_status": d.position_status, "reason": d.reason, "created_at": str(d.created_at)}


def _problem(title: str, items: list) -> str:
    shown = "\n".join(f"    {json.dumps(x, default=str)}" for x in items[:SHOW])
    more = f"\n    ... and {len(items) - SHOW} more" if len(items) > SHOW else ""
    return f"{len(items)} {title}:\n{shown}{more}"


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    def fail_if_any(self) -> None:
        """Fail the test with every problem (and the summary) when there is one."""
        import pytest

        if self.problems:
            pytest.fail(self.text(), pytrace=False)

    def text(self) -> str:
        head = "crash-loop summary: " + json.dumps(self.summary, default=str)
        if not self.problems:
            return head + "\nall invariants hold"
        return head + "\n" + "\n".join(f"- {p}" for p in self.problems)


def life_of(coid: str, boundaries: list[Boundary]) -> int:
    """The life an order was filled in: the first boundary that shows it filled (final life: len(boundaries) + 1)."""
    for b in boundaries:
        if coid in b.filled:
            return b.after_life
    return len(boundaries) + 1


def check(t: Tables, boundaries: list[Boundary], *, lives: int) -> Report:
    """The invariants of the module docstring over the final tables, given the snapshots between the lives."""
    report = Report()
    problems = report.problems
    netting = {a.id for a in t.accounts if (a.margin_mode or "").lower() == "netting"}
    filled = [o for o in t.orders if o.status == "filled"]
    hedging_filled = [o for o in filled if o.account_id not in netting]
    positions_by_coid: dict[tuple[int, str | None], list] = defaultdict(list)
    positions_by_ticket: dict[tuple[int, int], list] = defaultdict(list)
    for p in t.positions:
        positions_by_coid[(p.account_id, p.client_order_id)].append(p)
        positions_by_ticket[(p.account_id, p.ticket)].append(p)

    # 1. every filled order: exactly one position row (account, client_order_id), with the order's ticket.
    bad = []
    for o in hedging_filled:
        mine = positions_by_coid.get((o.account_id, o.client_order_id), [])
        if len(mine) != 1 or mine[0].ticket != o.ticket:
            holder = positions_by_ticket.get((o.account_id, o.ticket), [])
            bad.append({**_order(o), "life": life_of(o.client_order_id, boundaries), "positions_with_its_coid": [_position(p) for p in mine],
                        "positions_with_its_ticket": [_position(p) for p in holder]})
    if bad:
        problems.append(_problem("filled orders without exactly one position row (matched by account and client_order_id, same ticket)", bad))

    # 2. no ticket shared by two orders of one account.
    by_ticket: dict[tuple[int, int], list] = defaultdict(list)
    for o in hedging_filled:
        if o.ticket is not None:
            by_ticket[(o.account_id, o.ticket)].append(o)
    reused = [{"account": k[0], "ticket": k[1], "orders": [{**_order(o), "life": life_of(o.client_order_id, boundaries)} for o in v]}
              for k, v in sorted(by_ticket.items()) if len(v) > 1]
    if reused:
        problems.append(_problem(f"tickets shared by two or more orders of one account ({sum(len(r['orders']) for r in reused)} orders)", reused))

    # 3. nothing left unsettled.
    unsettled = [_order(o) for o in t.orders if o.status not in FINAL]
    if unsettled:
        problems.append(_problem("orders left unsettled (received/sending)", unsettled))

    # 4. every decision to open has a final order.
    orders_by_decision = {o.decision_id: o for o in t.orders}
    opens = [d for d in t.decisions if d.action == "open"]
    orphan_decisions = []
    for d in opens:
        o = orders_by_decision.get(d.id)
        if o is None or o.status not in FINAL:
            orphan_decisions.append({**_decision(d), "order": None if o is None else _order(o)})
    if orphan_decisions:
        problems.append(_problem("decisions to open without a filled/rejected/failed/expired order", orphan_decisions))

    # 5. no position row without the filled order that opened it.
    filled_coids = {(o.account_id, o.client_order_id) for o in filled}
    orphans = [_position(p) for p in t.positions if not p.external and (p.account_id, p.client_order_id) not in filled_coids]
    if orphans:
        problems.append(_problem("position rows without a filled order of their client_order_id", orphans))

    # 6. every leg risk counts as open is an open position row.
    open_rows = {(p.account_id, p.client_order_id): p for p in t.positions if p.status == "open"}
    phantom_legs = []
    for d in opens:
        if d.order_status in LIVE_ORDER_STATUSES and d.position_status != "closed" and (d.account_id, d.client_order_id) not in open_rows:
            o = orders_by_decision.get(d.id)
            phantom_legs.append({**_decision(d), "order": None if o is None else _order(o),
                                 "position": [_position(p) for p in positions_by_coid.get((d.account_id, d.client_order_id), [])]})
    if phantom_legs:
        problems.append(_problem("legs the decision service's risk counts as open that are no open position (phantoms)", phantom_legs))

    # 7. the open rows are the paper broker's: restored at the final life's start, or filled in the final life.
    last = boundaries[-1] if boundaries else None
    unexplained = []
    for p in t.positions:
        if p.status != "open" or p.external or last is None:
            continue
        restored = (p.account_id, p.ticket, p.client_order_id) in last.open_positions
        final_fill = p.client_order_id not in last.filled
        if not (restored or final_fill):
            unexplained.append({**_position(p), "life": life_of(p.client_order_id or "", boundaries)})
    if unexplained:
        problems.append(_problem("open position rows the paper broker cannot hold (neither restored at the final start nor filled in the final life)", unexplained))

    # Blocked bots: the phantoms per bot, and what the risk refused in the final life.
    refusals = Counter(
        (d.bot_id, d.reason) for d in t.decisions
        if d.action != "open" and last is not None and d.id > last.max_decision_id
        and d.reason in ("max_concurrent_positions", "max_per_symbol")
    )
    phantom_by_bot = Counter(x["bot"] for x in phantom_legs)
    blocked = []
    for bot in t.bots:
        limit = min(bot.risk_max_concurrent_positions, bot.risk_max_per_symbol)
        if phantom_by_bot[bot.id] >= max(limit, 1):
            blocked.append({"bot": bot.id, "symbol": bot.symbol, "status": bot.status, "phantom_legs": phantom_by_bot[bot.id],
                            "max_concurrent_positions": bot.risk_max_concurrent_positions, "max_per_symbol": bot.risk_max_per_symbol,
                            "final_life_refusals": {r: n for (b, r), n in refusals.items() if b == bot.id}})
    if blocked:
        problems.append(_problem("bots blocked for good by phantom legs (as many as their position limit)", blocked))

    # Summary, and fills per life (the run must have traded before and after the kills).
    per_life = Counter(life_of(o.client_order_id, boundaries) for o in filled)
    report.summary = {
        "lives": lives,
        "restarts": len(boundaries),
        "orders": dict(Counter(o.status for o in t.orders)),
        "filled_per_life": {i: per_life.get(i, 0) for i in range(1, lives + 1)},
        "positions": dict(Counter(p.status for p in t.positions)),
        "decisions": dict(Counter(d.action for d in t.decisions)),
        "final_life_refusals": {f"bot{b}:{r}": n for (b, r), n in refusals.items()},
        "bots": [{"id": b.id, "symbol": b.symbol, "status": b.status, "reason": b.status_reason[:80]} for b in t.bots],
        "problems": len(problems),
    }
    if not filled:
        problems.append("the run filled no order at all: the test proves nothing (vacuous)")
    else:
        if per_life.get(1, 0) == 0:
            problems.append(f"no order was filled before the first kill (fills per life {report.summary['filled_per_life']})")
        if sum(n for life, n in per_life.items() if life > 1) == 0:
            problems.append(f"no order was filled after the first kill: nothing traded across a restart (fills per life {report.summary['filled_per_life']})")
        if per_life.get(lives, 0) == 0:
            problems.append(f"the final life filled no order, so checks 6-7 saw no fill after a restore (fills per life {report.summary['filled_per_life']})")
    return report


# --- logs ---------------------------------------------------------------------------------------------------

_ODD = re.compile(r'Traceback|"level": "(error|critical|exception)"|\b(ERROR|CRITICAL)\b')


def odd_log_lines(paths: list[Path], *, limit: int = 12) -> tuple[int, list[str]]:
    """Errors and tracebacks in these logs: how many lines, and the first few (name: line)."""
    n, first = 0, []
    for path in paths:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            if _ODD.search(line):
                n += 1
                if len(first) < limit:
                    first.append(f"{path.name}: {line[:400]}")
    return n, first


def warnings_by_event(paths: list[Path]) -> dict[str, int]:
    """JSON log lines at warning or above, counted by their event (what a reader of the logs would notice)."""
    out: Counter = Counter()
    for path in paths:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            if not line.startswith("{"):
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("level") in ("warning", "error", "critical", "exception"):
                out[f"{rec.get('level')}: {str(rec.get('event'))[:90]}"] += 1
    return dict(out.most_common(15))
