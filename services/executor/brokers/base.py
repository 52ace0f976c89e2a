"""The Broker interface the executor drives (paper now, MT5 later), and the plain records it speaks in.

Prices are in the symbol's digits, volumes in lots, times aware UTC (an adapter converts broker server time).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from collections.abc import Iterable
from typing import Literal, Protocol, runtime_checkable

from shared.bars import Bars
from shared.bus.base import TransientError
from shared.symbols import Side, SymbolSpec

PlaceStatus = Literal["filled", "rejected", "failed"]
CloseReason = Literal["tp", "sl", "trail", "early_exit", "kill_switch", "manual"]

# MT5 trade server return codes the executor reasons about (../shared/reference/mt5-and-rabbitmq.md).
RETCODE_REQUOTE = 10004
RETCODE_DONE = 10009
RETCODE_INVALID = 10013
RETCODE_INVALID_VOLUME = 10014
RETCODE_INVALID_STOPS = 10016
RETCODE_NO_MONEY = 10019
RETCODE_PRICE_CHANGED = 10020
RETCODE_PRICE_OFF = 10021
RETCODE_POSITION_CLOSED = 10036
# Nothing was placed and a fresh price may succeed: retry within the intent's expiry.
RETRYABLE_RETCODES = frozenset({RETCODE_REQUOTE, RETCODE_PRICE_CHANGED, RETCODE_PRICE_OFF})


class BrokerUnavailable(TransientError):
    """The broker could not be asked, or its answer was lost: the outcome of the call is unknown.

    After a `place` that raised this, nothing may be resent before `find_order` has looked for the order.
    """


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """A market order. `client_order_id` travels as the broker comment (MT5 `comment`), `magic` as the bot's tag."""

    client_order_id: str
    symbol: str
    side: Side
    volume: float
    sl: float | None
    tp: float | None
    magic: int
    deviation: int = 20
    expires_at: datetime | None = None  # a requote may be retried with a fresh price until then, never after


@dataclass(frozen=True, slots=True)
class BrokerPosition:
    ticket: int
    symbol: str
    side: Side
    volume: float
    open_price: float
    sl: float | None
    tp: float | None
    opened_at: datetime
    magic: int = 0
    comment: str = ""


@dataclass(frozen=True, slots=True)
class ClosedPosition:
    """A position (or, on a netting account, the part of one) that the broker closed.

    `pnl` is net, in the account currency: the price profit (SymbolSpec.profit) less `commission`.
    """

    ticket: int
    symbol: str
    side: Side
    volume: float
    open_price: float
    close_price: float
    closed_at: datetime
    reason: CloseReason
    pnl: float
    commission: float = 0.0
    magic: int = 0
    comment: str = ""


@dataclass(frozen=True, slots=True)
class PlaceResult:
    """The broker's answer to `place` (or what `find_order` found).

    filled: `ticket` is the position the deal opened or added to, `price`/`volume` what was dealt.
    rejected: the request was refused and nothing was placed (bad stops, volume, no price, no money...).
    failed: the broker answered with an error and nothing was placed.
    An unknown outcome is not a status: `place` raises BrokerUnavailable instead.
    `position` is the position the deal opened or added to, as it stands after the deal. On a netting account a deal
    can also close (part of) a position: `closed` lists what it closed, and `position` is None when the deal only
    reduced or closed one (`ticket` then names the position it reduced).
    """

    status: PlaceStatus
    ticket: int | None = None
    price: float | None = None
    volume: float | None = None
    retcode: int | None = None
    reason: str = ""
    filled_at: datetime | None = None
    position: BrokerPosition | None = None
    closed: tuple[ClosedPosition, ...] = ()


@dataclass(frozen=True, slots=True)
class ModifyResult:
    ok: bool
    retcode: int | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class AccountInfo:
    balance: float
    equity: float
    margin: float
    margin_free: float


@runtime_checkable
class Broker(Protocol):
    """One broker session (one trading account). Raise BrokerUnavailable when the broker cannot be reached."""

    margin_mode: str  # "hedging" (a position per deal) or "netting" (one position per symbol that deals add to)

    async def place(self, request: OrderRequest) -> PlaceResult:
        """Send a market order; never retry inside (the executor decides, after `find_order`)."""

    async def find_order(self, client_order_id: str, magic: int | None = None) -> PlaceResult | None:
        """Whether an order with this comment (and magic) was already dealt: search open positions and deal history."""

    async def positions(self) -> list[BrokerPosition]: ...

    async def close(self, ticket: int, reason: CloseReason) -> ClosedPosition | None:
        """Close a position at market; None when the broker has no position with this ticket."""

    async def modify(self, ticket: int, sl: float | None, tp: float | None) -> ModifyResult: ...

    async def quote(self, symbol: str) -> tuple[float, float] | None:
        """(bid, ask) now, or None without prices."""

    async def account(self) -> AccountInfo: ...

    async def healthy(self) -> bool: ...


@runtime_checkable
class TerminalBroker(Broker, Protocol):
    """A broker behind a terminal session of its own (MT5): opened at start and closed at stop; it trades on its own
    (stops, targets, a person at the terminal), so the executor syncs with it; it quotes, serves closed bars (the rates
    RPC), knows its symbols' specs and tells its own time."""

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    def health_details(self) -> dict: ...

    async def find_close(self, ticket: int, reason: CloseReason = "manual") -> ClosedPosition | None:
        """How a position the broker no longer has was closed (deal history), or None when it cannot tell."""

    async def spec(self, symbol: str) -> SymbolSpec: ...

    def specs(self) -> list[SymbolSpec]:
        """The specs of every symbol the session has described so far (symbol_info), for the other services."""

    async def rates(self, symbol: str, count: int) -> Bars:
        """The last `count` closed M1 bars, oldest first, times in UTC."""

    async def terminal_time(self, symbol: str | None = None) -> datetime | None:
        """The terminal's time now, in UTC (its latest tick of `symbol`, or of any symbol it watches), or None."""


@runtime_checkable
class BarFedBroker(Broker, Protocol):
    """A simulated broker that prices and finds stop/target hits on the closed bars it is fed (the paper broker).

    The executor feeds it the bars queue and, after a restart, rebuilds it from its tables.
    """

    initial_balance: float

    def wants_bars(self, symbol: str, newest: int) -> bool:
        """Whether a window of `symbol` whose newest bar opened at `newest` (epoch s) needs feeding to this broker."""

    async def on_bars(self, symbol: str, bars: Bars) -> list[ClosedPosition]:
        """Take closed M1 bars (oldest first); return the positions their stops and targets closed."""

    def restore(self, positions: Iterable[BrokerPosition], *, balance: float | None = None) -> None: ...
