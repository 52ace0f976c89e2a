"""The ScanPlan: which symbols market data scans, and for which bots and strategies, built from the tables."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.models import Bot, BrokerAccount
from shared.logging import get_logger
from shared.messages import PlanSymbol, ScanPlan, StrategyConfig, Subscription
from shared.symbols import canonical_symbol

log = get_logger(__name__)

PLAN_ENGINES = ("scalper", "harami")

LookbackFor = Callable[[Sequence[StrategyConfig]], int]


# Columns, not ORM objects: a plan reads every planned bot, and a refresh (a bot changed, a kill switch tripped)
# must not hold the event loop for long. 400 bots took 27 ms as ORM objects, and under load 170-200 ms.
_PLAN_ROWS = (
    select(
        Bot.id,
        Bot.account_id,
        Bot.symbol,
        Bot.engine_mode,
        Bot.default_timeframe,
        Bot.enabled_strategies,
        Bot.strategy_params,
        BrokerAccount.symbol_suffix,
    )
    .join(BrokerAccount, BrokerAccount.id == Bot.account_id)
    .where(
        Bot.status == "active",
        Bot.deleted_at.is_(None),
        Bot.auto_trade.is_(True),
        Bot.engine_mode.in_(PLAN_ENGINES),
        BrokerAccount.is_active.is_(True),
    )
    .order_by(Bot.id)
)

YIELD_EVERY = 500  # subscriptions built between two turns given back to the event loop


def subscription_for(bot: Any) -> Subscription:
    """The bot's subscription, from a Bot or a row with the same column names."""
    params = bot.strategy_params or {}
    return Subscription(
        bot_id=bot.id,
        account_id=bot.account_id,
        symbol=bot.symbol,
        engine_mode=bot.engine_mode,
        timeframe=bot.default_timeframe,
        strategies=tuple(StrategyConfig(name=name, params=dict(params.get(name) or {})) for name in bot.enabled_strategies),
    )


async def build_plan(*, session: AsyncSession, lookback_for: LookbackFor, min_lookback: int = 1) -> ScanPlan:
    """Every active, auto-trading scalper or harami bot with strategies, on an active account, grouped by instrument.

    A symbol's lookback is `lookback_for` over the distinct strategy configs of its subscriptions (most bots share
    the defaults), never less than `min_lookback`. Symbols and subscriptions are sorted, so two plans of the same
    tables compare equal.
    """
    by_symbol: dict[str, list[Subscription]] = defaultdict(list)
    for i, bot in enumerate((await session.execute(_PLAN_ROWS)).all()):
        if i and i % YIELD_EVERY == 0:
            await asyncio.sleep(0)  # let the signals waiting on this loop through
        if not bot.enabled_strategies:
            continue
        try:
            subscription = subscription_for(bot)
        except ValidationError as exc:  # one bad row must not stop every other bot's scan
            log.warning("bot left out of the scan plan", bot_id=bot.id, error=str(exc).splitlines()[0])
            continue
        by_symbol[canonical_symbol(bot.symbol, bot.symbol_suffix)].append(subscription)
    symbols = []
    for name in sorted(by_symbol):
        subs = tuple(by_symbol[name])
        configs = {(cfg.name, repr(sorted(cfg.params.items()))): cfg for sub in subs for cfg in sub.strategies}
        symbols.append(PlanSymbol(symbol=name, lookback=max(min_lookback, int(lookback_for(list(configs.values())))), subscriptions=subs))
    return ScanPlan(symbols=tuple(symbols))
