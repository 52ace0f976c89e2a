"""Versioned bus messages (architecture.md, "Messages"). Immutable; each carries schema_version, message_id, produced_at.

A consumer decodes with `decode()`: fields it does not know from a newer minor version are ignored and
reported; a newer major version is refused (the bus dead-letters it).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, ClassVar, Literal

import pydantic_core
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from shared.bars import Bars
from shared.symbols import SymbolSpec
from shared.timeutil import utcnow

# 1.1: ScanResult (a window's signals and report together); Signal.p_win and Signal.expected_r_net,
# OrderIntent.invalidation (optional fields: a 1.0 consumer ignores them).
SCHEMA_VERSION = "1.1"
SIGNAL_NAMESPACE = uuid.UUID("5b0c7c1e-3d4a-4f6b-9a55-2f1c8e1d9a10")

Side = Literal["buy", "sell"]
Timeframe = Literal["1m", "5m"]


class InvalidMessage(ValueError):
    """A message that can never be handled: dead-letter it at once with this reason."""


class Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    type_name: ClassVar[str]

    schema_version: str = SCHEMA_VERSION
    message_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    produced_at: AwareDatetime = Field(default_factory=utcnow)

    def encode(self) -> bytes:
        return self.model_dump_json().encode()


# --- market data -> strategy -------------------------------------------------------------------------------


class BarColumns(BaseModel):
    """The window's bars as columns (oldest first, closed bars only); `time` is the open time in UTC epoch seconds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    time: list[int]
    open: list[float]
    high: list[float]
    low: list[float]
    close: list[float]
    tick_volume: list[int]
    spread: list[int]

    @classmethod
    def from_bars(cls, bars: Bars) -> BarColumns:
        return cls(**bars.columns())

    def to_bars(self) -> Bars:
        return Bars.from_columns(**self.__dict__)


class Levels(BaseModel):
    """The previous broker day's high, low, close and floor pivots."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    day_start: AwareDatetime = Field(description="UTC start of the broker day these levels serve")
    prev_high: float
    prev_low: float
    prev_close: float
    pivot: float
    r1: float
    s1: float
    r2: float
    s2: float


class StrategyConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class Subscription(BaseModel):
    """One bot's interest in a symbol: what the strategy workers run for it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bot_id: int
    account_id: int
    symbol: str = Field(description="the bot's symbol as the user typed it, e.g. XAUUSDm")
    engine_mode: Literal["scalper", "harami"] = "scalper"
    timeframe: Timeframe = "1m"
    strategies: tuple[StrategyConfig, ...]


