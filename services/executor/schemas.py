"""Response models of the executor's internal routes."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict


class PositionPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    ticket: int
    account_id: int
    bot_id: int | None
    client_order_id: str | None
    symbol: str
    side: str
    volume: float
    open_price: float
    sl: float | None
    tp: float | None
    opened_at: datetime
    status: str


class PositionsPublic(BaseModel):
    data: list[PositionPublic]
    count: int
    next_cursor: str | None = None


class AccountSnapshotPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    account_id: int
    balance: float
    equity: float
    margin: float
    margin_free: float
    taken_at: datetime


class AccountSnapshotsPublic(BaseModel):
    data: list[AccountSnapshotPublic]
    count: int
    next_cursor: str | None = None
