"""From a Signal to a stored decision and, for `open`, its OrderIntent: the idempotency chain's steps 1 and 2.

Plain functions over one session; the caller holds the account's lock, commits, and publishes after the commit.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.decision import audit
from services.decision.risk import AccountRules, BotRules, DecisionResult, Exposure, Leg, decide, margin_required
from shared.db.models import Bot, BrokerAccount, Decision, SignalRow
from shared.messages import InvalidMessage, OrderIntent, Signal
from shared.symbols import UnknownSymbol, canonical_symbol, get_spec
from shared.timeutil import broker_day_start

CLIENT_ORDER_ID_MAX = 26
MAGIC_BASE = 7_000_000
# Order states that hold risk: sent and not yet answered, or filled (until its position closes).
LIVE_ORDER_STATUSES = ("sent", "filled")
INTENT_NAMESPACE = uuid.UUID("0b5d7d52-8f43-4a4e-9d5c-3f0f3c1d6a21")


@dataclass(frozen=True, slots=True)
class SignalOutcome:
    """What handling one Signal did; `intent` is to be published once the transaction has committed."""

    bot_found: bool
    signal_new: bool = False
    decision: Decision | None = None
    decision_new: bool = False
    intent: OrderIntent | None = None


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


def order_intent_for(decision: Decision) -> OrderIntent:
    """The decision's OrderIntent, the same every time it is built (message id included), for re-publishing."""
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
    )


async def load_bot_for_update(*, session: AsyncSession, bot_id: int) -> tuple[Bot, BrokerAccount] | None:
    """The bot and its account, the account row locked (PostgreSQL) so decisions on one account run one at a time."""
    bot = await session.get(Bot, bot_id)
    if bot is None:
        return None
    stmt = select(BrokerAccount).where(BrokerAccount.id == bot.account_id).with_for_update()
    account = (await session.execute(stmt)).scalar_one()
    return bot, account


async def load_exposure(
    *, session: AsyncSession, bot: Bot, account: BrokerAccount, now: datetime, margin_free: float | None = None
) -> Exposure:
    """The bot's exposure from the decisions read model (orders sent but not yet filled count as open)."""
    live = (
        await session.execute(
            select(Decision.bot_id, Decision.symbol, Decision.side, Decision.volume).where(
                Decision.account_id == account.id,
                Decision.action == "open",
                Decision.order_status.in_(LIVE_ORDER_STATUSES),
                or_(Decision.position_status.is_(None), Decision.position_status != "closed"),
            )
        )
    ).all()
    instrument = canonical_symbol(bot.symbol, account.symbol_suffix)
    day_start = broker_day_start(account.server_time, now)
    trades_today = (
        await session.execute(
            select(func.count(Decision.id)).where(
                Decision.bot_id == bot.id,
                Decision.action == "open",
                Decision.order_status.in_(LIVE_ORDER_STATUSES),
                Decision.created_at >= day_start,
            )
        )
    ).scalar_one()
    legs = tuple(
        Leg(bot_id=bot_id, instrument=canonical_symbol(symbol, account.symbol_suffix), side=side, volume=volume or 0.0)
        for bot_id, symbol, side, volume in live
    )
    if margin_free is not None:
        margin_free -= await pending_margin(session=session, account=account)
    return Exposure(
        open_positions=sum(1 for leg in legs if leg.bot_id == bot.id),
        open_on_symbol=sum(1 for leg in legs if leg.instrument == instrument),
        trades_today=int(trades_today),
        legs=legs,
        margin_free=margin_free,
    )


async def pending_margin(*, session: AsyncSession, account: BrokerAccount) -> float:
    """Margin the account's orders sent and not yet answered will take: no snapshot includes them yet."""
    rows = (
        await session.execute(
            select(Decision.symbol, Decision.volume, SignalRow.entry)
            .join(SignalRow, SignalRow.signal_id == Decision.signal_id)
            .where(Decision.account_id == account.id, Decision.action == "open", Decision.order_status == "sent")
        )
    ).all()
    total = 0.0
    for symbol, volume, entry in rows:
        try:
            spec = get_spec(symbol, account.symbol_suffix)
        except UnknownSymbol:
            continue
        total += margin_required(spec=spec, volume=volume or 0.0, price=entry, leverage=account.leverage or 100.0)
    return total