class PlanSymbol(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    symbol: str = Field(description="canonical instrument, e.g. XAUUSD")
    lookback: int = Field(ge=1, description="closed M1 bars the scan must publish")
    subscriptions: tuple[Subscription, ...]


class ScanPlan(Message):
    type_name: ClassVar[str] = "ScanPlan"

    symbols: tuple[PlanSymbol, ...]


class BarWindow(Message):
    type_name: ClassVar[str] = "BarWindow"

    symbol: str
    timeframe: Timeframe = "1m"
    bars: BarColumns
    closed_through: AwareDatetime = Field(description="close time of the newest bar in the window")
    source: str
    levels: Levels | None = None
    subscriptions: tuple[Subscription, ...]
    spec: SymbolSpec | None = Field(default=None, description="the broker's spec of the symbol, when a broker reported one")


# --- strategy -> decision ----------------------------------------------------------------------------------


def signal_id_for(*, bot_id: int, symbol: str, strategy: str, timeframe: str, bar_time: datetime) -> uuid.UUID:
    """uuid5 of the dedupe key (bot, symbol, strategy, timeframe, bar_time)."""
    key = f"{bot_id}|{symbol}|{strategy}|{timeframe}|{bar_time.isoformat()}"
    return uuid.uuid5(SIGNAL_NAMESPACE, key)


class Signal(Message):
    type_name: ClassVar[str] = "Signal"

    signal_id: uuid.UUID
    window_id: uuid.UUID | None = Field(default=None, description="message_id of the BarWindow that produced it")
    bot_id: int
    account_id: int
    symbol: str
    timeframe: Timeframe
    strategy: str
    side: Side
    bar_time: AwareDatetime
    entry: float
    stop: float
    target: float
    score: float = Field(ge=0.0, le=1.0)
    features: dict[str, float | int | str | bool | None] = Field(default_factory=dict)
    p_win: float | None = Field(default=None, ge=0.0, le=1.0, description="calibrated probability that the target is "
                                "touched before the stop (SCALPER_CALIBRATION); null without a calibration")
    expected_r_net: float | None = Field(default=None, description="expected result in R (stop distances) net of spread and "
                                         "commission, from p_win; null without a calibration")


class BotScan(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    bot_id: int
    strategies: tuple[str, ...]
    signal_ids: tuple[uuid.UUID, ...]
    errors: tuple[str, ...] = ()


class ScanReport(Message):
    """Sent by a strategy worker after a window's signals: what each bot's scan evaluated and produced.

    It lets decision log the scan line once per bot per scan, zero signals included.
    """

    type_name: ClassVar[str] = "ScanReport"

    window_id: uuid.UUID
    symbol: str
    timeframe: Timeframe
    bar_time: AwareDatetime = Field(description="open time of the window's newest bar")
    bots: tuple[BotScan, ...]


class ScanResult(Message):
    """A window's Signals and its ScanReport in one message (1.1), which strategy workers send instead of the
    Signals one by one and the report after them: decision decides a window's signals for each account together,
    in one transaction, and acks the window once they are all decided. Decision still takes Signal and ScanReport
    messages alone (a worker of 1.0)."""

    type_name: ClassVar[str] = "ScanResult"

    signals: tuple[Signal, ...]
    report: ScanReport


# --- decision -> executor ----------------------------------------------------------------------------------


class StrategyExit(BaseModel):
    """What the executor needs to close a position once its strategy's setup no longer holds: the strategy, the bot's
    parameters for it and the signal's features (shared/strategies/invalidation.py judges them on closed bars)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    strategy: str
    params: dict[str, Any] = Field(default_factory=dict)
    features: dict[str, float | int | str | bool | None] = Field(default_factory=dict)


class OrderIntent(Message):
    type_name: ClassVar[str] = "OrderIntent"

    client_order_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,26}$")
    decision_id: int
    signal_id: uuid.UUID
    bot_id: int
    account_id: int
    symbol: str
    side: Side
    volume: float = Field(gt=0)
    sl: float | None
    tp: float | None
    deviation: int = Field(default=20, ge=0, description="points of slippage accepted")
    entry: float | None = Field(default=None, description="the signal's entry price: the executor refuses the order when "
                                "the broker's quote is further than SCALPER_MAX_QUOTE_DEVIATION from it")
    magic: int
    comment: str = Field(pattern=r"^[A-Za-z0-9_-]{1,26}$")
    expires_at: AwareDatetime
    invalidation: StrategyExit | None = Field(default=None, description="the strategy's early exit, when it has one")


class ExecutorCommand(Message):
    type_name: ClassVar[str] = "ExecutorCommand"

    command: Literal["close_position", "close_all", "move_stop", "resume_bot"]  # resume_bot: lift a kill-switch block (bot_id)
    account_id: int
    bot_id: int | None = None
    ticket: int | None = None
    sl: float | None = None
    reason: str = "manual"


# --- executor -> decision ----------------------------------------------------------------------------------


class ExecutionReport(Message):
    type_name: ClassVar[str] = "ExecutionReport"

    client_order_id: str
    account_id: int
    bot_id: int
    status: Literal["filled", "rejected", "failed", "expired"]
    ticket: int | None = None
    price: float | None = None
    volume: float | None = None
    retcode: int | None = None
    reason: str = ""
    filled_at: AwareDatetime | None = None


class PositionEvent(Message):
    type_name: ClassVar[str] = "PositionEvent"

    ticket: int
    account_id: int
    bot_id: int | None = Field(description="None for a position opened outside the engine")
    client_order_id: str | None = None
    symbol: str
    side: Side
    volume: float
    kind: Literal["opened", "stop_moved", "closed"]
    open_price: float
    sl: float | None = None
    tp: float | None = None
    close_price: float | None = None
    pnl: float | None = None
    close_reason: Literal["tp", "sl", "trail", "early_exit", "kill_switch", "manual"] | None = None
    at: AwareDatetime


class AccountSnapshot(Message):
    type_name: ClassVar[str] = "AccountSnapshot"

    account_id: int
    balance: float
    equity: float
    margin: float
    margin_free: float
    taken_at: AwareDatetime
    specs: tuple[SymbolSpec, ...] = Field(default=(), description="the specs the account's broker reported (MT5 symbol_info)")


# --- market data <-> executor: the rates RPC (feed mt5) ------------------------------------------------------


class RatesRequest(Message):
    """Market data asks the executor holding an account's MT5 session for closed M1 bars (exchange `rates`, key
    str(account_id)); the answer goes to exchange `rates` with routing key `reply_to`, carrying `correlation_id`."""

    type_name: ClassVar[str] = "RatesRequest"

    account_id: int
    symbol: str
    timeframe: Timeframe = "1m"
    count: int = Field(ge=1, le=100_000)
    reply_to: str
    correlation_id: uuid.UUID


class RatesReply(Message):
    type_name: ClassVar[str] = "RatesReply"

    correlation_id: uuid.UUID
    account_id: int
    symbol: str
    timeframe: Timeframe = "1m"
    bars: BarColumns | None = Field(default=None, description="closed bars, oldest first, times in UTC")
    error: str = ""
    server_time: AwareDatetime | None = Field(default=None, description="the terminal's current time, in UTC, when it answered")
    spec: SymbolSpec | None = Field(default=None, description="the broker's spec of the symbol (MT5 symbol_info)")


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.type_name: cls
    for cls in (ScanPlan, BarWindow, Signal, ScanReport, ScanResult, OrderIntent, ExecutorCommand, ExecutionReport, PositionEvent, AccountSnapshot, RatesRequest, RatesReply)
}


def decode(type_name: str, body: bytes) -> tuple[Message, list[str]]:
    """Parse a bus body into its message class; return the message and the unknown fields it ignored.

    Raises InvalidMessage for an unknown type, a newer major schema version, or a body that fails validation.
    """
    cls = MESSAGE_TYPES.get(type_name)
    if cls is None:
        raise InvalidMessage(f"unknown message type {type_name!r}")
    try:
        data = pydantic_core.from_json(body)  # pydantic's parser: half the time of json.loads on a bar window
    except ValueError as exc:
        raise InvalidMessage(f"body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidMessage("body is not a JSON object")
    version = str(data.get("schema_version", SCHEMA_VERSION))
    major = version.split(".", 1)[0]
    if major != SCHEMA_VERSION.split(".", 1)[0]:
        raise InvalidMessage(f"schema_version {version} has another major version than ours ({SCHEMA_VERSION})")
    unknown = sorted(set(data) - set(cls.model_fields))
    for name in unknown:
        data.pop(name)
    try:
        return cls.model_validate(data), unknown
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidMessage(f"{type_name} failed validation at {where}: {first['msg']}") from None
