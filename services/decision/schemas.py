"""Request and response models of the decision service's public API (architecture.md, "Public interfaces").

Input models forbid unknown fields; responses never carry a password or a key hash.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.decision.risk import parse_trading_hours
from shared.secrets import MAX_SEALED_BYTES

T = TypeVar("T")

EngineMode = Literal["scalper", "harami"]
BotStatus = Literal["active", "paused", "killed"]
SlTpMode = Literal["strategy", "fixed_pips"]
SERVER_TIME_RE = re.compile(r"^(utc|us_dst|[+-]?\d{1,2}(\.5)?)$")
SECRET_REF_RE = re.compile(r"^(env:[A-Za-z_][A-Za-z0-9_]*|file:/.+)$")

# Bounds of what a person may enter (docs/security.md, "Values"): wide enough for any real account or bot, narrow
# enough that a typo (or a fuzzer's 5e-324) is refused instead of stored. A bot's volume is further checked against
# its symbol's volume_min, volume_max and volume_step (services/decision/bots.py).
MAX_LEVERAGE = 5000.0  # the largest retail leverage offered (1:3000 and "unlimited" aside)
MAX_ACCOUNT_VOLUME = 1000.0  # lots; the shipped specs' volume_max is 100
MIN_VOLUME = 0.01
MAX_PIPS = 5000.0  # 500 USD on gold, 0.5 on EURUSD, 50 yen on USDJPY
MAX_SPREAD_PIPS = 1000.0


class Input(BaseModel):
    """Request bodies: unknown fields refused, and no silent coercion (0 is not false, "5" is not 5)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Problem(BaseModel):
    detail: str


class Page(BaseModel, Generic[T]):
    """The list shape: `{"data": [...], "count": N, "next_cursor": "..." | null}`; `count` is the rows on this page."""

    data: list[T]
    count: int
    next_cursor: str | None = None


# --- users and keys -----------------------------------------------------------------------------------------


class UserPublic(BaseModel):
    id: int
    name: str
    is_admin: bool
    created_at: datetime


class KeyPublic(BaseModel):
    id: int
    prefix: str
    created_at: datetime
    revoked_at: datetime | None = None


class KeyIssued(KeyPublic):
    api_key: str = Field(description="the new key, shown this once; only its hash is stored")


# --- accounts -----------------------------------------------------------------------------------------------


def _server_time(value: str | None) -> str | None:
    if value is None:
        return value
    value = value.strip().lower()
    if not SERVER_TIME_RE.match(value) or (value not in ("utc", "us_dst") and abs(float(value)) > 14):
        raise ValueError("server_time: use utc, us_dst (UTC+2, UTC+3 in US summer time) or an hour offset such as +2 or -5")
    return value


def _password(value: str | None) -> str | None:
    if value is None:
        return value
    if not value:
        raise ValueError("password: give the MT5 password, env:NAME (an environment variable) or file:/path (a secret file)")
    if value.startswith(("env:", "file:")):
        if not SECRET_REF_RE.match(value):
            raise ValueError("password: a reference is env:NAME (letters, digits, _) or file:/absolute/path")
    elif len(value.encode("utf-8")) > MAX_SEALED_BYTES:  # a literal is stored sealed (shared/secrets.py)
        raise ValueError(f"password: at most {MAX_SEALED_BYTES} bytes; for a longer one give env:NAME or file:/path")
    return value


class AccountCreate(Input):
    name: str = Field(default="", max_length=100)
    broker: Literal["paper", "mt5"] = "paper"
    login: str | None = Field(default=None, max_length=64)
    server: str | None = Field(default=None, max_length=128)
    password: str | None = Field(
        default=None, min_length=1, max_length=512, description="write-only: the value, env:NAME or file:/path; never returned"
    )
    server_time: str = Field(default="utc", description="utc | us_dst | an hour offset such as +2")
    symbol_suffix: str = Field(default="", max_length=16, pattern=r"^[A-Za-z0-9._#!-]*$")
    margin_mode: Literal["netting", "hedging"] = "hedging"
    currency: str = Field(default="USD", min_length=3, max_length=8)
    is_demo: bool = True
    is_active: bool = True
    leverage: float = Field(default=100.0, ge=1, le=MAX_LEVERAGE, description="1 to 5000 (1:N)")
    max_volume: float | None = Field(default=None, ge=MIN_VOLUME, le=MAX_ACCOUNT_VOLUME, description="lots, 0.01 to 1000: caps every order")

    _check_server_time = field_validator("server_time")(_server_time)
    _check_password = field_validator("password")(_password)

    @model_validator(mode="after")
    def _mt5_needs_credentials(self):
        if self.broker == "mt5":
            missing = [name for name in ("login", "server", "password") if not getattr(self, name)]
            if missing:
                raise ValueError(
                    f"an mt5 account needs login, server and password (the value, env:NAME or file:/path); missing: {', '.join(missing)}"
                )
        return self


