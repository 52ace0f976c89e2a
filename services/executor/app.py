"""The executor's internal routes: its open positions and latest account snapshots (the public API is decision's)."""

from __future__ import annotations

from fastapi import APIRouter, Query

from services.executor.schemas import AccountSnapshotPublic, AccountSnapshotsPublic, PositionPublic, PositionsPublic
from services.executor.service import ExecutorService


def create_router(service: ExecutorService) -> APIRouter:
    router = APIRouter(tags=["executor"])

    @router.get("/positions", response_model=PositionsPublic)
    async def positions(
        account_id: int | None = Query(default=None, description="one served account; all when absent"),
        bot_id: int | None = None,
    ) -> PositionsPublic:
        rows = await service.open_positions(account_id=account_id, bot_id=bot_id)
        return PositionsPublic(data=[PositionPublic.model_validate(r) for r in rows], count=len(rows))

    @router.get("/account", response_model=AccountSnapshotsPublic)
    async def account(
        account_id: int | None = Query(default=None, description="one served account; all when absent"),
    ) -> AccountSnapshotsPublic:
        rows = await service.latest_snapshots(account_id=account_id)
        return AccountSnapshotsPublic(data=[AccountSnapshotPublic.model_validate(r) for r in rows], count=len(rows))

    return router
