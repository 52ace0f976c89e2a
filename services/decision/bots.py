"""Bots: `setup_bot` (the seed's setup_scalper_bot, an upsert on user, account, symbol and engine) and the demo.

Functions here add and flush; the caller's transaction commits.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.decision import audit
from services.decision.users import create_user, ensure_paper_account
from shared.db.models import Bot, BrokerAccount, User
from shared.symbols import SymbolSpec, UnknownSymbol, canonical_symbol, get_spec
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
    """A bot that cannot be set up as asked; the message says what to change, `field` which input it is about."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class BotNotFound(LookupError):
    pass


class BotConflict(ValueError):
    """The change clashes with another bot or with the bot's open trades (HTTP 409)."""


_SHOWN = ("engine_mode", "default_timeframe", "enabled_strategies", "strategy_params", "auto_trade", "status", *SEED_RISK,
          "min_stop_spread_ratio", "min_expected_r")
# What the API may change on a bot (status only through pause, resume and kill).
EDITABLE = (
    "name",
    "symbol",
    "default_timeframe",
    "enabled_strategies",
    "strategy_params",
    *SEED_RISK,
    "auto_trade",
    "max_spread_pips",
    "trading_hours",
    "correlation_check",
    "min_stop_spread_ratio",
    "min_expected_r",
)


def strategy_names(engine_mode: str = "scalper") -> list[str]:
    """Every strategy of the engine in the catalog (falls back to the pin bar while the catalog is absent)."""
    try:
        from shared.strategies import catalog
    except ModuleNotFoundError as exc:
        if exc.name not in ("shared.strategies.catalog",):
            raise
        return list(FALLBACK_STRATEGIES.get(engine_mode, []))
    return list(catalog.names(engine_mode))


def validate_strategies(engine_mode: str, strategies: Sequence[str] | None) -> list[str]:
    """The enabled strategies, checked against the catalog (None: every strategy of the engine, as the seed did)."""
    known = strategy_names(engine_mode)
    if strategies is None:
        if not known:
            raise BotSetupError(f"the strategy catalog lists no {engine_mode} strategies", "enabled_strategies")
        return known
    enabled = list(dict.fromkeys(s.strip() for s in strategies if s.strip()))
    if not enabled:
        raise BotSetupError(f"name at least one strategy; valid {engine_mode} strategies: {', '.join(known) or 'none'}", "enabled_strategies")
    unknown = [s for s in enabled if s not in known]
    if unknown:
        raise BotSetupError(
            f"unknown {engine_mode} strategies {', '.join(unknown)}; valid ones: {', '.join(known) or 'none'}", "enabled_strategies"
        )
    return enabled


def validate_strategy_params(engine_mode: str, enabled: Sequence[str], params: dict | None) -> dict:
    """Per-strategy overrides, each validated by the strategy's parameter model; stored as given (defaults stay live)."""
    params = dict(params or {})
    try:
        from shared.strategies import catalog
    except ModuleNotFoundError as exc:  # the catalog is absent while strategies are being written
        if exc.name != "shared.strategies.catalog":
            raise
        if params:
            raise BotSetupError("the strategy catalog is absent: parameter overrides cannot be checked", "strategy_params") from None
        return params
    for name, values in params.items():
        if name not in enabled:
            raise BotSetupError(
                f"strategy_params names {name!r}, which is not among enabled_strategies ({', '.join(enabled)})", f"strategy_params.{name}"
            )
        if not isinstance(values, dict):
            raise BotSetupError(f"strategy_params.{name} must be an object of parameter values", f"strategy_params.{name}")
        try:
            catalog.validate_params(name, values)
        except KeyError as exc:
            raise BotSetupError(str(exc.args[0]), f"strategy_params.{name}") from None
        except catalog.InvalidParams as exc:
            raise BotSetupError(f"{exc}; see GET /api/v1/strategies for each parameter's bounds", f"strategy_params.{name}") from None
    return params


