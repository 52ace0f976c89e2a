"""From a Signal to a stored decision and, for `open`, its OrderIntent: the idempotency chain's steps 1 and 2.

Plain functions over one session; the caller holds the account's lock and commits. An order intent is written to the
outbox in the same transaction (SignalOutcome.outbox); the caller kicks the relay with it after the commit.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import SimpleNamespace

from sqlalchemy import and_, bindparam, or_, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.decision import audit, outgoing
from services.decision.risk import AccountRules, BotRules, DecisionResult, Exposure, Leg, decide, margin_required
from shared.db.models import Bot, BrokerAccount, Decision, SignalRow
from shared.outbox import Pending
from shared.bus.base import TransientError
from shared.messages import InvalidMessage, OrderIntent, Signal, StrategyExit
from shared.strategies.invalidation import strategy_exit
from shared.settings import get_settings
from shared.symbols import UnknownSymbol, canonical_symbol, get_spec
from shared.timeutil import broker_day_start

CLIENT_ORDER_ID_MAX = 26
MAGIC_BASE = 7_000_000
# Order states that hold risk: sent and not yet answered, or filled (until its position closes).
LIVE_ORDER_STATUSES = ("sent", "filled")
INTENT_NAMESPACE = uuid.UUID("0b5d7d52-8f43-4a4e-9d5c-3f0f3c1d6a21")


@dataclass(frozen=True, slots=True)
class Decided:
    """A decision just written (the columns its log line, metrics and order intent read), without loading it back."""

    id: int
    signal_id: str
    bot_id: int
    account_id: int
    symbol: str
    action: str
    reason: str
    checks: list
    side: str | None
    volume: float | None
    sl: float | None
    tp: float | None
    created_at: datetime
    client_order_id: str | None
    expires_at: datetime | None
    order_status: str | None


@dataclass(frozen=True, slots=True)
class SignalOutcome:
    """What handling one Signal did; `intent` was written to the outbox (`outbox`, to kick once committed)."""

    bot_found: bool
    signal_new: bool = False
    decision: Decision | Decided | None = None
    decision_new: bool = False
    intent: OrderIntent | None = None
    outbox: tuple[Pending, ...] = ()


def client_order_id_for(*, bot_id: int, decision_id: int, signal_id: uuid.UUID) -> str:
    """`sc<bot>-<decision>-<6 hex of the signal>`: at most 26 characters of [A-Za-z0-9_-], unique by the decision id."""
    base = f"sc{bot_id}-{decision_id}"
    room = CLIENT_ORDER_ID_MAX - len(base) - 1
    if room >= 1:
        return f"{base}-{signal_id.hex[: min(6, room)]}"
    short = f"sc-{decision_id}"
    if len(short) > CLIENT_ORDER_ID_MAX:
        raise ValueError(f"decision id {decision_id} too large for a client order id")
    return short


def magic_for(bot_id: int) -> int:
    """The MT5 magic number of a bot's orders."""
    return MAGIC_BASE + bot_id


def order_intent_for(decision: Decision | Decided, *, entry: float | None = None, invalidation: StrategyExit | None = None) -> OrderIntent:
    """The decision's OrderIntent, the same every time it is built (message id included), for re-publishing; `entry`
    is its signal's entry price, which the executor holds against the broker's quote before it sends."""
    assert decision.action == "open" and decision.client_order_id and decision.expires_at
    return OrderIntent(
        message_id=uuid.uuid5(INTENT_NAMESPACE, decision.client_order_id),
        produced_at=decision.created_at,
        client_order_id=decision.client_order_id,
        decision_id=decision.id,
        signal_id=uuid.UUID(decision.signal_id),
        bot_id=decision.bot_id,
        account_id=decision.account_id,
        symbol=decision.symbol,
        side=decision.side,
        volume=decision.volume,
        sl=decision.sl,
        tp=decision.tp,
        magic=magic_for(decision.bot_id),
        comment=decision.client_order_id,
        expires_at=decision.expires_at,
        entry=entry,
        invalidation=invalidation,
    )


# The statements of every signal, built once: each execution binds its values, and the compiled form is cached.
_INSERT_DECISION = Decision.__table__.insert().returning(Decision.__table__.c.id)
_OPEN_DECISION = (
    Decision.__table__.update()
    .where(Decision.__table__.c.id == bindparam("decision_id"))
    .values(client_order_id=bindparam("client_order_id"), expires_at=bindparam("expires_at"), order_status=bindparam("order_status"))
)
_BOTS, _ACCOUNTS = Bot.__table__, BrokerAccount.__table__
_DECISION_OF = select(Decision.__table__).where(Decision.__table__.c.signal_id == bindparam("signal_id"))  # a Core row
# Both rows as labelled columns, read as plain records: the ORM's two objects cost about 0.1 ms more per decision, and
# the decision changes neither row.
_BOT_AND_ACCOUNT = (
    select(*(c.label(f"bot_{c.name}") for c in _BOTS.c), *(c.label(f"account_{c.name}") for c in _ACCOUNTS.c))
    .join_from(_BOTS, _ACCOUNTS, _ACCOUNTS.c.id == _BOTS.c.account_id)
    .where(_BOTS.c.id == bindparam("bot_id"))
    .with_for_update(of=_ACCOUNTS)
)


