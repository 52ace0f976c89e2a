"""Helpers of the decision tests: a recording bus, deliveries, settings, users, accounts, bots and signals made to measure."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from shared.bus.base import Delivery, Outgoing
from shared.db.engine import transaction
from shared.db.models import Bot, BrokerAccount, User
from shared.messages import Message, Signal, signal_id_for
from shared.settings import Settings
from tests.helpers import RecordingBus as _RecordingBus
from tests.helpers import RecordingConsumer, eventually  # noqa: F401  (re-exported to the decision tests)

T0 = datetime(2024, 3, 1, 10, 0, tzinfo=UTC)


class RecordingBus(_RecordingBus):
    """tests.helpers.RecordingBus with the Bus protocol's publish_many (the outbox relay sends a destination's rows
    in one batch): each message in order, every one tried, the first failure raised after the batch (shared/bus/base.py)."""

    async def publish_many(self, batch: Sequence[Outgoing]) -> None:
        failures = []
        for out in batch:
            try:
                await self.publish(out.message, exchange=out.exchange, routing_key=out.routing_key, headers=out.headers)
            except Exception as exc:  # noqa: BLE001  raised below, once the rest of the batch has been tried
                failures.append(exc)
        if failures:
            raise failures[0]


def delivery(message: Message, *, count: int = 1) -> Delivery:
    return Delivery(message=message, exchange="test", routing_key="test", redelivered=count > 1, delivery_count=count)


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
