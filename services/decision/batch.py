"""A scan's signals for one account decided together: the same decisions as one at a time, in a few set-based
statements in one transaction.

`decide_account` takes the signals of one window for one account, in the order the strategy worker produced them,
and gives each the outcome `decisions.handle_signal` would have given it had they been handled one after the other in
that order: the bots read and the account row locked in one query; the signals inserted in one INSERT .. ON CONFLICT
DO NOTHING RETURNING; repeats and their decisions looked up in one query each; one exposure read, which each next
signal sees grown by the decisions made before it in the batch (the rows the one-at-a-time read would have found);
then the decisions in one multi-row INSERT RETURNING id, the opened ones' order columns in one executemany UPDATE,
the audit rows in one INSERT and the order intents in one outbox INSERT. The caller holds the account's lock and
commits once. Core statements only: no ORM objects on the hot path.

A signal that can never be decided (another account's bot, another symbol) is refused alone: its outcome is the
InvalidMessage, which the caller logs and counts; the batch's other signals are decided.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace

from sqlalchemy import Integer, any_, bindparam, select
from sqlalchemy.dialects.postgresql import ARRAY

from services.decision import audit
from services.decision.risk import AccountRules, BotRules, Exposure, Leg
from services.decision.decisions import (
    _ACCOUNTS,
    _BOTS,
    _EXPOSURE_COLUMNS,
    _INSERT_SIGNAL,
    _OPEN_DECISION,
    Decided,
    SignalOutcome,
    _signal_values,
    decision_audit,
    decision_values,
    exposure_where,
    open_values,
    order_intent_for,
    pending_margin,
    risk_result,
    signal_audit,
    strategy_exit_for,
)
from shared import outbox
from shared.bus import topology
from shared.bus.base import TransientError
from shared.db import unnest
from shared.db.models import Decision, SignalRow
from shared.messages import InvalidMessage, Signal
from shared.settings import get_settings
from shared.symbols import canonical_symbol
from shared.timeutil import broker_day_start

_SIGNALS, _DECISIONS = SignalRow.__table__, Decision.__table__

def _bots_in(column):
    """`column` among the batch's bot ids: an IN list (SQLite), or `= ANY` of one array (PostgreSQL: one statement
    text, so one prepared statement, whatever the number of bots)."""
    return {"sqlite": column.in_(bindparam("bot_ids", expanding=True)),
            "postgresql": column == any_(bindparam("bot_ids", type_=ARRAY(Integer)))}


_BOTS_AND_ACCOUNTS = {
    dialect: select(*(c.label(f"bot_{c.name}") for c in _BOTS.c), *(c.label(f"account_{c.name}") for c in _ACCOUNTS.c))
    .join_from(_BOTS, _ACCOUNTS, _ACCOUNTS.c.id == _BOTS.c.account_id)
    .where(where)
    .order_by(_ACCOUNTS.c.id)  # accounts locked in one order, whatever the batch
    .with_for_update(of=_ACCOUNTS)
    for dialect, where in _bots_in(_BOTS.c.id).items()
}
# (attribute, result key) of the bot's and the account's columns, for the rows above.
_BOT_KEYS = tuple((c.name, f"bot_{c.name}") for c in _BOTS.c)
_ACCOUNT_KEYS = tuple((c.name, f"account_{c.name}") for c in _ACCOUNTS.c)
# Rows a new signal may have met: by id, or by its dedupe key (same bots and bar times; matched in Python).
_STORED = select(
    _SIGNALS.c.signal_id, _SIGNALS.c.bot_id, _SIGNALS.c.symbol, _SIGNALS.c.strategy, _SIGNALS.c.timeframe, _SIGNALS.c.bar_time,
    _SIGNALS.c.entry,
).where(
    _SIGNALS.c.signal_id.in_(bindparam("signal_ids", expanding=True))
    | (_SIGNALS.c.bot_id.in_(bindparam("bot_ids", expanding=True)) & _SIGNALS.c.bar_time.in_(bindparam("bar_times", expanding=True)))
)
_DECIDED = select(_DECISIONS).where(_DECISIONS.c.signal_id.in_(bindparam("signal_ids", expanding=True)))
_EXPOSURE_MANY = {
    dialect: select(*_EXPOSURE_COLUMNS).outerjoin(SignalRow, SignalRow.signal_id == Decision.signal_id).where(exposure_where(bots=where))
    for dialect, where in _bots_in(Decision.bot_id).items()
}
# One multi-row INSERT; the ids come back in the order of the rows given.
_INSERT_DECISIONS = _DECISIONS.insert().returning(_DECISIONS.c.id, sort_by_parameter_order=True)

# PostgreSQL: the signals, the decisions and the opened ones' order columns over one array per column
# (shared/db/unnest.py): the rows and values of the Core statements above, without binding each value in Python.
_SIGNAL_COLUMNS = (
    ("signal_id", "text"), ("window_id", "text"), ("bot_id", "int"), ("account_id", "int"), ("symbol", "text"),
    ("timeframe", "text"), ("strategy", "text"), ("side", "text"), ("bar_time", "time"), ("entry", "float"), ("stop", "float"),
    ("target", "float"), ("score", "float"), ("features", "json"), ("p_win", "float"), ("expected_r_net", "float"),
    ("created_at", "time"),
)
_INSERT_SIGNALS_ARRAYS = unnest.insert("signals", _SIGNAL_COLUMNS, returning=("signal_id",), on_conflict_do_nothing=True)
_INSERT_DECISIONS_ARRAYS = unnest.insert("decisions", (
    ("signal_id", "text"), ("bot_id", "int"), ("account_id", "int"), ("symbol", "text"), ("action", "text"), ("reason", "text"),
    ("checks", "json"), ("side", "text"), ("volume", "float"), ("sl", "float"), ("tp", "float"), ("created_at", "time"),
    ("client_order_id", "text"), ("expires_at", "time"), ("order_status", "text"),
), returning=("id", "signal_id"))  # one decision per signal: each id found by its signal
_OPEN_DECISIONS_ARRAYS = unnest.update(
    "decisions", ("id", "int"), (("client_order_id", "text"), ("expires_at", "time"), ("order_status", "text"))
)


@dataclass(frozen=True, slots=True)
class _ExposureRow:
    """A decision this batch made, as the exposure query would read it back (an `open`, sent, its position open)."""

    bot_id: int
    symbol: str
    side: str | None
    volume: float | None
    order_status: str
    created_at: datetime
    open: bool
    entry: float | None


def _key(bot_id: int, symbol: str, strategy: str, timeframe: str, bar_time: datetime) -> tuple:
    return (bot_id, symbol, strategy, timeframe, bar_time)


def _signal_key(signal: Signal) -> tuple:
    return _key(signal.bot_id, signal.symbol, signal.strategy, signal.timeframe, signal.bar_time)


@dataclass(slots=True)
class _Stored:
    """Where each signal of the batch (by its position) stands once the signals' INSERT has run."""

    inserted: set[str]  # signal ids this batch inserted
    repeat_of: dict[int, int]  # position -> the earlier position of the batch it repeats (same id or dedupe key)
    stored_id: dict[int, str]  # position -> the stored row's signal id (an earlier row's, for a signal stored before)
    entry: dict[str, float | None]  # stored signal id -> its row's entry (the exposure reads it for sent orders)
    existing: dict[str, object]  # stored signal id -> its decision made before this batch (a Core row)


