"""The kill switch and the bot status changes that go with it: stop a bot, flatten it, and later let a person resume it.

The P&L rule itself is pure (`daily_loss_tripped`, in daily_loss.py); the rest reads the decisions read model and the account row
in the caller's transaction and returns the ExecutorCommands it decided; the caller writes them to the outbox in that
transaction (services/decision/outgoing.py), and the relay publishes them once it has committed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.decision import audit, outgoing
from services.decision.daily_loss import DailyPnl, daily_loss_tripped  # noqa: F401  the rule lives there (pure)
from shared.db.models import Bot, BrokerAccount, Decision
from shared.logging import get_logger
from shared.messages import AccountSnapshot, ExecutorCommand
from shared.outbox import Pending
from shared.timeutil import broker_day_start

KILL_SWITCH_REASON = "kill_switch"

log = get_logger(__name__)


async def _realised_since(*, session: AsyncSession, day_start: datetime, account_id: int, bot_id: int | None = None) -> float:
    stmt = select(func.coalesce(func.sum(Decision.pnl), 0.0)).where(
        Decision.account_id == account_id, Decision.position_status == "closed", Decision.closed_at >= day_start
    )
    if bot_id is not None:
        stmt = stmt.where(Decision.bot_id == bot_id)
    return float((await session.execute(stmt)).scalar_one())


async def roll_day_start(*, session: AsyncSession, account: BrokerAccount, snapshot: AccountSnapshot) -> None:
    """Keep the balance at the start of the account's broker day: the first snapshot of a new day sets it, less
    whatever was already realised that day (a process that starts mid-day still measures from the day's start)."""
    day_start = broker_day_start(account.server_time, snapshot.taken_at)
    if account.day_start_at is not None and account.day_start_at >= day_start:
        return
    realised = await _realised_since(session=session, day_start=day_start, account_id=account.id)
    account.day_start_balance = snapshot.balance - realised
    account.day_start_at = day_start


async def daily_pnl(*, session: AsyncSession, bot: Bot, account: BrokerAccount, snapshot: AccountSnapshot | None, now: datetime) -> DailyPnl:
    """The bot's realised P&L since the broker day's start plus its share of the account's open P&L.

    PositionEvents carry P&L only when a position closes, so the open P&L comes from the latest AccountSnapshot
    (equity - balance), shared between the bots with open positions on the account by their open volume.
    """
    day_start = broker_day_start(account.server_time, now)
    # After a person resumed a killed bot, its loss counts from that moment (else the next snapshot kills it again).
    since = max(day_start, bot.kill_switch_reset_at) if bot.kill_switch_reset_at is not None else day_start
    realised = await _realised_since(session=session, day_start=since, account_id=account.id, bot_id=bot.id)
    open_pnl = 0.0
    if snapshot is not None:
        rows = (
            await session.execute(
                select(Decision.bot_id, func.coalesce(func.sum(Decision.volume), 0.0))
                .where(Decision.account_id == account.id, Decision.position_status == "open")
                .group_by(Decision.bot_id)
            )
        ).all()
        volumes = {bot_id: float(volume) for bot_id, volume in rows}
        total = sum(volumes.values())
        if total > 0 and volumes.get(bot.id):
            open_pnl = (snapshot.equity - snapshot.balance) * volumes[bot.id] / total
    balance = account.day_start_balance if account.day_start_at is not None and account.day_start_at >= day_start else None
    if balance is None and snapshot is not None:
        balance = snapshot.balance - await _realised_since(session=session, day_start=day_start, account_id=account.id)
    return DailyPnl(realised=realised, open=open_pnl, day_start_balance=balance)


def close_all_for(bot: Bot, *, reason: str) -> ExecutorCommand:
    return ExecutorCommand(command="close_all", account_id=bot.account_id, bot_id=bot.id, reason=reason)


def stop_bot(*, session: AsyncSession, bot: Bot, status: str, reason: str, actor: str, now: datetime, command_reason: str) -> ExecutorCommand:
    """Set the bot to `killed` (or `paused`... by `status`) with its reason, audit it, and return the close_all to send."""
    before = {"status": bot.status, "status_reason": bot.status_reason}
    bot.status = status
    bot.status_reason = reason[:500]
    bot.updated_at = now
    audit.record(
        session=session,
        kind="bot",
        entity_id=bot.id,
        user_id=bot.user_id,
        bot_id=bot.id,
        actor=actor,
        at=now,
        message=f"bot {status}: {reason}",
        before=before,
        after={"status": bot.status, "status_reason": bot.status_reason},
    )
    return close_all_for(bot, reason=command_reason)


async def still_to_flatten(*, session: AsyncSession, account: BrokerAccount) -> list[ExecutorCommand]:
    """close_all again for each killed bot of the account that the read model still shows with open positions or orders
    in flight: a close_all lost between the kill's commit and its publication (or refused by a closed market) is retried
    at every snapshot until the bot is flat. The executor's close_all of a flat bot does nothing."""
    # Distinct bot ids first: PostgreSQL cannot compare the bots' JSON columns for a DISTINCT over whole rows.
    stmt = (
        select(Bot.id)
        .join(Decision, Decision.bot_id == Bot.id)
        .where(
            Bot.account_id == account.id,
            Bot.status == "killed",
            Decision.action == "open",
            Decision.order_status.in_(("sent", "filled")),
            (Decision.position_status.is_(None)) | (Decision.position_status != "closed"),
        )
        .distinct()
    )
    bot_ids = sorted((await session.execute(stmt)).scalars())
    return [close_all_for(await session.get(Bot, bot_id), reason=KILL_SWITCH_REASON) for bot_id in bot_ids]


async def check_kill_switch(
    *, session: AsyncSession, account: BrokerAccount, snapshot: AccountSnapshot | None, now: datetime, bot_ids: list[int] | None = None
) -> list[tuple[Bot, ExecutorCommand]]:
    """Kill every bot of the account (or of `bot_ids`) whose loss today has passed its limit; return what to publish."""
    stmt = select(Bot).where(
        Bot.account_id == account.id, Bot.kill_switch_enabled.is_(True), Bot.status != "killed", Bot.deleted_at.is_(None)
    )
    if bot_ids is not None:
        stmt = stmt.where(Bot.id.in_(bot_ids))
    tripped = []
    for bot in (await session.execute(stmt.order_by(Bot.id))).scalars():
        pnl = await daily_pnl(session=session, bot=bot, account=account, snapshot=snapshot, now=now)
        if not daily_loss_tripped(pnl, limit_pct=bot.kill_switch_max_daily_loss_pct):
            continue
        reason = (
            f"kill switch: loss today {-pnl.total:.2f} (realised {pnl.realised:.2f}, open {pnl.open:.2f}) is "
            f"{pnl.loss_pct:.2f}% of the day-start balance {pnl.day_start_balance:.2f}, past the limit of "
            f"{bot.kill_switch_max_daily_loss_pct:g}%"
        )
        command = stop_bot(session=session, bot=bot, status="killed", reason=reason, actor="decision", now=now, command_reason=KILL_SWITCH_REASON)
        tripped.append((bot, command))
    await session.flush()
    return tripped


@dataclass(slots=True)
class KillOutcome:
    """What `kill_bots` did: the bots stopped, those that could not be (with why), and the outbox rows to kick."""

    killed: list[int] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)
    outbox: list[Pending] = field(default_factory=list)


async def kill_bots(*, session: AsyncSession, bots: Sequence[Bot], reason: str, actor: str, now: datetime) -> KillOutcome:
    """Stop each bot and write its close_all to the outbox, each in its own savepoint: a bot that fails is rolled
    back alone and reported, and the others are still killed (the caller commits once)."""
    outcome = KillOutcome()
    for bot in bots:
        bot_id = bot.id  # read before the savepoint: a rolled-back savepoint expires the bot's attributes
        try:
            async with session.begin_nested():
                command = stop_bot(session=session, bot=bot, status="killed", reason=reason, actor=actor, now=now, command_reason="kill")
                rows = await outgoing.enqueue_commands(session=session, commands=[command])
        except Exception as exc:  # noqa: BLE001  one bot's failure must not leave the others running
            log.error("bot could not be killed", bot_id=bot_id, error=repr(exc))
            outcome.failed.append((bot_id, f"{type(exc).__name__}: {exc}"[:300]))
            continue
        outcome.killed.append(bot_id)
        outcome.outbox += rows
    return outcome
