"""The paper broker: fills market orders at the latest closed bar (fills.py's rules) and closes on stop/target hits.

It keeps the latest closed M1 bar per symbol, fed by `on_bars`; the paper brokers of one executor share that book
(`quotes`: one feed prices them all), so a window needs feeding only to the brokers that hold a position on its
symbol (`wants_bars`). State lives in memory; `restore` rebuilds it from the executor's positions table after a restart.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import numpy as np

from services.executor import fills
from services.executor.brokers.base import (
    RETCODE_DONE,
    RETCODE_INVALID,
    RETCODE_INVALID_STOPS,
    RETCODE_INVALID_VOLUME,
    RETCODE_NO_MONEY,
    RETCODE_POSITION_CLOSED,
    RETCODE_PRICE_OFF,
    AccountInfo,
    BrokerPosition,
    BrokerUnavailable,
    ClosedPosition,
    CloseReason,
    ModifyResult,
    OrderRequest,
    PlaceResult,
)
from shared.bars import Bars
from shared.symbols import Side, SymbolSpec, UnknownSymbol, canonical_symbol, get_spec
from shared.timeutil import Clock, from_epoch, to_epoch

MarginMode = Literal["hedging", "netting"]
M1_SECONDS = 60


@dataclass(frozen=True, slots=True)
class _Bar:
    time: int  # open time, UTC epoch seconds
    close_time: int
    close: float  # bid
    spread: int  # points


@dataclass(slots=True)
class _Position:
    ticket: int
    symbol: str  # as the order named it (e.g. XAUUSDm)
    key: str  # canonical instrument, the key of the bars
    spec: SymbolSpec
    side: Side
    volume: float
    open_price: float
    sl: float | None
    tp: float | None
    opened_at: datetime
    magic: int
    comment: str
    check_from: int  # open time (epoch s) of the first bar not yet checked for a stop/target hit

    def public(self) -> BrokerPosition:
        return BrokerPosition(
            ticket=self.ticket,
            symbol=self.symbol,
            side=self.side,
            volume=self.volume,
            open_price=self.open_price,
            sl=self.sl,
            tp=self.tp,
            opened_at=self.opened_at,
            magic=self.magic,
            comment=self.comment,
        )


@dataclass(frozen=True, slots=True)
class _Deal:
    """An entry deal, kept so `find_order` can answer by comment (MT5: history_deals_get)."""

    ticket: int  # the position it opened or added to
    comment: str
    magic: int
    price: float
    volume: float
    at: datetime


class QuoteBook(dict[str, _Bar]):
    """The latest closed bar per canonical symbol: one book prices every paper broker of an executor."""


def _volume_decimals(spec: SymbolSpec) -> int:
    return max(0, -math.floor(math.log10(spec.volume_step)))


def _margin(spec: SymbolSpec, volume: float, price: float, leverage: float) -> float:
    """Margin in USD: the position's notional over the leverage (for a cross pair, in its quote currency)."""
    notional = volume * spec.contract_size
    if spec.base_currency == "USD":
        return notional / leverage
    return notional * price / leverage