async def decide_account(
    *, session, signals: Sequence[Signal], now: datetime, order_ttl_s: float, margin_free: float | None = None,
    max_stop_atr: float | None = None,
) -> list[SignalOutcome | InvalidMessage]:
    """Each signal's outcome, in order, as if handled one at a time in this order (see the module's docstring)."""
    connection = await session.connection()
    dialect = connection.dialect.name
    bots = await _bots_of(connection, dialect, signals)
    outcomes, valid = _screen(signals, bots)
    if not valid:
        return outcomes  # type: ignore[return-value]
    accounts = {bots[signals[i].bot_id][1].id for i in valid}
    if len(accounts) != 1:
        raise ValueError(f"decide_account takes one account's signals, not accounts {sorted(accounts)}")
    account = bots[signals[valid[0]].bot_id][1]
    stored = await _store(connection, dialect, signals, valid, now)
    max_stop_atr = get_settings().max_stop_atr if max_stop_atr is None else max_stop_atr  # SCALPER_MAX_STOP_ATR
    made = await _decide(connection, dialect, signals, valid, bots=bots, account=account, stored=stored, now=now,
                         margin_free=margin_free, max_stop_atr=max_stop_atr)
    await _write_decisions(connection, dialect, made, now=now, order_ttl_s=order_ttl_s)
    entries, intents = _answer(signals, valid, outcomes, bots=bots, stored=stored, made=made, now=now)
    await audit.write(session=session, entries=entries)
    if intents:
        rows = await outbox.enqueue_many(session=session, items=[
            (intent, topology.EXECUTION_ORDERS, str(intent.account_id)) for _, intent in intents
        ])
        for (i, _), row in zip(intents, rows, strict=True):
            outcomes[i] = dataclasses.replace(outcomes[i], outbox=(row,))
    return outcomes  # type: ignore[return-value]