async def load_bot_for_update(*, session: AsyncSession, bot_id: int) -> tuple[SimpleNamespace, SimpleNamespace] | None:
    """The bot and its account (their columns as attributes) in one query, the account row locked (PostgreSQL) so
    decisions on one account run one at a time (SQLite has no row locks: its single writer does the same)."""
    found = (await (await session.connection()).execute(_BOT_AND_ACCOUNT, {"bot_id": bot_id})).one_or_none()
    if found is None:
        return None
    values = found._mapping
    return (
        SimpleNamespace(**{c.name: values[f"bot_{c.name}"] for c in _BOTS.c}),
        SimpleNamespace(**{c.name: values[f"account_{c.name}"] for c in _ACCOUNTS.c}),
    )


_POSITION_OPEN = or_(Decision.position_status.is_(None), Decision.position_status != "closed")
# The exposure query's columns: each live leg, and each trade's signal entry (the margin of orders not yet answered).
_EXPOSURE_COLUMNS = (
    Decision.bot_id, Decision.symbol, Decision.side, Decision.volume, Decision.order_status, Decision.created_at,
    _POSITION_OPEN.label("open"), SignalRow.entry,
)


def exposure_where(*, bots):
    """The account's live legs, and the trades since the broker day's start of the bots `bots` selects."""
    return and_(
        Decision.account_id == bindparam("account_id"),
        Decision.action == "open",
        Decision.order_status.in_(LIVE_ORDER_STATUSES),
        or_(_POSITION_OPEN, and_(bots, Decision.created_at >= bindparam("day_start"))),
    )


def _exposure_statement():
    """The account's live legs, and the bot's trades since the broker day's start, with each one's signal entry."""
    return (
        select(*_EXPOSURE_COLUMNS)
        .outerjoin(SignalRow, SignalRow.signal_id == Decision.signal_id)
        .where(exposure_where(bots=Decision.bot_id == bindparam("bot_id")))
    )


_EXPOSURE = _exposure_statement()  # built once; each decision binds its account, bot and day


async def load_exposure(
    *, session: AsyncSession, bot: Bot, account: BrokerAccount, now: datetime, margin_free: float | None = None
) -> Exposure:
    """The bot's exposure from the decisions read model, in one query: the account's live legs (orders sent but not
    yet filled count as open), the bot's trades of the broker day, and the margin of orders not yet answered."""
    params = {"account_id": account.id, "bot_id": bot.id, "day_start": broker_day_start(account.server_time, now)}
    rows = (await (await session.connection()).execute(_EXPOSURE, params)).all()
    return exposure_from_rows(rows, bot=bot, account=account, day_start=params["day_start"], margin_free=margin_free)


def exposure_from_rows(rows, *, bot, account, day_start: datetime, margin_free: float | None) -> Exposure:
    """The bot's Exposure from the exposure query's rows (the account's live legs, the bot's trades since
    `day_start`): shared by one decision at a time and a scan's decisions made together."""
    instrument = canonical_symbol(bot.symbol, account.symbol_suffix)
    legs = tuple(
        Leg(bot_id=row.bot_id, instrument=canonical_symbol(row.symbol, account.symbol_suffix), side=row.side, volume=row.volume or 0.0)
        for row in rows
        if row.open
    )
    trades_today = sum(1 for row in rows if row.bot_id == bot.id and row.created_at >= day_start)
    if margin_free is not None:
        margin_free -= pending_margin(account=account, sent=[(r.symbol, r.volume, r.entry) for r in rows if r.order_status == "sent"])
    return Exposure(
        open_positions=sum(1 for leg in legs if leg.bot_id == bot.id),
        open_on_symbol=sum(1 for leg in legs if leg.instrument == instrument),
        trades_today=trades_today,
        legs=legs,
        margin_free=margin_free,
    )


def pending_margin(*, account: BrokerAccount, sent: list[tuple[str, float | None, float | None]]) -> float:
    """Margin the account's orders sent and not yet answered will take: no snapshot includes them yet."""
    total = 0.0
    for symbol, volume, entry in sent:
        if entry is None:
            continue
        try:
            spec = get_spec(symbol, account.symbol_suffix)
        except UnknownSymbol:
            continue
        total += margin_required(spec=spec, volume=volume or 0.0, price=entry, leverage=account.leverage or 100.0)
    return total


