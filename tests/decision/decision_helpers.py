"""Helpers of the decision tests: a recording bus, deliveries, settings, users, accounts, bots and signals made to measure."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from shared.bus.base import Delivery, QueueSpec
from shared.db.engine import transaction
from shared.db.models import Bot, BrokerAccount, User
from shared.messages import Message, Signal, signal_id_for
from shared.settings import Settings

T0 = datetime(2024, 3, 1, 10, 0, tzinfo=UTC)


class RecordingConsumer:
    def __init__(self) -> None:
        self.cancelled = False

    async def cancel(self) -> None:
        self.cancelled = True


class RecordingBus:
    """The Bus protocol's shape, recording what is published and which handler consumes which queue."""

    def __init__(self) -> None:
        self.started = False
        self.published: list[tuple[str, str, Message]] = []
        self.handlers: dict[str, object] = {}

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.started = False

    async def declare_queue(self, spec: QueueSpec) -> None:
        pass

    async def publish(self, message: Message, *, exchange: str, routing_key: str = "", headers=None) -> None:
        self.published.append((exchange, routing_key, message))

    async def consume(self, spec: QueueSpec, handler, *, prefetch=None) -> RecordingConsumer:
        self.handlers[spec.name] = handler
        return RecordingConsumer()

    async def queue_depth(self, name: str) -> int:
        return 0

    async def healthy(self) -> bool:
        return self.started

    def sent(self, exchange: str) -> list[tuple[str, Message]]:
        return [(key, msg) for ex, key, msg in self.published if ex == exchange]


def delivery(message: Message, *, count: int = 1) -> Delivery:
    return Delivery(message=message, exchange="test", routing_key="test", redelivered=count > 1, delivery_count=count)


async def eventually(check, *, timeout: float = 5.0) -> None:
    """Poll `check` (sync or async) until it returns true, failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within the timeout")
        await asyncio.sleep(0.005)


def make_settings(**overrides) -> Settings:
    values = {"scan_interval_s": 45.0, "order_ttl_s": 30.0, "delivery_limit": 5, "lookback_bars": 100}
    values.update(overrides)
    return Settings(_env_file=None, **values)


def make_signal(
    bot: Bot,
    *,
    strategy: str = "price_action_pinbar",
    bar_time: datetime = T0,
    side: str = "buy",
    entry: float = 2000.0,
    stop: float = 1998.0,
    target: float = 2004.0,
    score: float = 0.8,
    window_id=None,
    symbol: str | None = None,
    account_id: int | None = None,
) -> Signal:
    symbol = symbol or bot.symbol
    return Signal(
        signal_id=signal_id_for(bot_id=bot.id, symbol=symbol, strategy=strategy, timeframe="1m", bar_time=bar_time),
        window_id=window_id,
        bot_id=bot.id,
        account_id=bot.account_id if account_id is None else account_id,
        symbol=symbol,
        timeframe="1m",
        strategy=strategy,
        side=side,
        bar_time=bar_time,
        entry=entry,
        stop=stop,
        target=target,
        score=score,
    )


async def add_user(sessions, name: str = "alice") -> User:
    async with transaction(sessions) as s:
        user = User(name=name)
        s.add(user)
        await s.flush()
        return user


async def add_account(sessions, user: User, **fields) -> BrokerAccount:
    async with transaction(sessions) as s:
        account = BrokerAccount(user_id=user.id, name=fields.pop("name", "paper"), **fields)
        s.add(account)
        await s.flush()
        return account


async def add_bot(sessions, user: User, account: BrokerAccount, **fields) -> Bot:
    values = {
        "symbol": "XAUUSDm",
        "engine_mode": "scalper",
        "enabled_strategies": ["price_action_pinbar", "trend_pullback"],
        "auto_trade": True,
        "status": "active",
    }
    values.update(fields)
    async with transaction(sessions) as s:
        bot = Bot(user_id=user.id, account_id=account.id, **values)
        s.add(bot)
        await s.flush()
        return bot