async def _bots_of(connection, dialect: str, signals: Sequence[Signal]) -> dict[int, tuple[SimpleNamespace, SimpleNamespace]]:
    """The signals' bots and their accounts (columns as attributes; one account object per account), the accounts'
    rows locked, in one query."""
    found = (await connection.execute(_BOTS_AND_ACCOUNTS[dialect], {"bot_ids": sorted({s.bot_id for s in signals})})).all()
    bots, accounts = {}, {}
    for row in found:
        values = row._mapping
        account = accounts.get(values["account_id"])
        if account is None:
            account = accounts[values["account_id"]] = SimpleNamespace(**{name: values[key] for name, key in _ACCOUNT_KEYS})
        bots[values["bot_id"]] = (SimpleNamespace(**{name: values[key] for name, key in _BOT_KEYS}), account)
    return bots


def _screen(signals: Sequence[Signal], bots: dict) -> tuple[list, list[int]]:
    """Each signal's outcome so far (an unknown bot's, a refusal) and the positions of the signals to decide."""
    outcomes: list[SignalOutcome | InvalidMessage | None] = [None] * len(signals)
    valid: list[int] = []
    for i, signal in enumerate(signals):
        if signal.bot_id not in bots:
            outcomes[i] = SignalOutcome(bot_found=False)
            continue
        bot, account = bots[signal.bot_id]
        if signal.account_id != bot.account_id:
            outcomes[i] = InvalidMessage(f"signal {signal.signal_id} names account {signal.account_id}, bot {bot.id} trades on {bot.account_id}")
        elif canonical_symbol(signal.symbol, account.symbol_suffix) != canonical_symbol(bot.symbol, account.symbol_suffix):
            outcomes[i] = InvalidMessage(f"signal {signal.signal_id} is for {signal.symbol}, bot {bot.id} trades {bot.symbol}")
        else:
            valid.append(i)
    return outcomes, valid


async def _store(connection, dialect: str, signals: Sequence[Signal], valid: list[int], now: datetime) -> _Stored:
    """Insert the signals' rows (the first of the batch with an id or dedupe key; a later one is its repeat); find
    the rows stored before this batch, and their decisions."""
    first_by_id: dict[str, int] = {}
    first_by_key: dict[tuple, int] = {}
    to_insert: list[int] = []
    repeat_of: dict[int, int] = {}
    for i in valid:
        signal = signals[i]
        sid, key = str(signal.signal_id), _signal_key(signal)
        earlier = first_by_id.get(sid, first_by_key.get(key))
        if earlier is not None:
            repeat_of[i] = earlier
            continue
        first_by_id[sid], first_by_key[key] = i, i
        to_insert.append(i)
    inserted: set[str] = set()
    if to_insert:
        rows = [_signal_values(signals[i], now) for i in to_insert]
        if dialect == "postgresql":
            result = await _INSERT_SIGNALS_ARRAYS.execute(connection, rows)
        else:
            result = await connection.execute(_INSERT_SIGNAL[dialect], rows)
        inserted = set(result.scalars().all())
    stored = _Stored(inserted=inserted, repeat_of=repeat_of, stored_id={}, entry={}, existing={})
    earlier_rows = []
    for i in to_insert:
        if str(signals[i].signal_id) in inserted:
            stored.stored_id[i] = str(signals[i].signal_id)
            stored.entry[stored.stored_id[i]] = signals[i].entry
        else:
            earlier_rows.append(i)
    if not earlier_rows:
        return stored
    params = {
        "signal_ids": [str(signals[i].signal_id) for i in earlier_rows],
        "bot_ids": sorted({signals[i].bot_id for i in earlier_rows}),
        "bar_times": sorted({signals[i].bar_time for i in earlier_rows}),
    }
    by_id, by_key = {}, {}
    for row in (await connection.execute(_STORED, params)).all():
        by_id[row.signal_id] = row
        by_key[_key(row.bot_id, row.symbol, row.strategy, row.timeframe, row.bar_time)] = row
    for i in earlier_rows:
        row = by_id.get(str(signals[i].signal_id)) or by_key.get(_signal_key(signals[i]))
        if row is None:  # neither key matched yet the insert conflicted: a concurrent delete, retried by redelivery
            raise TransientError(f"signal {signals[i].signal_id} conflicted with a row that is gone")
        stored.stored_id[i] = row.signal_id
        stored.entry[row.signal_id] = row.entry
    ids = sorted({stored.stored_id[i] for i in earlier_rows})
    stored.existing = {row.signal_id: row for row in (await connection.execute(_DECIDED, {"signal_ids": ids})).all()}
    return stored


