"""What decision sends and where: each message is written to the outbox in the transaction that decided it, and
the relay (shared/outbox.py) publishes it once that transaction has committed."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from shared import outbox
from shared.bus import topology
from shared.messages import ExecutorCommand, OrderIntent


async def enqueue_intent(*, session: AsyncSession, intent: OrderIntent) -> outbox.Pending:
    return await outbox.enqueue(session=session, message=intent, exchange=topology.EXECUTION_ORDERS, routing_key=str(intent.account_id))


async def enqueue_commands(*, session: AsyncSession, commands: Sequence[ExecutorCommand]) -> list[outbox.Pending]:
    return [
        await outbox.enqueue(session=session, message=command, exchange=topology.EXECUTION_COMMANDS, routing_key=str(command.account_id))
        for command in commands
    ]


async def enqueue_intents(*, session: AsyncSession, intents: Sequence[OrderIntent]) -> list[outbox.Pending]:
    """Several intents in one multi-row INSERT (each to its account's executor)."""
    return await outbox.enqueue_many(
        session=session, items=[(intent, topology.EXECUTION_ORDERS, str(intent.account_id)) for intent in intents]
    )