async def store_signal(*, session: AsyncSession, signal: Signal, now: datetime, user_id: int | None = None) -> tuple[SignalRow, bool]:
    """The signal's row, inserted unless it exists (by id, or by its dedupe key); return it and whether it is new."""
    row = await session.get(SignalRow, str(signal.signal_id))
    if row is None:
        stmt = select(SignalRow).where(
            SignalRow.bot_id == signal.bot_id,
            SignalRow.symbol == signal.symbol,
            SignalRow.strategy == signal.strategy,
            SignalRow.timeframe == signal.timeframe,
            SignalRow.bar_time == signal.bar_time,
        )
        row = (await session.execute(stmt)).scalar_one_or_none()
    if row is not None:
        return row, False
    row = SignalRow(
        signal_id=str(signal.signal_id),
        window_id=None if signal.window_id is None else str(signal.window_id),
        bot_id=signal.bot_id,
        account_id=signal.account_id,
        symbol=signal.symbol,
        timeframe=signal.timeframe,
        strategy=signal.strategy,
        side=signal.side,
        bar_time=signal.bar_time,
        entry=signal.entry,
        stop=signal.stop,
        target=signal.target,
        score=signal.score,
        features=dict(signal.features),
        created_at=now,
    )
    session.add(row)
    await session.flush()
    audit.record(
        session=session,
        kind="signal",
        entity_id=row.signal_id,
        user_id=user_id,
        bot_id=signal.bot_id,
        at=now,
        message=f"{signal.strategy} {signal.side} {signal.symbol} {signal.timeframe} "
        f"bar {signal.bar_time.isoformat()} score {signal.score:.3f}",
        after={"entry": signal.entry, "stop": signal.stop, "target": signal.target, "window_id": row.window_id},
    )
    return row, True


def _risk_result(*, bot: Bot, account: BrokerAccount, signal: Signal, exposure: Exposure) -> DecisionResult:
    if not account.is_active:  # a signal from a plan made before the account was switched off
        check = {"name": "account_not_active", "passed": False, "value": False, "limit": True}
        return DecisionResult(action="ignore", reason="account_not_active", checks=[check], side=signal.side)
    try:
        spec = get_spec(bot.symbol, account.symbol_suffix)
    except UnknownSymbol as exc:
        check = {"name": "unknown_symbol", "passed": False, "value": bot.symbol, "limit": str(exc)}
        return DecisionResult(action="ignore", reason="unknown_symbol", checks=[check], side=signal.side)
    return decide(rules=BotRules.from_attrs(bot), signal=signal, exposure=exposure, spec=spec, account=AccountRules.from_attrs(account))


async def handle_signal(
    *, session: AsyncSession, signal: Signal, now: datetime, order_ttl_s: float, margin_free: float | None = None
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

    row, signal_new = await store_signal(session=session, signal=signal, now=now, user_id=bot.user_id)
    existing = (await session.execute(select(Decision).where(Decision.signal_id == row.signal_id))).scalar_one_or_none()
    if existing is not None:
        intent = order_intent_for(existing) if existing.action == "open" and existing.order_status == "sent" else None
        return SignalOutcome(bot_found=True, signal_new=signal_new, decision=existing, intent=intent)

    exposure = await load_exposure(session=session, bot=bot, account=account, now=now, margin_free=margin_free)
    result = _risk_result(bot=bot, account=account, signal=signal, exposure=exposure)
    decision = Decision(
        signal_id=row.signal_id,
        bot_id=bot.id,
        account_id=account.id,
        symbol=bot.symbol,
        action=result.action,
        reason=result.reason,
        checks=result.checks,
        side=result.side,
        volume=result.volume,
        sl=result.sl,
        tp=result.tp,
        created_at=now,
    )
    session.add(decision)
    await session.flush()
    intent = None
    if result.action == "open":
        decision.client_order_id = client_order_id_for(bot_id=bot.id, decision_id=decision.id, signal_id=uuid.UUID(row.signal_id))
        decision.expires_at = now + timedelta(seconds=order_ttl_s)
        decision.order_status = "sent"
        await session.flush()
        intent = order_intent_for(decision)
    audit.record(
        session=session,
        kind="decision",
        entity_id=decision.id,
        user_id=bot.user_id,
        bot_id=bot.id,
        at=now,
        message=f"{result.action} ({result.reason}) for signal {row.signal_id}"
        + (
            f": {decision.side} {decision.volume} {decision.symbol} sl {decision.sl} tp {decision.tp} as {decision.client_order_id}"
            if intent
            else ""
        ),
        after={"checks": [f"{c['name']}={'ok' if c['passed'] else 'FAIL'} ({c['value']} vs {c['limit']})" for c in result.checks]},
    )
    return SignalOutcome(bot_found=True, signal_new=signal_new, decision=decision, decision_new=True, intent=intent)