def check_volume(spec: SymbolSpec, volume: float, field: str = "default_qty") -> None:
    """A volume a person entered lies within the symbol's volume_min and volume_max, on its volume_step (volumes the
    engine computes are rounded to the step instead: SymbolSpec.round_volume)."""
    steps = volume / spec.volume_step
    on_step = math.isclose(steps, round(steps), rel_tol=0, abs_tol=1e-6)
    if not (spec.volume_min - 1e-9 <= volume <= spec.volume_max + 1e-9) or not on_step:
        raise BotSetupError(
            f"{field} {volume:g}: {spec.name} takes {spec.volume_min:g} to {spec.volume_max:g} lots in steps of {spec.volume_step:g}",
            field,
        )


def check_served(symbol: str, suffix: str | None, served: Collection[str] | None) -> None:
    """The symbol is one the feed serves (`served`: its canonical names; None: any symbol with a spec, as with the mt5
    feed, whose broker sessions serve what the bots ask for)."""
    if served is None:
        return
    name = canonical_symbol(symbol, suffix)
    if name not in served:
        raise BotSetupError(f"symbol {symbol!r}: the feed serves {', '.join(sorted(served)) or 'nothing'} (GET /api/v1/symbols)", "symbol")


def _snapshot(bot: Bot) -> dict:
    return {name: getattr(bot, name) for name in _SHOWN}


async def setup_bot(
    *,
    session: AsyncSession,
    user_id: int,
    account_id: int,
    symbol: str,
    auto_trade: bool | None = None,
    strategies: Sequence[str] | None = None,
    engine_mode: str = "scalper",
    actor: str = "cli",
    now: datetime | None = None,
    strategy_params: dict | None = None,
    settings: dict | None = None,
) -> Bot:
    """Create or update the user's bot for (account, symbol, engine_mode).

    A new bot gets the seed's risk defaults, every strategy of the engine unless `strategies` names some, and
    auto-trading only when `auto_trade` is true. An existing one changes only in what is given (`strategies`,
    `auto_trade`; None leaves it as it is); its risk settings and its status are kept (a killed bot stays killed
    until a person resumes it). `strategy_params` (per strategy, e.g. `scalper tune`'s best) replaces the overrides of
    the strategies it names; `settings` sets bot fields already validated by the API's BotSettings model.
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

    enabled = validate_strategies(engine_mode, strategies)

    stmt = select(Bot).where(Bot.user_id == user_id, Bot.account_id == account_id, Bot.symbol == symbol, Bot.engine_mode == engine_mode)
    bot = (await session.execute(stmt)).scalar_one_or_none()
    now = now or utcnow()
    if bot is not None and bot.deleted_at is not None:
        # A deleted bot keeps its history under its id; its identity goes to a new bot, as POST /bots does.
        await _release_identity(session=session, bot=bot)
        bot = None
    if bot is None:
        bot = Bot(
            user_id=user_id,
            account_id=account_id,
            name=f"{engine_mode} {symbol}",
            engine_mode=engine_mode,
            symbol=symbol,
            default_timeframe=ENGINE_TIMEFRAMES[engine_mode],
            enabled_strategies=enabled,
            auto_trade=bool(auto_trade),
            status="active",
            created_at=now,
            updated_at=now,
            **{**SEED_RISK, **{k: v for k, v in (settings or {}).items() if k in EDITABLE}},
        )
        if strategy_params:
            bot.strategy_params = validate_strategy_params(engine_mode, enabled, strategy_params)
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
            at=now,
        )
        return bot

    before = _snapshot(bot)
    if strategies is not None:
        bot.enabled_strategies = enabled
        # overrides of strategies no longer enabled would be refused by the next PATCH: drop them
        bot.strategy_params = {k: v for k, v in (bot.strategy_params or {}).items() if k in enabled}
    if auto_trade is not None:
        bot.auto_trade = auto_trade
    if strategy_params:
        merged = {**(bot.strategy_params or {}), **strategy_params}
        bot.strategy_params = validate_strategy_params(engine_mode, bot.enabled_strategies, merged)
    for name, value in (settings or {}).items():
        if name in EDITABLE:
            setattr(bot, name, value)
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
            at=now,
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


# --- the API's bot management (the CLI's setup_bot above shares its validation) ------------------------------


def _state(bot: Bot) -> dict:
    return {name: getattr(bot, name) for name in (*EDITABLE, "engine_mode", "status", "status_reason")}


def _audit_change(*, session: AsyncSession, bot: Bot, before: dict, actor: str, what: str, now: datetime | None = None) -> list[str]:
    after = _state(bot)
    changed = [k for k in after if after[k] != before[k]]
    if changed:
        audit.record(
            session=session,
            kind="bot",
            entity_id=bot.id,
            user_id=bot.user_id,
            bot_id=bot.id,
            actor=actor,
            message=f"bot {what}: {', '.join(changed)}",
            before={k: before[k] for k in changed},
            after={k: after[k] for k in changed},
            at=now,
        )
    return changed


async def get_bot(*, session: AsyncSession, owner_id: int, bot_id: int) -> Bot:
    """The owner's live bot, or BotNotFound (another user's bot is not found either)."""
    bot = await session.get(Bot, bot_id)
    if bot is None or bot.user_id != owner_id or bot.deleted_at is not None:
        raise BotNotFound(f"no bot {bot_id}")
    return bot


async def _check_symbol(*, session: AsyncSession, account_id: int, symbol: str, served: Collection[str] | None) -> SymbolSpec:
    account = await session.get(BrokerAccount, account_id)
    try:
        spec = get_spec(symbol, account.symbol_suffix)
    except UnknownSymbol as exc:
        raise BotSetupError(str(exc), "symbol") from None
    check_served(symbol, account.symbol_suffix, served)
    return spec


async def _check_identity_free(*, session: AsyncSession, bot: Bot) -> None:
    stmt = select(Bot).where(
        Bot.user_id == bot.user_id, Bot.account_id == bot.account_id, Bot.symbol == bot.symbol, Bot.engine_mode == bot.engine_mode
    )
    if bot.id is not None:
        stmt = stmt.where(Bot.id != bot.id)
    other = (await session.execute(stmt)).scalar_one_or_none()
    if other is not None and other.deleted_at is None:
        raise BotConflict(f"bot {other.id} already trades {bot.symbol} with the {bot.engine_mode} engine on account {bot.account_id}: change that one")
    if other is not None:  # a deleted bot holds the identity: free it (its history stays under its id)
        await _release_identity(session=session, bot=other)


async def _release_identity(*, session: AsyncSession, bot: Bot) -> None:
    """Rename a deleted bot's symbol (`XAUUSDm~7`) so its (user, account, symbol, engine) can belong to a new bot."""
    bot.symbol = f"{bot.symbol}~{bot.id}"[:32]
    await session.flush()