_INSERT_SIGNAL = {
    name: insert(SignalRow.__table__).on_conflict_do_nothing().returning(SignalRow.__table__.c.signal_id)
    for name, insert in (("postgresql", postgresql_insert), ("sqlite", sqlite_insert))
}


def _signal_values(signal: Signal, now: datetime) -> dict:
    return {
        "signal_id": str(signal.signal_id),
        "window_id": None if signal.window_id is None else str(signal.window_id),
        "bot_id": signal.bot_id,
        "account_id": signal.account_id,
        "symbol": signal.symbol,
        "timeframe": signal.timeframe,
        "strategy": signal.strategy,
        "side": signal.side,
        "bar_time": signal.bar_time,
        "entry": signal.entry,
        "stop": signal.stop,
        "target": signal.target,
        "score": signal.score,
        "features": dict(signal.features),
        "p_win": signal.p_win,
        "expected_r_net": signal.expected_r_net,
        "created_at": now,
    }


async def store_signal(*, session: AsyncSession, signal: Signal, now: datetime) -> tuple[str, bool]:
    """Insert the signal's row unless it exists (by id, or by its dedupe key): one INSERT .. ON CONFLICT DO NOTHING.

    Return the stored row's signal id (the earlier row's on a repeat) and whether this call inserted it; the caller
    writes the new signal's audit row (in one INSERT with the decision's).
    """
    stmt = _INSERT_SIGNAL[session.get_bind().dialect.name]
    inserted = (await (await session.connection()).execute(stmt, _signal_values(signal, now))).scalar_one_or_none()
    if inserted is None:
        existing = (
            await session.execute(
                select(SignalRow.signal_id).where(
                    or_(
                        SignalRow.signal_id == str(signal.signal_id),
                        and_(
                            SignalRow.bot_id == signal.bot_id,
                            SignalRow.symbol == signal.symbol,
                            SignalRow.strategy == signal.strategy,
                            SignalRow.timeframe == signal.timeframe,
                            SignalRow.bar_time == signal.bar_time,
                        ),
                    )
                )
            )
        ).scalars().first()
        if existing is None:  # neither key matched yet the insert conflicted: a concurrent delete, retried by redelivery
            raise TransientError(f"signal {signal.signal_id} conflicted with a row that is gone")
        return existing, False
    return inserted, True


def signal_audit(*, signal: Signal, now: datetime, user_id: int | None) -> dict:
    return audit.entry(
        kind="signal",
        entity_id=str(signal.signal_id),
        user_id=user_id,
        bot_id=signal.bot_id,
        at=now,
        message=f"{signal.strategy} {signal.side} {signal.symbol} {signal.timeframe} "
        f"bar {signal.bar_time.isoformat()} score {signal.score:.3f}",
        after={"entry": signal.entry, "stop": signal.stop, "target": signal.target, "window_id": signal.window_id and str(signal.window_id)},
    )


def strategy_exit_for(signal: Signal, bot) -> StrategyExit | None:
    """The strategy's early exit for the executor (range_reversion's invalidation), with the bot's parameters."""
    return strategy_exit(signal.strategy, (bot.strategy_params or {}).get(signal.strategy), signal.features)


def decision_values(*, signal_id: str, bot, account, result: DecisionResult, now: datetime) -> dict:
    """The decision row's values before its id is known (an `open` gets its order's columns from `open_values`)."""
    return {
        "signal_id": signal_id,
        "bot_id": bot.id,
        "account_id": account.id,
        "symbol": bot.symbol,
        "action": result.action,
        "reason": result.reason,
        "checks": result.checks,
        "side": result.side,
        "volume": result.volume,
        "sl": result.sl,
        "tp": result.tp,
        "created_at": now,
        "client_order_id": None,
        "expires_at": None,
        "order_status": None,
    }


def open_values(values: dict, *, decision_id: int, now: datetime, order_ttl_s: float) -> None:
    """An `open` decision's order columns, once its id is known (the client order id carries it)."""
    values["client_order_id"] = client_order_id_for(bot_id=values["bot_id"], decision_id=decision_id, signal_id=uuid.UUID(values["signal_id"]))
    values["expires_at"] = now + timedelta(seconds=order_ttl_s)
    values["order_status"] = "sent"


def decision_audit(*, decision: Decided, result: DecisionResult, user_id: int | None, now: datetime, sent: bool) -> dict:
    return audit.entry(
        kind="decision",
        entity_id=decision.id,
        user_id=user_id,
        bot_id=decision.bot_id,
        at=now,
        message=f"{result.action} ({result.reason}) for signal {decision.signal_id}"
        + (
            f": {decision.side} {decision.volume} {decision.symbol} sl {decision.sl} tp {decision.tp} as {decision.client_order_id}"
            if sent
            else ""
        ),
        after={"checks": [f"{c['name']}={'ok' if c['passed'] else 'FAIL'} ({c['value']} vs {c['limit']})" for c in result.checks]},
    )


