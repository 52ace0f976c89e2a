"""`POST /api/v1/positions/{id}/close`: a person closes one open position of theirs.

The close travels like the kill switch's: an ExecutorCommand (`close_position`, the position's ticket) written to the
outbox in the transaction that audits the request, handed to the relay once it has committed; the executor closes it
at the broker and its PositionEvent marks the decision closed. The route answers 202: the position is closing, not
closed, until that event arrives.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, status
from pydantic import BaseModel, Field
from sqlalchemy import select

from services.decision import audit, outgoing
from services.decision.deps import CurrentUser, Session
from shared.db.models import Bot, Decision
from shared.messages import ExecutorCommand

MAX_ID = 2_147_483_647


class CloseRequested(BaseModel):
    decision_id: int = Field(description="the position's id (decision_id in GET /positions)")
    ticket: int = Field(description="the broker's ticket the executor is told to close")
    status: str = Field(description="`closing`: the executor was asked; GET /positions shows it closed once it is")


def create_router(service) -> APIRouter:
    router = APIRouter(tags=["records"])

    @router.post(
        "/positions/{decision_id}/close", response_model=CloseRequested, status_code=202, summary="Close one open position",
        responses={409: {"description": "the position is not open (closed already, or its order never filled)"}},
    )
    async def close_position(decision_id: Annotated[int, Path(ge=1, le=MAX_ID)], user: CurrentUser, session: Session) -> Any:
        """Ask the executor to close this position at the market now (close reason `manual`). Another user's
        position answers 404, like one that does not exist."""
        row = (
            await session.execute(
                select(Decision).join(Bot, Bot.id == Decision.bot_id).where(Decision.id == decision_id, Bot.user_id == user.id)
            )
        ).scalar_one_or_none()
        if row is None or row.position_status is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"position {decision_id} not found")
        if row.position_status != "open" or row.ticket is None:
            raise HTTPException(status.HTTP_409_CONFLICT, f"position {decision_id} is {row.position_status}, not open")
        now = service.clock.now()
        command = ExecutorCommand(command="close_position", account_id=row.account_id, bot_id=row.bot_id, ticket=row.ticket, reason="manual")
        rows = await outgoing.enqueue_commands(session=session, commands=[command])
        audit.record(
            session=session, kind="position", entity_id=row.ticket, user_id=user.id, bot_id=row.bot_id, actor=f"user:{user.id}",
            at=now, message=f"position {row.ticket} ({row.symbol} {row.side} {row.volume}) close requested by user:{user.id}",
        )
        await session.commit()
        await service.send_committed(rows)
        return CloseRequested(decision_id=row.id, ticket=row.ticket, status="closing")

    return router