async def create_bot(
    *, session: AsyncSession, owner_id: int, values: dict, actor: str, now: datetime | None = None, served: Collection[str] | None = None
) -> Bot:
    """A new bot from the API's fields (validated like `setup_bot`); seed defaults for whatever is not given.

    `now` is the service clock's time (the route's), `served` the symbols the feed serves (None: any with a spec)."""
    account = await session.get(BrokerAccount, values["account_id"])
    if account is None or account.user_id != owner_id:
        raise BotSetupError(f"you have no broker account {values['account_id']}; list yours with GET /api/v1/accounts", "account_id")
    engine_mode = values.get("engine_mode") or "scalper"
    symbol = values["symbol"].strip()
    spec = await _check_symbol(session=session, account_id=account.id, symbol=symbol, served=served)
    if values.get("default_qty") is not None:
        check_volume(spec, values["default_qty"])
    enabled = validate_strategies(engine_mode, values.get("enabled_strategies"))
    params = validate_strategy_params(engine_mode, enabled, values.get("strategy_params"))
    now = now or utcnow()
    fields = {**SEED_RISK, "auto_trade": False}
    fields.update({k: v for k, v in values.items() if k in EDITABLE and v is not None})
    fields.update(
        symbol=symbol,
        enabled_strategies=enabled,
        strategy_params=params,
        default_timeframe=values.get("default_timeframe") or ENGINE_TIMEFRAMES[engine_mode],
        name=values.get("name") or f"{engine_mode} {symbol}",
    )
    if "max_spread_pips" in values:
        fields["max_spread_pips"] = values["max_spread_pips"]
    bot = Bot(user_id=owner_id, account_id=account.id, engine_mode=engine_mode, status="active", created_at=now, updated_at=now, **fields)
    await _check_identity_free(session=session, bot=bot)
    session.add(bot)
    await session.flush()
    audit.record(
        session=session, kind="bot", entity_id=bot.id, user_id=owner_id, bot_id=bot.id, actor=actor,
        message=f"bot created: {engine_mode} {symbol}", after=_state(bot), at=now,
    )
    return bot


