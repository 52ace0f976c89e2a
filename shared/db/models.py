"""Tables (architecture.md, "Tables"). decision writes users..audit_log; executor orders, positions, account_snapshots.

Schema changes go through the Alembic migrations in shared/db/migrations, which run on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from shared.db.types import UTCDateTime
from shared.timeutil import utcnow


def _time(**kw) -> Any:
    return Field(sa_type=UTCDateTime, **kw)


def _json(default_factory=dict) -> Any:
    return Field(default_factory=default_factory, sa_type=sa.JSON)


# --- decision ---------------------------------------------------------------------------------------------


class User(SQLModel, table=True):
    __tablename__ = "users"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=100)
    is_admin: bool = False
    created_at: datetime = _time(default_factory=utcnow)


class NotificationUrl(SQLModel, table=True):
    """Where a user's alerts go: an apprise URL (Telegram, Discord, Slack, email, a JSON webhook...), sealed at rest
    like the MT5 passwords: it carries the service's token (0007)."""

    __tablename__ = "notification_urls"
    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    label: str = Field(default="", max_length=100)
    scheme: str = Field(max_length=32, description="the URL's scheme (tgram, discord, json...), the one part shown back")
    url_sealed: str = Field(sa_type=sa.Text, description="the URL, sealed with the install's secret key")
    created_at: datetime = _time(default_factory=utcnow)


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"
    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    prefix: str = Field(max_length=16, description="first characters of the key, to tell keys apart")
    key_hash: str = Field(unique=True, max_length=128, description="SHA-256 of the key; the key itself is never stored")
    created_at: datetime = _time(default_factory=utcnow)
    revoked_at: datetime | None = _time(default=None)


class BrokerAccount(SQLModel, table=True):
    __tablename__ = "broker_accounts"
    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    name: str = Field(max_length=100)
    broker: str = Field(default="paper", max_length=16, description="paper | mt5")
    login: str | None = Field(default=None, max_length=64)
    server: str | None = Field(default=None, max_length=128)
    password_ref: str | None = Field(default=None, max_length=512, description="write-only: a value, env:NAME or file:PATH")
    server_time: str = Field(default="utc", max_length=16, description="utc | us_dst | an hour offset such as +2")
    symbol_suffix: str = Field(default="", max_length=16)
    margin_mode: str = Field(default="hedging", max_length=16, description="netting | hedging")
    currency: str = Field(default="USD", max_length=8)
    is_demo: bool = True
    is_active: bool = True
    max_volume: float | None = None
    leverage: float = Field(default=100.0, description="the leverage the margin check assumes (0002)")
    day_start_balance: float | None = Field(default=None, description="balance at the broker day's start, for the kill switch (0002)")
    day_start_at: datetime | None = _time(default=None)
    created_at: datetime = _time(default_factory=utcnow)


class Bot(SQLModel, table=True):
    __tablename__ = "bots"
    __table_args__ = (sa.UniqueConstraint("user_id", "account_id", "symbol", "engine_mode", name="uq_bot_identity"),)
    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    account_id: int = Field(foreign_key="broker_accounts.id", index=True)
    name: str = Field(default="", max_length=100)
    engine_mode: str = Field(default="scalper", max_length=16)
    symbol: str = Field(max_length=32)
    default_timeframe: str = Field(default="1m", max_length=4)
    enabled_strategies: list[str] = _json(list)
    strategy_params: dict[str, dict[str, Any]] = _json(dict)
    default_qty: float = 0.01
    default_sl_pips: float = 3.0
    default_tp_pips: float = 5.0
    decision_min_score: float = 0.3
    risk_max_concurrent_positions: int = 2
    risk_max_per_symbol: int = 1
    max_trades_per_day: int = 25
    kill_switch_enabled: bool = True
    kill_switch_max_daily_loss_pct: float = 2.0
    sl_tp_mode: str = Field(default="strategy", max_length=16, description="strategy | fixed_pips")
    auto_trade: bool = False
    status: str = Field(default="active", max_length=16, description="active | paused | killed")
    status_reason: str = Field(default="", max_length=500)
    max_spread_pips: float | None = Field(default=None, description="ignore signals whose bar spread is wider (0002)")
    trading_hours: str = Field(default="", max_length=16, description="HH:MM-HH:MM UTC; empty: always (0002)")
    correlation_check: bool = Field(default=True, description="refuse a second position the same way in a basket (0002)")
    min_stop_spread_ratio: float = Field(default=3.0, description="refuse a stop closer than this many spreads (0006)")
    min_expected_r: float = Field(default=0.0, description="refuse a calibrated signal expecting less R net of costs (0006)")
    kill_switch_reset_at: datetime | None = _time(default=None)
    deleted_at: datetime | None = _time(default=None)
    created_at: datetime = _time(default_factory=utcnow)
    updated_at: datetime = _time(default_factory=utcnow)