class AccountUpdate(Input):
    name: str | None = Field(default=None, max_length=100)
    login: str | None = Field(default=None, max_length=64)
    server: str | None = Field(default=None, max_length=128)
    password: str | None = Field(default=None, min_length=1, max_length=512, description="write-only: the value, env:NAME or file:/path")
    server_time: str | None = None
    symbol_suffix: str | None = Field(default=None, max_length=16, pattern=r"^[A-Za-z0-9._#!-]*$")
    margin_mode: Literal["netting", "hedging"] | None = None
    is_demo: bool | None = None
    is_active: bool | None = None
    leverage: float | None = Field(default=None, ge=1, le=MAX_LEVERAGE, description="1 to 5000 (1:N)")
    max_volume: float | None = Field(default=None, ge=MIN_VOLUME, le=MAX_ACCOUNT_VOLUME, description="lots, 0.01 to 1000; null: no cap")

    _check_server_time = field_validator("server_time")(_server_time)
    _check_password = field_validator("password")(_password)


class AccountPublic(BaseModel):
    id: int
    name: str
    broker: str
    login: str | None
    server: str | None
    password_set: bool = Field(description="whether a password (or a reference to one) is stored; it is never returned")
    server_time: str
    symbol_suffix: str
    margin_mode: str
    currency: str
    is_demo: bool
    is_active: bool
    leverage: float
    max_volume: float | None
    created_at: datetime


# --- bots ---------------------------------------------------------------------------------------------------


def _hours(value: str | None) -> str | None:
    if value is None:
        return value
    parse_trading_hours(value)
    return value.strip()


class BotSettings(Input):
    """The per-bot table of the seed plus the risk fields; every field optional so PATCH can share it."""

    name: str | None = Field(default=None, max_length=100)
    symbol: str | None = Field(default=None, min_length=1, max_length=32, pattern=r"^[A-Za-z0-9._#!-]+$")
    default_timeframe: Literal["1m", "5m"] | None = None
    enabled_strategies: list[str] | None = Field(default=None, description="names from GET /strategies")
    strategy_params: dict[str, dict[str, Any]] | None = Field(default=None, description="per-strategy parameter overrides")
    default_qty: float | None = Field(
        default=None, ge=MIN_VOLUME, le=100, description="lots: within the symbol's volume_min and volume_max, on its volume_step (GET /symbols)"
    )
    default_sl_pips: float | None = Field(default=None, ge=0.1, le=MAX_PIPS)
    default_tp_pips: float | None = Field(default=None, ge=0.1, le=MAX_PIPS)
    decision_min_score: float | None = Field(default=None, ge=0, le=1)
    risk_max_concurrent_positions: int | None = Field(default=None, ge=0, le=1000)
    risk_max_per_symbol: int | None = Field(default=None, ge=0, le=1000)
    max_trades_per_day: int | None = Field(default=None, ge=0, le=100_000)
    kill_switch_enabled: bool | None = None
    kill_switch_max_daily_loss_pct: float | None = Field(default=None, ge=0.01, le=100)
    sl_tp_mode: SlTpMode | None = None
    auto_trade: bool | None = None
    max_spread_pips: float | None = Field(default=None, ge=0.1, le=MAX_SPREAD_PIPS)
    trading_hours: str | None = Field(
        default=None,
        max_length=16,
        description="HH:MM-HH:MM in UTC; empty: always",
        # in the schema for clients; checked by the validator below, whose message says what to write
        json_schema_extra={"pattern": r"^(|([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d)$"},
    )
    correlation_check: bool | None = None
    min_stop_spread_ratio: float | None = Field(
        default=None, ge=0, le=100, description="refuse a signal whose stop is closer to the entry than this many spreads (0: off)"
    )
    min_expected_r: float | None = Field(
        default=None, ge=-10, le=10, description="refuse a calibrated signal (p_win present) expecting less than this many R net of costs"
    )

    _check_hours = field_validator("trading_hours")(_hours)