class PaperBroker:
    def __init__(
        self,
        *,
        clock: Clock,
        balance: float,
        commission_per_lot: float = 0.0,
        slippage_points: float = 0,
        margin_mode: MarginMode = "hedging",
        leverage: float = 100,
        symbol_suffix: str | None = None,
        quotes: dict[str, _Bar] | None = None,
    ) -> None:
        if margin_mode not in ("hedging", "netting"):
            raise ValueError(f"margin_mode {margin_mode!r}: use hedging or netting")
        if balance <= 0 or leverage <= 0 or commission_per_lot < 0 or slippage_points < 0:
            raise ValueError("balance and leverage must be positive, commission and slippage not negative")
        self._clock = clock
        self.initial_balance = float(balance)
        self._balance = float(balance)
        self._commission_per_lot = float(commission_per_lot)  # per lot, per round turn, charged when a lot closes
        self._slippage_points = slippage_points
        self.margin_mode: MarginMode = margin_mode
        self._leverage = float(leverage)
        self._suffix = symbol_suffix
        # The latest closed bar per canonical symbol: this broker's own, or a book shared with other paper brokers.
        self._bars: dict[str, _Bar] = {} if quotes is None else quotes
        self._positions: dict[int, _Position] = {}
        self._deals: dict[str, _Deal] = {}
        self._next_ticket = 1

    # --- the feed ------------------------------------------------------------------------------------------

    def wants_bars(self, symbol: str, newest: int) -> bool:
        """Whether a window whose newest bar opened at `newest` (epoch s) would change anything here: a position on
        the symbol to check, or a quote older than the window (a shared book is fed by the first broker given it)."""
        key = canonical_symbol(symbol, self._suffix)
        latest = self._bars.get(key)
        return latest is None or newest > latest.time or any(p.key == key for p in self._positions.values())

    async def on_bars(self, symbol: str, bars: Bars, *, bar_seconds: int = M1_SECONDS) -> list[ClosedPosition]:
        """Take closed bars (oldest first, bid prices); return the positions their stops or targets closed.

        A position is checked on each bar that opened at or after the close of the bar it was priced on (the
        paper fill happens at that close), each bar once: a stop moved later is never tested on an older bar.
        """
        if len(bars) == 0:
            return []
        key = canonical_symbol(symbol, self._suffix)
        newest = int(bars.time[-1])
        latest = self._bars.get(key)
        if latest is None or newest >= latest.time:
            self._bars[key] = _Bar(newest, newest + bar_seconds, float(bars.close[-1]), int(bars.spread[-1]))
        closed: list[ClosedPosition] = []
        for pos in [p for p in self._positions.values() if p.key == key]:
            start = int(np.searchsorted(bars.time, pos.check_from, side="left"))
            for i in range(start, len(bars)):
                hit = fills.exit_on_bar(
                    pos.side,
                    pos.sl,
                    pos.tp,
                    open=float(bars.open[i]),
                    high=float(bars.high[i]),
                    low=float(bars.low[i]),
                    spread_points=int(bars.spread[i]),
                    spec=pos.spec,
                )
                if hit is not None:
                    price, reason = hit
                    # The hit happened inside this bar; the paper broker learns of it as the bar closes.
                    at = from_epoch(int(bars.time[i]) + bar_seconds)
                    closed.append(self._close_volume(pos, pos.volume, price, at, reason))
                    break
            else:
                pos.check_from = max(pos.check_from, newest + bar_seconds)
        return closed

    # --- Broker ----------------------------------------------------------------------------------------------

    async def place(self, request: OrderRequest) -> PlaceResult:
        try:
            spec = get_spec(request.symbol, self._suffix)
        except UnknownSymbol as exc:
            return PlaceResult(status="rejected", retcode=RETCODE_INVALID, reason=str(exc))
        volume = request.volume
        decimals = _volume_decimals(spec)
        steps = volume / spec.volume_step
        if volume < spec.volume_min - 1e-9 or volume > spec.volume_max + 1e-9 or abs(steps - round(steps)) > 1e-6:
            return PlaceResult(
                status="rejected",
                retcode=RETCODE_INVALID_VOLUME,
                reason=f"invalid volume {volume}: {request.symbol} trades {spec.volume_min}..{spec.volume_max} lots in steps of {spec.volume_step}",
            )
        volume = round(volume, decimals)
        key = canonical_symbol(request.symbol, self._suffix)
        bar = self._bars.get(key)
        if bar is None:
            return PlaceResult(
                status="rejected",
                retcode=RETCODE_PRICE_OFF,
                reason=f"no price for {key}: the paper broker has not received a closed bar of it yet",
            )
        sl = None if request.sl is None else spec.round_price(request.sl)
        tp = None if request.tp is None else spec.round_price(request.tp)
        problem = fills.stops_problem(request.side, bar.close, bar.spread, spec, sl, tp)
        if problem is not None:
            return PlaceResult(status="rejected", retcode=RETCODE_INVALID_STOPS, reason=problem)
        price = fills.entry_price(request.side, bar.close, bar.spread, spec, self._slippage_points)

        existing = self._netting_position(key) if self.margin_mode == "netting" else None
        if existing is None or existing.side == request.side:
            added = volume
        else:
            added = round(max(0.0, volume - existing.volume), decimals)
        required = _margin(spec, added, price, self._leverage)
        free = self._account().margin_free
        if required > free:
            return PlaceResult(
                status="rejected",
                retcode=RETCODE_NO_MONEY,
                reason=f"not enough money: {volume} lots of {key} need {required:.2f} margin, {free:.2f} free",
            )

        now = self._clock.now()
        ticket = self._next_ticket
        self._next_ticket += 1
        closed: tuple[ClosedPosition, ...] = ()
        if existing is not None and existing.side == request.side:
            # Netting, same direction: one position, volume-weighted price; the request's stops replace the old ones.
            total = round(existing.volume + volume, decimals)
            existing.open_price = spec.round_price((existing.open_price * existing.volume + price * volume) / total)
            existing.volume = total
            existing.sl, existing.tp = sl, tp
            position = existing
        else:
            if existing is not None:
                # Netting, opposite direction: the deal closes (part of) the position; what is left over reverses it.
                closing = min(existing.volume, volume)
                closed = (self._close_volume(existing, closing, price, now, "early_exit"),)
            remainder = round(volume - sum(c.volume for c in closed), decimals)
            position = None
            if remainder > 0:
                position = _Position(
                    ticket=ticket,
                    symbol=request.symbol,
                    key=key,
                    spec=spec,
                    side=request.side,
                    volume=remainder,
                    open_price=price,
                    sl=sl,
                    tp=tp,
                    opened_at=now,
                    magic=request.magic,
                    comment=request.client_order_id,
                    check_from=bar.close_time,
                )
                self._positions[ticket] = position
        result_ticket = position.ticket if position is not None else closed[0].ticket
        self._deals[request.client_order_id] = _Deal(result_ticket, request.client_order_id, request.magic, price, volume, now)
        return PlaceResult(
            status="filled",
            ticket=result_ticket,
            price=price,
            volume=volume,
            retcode=RETCODE_DONE,
            reason="filled by the paper broker",
            filled_at=now,
            position=None if position is None else position.public(),
            closed=closed,
        )

    async def find_order(self, client_order_id: str, magic: int | None = None) -> PlaceResult | None:
        def magic_ok(found: int) -> bool:
            # A position restored from the database may not know its magic (0): the comment alone decides then.
            return magic is None or found == 0 or found == magic

        deal = self._deals.get(client_order_id)
        if deal is not None and magic_ok(deal.magic):
            pos = self._positions.get(deal.ticket)
            return PlaceResult(
                status="filled",
                ticket=deal.ticket,
                price=deal.price,
                volume=deal.volume,
                retcode=RETCODE_DONE,
                reason="found in the paper broker's deal history",
                filled_at=deal.at,
                position=None if pos is None else pos.public(),
            )
        for pos in self._positions.values():
            if pos.comment == client_order_id and magic_ok(pos.magic):
                return PlaceResult(
                    status="filled",
                    ticket=pos.ticket,
                    price=pos.open_price,
                    volume=pos.volume,
                    retcode=RETCODE_DONE,
                    reason="found among the paper broker's open positions",
                    filled_at=pos.opened_at,
                    position=pos.public(),
                )
        return None

    async def positions(self) -> list[BrokerPosition]:
        return [p.public() for p in self._positions.values()]

    async def close(self, ticket: int, reason: CloseReason) -> ClosedPosition | None:
        pos = self._positions.get(ticket)
        if pos is None:
            return None
        bar = self._bars.get(pos.key)
        if bar is None:
            raise BrokerUnavailable(f"no price for {pos.key} yet: cannot close ticket {ticket} until a bar arrives")
        price = fills.exit_price(pos.side, bar.close, bar.spread, pos.spec, self._slippage_points)
        return self._close_volume(pos, pos.volume, price, self._clock.now(), reason)

    async def modify(self, ticket: int, sl: float | None, tp: float | None) -> ModifyResult:
        pos = self._positions.get(ticket)
        if pos is None:
            return ModifyResult(ok=False, retcode=RETCODE_POSITION_CLOSED, reason=f"no open position {ticket}")
        sl = None if sl is None else pos.spec.round_price(sl)
        tp = None if tp is None else pos.spec.round_price(tp)
        bar = self._bars.get(pos.key)
        if bar is not None:
            problem = fills.stops_problem(pos.side, bar.close, bar.spread, pos.spec, sl, tp)
            if problem is not None:
                return ModifyResult(ok=False, retcode=RETCODE_INVALID_STOPS, reason=problem)
        pos.sl, pos.tp = sl, tp
        return ModifyResult(ok=True, retcode=RETCODE_DONE)

    async def quote(self, symbol: str) -> tuple[float, float] | None:
        """(bid, ask) of the latest closed bar: its close and its close plus its spread."""
        key = canonical_symbol(symbol, self._suffix)
        bar = self._bars.get(key)
        if bar is None:
            return None
        spec = get_spec(symbol, self._suffix)
        return bar.close, fills.entry_price("buy", bar.close, bar.spread, spec)

    async def account(self) -> AccountInfo:
        return self._account()

    async def healthy(self) -> bool:
        return True

    # --- restart -------------------------------------------------------------------------------------------

    def restore(self, positions: Iterable[BrokerPosition], *, balance: float | None = None, issued_through: int = 0) -> None:
        """Rebuild the open positions (and the balance) after a restart, from the executor's positions table.

        `issued_through` is the highest ticket the tables ever saw on this broker's accounts (open, closed, or only
        on an order row): tickets go on after it, so a ticket is never issued twice, however many restarts.
        A restored position is checked from the bar in which it was opened: the bars seen before the restart
        are not known to have been checked.
        """
        self._next_ticket = max(self._next_ticket, issued_through + 1)
        self._positions.clear()
        for p in positions:
            spec = get_spec(p.symbol, self._suffix)
            self._positions[p.ticket] = _Position(
                ticket=p.ticket,
                symbol=p.symbol,
                key=canonical_symbol(p.symbol, self._suffix),
                spec=spec,
                side=p.side,
                volume=p.volume,
                open_price=p.open_price,
                sl=p.sl,
                tp=p.tp,
                opened_at=p.opened_at,
                magic=p.magic,
                comment=p.comment,
                check_from=to_epoch(p.opened_at) // 60 * 60,
            )
            self._next_ticket = max(self._next_ticket, p.ticket + 1)
        if balance is not None:
            self._balance = float(balance)

    # --- inside ----------------------------------------------------------------------------------------------

    def _netting_position(self, key: str) -> _Position | None:
        return next((p for p in self._positions.values() if p.key == key), None)

    def _close_volume(self, pos: _Position, volume: float, price: float, at: datetime, reason: CloseReason) -> ClosedPosition:
        """Close `volume` lots of `pos` at `price`: book the net P&L into the balance, drop the position when flat."""
        spec = pos.spec
        profit = spec.profit(pos.side, volume, pos.open_price, price)
        commission = round(self._commission_per_lot * volume, 2)
        pnl = round(profit - commission, 2)
        self._balance = round(self._balance + pnl, 2)
        pos.volume = round(pos.volume - volume, _volume_decimals(spec))
        if pos.volume <= 0:
            del self._positions[pos.ticket]
        return ClosedPosition(
            ticket=pos.ticket,
            symbol=pos.symbol,
            side=pos.side,
            volume=volume,
            open_price=pos.open_price,
            close_price=spec.round_price(price),
            closed_at=at,
            reason=reason,
            pnl=pnl,
            commission=commission,
            magic=pos.magic,
            comment=pos.comment,
        )

    def _account(self) -> AccountInfo:
        floating = 0.0
        margin = 0.0
        for pos in self._positions.values():
            bar = self._bars.get(pos.key)
            if bar is not None:
                mark = fills.mark_price(pos.side, bar.close, bar.spread, pos.spec)
                floating += pos.spec.profit(pos.side, pos.volume, pos.open_price, mark)
            margin += _margin(pos.spec, pos.volume, pos.open_price, self._leverage)
        equity = self._balance + floating
        return AccountInfo(
            balance=round(self._balance, 2),
            equity=round(equity, 2),
            margin=round(margin, 2),
            margin_free=round(equity - margin, 2),
        )


def paper_brokers(accounts: Iterable, *, clock: Clock, balance: float, commission_per_lot: float = 0.0) -> dict[int, PaperBroker]:
    """A paper broker for each account (a `BrokerAccount` row: id, margin_mode, symbol_suffix), all priced from one
    shared quote book, as an executor serves them."""
    quotes = QuoteBook()
    return {
        account.id: PaperBroker(
            clock=clock,
            balance=balance,
            commission_per_lot=commission_per_lot,
            margin_mode=account.margin_mode,
            symbol_suffix=account.symbol_suffix or None,
            quotes=quotes,
        )
        for account in accounts
    }