class SignalRow(SQLModel, table=True):
    __tablename__ = "signals"
    __table_args__ = (sa.UniqueConstraint("bot_id", "symbol", "strategy", "timeframe", "bar_time", name="uq_signal_key"),)
    signal_id: str = Field(primary_key=True, max_length=36)
    window_id: str | None = Field(default=None, max_length=36, index=True)
    bot_id: int = Field(foreign_key="bots.id", index=True)
    account_id: int
    symbol: str = Field(max_length=32)
    timeframe: str = Field(max_length=4)
    strategy: str = Field(max_length=64)
    side: str = Field(max_length=4)
    bar_time: datetime = _time()
    entry: float
    stop: float
    target: float
    score: float
    features: dict[str, Any] = _json(dict)
    p_win: float | None = Field(default=None, description="calibrated P(target before stop); null without calibration (0006)")
    expected_r_net: float | None = Field(default=None, description="expected R net of spread and commission (0006)")
    created_at: datetime = _time(default_factory=utcnow, index=True)


class Decision(SQLModel, table=True):
    """One per signal. For `open`, it also keeps the read model of its order and position from the executor's events."""

    __tablename__ = "decisions"
    # Decision's re-send of unanswered intents (services/decision/resend.py) looks only at decisions still `sent`: a
    # partial index keeps that cheap as the answered ones pile up.
    __table_args__ = (
        sa.Index(
            "ix_decisions_sent", "expires_at",
            sqlite_where=sa.text("order_status = 'sent'"), postgresql_where=sa.text("order_status = 'sent'"),
        ),
    )
    id: int | None = Field(default=None, primary_key=True)
    signal_id: str = Field(foreign_key="signals.signal_id", unique=True, max_length=36)
    bot_id: int = Field(foreign_key="bots.id", index=True)
    account_id: int
    symbol: str = Field(max_length=32)
    action: str = Field(max_length=8, description="open | ignore")
    reason: str = Field(max_length=200)
    checks: list[dict[str, Any]] = _json(list)
    side: str | None = Field(default=None, max_length=4)
    volume: float | None = None
    sl: float | None = None
    tp: float | None = None
    client_order_id: str | None = Field(default=None, unique=True, max_length=26)
    expires_at: datetime | None = _time(default=None)
    order_status: str | None = Field(default=None, max_length=16, description="sent | filled | rejected | failed | expired")
    ticket: int | None = None
    fill_price: float | None = None
    filled_at: datetime | None = _time(default=None)
    position_status: str | None = Field(default=None, max_length=8, description="open | closed")
    close_price: float | None = None
    close_reason: str | None = Field(default=None, max_length=16)
    closed_at: datetime | None = _time(default=None)
    pnl: float | None = None
    created_at: datetime = _time(default_factory=utcnow, index=True)


class AuditLog(SQLModel, table=True):
    __tablename__ = "audit_log"
    id: int | None = Field(default=None, primary_key=True)
    at: datetime = _time(default_factory=utcnow, index=True)
    actor: str = Field(max_length=64, description="user:<id> or a service name")
    user_id: int | None = Field(default=None, index=True)
    bot_id: int | None = Field(default=None, index=True)
    kind: str = Field(max_length=32, description="signal, decision, order, position, bot, account, key, ...")
    entity_id: str | None = Field(default=None, max_length=64)
    message: str = Field(default="", max_length=500)
    before: dict[str, Any] | None = Field(default=None, sa_type=sa.JSON)
    after: dict[str, Any] | None = Field(default=None, sa_type=sa.JSON)