def risk_result(
    *, bot, account, signal: Signal, exposure: Exposure, max_stop_atr: float, rules: BotRules | None = None,
    account_rules: AccountRules | None = None,
) -> DecisionResult:
    """The risk rules' decision; `rules` and `account_rules`: the bot's and the account's, when the caller read them
    already (a batch reads each bot's once)."""
    if not account.is_active:  # a signal from a plan made before the account was switched off
        check = {"name": "account_not_active", "passed": False, "value": False, "limit": True}
        return DecisionResult(action="ignore", reason="account_not_active", checks=[check], side=signal.side)
    try:
        spec = get_spec(bot.symbol, account.symbol_suffix)
    except UnknownSymbol as exc:
        check = {"name": "unknown_symbol", "passed": False, "value": bot.symbol, "limit": str(exc)}
        return DecisionResult(action="ignore", reason="unknown_symbol", checks=[check], side=signal.side)
    rules = BotRules.from_attrs(bot) if rules is None else rules
    account_rules = AccountRules.from_attrs(account) if account_rules is None else account_rules
    return decide(rules=rules, signal=signal, exposure=exposure, spec=spec, account=account_rules, max_stop_atr=max_stop_atr)


async def handle_signal(
    *, session: AsyncSession, signal: Signal, now: datetime, order_ttl_s: float, margin_free: float | None = None,
    max_stop_atr: float | None = None,
) -> SignalOutcome:
    """Store the signal and its one decision; on a repeat, return the existing decision (and its intent while sent)."""
    found = await load_bot_for_update(session=session, bot_id=signal.bot_id)
    if found is None:
        return SignalOutcome(bot_found=False)
    bot, account = found
    if signal.account_id != bot.account_id:
        raise InvalidMessage(f"signal {signal.signal_id} names account {signal.account_id}, bot {bot.id} trades on {bot.account_id}")
    if canonical_symbol(signal.symbol, account.symbol_suffix) != canonical_symbol(bot.symbol, account.symbol_suffix):
        raise InvalidMessage(f"signal {signal.signal_id} is for {signal.symbol}, bot {bot.id} trades {bot.symbol}")

    signal_id, signal_new = await store_signal(session=session, signal=signal, now=now)
    if not signal_new:
        existing = (await (await session.connection()).execute(_DECISION_OF, {"signal_id": signal_id})).one_or_none()
        if existing is not None:
            if existing.action == "open" and existing.order_status == "sent":
                # Not answered yet: send the same intent again (same message id; the executor keeps one order per
                # decision), through the outbox like the first, so a decision whose first send was lost still goes out.
                intent = order_intent_for(existing, entry=signal.entry, invalidation=strategy_exit_for(signal, bot))
                row = await outgoing.enqueue_intent(session=session, intent=intent)
                return SignalOutcome(bot_found=True, signal_new=False, decision=existing, intent=intent, outbox=(row,))
            return SignalOutcome(bot_found=True, signal_new=False, decision=existing)

    exposure = await load_exposure(session=session, bot=bot, account=account, now=now, margin_free=margin_free)
    max_stop_atr = get_settings().max_stop_atr if max_stop_atr is None else max_stop_atr  # SCALPER_MAX_STOP_ATR
    result = risk_result(bot=bot, account=account, signal=signal, exposure=exposure, max_stop_atr=max_stop_atr)
    values = decision_values(signal_id=signal_id, bot=bot, account=account, result=result, now=now)
    # Core statements, not the unit of work: the hot path of every signal (about half its time went to the ORM).
    # Core statements on the session's connection: a session's execute adds about 55 µs each (docs/benchmarks.md).
    connection = await session.connection()
    decision_id = (await connection.execute(_INSERT_DECISION, values)).scalar_one()
    intent = None
    if result.action == "open":
        open_values(values, decision_id=decision_id, now=now, order_ttl_s=order_ttl_s)
        await connection.execute(
            _OPEN_DECISION,
            {"decision_id": decision_id, **{k: values[k] for k in ("client_order_id", "expires_at", "order_status")}},
        )
    decision = Decided(id=decision_id, **values)
    if result.action == "open":
        intent = order_intent_for(decision, entry=signal.entry, invalidation=strategy_exit_for(signal, bot))
    entries = [signal_audit(signal=signal, now=now, user_id=bot.user_id)] if signal_new else []
    entries.append(decision_audit(decision=decision, result=result, user_id=bot.user_id, now=now, sent=intent is not None))
    await audit.write(session=session, entries=entries)
    rows = (await outgoing.enqueue_intent(session=session, intent=intent),) if intent is not None else ()
    return SignalOutcome(bot_found=True, signal_new=signal_new, decision=decision, decision_new=True, intent=intent, outbox=rows)