class BotCreate(BotSettings):
    account_id: int = Field(ge=1, le=2_147_483_647)
    symbol: str = Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9._#!-]+$")
    engine_mode: EngineMode = "scalper"


class BotUpdate(BotSettings):
    pass


class BotPublic(BaseModel):
    id: int
    account_id: int
    name: str
    engine_mode: str
    symbol: str
    default_timeframe: str
    enabled_strategies: list[str]
    strategy_params: dict[str, dict[str, Any]]
    default_qty: float
    default_sl_pips: float
    default_tp_pips: float
    decision_min_score: float
    risk_max_concurrent_positions: int
    risk_max_per_symbol: int
    max_trades_per_day: int
    kill_switch_enabled: bool
    kill_switch_max_daily_loss_pct: float
    sl_tp_mode: str
    auto_trade: bool
    status: str
    status_reason: str
    max_spread_pips: float | None
    trading_hours: str
    correlation_check: bool
    min_stop_spread_ratio: float
    min_expected_r: float
    created_at: datetime
    updated_at: datetime


class KillFailure(BaseModel):
    bot_id: int
    reason: str = Field(description="why this bot could not be killed; the others were")


class KillAll(BaseModel):
    killed: list[int] = Field(description="ids of the bots stopped")
    failed: list[KillFailure] = Field(default_factory=list, description="bots that could not be stopped, and why")
    commands: int = Field(description="close_all commands queued for the executor (the outbox publishes them)")


# --- trading records ----------------------------------------------------------------------------------------


class SignalPublic(BaseModel):
    signal_id: str
    bot_id: int
    account_id: int
    symbol: str
    timeframe: str
    strategy: str
    side: str
    bar_time: datetime
    entry: float
    stop: float
    target: float
    score: float
    features: dict[str, Any]
    p_win: float | None = Field(default=None, description="calibrated P(target before stop); null without a calibration")
    expected_r_net: float | None = Field(default=None, description="expected R net of spread and commission; null without one")
    created_at: datetime
    decision_id: int | None = None
    action: str | None = None
    reason: str | None = None


class DecisionPublic(BaseModel):
    id: int
    signal_id: str
    bot_id: int
    account_id: int
    symbol: str
    strategy: str | None = None
    action: str
    reason: str
    checks: list[dict[str, Any]]
    side: str | None
    volume: float | None
    sl: float | None
    tp: float | None
    client_order_id: str | None
    expires_at: datetime | None
    order_status: str | None
    created_at: datetime


class OrderPublic(BaseModel):
    decision_id: int
    client_order_id: str
    signal_id: str
    bot_id: int
    account_id: int
    symbol: str
    strategy: str | None = None
    side: str | None
    volume: float | None
    sl: float | None
    tp: float | None
    status: str | None
    ticket: int | None
    fill_price: float | None
    filled_at: datetime | None
    expires_at: datetime | None
    created_at: datetime


class PositionPublic(BaseModel):
    decision_id: int
    ticket: int | None
    client_order_id: str | None
    bot_id: int
    account_id: int
    symbol: str
    strategy: str | None = None
    side: str | None
    volume: float | None
    open_price: float | None
    sl: float | None
    tp: float | None
    opened_at: datetime | None
    status: str | None
    close_price: float | None
    close_reason: str | None
    closed_at: datetime | None
    pnl: float | None


class AuditPublic(BaseModel):
    id: int
    at: datetime
    actor: str
    user_id: int | None
    bot_id: int | None
    kind: str
    entity_id: str | None
    message: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class TradeStats(BaseModel):
    model_config = ConfigDict(extra="allow")

    trades: int
    wins: int
    win_rate: float | None
    profit_factor: float | None
    expectancy_r: float | None
    max_drawdown: float | None
    net_pnl: float | None
    net_pips: float | None


class StatsPublic(BaseModel):
    total: TradeStats
    by_strategy: dict[str, TradeStats]