class OutboxRow(SQLModel, table=True):
    """A message a decision transaction chose to send, written in that transaction and published after its commit by
    the relay in shared/outbox.py (architecture.md, "Idempotency chain" 6). `body` is the message's JSON as the bus
    carries it, `message_type` its type name (shared.messages.decode reads both back)."""

    __tablename__ = "outbox"
    # The relay's start-up and sweep look only at rows not yet published: a partial index keeps that cheap as the
    # published rows pile up (both SQLite and PostgreSQL have partial indexes).
    __table_args__ = (
        sa.Index(
            "ix_outbox_unpublished", "id",
            sqlite_where=sa.text("published_at IS NULL"), postgresql_where=sa.text("published_at IS NULL"),
        ),
    )
    id: int | None = Field(default=None, primary_key=True)
    exchange: str = Field(max_length=64)
    routing_key: str = Field(max_length=128)
    message_type: str = Field(max_length=32)
    body: str = Field(sa_type=sa.Text)
    created_at: datetime = _time(default_factory=utcnow)
    published_at: datetime | None = _time(default=None, description="when the bus confirmed it; null until then")
    attempts: int = Field(default=0, description="publishes tried that failed")
    last_error: str | None = Field(default=None, max_length=500)


# --- executor ---------------------------------------------------------------------------------------------


class Order(SQLModel, table=True):
    __tablename__ = "orders"
    id: int | None = Field(default=None, primary_key=True)
    decision_id: int = Field(unique=True)
    client_order_id: str = Field(unique=True, max_length=26)
    signal_id: str = Field(max_length=36)
    bot_id: int = Field(index=True)
    account_id: int = Field(index=True)
    symbol: str = Field(max_length=32)
    side: str = Field(max_length=4)
    volume: float
    sl: float | None = None
    tp: float | None = None
    magic: int
    status: str = Field(max_length=16, index=True, description="received | sending | filled | rejected | failed | expired")
    ticket: int | None = None
    price: float | None = None
    filled_volume: float | None = None
    retcode: int | None = None
    reason: str = Field(default="", max_length=300)
    expires_at: datetime = _time()
    report_sent: bool = False
    invalidation: dict[str, Any] | None = Field(default=None, sa_type=sa.JSON,
                                                description="the intent's StrategyExit: the position's early exit (0006)")
    created_at: datetime = _time(default_factory=utcnow)
    updated_at: datetime = _time(default_factory=utcnow)


class Position(SQLModel, table=True):
    __tablename__ = "positions"
    __table_args__ = (sa.UniqueConstraint("account_id", "ticket", name="uq_position_ticket"),)
    id: int | None = Field(default=None, primary_key=True)
    ticket: int
    account_id: int = Field(index=True)
    bot_id: int | None = Field(default=None, index=True)
    client_order_id: str | None = Field(default=None, max_length=26)
    symbol: str = Field(max_length=32)
    side: str = Field(max_length=4)
    volume: float
    open_price: float
    sl: float | None = None
    tp: float | None = None
    opened_at: datetime = _time()
    status: str = Field(default="open", max_length=8, index=True)
    close_price: float | None = None
    close_reason: str | None = Field(default=None, max_length=16)
    closed_at: datetime | None = _time(default=None)
    pnl: float | None = None
    external: bool = False
    close_event_sent: bool = Field(default=False, description="the `closed` PositionEvent went out (republished on start-up until it has)")


class AccountSnapshotRow(SQLModel, table=True):
    __tablename__ = "account_snapshots"
    id: int | None = Field(default=None, primary_key=True)
    account_id: int = Field(index=True)
    balance: float
    equity: float
    margin: float
    margin_free: float
    taken_at: datetime = _time(index=True)


class BotBlock(SQLModel, table=True):
    """A bot the executor refuses orders for (decision's kill switch), until decision sends resume_bot."""

    __tablename__ = "bot_blocks"
    account_id: int = Field(primary_key=True)
    bot_id: int = Field(primary_key=True)
    reason: str = Field(default="kill_switch", max_length=200)
    blocked_at: datetime = _time()


# --- market data ------------------------------------------------------------------------------------------


class BarRow(SQLModel, table=True):
    """Optional cache of closed bars."""

    __tablename__ = "bars"
    symbol: str = Field(primary_key=True, max_length=32)
    timeframe: str = Field(primary_key=True, max_length=4)
    time: datetime = _time(primary_key=True)
    open: float
    high: float
    low: float
    close: float
    tick_volume: int = 0
    spread: int = 0
