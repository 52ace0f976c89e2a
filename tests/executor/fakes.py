"""Hand-written fakes and builders for the executor tests: a recording bus, a counting broker, bars and intents."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from services.executor.brokers.base import BrokerUnavailable, OrderRequest, PlaceResult
from shared.bars import Bars
from shared.bus import topology
from shared.messages import BarColumns, BarWindow, ExecutorCommand, OrderIntent
from shared.settings import Settings
from shared.timeutil import to_epoch
from tests.helpers import RecordingBus, RecordingConsumer  # noqa: F401  (re-exported to the executor tests)

T0 = datetime(2024, 3, 1, 10, 0, tzinfo=UTC)
NOW = T0 + timedelta(minutes=3, seconds=1)  # just after the 10:02 bar closed
ACCOUNT = 1


class CountingBroker:
    """Wraps a real broker and counts calls; `lose_next_answer` places the order and then loses the answer."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.place_calls: list[OrderRequest] = []
        self.find_calls = 0
        self.lose_next_answer = False
        self.is_healthy = True

    @property
    def margin_mode(self) -> str:
        return self.inner.margin_mode

    async def place(self, request: OrderRequest) -> PlaceResult:
        self.place_calls.append(request)
        result = await self.inner.place(request)
        if self.lose_next_answer:
            self.lose_next_answer = False
            raise BrokerUnavailable("connection dropped after the request was sent (test)")
        return result

    async def find_order(self, client_order_id: str, magic: int | None = None):
        self.find_calls += 1
        return await self.inner.find_order(client_order_id, magic)

    async def positions(self):
        return await self.inner.positions()

    async def close(self, ticket, reason):
        return await self.inner.close(ticket, reason)

    async def modify(self, ticket, sl, tp):
        return await self.inner.modify(ticket, sl, tp)

    async def account(self):
        return await self.inner.account()

    async def quote(self, symbol):
        return await self.inner.quote(symbol)

    async def healthy(self) -> bool:
        return self.is_healthy

    # The paper broker's bar feed and restart, passed through.
    @property
    def initial_balance(self) -> float:
        return self.inner.initial_balance

    def wants_bars(self, symbol, newest) -> bool:
        return self.inner.wants_bars(symbol, newest)

    async def on_bars(self, symbol, bars):
        return await self.inner.on_bars(symbol, bars)

    def restore(self, positions, *, balance=None, issued_through=0) -> None:
        self.inner.restore(positions, balance=balance, issued_through=issued_through)


def settings(**overrides) -> Settings:
    return Settings(**{"monitor_interval_s": 60.0, "order_ttl_s": 30.0, **overrides})


def bars(rows: list[tuple], *, start: datetime = T0) -> Bars:
    """M1 bars from (open, high, low, close[, spread]) rows, one minute apart from `start`."""
    t0 = to_epoch(start)
    return Bars.from_columns(
        time=[t0 + 60 * i for i in range(len(rows))],
        open=[r[0] for r in rows],
        high=[r[1] for r in rows],
        low=[r[2] for r in rows],
        close=[r[3] for r in rows],
        spread=[r[4] if len(r) > 4 else 0 for r in rows],
    )


def window(symbol: str, rows: list[tuple], *, start: datetime = T0) -> BarWindow:
    b = bars(rows, start=start)
    return BarWindow(
        symbol=symbol,
        bars=BarColumns.from_bars(b),
        closed_through=start + timedelta(minutes=len(rows)),
        source="test",
        subscriptions=(),
    )


def intent(
    n: int,
    *,
    bot_id: int = 7,
    account_id: int = ACCOUNT,
    symbol: str = "XAUUSD",
    side: str = "buy",
    volume: float = 0.1,
    sl: float | None = 1990.0,
    tp: float | None = 2010.0,
    expires_at: datetime | None = None,
    produced_at: datetime = NOW,
) -> OrderIntent:
    cid = f"sc{bot_id}-{n}-abc123"
    return OrderIntent(
        message_id=uuid.uuid5(uuid.NAMESPACE_OID, cid),
        produced_at=produced_at,
        client_order_id=cid,
        decision_id=n,
        signal_id=uuid.uuid4(),
        bot_id=bot_id,
        account_id=account_id,
        symbol=symbol,
        side=side,
        volume=volume,
        sl=sl,
        tp=tp,
        magic=100_000 + bot_id,
        comment=cid,
        expires_at=expires_at or produced_at + timedelta(seconds=30),
    )


def command(kind: str, **fields) -> ExecutorCommand:
    return ExecutorCommand(command=kind, account_id=fields.pop("account_id", ACCOUNT), **fields)


ORDERS_Q = topology.executor_orders_queue(ACCOUNT).name
COMMANDS_Q = topology.executor_commands_queue(ACCOUNT).name
BARS_Q = topology.executor_bars_queue("ex-1").name