class _Book:
    """The account's exposure rows (the batch's exposure read, and each decision this batch opened), kept so that
    each signal's Exposure is found without walking the rows again: what `exposure_from_rows` makes of the rows the
    one-at-a-time read would have found (the account's open legs, and the bot's trades since the day's start)."""

    def __init__(self, rows, *, account, day_start: datetime) -> None:
        self._account, self._day_start = account, day_start
        self._rows: list = []
        self._legs: list[Leg] = []
        self._legs_tuple: tuple[Leg, ...] | None = ()
        self._open_by_bot: dict[int, int] = {}
        self._open_by_instrument: dict[str, int] = {}
        self._today_by_bot: dict[int, int] = {}
        for row in rows:
            self.add(row)

    def add(self, row) -> None:
        self._rows.append(row)
        if row.open:
            leg = Leg(bot_id=row.bot_id, instrument=canonical_symbol(row.symbol, self._account.symbol_suffix), side=row.side,
                      volume=row.volume or 0.0)
            self._legs.append(leg)
            self._legs_tuple = None
            self._open_by_bot[leg.bot_id] = self._open_by_bot.get(leg.bot_id, 0) + 1
            self._open_by_instrument[leg.instrument] = self._open_by_instrument.get(leg.instrument, 0) + 1
        if row.created_at >= self._day_start:
            self._today_by_bot[row.bot_id] = self._today_by_bot.get(row.bot_id, 0) + 1

    def exposure(self, bot, *, margin_free: float | None) -> Exposure:
        account, day_start = self._account, self._day_start
        if self._legs_tuple is None:
            self._legs_tuple = tuple(self._legs)
        if margin_free is not None:
            sent = [(r.symbol, r.volume, r.entry) for r in self._rows
                    if (r.open or (r.bot_id == bot.id and r.created_at >= day_start)) and r.order_status == "sent"]
            margin_free -= pending_margin(account=account, sent=sent)
        return Exposure(
            open_positions=self._open_by_bot.get(bot.id, 0),
            open_on_symbol=self._open_by_instrument.get(canonical_symbol(bot.symbol, account.symbol_suffix), 0),
            trades_today=self._today_by_bot.get(bot.id, 0),
            legs=self._legs_tuple,
            margin_free=margin_free,
        )


