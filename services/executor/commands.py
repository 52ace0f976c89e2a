"""Executor commands (architecture.md, ExecutorCommand): close_all (the kill switch, a person), close_position,
move_stop and resume_bot, each safe to run twice (a redelivered command skips what is done).
"""

from __future__ import annotations

import asyncio

from services.executor import events, store
from services.executor.brokers.base import CloseReason
from services.executor.state import ExecutorState
from shared.bus import topology
from shared.bus.base import TransientError
from shared.db.engine import transaction
from shared.db.models import Position
from shared.messages import ExecutorCommand, InvalidMessage
from shared.symbols import UnknownSymbol, get_spec

CLOSE_REASONS: frozenset[str] = frozenset({"tp", "sl", "trail", "early_exit", "kill_switch", "manual"})
ACCOUNT_WIDE = 0  # bot_blocks.bot_id of a kill for every bot of the account (close_all without a bot_id)


def close_reason_for(reason: str) -> CloseReason:
    """A command's free-text reason as a PositionEvent close_reason: kill_switch when it says so, else manual."""
    word = reason.strip().lower()
    if word in CLOSE_REASONS:
        return word  # type: ignore[return-value]
    return "kill_switch" if "kill" in word else "manual"


def round_stops(symbol: str, sl: float | None, tp: float | None) -> tuple[float | None, float | None]:
    """Stops rounded to the symbol's digits (unchanged for a symbol without a spec: the broker will say no)."""
    try:
        spec = get_spec(symbol)
    except UnknownSymbol:
        return sl, tp
    return (None if sl is None else spec.round_price(sl), None if tp is None else spec.round_price(tp))


async def process_command(ex: ExecutorState, command: ExecutorCommand) -> None:
    await events.flush_closes(ex)
    account_id = command.account_id
    reason = close_reason_for(command.reason)
    if command.command == "resume_bot":
        async with transaction(ex.sessions) as session:
            lifted = await store.lift_block(session=session, account_id=account_id, bot_id=command.bot_id or ACCOUNT_WIDE)
        ex.log.info("resume_bot: orders accepted again", account_id=account_id, bot_id=command.bot_id, was_blocked=lifted)
        return
    if command.command == "close_all":
        if reason == "kill_switch":
            # Refuse the bot's orders from now on (persisted: it holds after a restart) until decision sends resume_bot.
            async with transaction(ex.sessions) as session:
                await store.block_bot(session=session, account_id=account_id, bot_id=command.bot_id or ACCOUNT_WIDE,
                                      reason=command.reason, at=ex.clock.now())
        async with ex.sessions() as session:
            rows = await store.open_positions(session=session, account_ids=[account_id], bot_id=command.bot_id)
        rows = [r for r in rows if not r.external]  # positions opened outside the engine are never touched
        ex.log.info("close_all", account_id=account_id, bot_id=command.bot_id, positions=len(rows), reason=reason)
        await close_positions(ex, account_id=account_id, rows=rows, reason=reason)
        return
    if command.ticket is None:
        raise InvalidMessage(f"{command.command} needs a ticket")
    async with ex.sessions() as session:
        row = await store.get_position(session=session, account_ids=[account_id], ticket=command.ticket)
    if row is None:
        raise InvalidMessage(f"{command.command}: no position {command.ticket} on account {account_id}")
    if command.command == "close_position":
        if row.status == "open" and row.external:
            raise InvalidMessage(f"close_position: {command.ticket} was opened outside the engine and is never touched")
        if row.status == "open":
            await close_positions(ex, account_id=account_id, rows=[row], reason=reason)
        else:
            events.enqueue(ex, topology.position_key(account_id), store.position_event(row, kind="closed", at=row.closed_at or ex.clock.now()))
            await events.drain(ex)
        return
    if command.sl is None:
        raise InvalidMessage("move_stop needs an sl")
    await move_stop(ex, row=row, sl=command.sl)


async def close_positions(ex: ExecutorState, *, account_id: int, rows: list[Position], reason: CloseReason) -> None:
    """Close these positions at market, all at once, and record and report each close."""
    if not rows:
        return
    broker = ex.brokers[account_id]
    outcomes = await asyncio.gather(*(broker.close(row.ticket, reason) for row in rows), return_exceptions=True)
    errors: list[str] = []
    unknown: list[Position] = []
    for row, outcome in zip(rows, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            errors.append(f"ticket {row.ticket}: {outcome!r}")
        elif outcome is None:
            unknown.append(row)
        else:
            ex.pending_closes.append(((account_id,), outcome))
    if unknown:
        await close_unknown(ex, account_id=account_id, rows=unknown, reason=reason)
    await events.flush_closes(ex)
    if errors:
        # The closed ones are recorded; a redelivered command closes the rest (and skips what is closed).
        raise TransientError(f"could not close {len(errors)} of {len(rows)} positions: {'; '.join(errors)}")


async def close_unknown(ex: ExecutorState, *, account_id: int, rows: list[Position], reason: CloseReason) -> None:
    """The broker has no such position any more (closed behind our back): close the row without a price."""
    now = ex.clock.now()
    closed = []
    async with transaction(ex.sessions) as session:
        for stale in rows:
            row = await store.get_position(session=session, account_ids=[account_id], ticket=stale.ticket)
            if row is None or row.status != "open":
                continue
            row.status, row.close_reason, row.closed_at = "closed", reason, now
            closed.append(row)
    ex.closes_to_publish = ex.closes_to_publish or bool(closed)
    for row in closed:
        ex.log.error("broker has no such position: marked closed without a price", account_id=account_id, ticket=row.ticket)
    await events.publish_closed_events(ex)


async def move_stop(ex: ExecutorState, *, row: Position, sl: float) -> None:
    if row.status != "open":
        ex.log.info("move_stop on a closed position ignored", ticket=row.ticket)
        return
    sl, _ = round_stops(row.symbol, sl, None)
    now = ex.clock.now()
    if row.sl != sl:
        result = await ex.brokers[row.account_id].modify(row.ticket, sl, row.tp)
        if not result.ok:
            raise InvalidMessage(f"move_stop of {row.ticket} to {sl} refused by the broker ({result.retcode}): {result.reason}")
        async with transaction(ex.sessions) as session:
            fresh = await store.get_position(session=session, account_ids=[row.account_id], ticket=row.ticket)
            fresh.sl = sl
        row = fresh
    events.enqueue(ex, topology.position_key(row.account_id), store.position_event(row, kind="stop_moved", at=now))
    await events.drain(ex)
