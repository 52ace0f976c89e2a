"""Bots: `setup_bot` (the seed's setup_scalper_bot, an upsert on user, account, symbol and engine) and the demo.

Functions here add and flush; the caller's transaction commits.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.decision import audit
from services.decision.users import create_user, ensure_paper_account
from shared.db.models import Bot, BrokerAccount, User
from shared.symbols import UnknownSymbol, get_spec
from shared.timeutil import utcnow

ENGINE_MODES = ("scalper", "harami")
ENGINE_TIMEFRAMES = {"scalper": "1m", "harami": "5m"}
FALLBACK_STRATEGIES = {"scalper": ["price_action_pinbar"], "harami": []}

DEMO_USER = "demo"
DEMO_SYMBOL = "XAUUSDm"

# The seed's "aggressive risk config" for a new scalper bot (original-description.md, Configuration Options).
SEED_RISK = {
    "risk_max_concurrent_positions": 2,
    "risk_max_per_symbol": 1,
    "kill_switch_enabled": True,
    "kill_switch_max_daily_loss_pct": 2.0,
    "decision_min_score": 0.3,
    "max_trades_per_day": 25,
    "default_qty": 0.01,
    "default_sl_pips": 3.0,
    "default_tp_pips": 5.0,
    "sl_tp_mode": "strategy",
}


class BotSetupError(ValueError):
    """A bot that cannot be set up as asked; the message says what to change."""


_SHOWN = ("engine_mode", "default_timeframe", "enabled_strategies", "auto_trade", "status", *SEED_RISK)


def strategy_names(engine_mode: str = "scalper") -> list[str]:
    """Every strategy of the engine in the catalog (falls back to the pin bar while the catalog is absent)."""
    try:
        from shared.strategies import catalog
    except ModuleNotFoundError as exc:
        if exc.name not in ("shared.strategies.catalog",):
            raise
        return list(FALLBACK_STRATEGIES.get(engine_mode, []))
    return list(catalog.names(engine_mode))


def _snapshot(bot: Bot) -> dict:
    return {name: getattr(bot, name) for name in _SHOWN}


async def setup_bot(
    *,
    session: AsyncSession,
    user_id: int,
    account_id: int,
    symbol: str,
    auto_trade: bool,
    strategies: Sequence[str] | None = None,
    engine_mode: str = "scalper",
    actor: str = "cli",
) -> Bot:
    """Create or update the user's bot for (account, symbol, engine_mode).

    A new bot gets the seed's risk defaults. An existing one gets the engine's timeframe, the strategies
    (all of the engine's when `strategies` is None, as the seed did) and `auto_trade`; its risk settings and
    its status are kept (a killed bot stays killed until a person resumes it).
    """
    if engine_mode not in ENGINE_MODES:
        raise BotSetupError(f"engine_mode {engine_mode!r}: use one of {', '.join(ENGINE_MODES)}")
    symbol = symbol.strip()
    if not symbol:
        raise BotSetupError("a bot needs a symbol")
    user = await session.get(User, user_id)
    if user is None:
        raise BotSetupError(f"no user with id {user_id}")
    account = await session.get(BrokerAccount, account_id)
    if account is None or account.user_id != user_id:
        raise BotSetupError(f"user {user_id} has no broker account with id {account_id}")
    try:
        get_spec(symbol, account.symbol_suffix)
    except UnknownSymbol as exc:
        raise BotSetupError(str(exc)) from None

    known = strategy_names(engine_mode)
    if strategies is None:
        enabled = known
        if not enabled:
            raise BotSetupError(f"the strategy catalog lists no {engine_mode} strategies")
    else:
        enabled = list(dict.fromkeys(s.strip() for s in strategies if s.strip()))
        if not enabled:
            raise BotSetupError("name at least one strategy")
        unknown = [s for s in enabled if s not in known]
        if unknown:
            raise BotSetupError(f"unknown {engine_mode} strategies {unknown}: known are {known}")

    stmt = select(Bot).where(Bot.user_id == user_id, Bot.account_id == account_id, Bot.symbol == symbol, Bot.engine_mode == engine_mode)
    bot = (await session.execute(stmt)).scalar_one_or_none()
    now = utcnow()
    if bot is None:
        bot = Bot(
            user_id=user_id,
            account_id=account_id,
            name=f"{engine_mode} {symbol}",
            engine_mode=engine_mode,
            symbol=symbol,
            default_timeframe=ENGINE_TIMEFRAMES[engine_mode],
            enabled_strategies=enabled,
            auto_trade=auto_trade,
            status="active",
            created_at=now,
            updated_at=now,
            **SEED_RISK,
        )
        session.add(bot)
        await session.flush()
        audit.record(
            session=session,
            kind="bot",
            entity_id=bot.id,
            user_id=user_id,
            bot_id=bot.id,
            actor=actor,
            message=f"bot created: {engine_mode} {symbol}",
            after=_snapshot(bot),
        )
        return bot

    before = _snapshot(bot)
    bot.default_timeframe = ENGINE_TIMEFRAMES[engine_mode]
    bot.enabled_strategies = enabled
    bot.auto_trade = auto_trade
    after = _snapshot(bot)
    if after != before:
        bot.updated_at = now
        changed = [k for k in after if after[k] != before[k]]
        audit.record(
            session=session,
            kind="bot",
            entity_id=bot.id,
            user_id=user_id,
            bot_id=bot.id,
            actor=actor,
            message=f"bot updated: {', '.join(changed)}",
            before={k: before[k] for k in changed},
            after={k: after[k] for k in changed},
        )
    await session.flush()
    return bot


async def ensure_demo(*, session: AsyncSession) -> str | None:
    """On first start, create the user `demo`, its paper account and its auto-trading XAUUSDm scalper bot.

    Return the demo's new API key, or None when the user `demo` exists already (then nothing is touched,
    so a demo bot that someone deleted or paused stays as they left it).
    """
    existing = (await session.execute(select(User).where(User.name == DEMO_USER))).scalar_one_or_none()
    if existing is not None:
        return None
    user, api_key = await create_user(session=session, name=DEMO_USER)
    account = await ensure_paper_account(session=session, user_id=user.id)
    await setup_bot(
        session=session,
        user_id=user.id,
        account_id=account.id,
        symbol=DEMO_SYMBOL,
        auto_trade=True,
        strategies=None,
        engine_mode="scalper",
        actor="startup",
    )
    return api_key
