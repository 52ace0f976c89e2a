"""Helpers of the API tests: make an account, a bot and a decided signal through the public paths."""

from __future__ import annotations

from datetime import timedelta

from shared.bus import topology
from shared.db.models import Bot
from shared.messages import AccountSnapshot, ExecutionReport, PositionEvent
from tests.decision.decision_helpers import T0, make_signal


async def new_account(api, person, **fields) -> dict:
    answer = await api.client.post("/api/v1/accounts", json={"name": "paper", **fields}, headers=person.headers)
    assert answer.status_code == 201, answer.text
    return answer.json()


async def new_bot(api, person, account_id: int, **fields) -> dict:
    body = {"account_id": account_id, "symbol": "XAUUSDm", "auto_trade": True, **fields}
    answer = await api.client.post("/api/v1/bots", json=body, headers=person.headers)
    assert answer.status_code == 201, answer.text
    return answer.json()


async def bot_row(api, bot_id: int) -> Bot:
    async with api.sessions() as s:
        return await s.get(Bot, bot_id)


async def decide(api, bot_id: int, **signal_fields):
    """Send a signal for the bot through the service; return the OrderIntent published for it, or None."""
    bot = await bot_row(api, bot_id)
    before = len(api.bus.sent(topology.EXECUTION_ORDERS))
    sig = make_signal(bot, **signal_fields)
    await api.service.handle_signal(sig)
    sent = api.bus.sent(topology.EXECUTION_ORDERS)
    return sig, (sent[-1][1] if len(sent) > before else None)


async def fill_and_close(api, intent, *, ticket: int, pnl: float | None, close_price: float = 1990.0, at=None):
    """Report the intent filled and its position opened (and closed with `pnl` unless None)."""
    at = at or T0 + timedelta(minutes=1)
    await api.service.handle_execution_report(
        ExecutionReport(client_order_id=intent.client_order_id, account_id=intent.account_id, bot_id=intent.bot_id, status="filled",
                        ticket=ticket, price=intent.sl + 2.0 if intent.side == "buy" else 2000.0, volume=intent.volume, filled_at=at)
    )
    common = dict(ticket=ticket, account_id=intent.account_id, bot_id=intent.bot_id, client_order_id=intent.client_order_id,
                  symbol=intent.symbol, side=intent.side, volume=intent.volume, open_price=2000.0)
    await api.service.handle_position_event(PositionEvent(kind="opened", at=at, **common))
    if pnl is not None:
        await api.service.handle_position_event(
            PositionEvent(kind="closed", at=at + timedelta(minutes=2), close_price=close_price, pnl=pnl, close_reason="sl", **common)
        )


def snapshot(account_id: int, *, balance: float, equity: float | None = None, at=None, margin_free: float | None = None) -> AccountSnapshot:
    equity = balance if equity is None else equity
    return AccountSnapshot(account_id=account_id, balance=balance, equity=equity, margin=0.0,
                           margin_free=equity if margin_free is None else margin_free, taken_at=at or T0)