async def update_bot(
    *, session: AsyncSession, bot: Bot, values: dict, actor: str, now: datetime | None = None, served: Collection[str] | None = None
) -> list[str]:
    """Apply the given fields (None clears only max_spread_pips; elsewhere it means "leave as is"); return what changed."""
    before = _state(bot)
    new_symbol = values.get("symbol") is not None and values["symbol"] != bot.symbol
    if new_symbol or values.get("default_qty") is not None:
        symbol = values["symbol"] if new_symbol else bot.symbol
        spec = await _check_symbol(session=session, account_id=bot.account_id, symbol=symbol, served=served if new_symbol else None)
        qty = values["default_qty"] if values.get("default_qty") is not None else bot.default_qty
        check_volume(spec, qty)
    if new_symbol:
        bot.symbol = values["symbol"]
        await _check_identity_free(session=session, bot=bot)
    if values.get("enabled_strategies") is not None:
        bot.enabled_strategies = validate_strategies(bot.engine_mode, values["enabled_strategies"])
    if values.get("strategy_params") is not None or values.get("enabled_strategies") is not None:
        params = values.get("strategy_params")
        if params is None:  # strategies changed: keep the overrides of the strategies still enabled
            params = {k: v for k, v in (bot.strategy_params or {}).items() if k in bot.enabled_strategies}
        bot.strategy_params = validate_strategy_params(bot.engine_mode, bot.enabled_strategies, params)
    for name in EDITABLE:
        if name in ("symbol", "enabled_strategies", "strategy_params") or name not in values:
            continue
        if values[name] is None and name != "max_spread_pips":
            continue
        setattr(bot, name, values[name])
    now = now or utcnow()
    changed = _audit_change(session=session, bot=bot, before=before, actor=actor, what="updated", now=now)
    if changed:
        bot.updated_at = now
    await session.flush()
    return changed


async def has_open_trades(*, session: AsyncSession, bot: Bot) -> bool:
    from shared.db.models import Decision

    stmt = select(Decision.id).where(
        Decision.bot_id == bot.id,
        Decision.action == "open",
        Decision.order_status.in_(("sent", "filled")),
        (Decision.position_status.is_(None)) | (Decision.position_status != "closed"),
    )
    return (await session.execute(stmt.limit(1))).first() is not None


async def delete_bot(*, session: AsyncSession, bot: Bot, actor: str, now: datetime | None = None) -> None:
    """Retire the bot (its signals, decisions and audit rows stay); refused while it has open positions or orders."""
    if await has_open_trades(session=session, bot=bot):
        raise BotConflict(f"bot {bot.id} has open positions or orders: POST /api/v1/bots/{bot.id}/kill closes them, then delete it")
    before = _state(bot)
    bot.deleted_at = now or utcnow()
    bot.auto_trade = False
    bot.status, bot.status_reason = "paused", "deleted"
    bot.updated_at = bot.deleted_at
    audit.record(
        session=session, kind="bot", entity_id=bot.id, user_id=bot.user_id, bot_id=bot.id, actor=actor,
        message=f"bot deleted: {bot.engine_mode} {bot.symbol}", before=before, at=bot.deleted_at,
    )
    await session.flush()


def set_status(*, session: AsyncSession, bot: Bot, status: str, reason: str, actor: str, now: datetime | None = None) -> bool:
    """Pause or resume a bot (kill goes through killswitch.stop_bot); return whether anything changed.

    `now` is the service clock's time, as kill's is, so `updated_at` and the audit row agree with the kill's."""
    now = now or utcnow()
    before = _state(bot)
    bot.status, bot.status_reason = status, reason
    changed = _audit_change(session=session, bot=bot, before=before, actor=actor, what=status if status != "active" else "resumed", now=now)
    if changed:
        bot.updated_at = now
    return bool(changed)
