"""What the dashboard's pages show, read from decision's own read models: the accounts' latest AccountSnapshot
(kept by the service from the executors' events), the decisions table (orders and positions, kept from
ExecutionReports and PositionEvents), the bots and their kill switches. Nothing here asks an executor.

A position's live P&L is marked to the symbol's newest M1 close when the bar source has one (volume x contract size
x price move, for a symbol quoted in the account's currency); else it is the account's floating P&L (equity -
balance of the newest snapshot) shared between its open positions by volume, as the kill switch shares it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.decision import killswitch
from shared.db.models import Bot, BrokerAccount, Decision
from shared.logging import get_logger
from shared.symbols import UnknownSymbol, get_spec
from shared.timeutil import broker_day_start

log = get_logger(__name__)

# symbol, count -> closed M1 bars, oldest first, as dicts of time (ISO text or datetime), open, high, low, close
BarSource = Callable[[str, int], Awaitable[list[dict[str, Any]]]]


class Marks:
    """The newest close per symbol from the bar source, kept a couple of seconds: every open page's update asks."""

    def __init__(self, bars: BarSource | None, *, ttl_s: float = 2.0) -> None:
        self._bars = bars
        self._ttl = ttl_s
        self._cache: dict[str, tuple[float, float | None]] = {}
        self.failures = 0

    async def price(self, symbol: str) -> float | None:
        if self._bars is None:
            return None
        hit = self._cache.get(symbol)
        if hit is not None and time.monotonic() - hit[0] < self._ttl:
            return hit[1]
        price = None
        try:
            rows = await self._bars(symbol, 1)
            price = float(rows[-1]["close"]) if rows else None
        except Exception as exc:  # noqa: BLE001  a page without a mark still shows the snapshot's P&L
            self.failures += 1
            log.warning("dashboard: no mark price", symbol=symbol, error=f"{type(exc).__name__}: {exc}"[:200])
        self._cache[symbol] = (time.monotonic(), price)
        return price


def _spec(symbol: str):
    try:
        return get_spec(symbol)
    except UnknownSymbol:
        return None


def marked_pnl(*, symbol: str, side: str, volume: float, open_price: float, price: float, currency: str) -> float | None:
    spec = _spec(symbol)
    if spec is None or spec.quote_currency != currency:
        return None
    direction = 1.0 if side == "buy" else -1.0
    return round(direction * (price - open_price) * volume * spec.contract_size, 2)


@dataclass
class AccountView:
    id: int
    name: str
    broker: str
    currency: str
    balance: float | None = None
    equity: float | None = None
    floating: float | None = None
    margin_free: float | None = None
    realised_today: float = 0.0
    today: float | None = None
    snapshot_at: datetime | None = None


@dataclass
class PositionView:
    id: int
    ticket: int | None
    bot_id: int
    account_id: int
    symbol: str
    side: str
    volume: float
    open_price: float | None
    sl: float | None
    tp: float | None
    opened_at: datetime | None
    price: float | None = None
    pnl: float | None = None
    pnl_source: str = ""


@dataclass
class BotView:
    id: int
    name: str
    symbol: str
    account_id: int
    status: str
    status_reason: str
    auto_trade: bool
    kill_switch_enabled: bool
    kill_switch_limit_pct: float
    loss_today_pct: float | None = None
    tripped: bool = False


@dataclass
class Overview:
    accounts: list[AccountView] = field(default_factory=list)
    positions: list[PositionView] = field(default_factory=list)
    bots: list[BotView] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """A plain shape to compare between two updates (the SSE stream sends only changes)."""
        def rows(items):
            return [{k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in vars(i).items()} for i in items]

        return {"accounts": rows(self.accounts), "positions": rows(self.positions), "bots": rows(self.bots)}


async def user_bots(session: AsyncSession, user_id: int) -> list[Bot]:
    stmt = select(Bot).where(Bot.user_id == user_id, Bot.deleted_at.is_(None)).order_by(Bot.id)
    return list((await session.execute(stmt)).scalars())