async def _decide(
    connection, dialect: str, signals: Sequence[Signal], valid: list[int], *, bots: dict, account, stored: _Stored, now: datetime,
    margin_free: float | None, max_stop_atr: float,
) -> list[tuple[int, dict, object]]:
    """(position, decision values, risk result) of each signal to decide, in order: one exposure read, and each
    decision made here joins the exposure the next signals see (as the one-at-a-time read would find it)."""
    day_start = broker_day_start(account.server_time, now)
    book = _Book((await connection.execute(_EXPOSURE_MANY[dialect], {
        "account_id": account.id, "bot_ids": sorted({signals[i].bot_id for i in valid}), "day_start": day_start,
    })).all(), account=account, day_start=day_start)
    account_rules = AccountRules.from_attrs(account)
    rules: dict[int, BotRules] = {}  # each bot's, read once
    made = []
    for i in valid:
        if i in stored.repeat_of or stored.stored_id[i] in stored.existing:
            continue  # answered by the decision it repeats
        signal, bot = signals[i], bots[signals[i].bot_id][0]
        signal_id = stored.stored_id[i]
        exposure = book.exposure(bot, margin_free=margin_free)
        if bot.id not in rules:
            rules[bot.id] = BotRules.from_attrs(bot)
        result = risk_result(bot=bot, account=account, signal=signal, exposure=exposure, max_stop_atr=max_stop_atr,
                             rules=rules[bot.id], account_rules=account_rules)
        values = decision_values(signal_id=signal_id, bot=bot, account=account, result=result, now=now)
        made.append((i, values, result))
        if result.action == "open":
            book.add(_ExposureRow(bot_id=bot.id, symbol=values["symbol"], side=values["side"], volume=values["volume"],
                                  order_status="sent", created_at=now, open=True, entry=stored.entry.get(signal_id)))
    return made


async def _write_decisions(connection, dialect: str, made: list[tuple[int, dict, object]], *, now: datetime, order_ttl_s: float) -> None:
    """The decisions in one multi-row INSERT; the opened ones' order columns (made of their ids) in one UPDATE."""
    if not made:
        return
    rows = [values for _, values, _ in made]
    if dialect == "postgresql":
        by_signal = {signal_id: decision_id for decision_id, signal_id in (await _INSERT_DECISIONS_ARRAYS.execute(connection, rows)).all()}
        ids = [by_signal[values["signal_id"]] for values in rows]
    else:
        ids = (await connection.execute(_INSERT_DECISIONS, rows)).scalars().all()
    opened = []
    for (_, values, result), decision_id in zip(made, ids, strict=True):
        values["id"] = decision_id
        if result.action == "open":
            open_values(values, decision_id=decision_id, now=now, order_ttl_s=order_ttl_s)
            opened.append({"id": decision_id, **{k: values[k] for k in ("client_order_id", "expires_at", "order_status")}})
    if not opened:
        return
    if dialect == "postgresql":
        await _OPEN_DECISIONS_ARRAYS.execute(connection, opened)
    else:
        await connection.execute(_OPEN_DECISION, [{"decision_id": row.pop("id"), **row} for row in opened])


def _answer(
    signals: Sequence[Signal], valid: list[int], outcomes: list, *, bots: dict, stored: _Stored, made: list, now: datetime,
) -> tuple[list[dict], list[tuple[int, object]]]:
    """Fill in the valid signals' outcomes; return the audit rows and the (position, intent) to send, in the order
    one-at-a-time handling would have written them."""
    fresh = {i: (values, result) for i, values, result in made}
    decided = {values["signal_id"]: values for _, values, _ in made}
    entries: list[dict] = []
    intents: list[tuple[int, object]] = []
    for i in valid:
        signal = signals[i]
        bot = bots[signal.bot_id][0]
        if i in fresh:
            values, result = fresh[i]
            decision = Decided(**values)
            intent = (order_intent_for(decision, entry=signal.entry, invalidation=strategy_exit_for(signal, bot))
                      if result.action == "open" else None)
            new = stored.stored_id[i] in stored.inserted
            if new:
                entries.append(signal_audit(signal=signal, now=now, user_id=bot.user_id))
            entries.append(decision_audit(decision=decision, result=result, user_id=bot.user_id, now=now, sent=intent is not None))
            outcomes[i] = SignalOutcome(bot_found=True, signal_new=new, decision=decision, decision_new=True, intent=intent)
            if intent is not None:
                intents.append((i, intent))
            continue
        first = stored.repeat_of.get(i, i)
        signal_id = stored.stored_id[first]
        decision = Decided(**decided[signal_id]) if signal_id in decided else stored.existing[signal_id]
        if decision.action == "open" and decision.order_status == "sent":
            # Not answered yet: the same intent again (same message id), as handle_signal sends it for a repeat.
            intent = order_intent_for(decision, entry=signal.entry, invalidation=strategy_exit_for(signal, bot))
            outcomes[i] = SignalOutcome(bot_found=True, signal_new=False, decision=decision, intent=intent)
            intents.append((i, intent))
        else:
            outcomes[i] = SignalOutcome(bot_found=True, signal_new=False, decision=decision)
    return entries, intents