async def open_positions(session: AsyncSession, user_id: int, *, symbol: str | None = None) -> list[Decision]:
    stmt = (
        select(Decision)
        .join(Bot, Bot.id == Decision.bot_id)
        .where(Bot.user_id == user_id, Decision.position_status == "open")
        .order_by(Decision.id)
    )
    if symbol:
        stmt = stmt.where(Decision.symbol == symbol)
    return list((await session.execute(stmt)).scalars())


async def overview(*, session: AsyncSession, service, user_id: int, marks: Marks) -> Overview:
    now = service.clock.now()
    out = Overview()
    accounts = list(
        (await session.execute(select(BrokerAccount).where(BrokerAccount.user_id == user_id).order_by(BrokerAccount.id))).scalars()
    )
    by_id = {a.id: a for a in accounts}
    for account in accounts:
        view = AccountView(id=account.id, name=account.name, broker=account.broker, currency=account.currency)
        day_start = broker_day_start(account.server_time, now)
        realised = (
            await session.execute(
                select(func.coalesce(func.sum(Decision.pnl), 0.0)).where(
                    Decision.account_id == account.id, Decision.position_status == "closed", Decision.closed_at >= day_start
                )
            )
        ).scalar_one()
        view.realised_today = round(float(realised), 2)
        snapshot = service.latest_snapshot(account.id)
        if snapshot is not None:
            view.balance, view.equity, view.margin_free = snapshot.balance, snapshot.equity, snapshot.margin_free
            view.floating = round(snapshot.equity - snapshot.balance, 2)
            view.snapshot_at = snapshot.taken_at
            view.today = round(view.realised_today + view.floating, 2)
        out.accounts.append(view)

    rows = await open_positions(session, user_id)
    volume_by_account: dict[int, float] = {}
    for row in rows:
        volume_by_account[row.account_id] = volume_by_account.get(row.account_id, 0.0) + float(row.volume or 0.0)
    for row in rows:
        view = PositionView(
            id=row.id, ticket=row.ticket, bot_id=row.bot_id, account_id=row.account_id, symbol=row.symbol, side=row.side or "",
            volume=float(row.volume or 0.0), open_price=row.fill_price, sl=row.sl, tp=row.tp, opened_at=row.filled_at,
        )
        account = by_id.get(row.account_id)
        view.price = await marks.price(row.symbol)
        if view.price is not None and view.open_price is not None and account is not None:
            view.pnl = marked_pnl(symbol=row.symbol, side=view.side, volume=view.volume, open_price=view.open_price,
                                  price=view.price, currency=account.currency)
            view.pnl_source = "mark" if view.pnl is not None else ""
        if view.pnl is None:
            snapshot = service.latest_snapshot(row.account_id)
            total = volume_by_account.get(row.account_id, 0.0)
            if snapshot is not None and total > 0:
                view.pnl = round((snapshot.equity - snapshot.balance) * view.volume / total, 2)
                view.pnl_source = "snapshot"
        out.positions.append(view)

    for bot in await user_bots(session, user_id):
        view = BotView(
            id=bot.id, name=bot.name, symbol=bot.symbol, account_id=bot.account_id, status=bot.status, status_reason=bot.status_reason,
            auto_trade=bot.auto_trade, kill_switch_enabled=bot.kill_switch_enabled, kill_switch_limit_pct=bot.kill_switch_max_daily_loss_pct,
            tripped=bot.status == "killed" and bot.status_reason.startswith("kill switch"),
        )
        account = by_id.get(bot.account_id)
        if account is not None:
            pnl = await killswitch.daily_pnl(session=session, bot=bot, account=account,
                                             snapshot=service.latest_snapshot(account.id), now=now)
            view.loss_today_pct = None if pnl.loss_pct is None else round(pnl.loss_pct, 2)
        out.bots.append(view)
    return out


CHECK_COLUMNS = ("name", "value", "limit", "passed")


def check_rows(checks: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """A decision's checks as rows of name, value, limit, passed (a check written before a field existed shows blank)."""
    return [{k: c.get(k) for k in CHECK_COLUMNS} for c in (checks or []) if isinstance(c, dict)]
