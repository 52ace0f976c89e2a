"""The simulated terminal and trade server: account, symbols, positions, orders and deals, moved by an explicit clock.
Rules cite ../shared/reference/mt5-and-rabbitmq.md ("ref") and ../shared/design/architecture.md ("arch").
"""

from __future__ import annotations

import copy
import fnmatch
import heapq
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from mt5sim.faults import Faults
from mt5sim.market import BAR_S, SymbolFeed, Tick, aggregate, load_m1
from mt5sim.records import RATES_DTYPE, RETCODE_COMMENTS, C
from shared.symbols import DEFAULT_SPECS, SymbolSpec
from shared.timeutil import ensure_utc, from_epoch, server_offset, server_to_utc

EPS = 1e-9
BUY, SELL = C.ORDER_TYPE_BUY, C.ORDER_TYPE_SELL
PENDING_TYPES = (C.ORDER_TYPE_BUY_LIMIT, C.ORDER_TYPE_SELL_LIMIT, C.ORDER_TYPE_BUY_STOP, C.ORDER_TYPE_SELL_STOP)
BUY_SIDE = (BUY, C.ORDER_TYPE_BUY_LIMIT, C.ORDER_TYPE_BUY_STOP)
# Timeframe constant -> seconds (W1 and MN1 are not simulated).
TIMEFRAME_S = {
    **{m: m * 60 for m in (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30)},
    **{0x4000 | h: h * 3600 for h in (1, 2, 3, 4, 6, 8, 12)},
    C.TIMEFRAME_D1: 86400,
}
MARGIN_MODES = {"netting": 0, "exchange": 1, "hedging": 2}
TRADE_MODES = {"demo": 0, "contest": 1, "real": 2}


class TradeError(Exception):
    """A request the trade server answers with a retcode (the call itself succeeds)."""

    def __init__(self, retcode: int, comment: str | None = None) -> None:
        super().__init__(retcode)
        self.retcode = retcode
        self.comment = comment or RETCODE_COMMENTS.get(retcode, "Request rejected")


class LocalRefusal(Exception):
    """A call the terminal refuses before anything is sent: it returns None (or False) and sets last_error."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message


def match_group(name: str, group: str | None) -> bool:
    """MT5 group filter: comma-separated `*` patterns, `!` excludes (ref: `group="*USD*,!EUR*"`)."""
    if not group:
        return True
    patterns = [p.strip() for p in group.split(",") if p.strip()]
    include = [p for p in patterns if not p.startswith("!")] or ["*"]
    exclude = [p[1:] for p in patterns if p.startswith("!")]
    up = name.upper()
    return any(fnmatch.fnmatchcase(up, p.upper()) for p in include) and not any(fnmatch.fnmatchcase(up, p.upper()) for p in exclude)


@dataclass
class Symbol:
    """A broker symbol; field names follow symbol_info()."""

    name: str
    canonical: str
    spec: SymbolSpec
    feed: SymbolFeed | None
    digits: int
    point: float
    trade_contract_size: float
    volume_min: float
    volume_max: float
    volume_step: float
    trade_stops_level: int
    trade_freeze_level: int
    filling_mode: int = C.SYMBOL_FILLING_FOK  # ref: "EURJPY ... filling_mode 1"
    trade_exemode: int = C.SYMBOL_TRADE_EXECUTION_MARKET
    trade_mode: int = C.SYMBOL_TRADE_MODE_FULL
    spread: int | None = None  # fixed spread in points; None: each bar's own spread
    select: bool = False
    path: str = ""
    description: str = ""


@dataclass
class Position:
    ticket: int
    symbol: str
    type: int
    volume: float
    price_open: float
    sl: float
    tp: float
    magic: int
    comment: str
    time: float
    time_update: float
    reason: int = C.POSITION_REASON_EXPERT

    @property
    def identifier(self) -> int:
        # A position keeps its identifier for life, through a netting reversal too (official docs).
        return self.ticket


@dataclass
class Order:
    ticket: int
    symbol: str
    type: int
    state: int
    volume_initial: float
    volume_current: float
    price_open: float
    sl: float
    tp: float
    type_time: int
    type_filling: int
    expiration: int  # server epoch, as the request gave it
    magic: int
    comment: str
    time_setup: float
    time_done: float = 0.0
    position_id: int = 0
    position_by_id: int = 0
    reason: int = C.ORDER_REASON_EXPERT
    price_current: float = 0.0
    expires_at: float | None = None  # UTC epoch


@dataclass
class Deal:
    ticket: int
    order: int
    time: float
    type: int
    entry: int
    magic: int
    position_id: int
    reason: int
    volume: float
    price: float
    commission: float
    swap: float
    profit: float
    fee: float
    symbol: str
    comment: str


@dataclass
class Account:
    login: int
    password: str | None
    name: str
    server: str
    company: str
    currency: str
    balance: float
    leverage: int
    trade_mode: int
    margin_mode: int
    credit: float = 0.0
    trade_allowed: bool = True
    trade_expert: bool = True
    limit_orders: int = 200
    margin_so_call: float = 50.0
    margin_so_so: float = 30.0


@dataclass
class _Counters:
    order: int = 100_000_001
    deal: int = 200_000_001
    request: int = 1


class Terminal:
    """One terminal logged in to one account: the shared state every `SimulatedMT5` session talks to.

    Times are UTC epoch seconds inside and stamped with the broker's server wall clock on the way out.
    `bars` maps a symbol (with or without the suffix) to M1 bars with UTC epoch times: a structured array, a
    shared.bars.Bars, a mapping of columns, or a file path (read with `data_time` as its clock). Every shipped
    spec of shared.symbols is a broker symbol too (without prices unless it has bars). `symbols` overrides
    settings per symbol by symbol_info() field (`trade_stops_level`, `filling_mode`, `spread` fixed in points, ...).
    """

    def __init__(
        self,
        bars: dict | None = None,
        *,
        start: datetime | None = None,
        server_time: str = "utc",
        suffix: str = "",
        symbols: dict[str, dict] | None = None,
        selected: tuple[str, ...] = (),
        login: int = 5_000_001,
        password: str | None = None,
        balance: float = 10_000.0,
        leverage: int = 100,
        trade_mode: str | int = "demo",
        margin_mode: str | int = "hedging",
        currency: str = "USD",
        server: str = "Simulated-Demo",
        company: str = "Simulated Broker Ltd",
        account_name: str = "Simulated Trader",
        maxbars: int = 100_000,
        commission_per_lot: float = 0.0,
        data_time: str = "utc",
        build: int = 4755,
    ) -> None:
        self.lock = threading.RLock()
        self.faults = Faults(self)
        self.counters = _Counters()
        self.server_time = server_time
        self.suffix = suffix
        self.maxbars = maxbars
        self.build = build
        self.commission_per_lot = commission_per_lot
        self.trade_allowed = True  # the terminal's Algo Trading switch (ref: terminal_info().trade_allowed)
        self.link_up = True
        self.link_epoch = 0  # bumped by each dropped connection: sessions initialised before it are dead
        self.account = Account(
            login=login,
            password=password,
            name=account_name,
            server=server,
            company=company,
            currency=currency,
            balance=float(balance),
            leverage=int(leverage),
            trade_mode=TRADE_MODES[trade_mode] if isinstance(trade_mode, str) else int(trade_mode),
            margin_mode=MARGIN_MODES[margin_mode] if isinstance(margin_mode, str) else int(margin_mode),
        )
        self.symbols: dict[str, Symbol] = self._build_symbols(bars or {}, symbols or {}, data_time)
        for name in selected:
            self.symbol_by_canonical(name).select = True
        firsts = [float(s.feed.utc[0]) for s in self.symbols.values() if s.feed is not None and len(s.feed)]
        if start is None and not firsts:
            raise ValueError("give `start` when no bars are given")
        self.now: float = ensure_utc(start).timestamp() if start is not None else min(firsts)
        self.positions: dict[int, Position] = {}
        self.closed_positions: set[int] = set()
        self.pending: dict[int, Order] = {}
        self.history_orders: list[Order] = []
        self.deals: list[Deal] = []
        # Real accounts start with a balance deal (DEAL_TYPE_BALANCE, no symbol) in their history.
        self.deals.append(self._new_deal(order=0, time=self.now - 86400, type=C.DEAL_TYPE_BALANCE, entry=C.DEAL_ENTRY_IN,
                                         magic=0, position_id=0, reason=C.DEAL_REASON_CLIENT, volume=0.0, price=0.0,
                                         profit=float(balance), symbol="", comment="Initial deposit"))

    # ---- symbols and prices -------------------------------------------------------------------------------

    def _build_symbols(self, bars: dict, overrides: dict[str, dict], data_time: str) -> dict[str, Symbol]:
        def canonical(name: str) -> str:
            return name[: -len(self.suffix)] if self.suffix and name.endswith(self.suffix) else name

        data = {canonical(k): v for k, v in bars.items()}
        settings = {canonical(k): v for k, v in overrides.items()}
        out: dict[str, Symbol] = {}
        for name in sorted(set(DEFAULT_SPECS) | set(data) | set(settings)):
            spec = DEFAULT_SPECS.get(name) or _generic_spec(name, settings.get(name, {}))
            extra = dict(settings.get(name, {}))
            spread_default = int(extra.get("spread") or spec.typical_spread_points)
            feed_src = data.get(name)
            if isinstance(feed_src, (str, Path)):
                feed_src = load_m1(feed_src, file_time=data_time)
            feed = None if feed_src is None else SymbolFeed(feed_src, server_time=self.server_time,
                                                            default_spread_points=spread_default,
                                                            digits=int(extra.get("digits", spec.digits)))
            is_fx = spec.base_currency != "XAU"
            sym = Symbol(
                name=name + self.suffix,
                canonical=name,
                spec=spec,
                feed=feed,
                digits=spec.digits,
                point=spec.point,
                trade_contract_size=spec.contract_size,
                volume_min=spec.volume_min,
                volume_max=spec.volume_max,
                volume_step=spec.volume_step,
                trade_stops_level=spec.stops_level,
                trade_freeze_level=spec.freeze_level,
                path=("Forex\\" if is_fx else "Metals\\") + name + self.suffix,
                description=f"{spec.base_currency} vs {spec.quote_currency}",
            )
            self.configure(sym, **extra)
            out[sym.name] = sym
        return out

    @staticmethod
    def configure(sym: Symbol, **changes) -> None:
        """Change a symbol's settings (stops level, filling mode, spread, ...), by symbol_info() field name."""
        aliases = {"stops_level": "trade_stops_level", "freeze_level": "trade_freeze_level", "contract_size": "trade_contract_size"}
        names = {f.name for f in fields(Symbol)} - {"name", "canonical", "spec", "feed"}
        for key, value in changes.items():
            key = aliases.get(key, key)
            if key not in names:
                raise ValueError(f"unknown symbol setting {key!r}; known: {sorted(names)}")
            setattr(sym, key, value)
        if "digits" in changes and "point" not in changes:
            sym.point = 10.0 ** -sym.digits

    def symbol_by_canonical(self, name: str) -> Symbol:
        sym = self.symbols.get(name) or self.symbols.get(name + self.suffix)
        if sym is None:
            raise KeyError(f"no symbol {name!r}; known: {sorted(self.symbols)}")
        return sym

    def tick(self, sym: Symbol, at: float | None = None) -> Tick | None:
        return None if sym.feed is None else sym.feed.tick_at(self.now if at is None else at)

    def prices(self, sym: Symbol, tick: Tick | None = None) -> tuple[float, float] | None:
        """(bid, ask) now: MT5 bars are bid prices and ask = bid + spread (arch, Fills); None without prices."""
        tick = tick or self.tick(sym)
        if tick is None:
            return None
        spread = tick.spread_points if sym.spread is None else sym.spread
        return tick.bid, round(tick.bid + spread * sym.point, sym.digits)

    def rates(self, sym: Symbol, timeframe: int) -> np.ndarray:
        """The bars of `timeframe` visible now, oldest first, the forming one last (ref, Bars)."""
        period = TIMEFRAME_S[timeframe]
        if sym.feed is None:
            return np.zeros(0, dtype=RATES_DTYPE)
        if period == BAR_S:
            return sym.feed.m1_rates(self.now, self.maxbars)
        bars = aggregate(sym.feed.m1_rates(self.now, self.maxbars * period // BAR_S), period)
        return bars[-self.maxbars:]

    def to_server(self, utc_s: float) -> int:
        """Epoch seconds of the broker's wall clock at `utc_s` (ref: "server wall-clock stored as epoch seconds")."""
        return int(utc_s + server_offset(self.server_time, from_epoch(utc_s)).total_seconds())

    def to_server_msc(self, utc_s: float) -> int:
        return self.to_server(utc_s) * 1000 + int(round((utc_s % 1) * 1000)) % 1000

    def from_server(self, server_s: int) -> float:
        return server_to_utc(self.server_time, datetime.fromtimestamp(server_s, UTC).replace(tzinfo=None)).timestamp()

    # ---- connection and switches -------------------------------------------------------------------------------

    def drop_connection(self) -> None:
        with self.lock:
            self.link_up = False
            self.link_epoch += 1

    def reconnect(self) -> None:
        with self.lock:
            self.link_up = True

    def set_algo_trading(self, enabled: bool) -> None:
        with self.lock:
            self.trade_allowed = bool(enabled)

    # ---- the clock -------------------------------------------------------------------------------------------

    def advance_to(self, when: datetime | float) -> None:
        """Move the clock forward to `when` (aware datetime or UTC epoch), firing stops, targets and pending orders
        on every tick passed on the way."""
        with self.lock:
            target = ensure_utc(when).timestamp() if isinstance(when, datetime) else float(when)
            if target < self.now:
                raise ValueError(f"the clock only moves forward: {from_epoch(target)} < {from_epoch(self.now)}")
            active = {p.symbol for p in self.positions.values() if p.sl or p.tp} | {o.symbol for o in self.pending.values()}
            streams = []
            for n, name in enumerate(sorted(active)):
                sym = self.symbols[name]
                if sym.feed is not None:
                    streams.append(((t.time, n, sym, t) for t in sym.feed.ticks_between(self.now, target)))
            for t, _, sym, tick in heapq.merge(*streams, key=lambda e: (e[0], e[1])):
                self.now = t
                self._on_tick(sym, tick)
            self.now = target
            self._expire_orders()

    def advance(self, seconds: float) -> None:
        self.advance_to(self.now + seconds)

    def step(self, n_bars: int = 1, symbol: str | None = None) -> None:
        """Advance to the open of the `n_bars`-th next bar of `symbol` (default: the first symbol with bars)."""
        sym = self.symbol_by_canonical(symbol) if symbol else next(s for s in self.symbols.values() if s.feed is not None)
        feed = sym.feed
        j = feed.index_at(self.now) + n_bars
        target = float(feed.utc[j]) if j < len(feed) else float(feed.utc[-1] + BAR_S)
        self.advance_to(max(target, self.now))

    def now_utc(self) -> datetime:
        return from_epoch(self.now)

    # ---- the account -----------------------------------------------------------------------------------------

    def margin_for(self, sym: Symbol, volume: float, price: float) -> float:
        """Forex-style margin: lots x contract / leverage, in USD (x price unless USD is the base currency)."""
        notional = volume * sym.trade_contract_size
        if sym.spec.base_currency != self.account.currency:
            notional *= price
        return notional / self.account.leverage

    def position_profit(self, pos: Position) -> float:
        sym = self.symbols[pos.symbol]
        quote = self.prices(sym)
        if quote is None:
            return 0.0
        current = quote[0] if pos.type == BUY else quote[1]
        side = "buy" if pos.type == BUY else "sell"
        return round(trade_profit(sym, side, pos.volume, pos.price_open, current), 2)

    def totals(self) -> dict[str, float]:
        profit = round(sum(self.position_profit(p) for p in self.positions.values()), 2)
        margin = round(sum(self.margin_for(self.symbols[p.symbol], p.volume, p.price_open) for p in self.positions.values()), 2)
        equity = round(self.account.balance + self.account.credit + profit, 2)
        return {
            "balance": round(self.account.balance, 2),
            "profit": profit,
            "equity": equity,
            "margin": margin,
            "margin_free": round(equity - margin, 2),
            "margin_level": round(equity / margin * 100, 2) if margin else 0.0,
        }

    # ---- trade requests ----------------------------------------------------------------------------------------

    def send(self, req: dict, *, dry_run: bool = False) -> dict:
        """Run a parsed request through the trade server; return OrderSendResult fields.

        With `dry_run` nothing stays changed and the answer carries the account after the trade (order_check).
        """
        with self.lock, self._transaction() as tx:
            sym = self.symbols[req["symbol"]] if req["symbol"] else None
            quote = self.prices(sym) if sym else None
            try:
                before = self.totals()["margin"]
                result = self._dispatch(req, sym)
                after = self.totals()
                # ref: 10019 NO_MONEY when the trade leaves no free margin (a close that frees margin always passes).
                if after["margin"] > before + EPS and after["margin_free"] < 0:
                    raise TradeError(C.TRADE_RETCODE_NO_MONEY)
            except TradeError as e:
                tx.rollback()
                bid, ask = quote if quote and e.retcode in (C.TRADE_RETCODE_REQUOTE, C.TRADE_RETCODE_PRICE_CHANGED) else (0.0, 0.0)
                # ref: "A rejected request still returns a result with zeros (e.g. retcode=10021, comment='No prices')".
                return {"retcode": e.retcode, "deal": 0, "order": 0, "volume": 0.0, "price": 0.0, "bid": bid, "ask": ask,
                        "comment": e.comment, "request_id": 0, "retcode_external": 0, "account": self.totals()}
            if dry_run:
                tx.rollback()
                result = {**result, "account": after}
                return result
            result["request_id"] = self.counters.request
            self.counters.request += 1
            return {**result, "account": after}

    @contextmanager
    def _transaction(self):
        saved = (copy.deepcopy(self.positions), set(self.closed_positions), copy.deepcopy(self.pending),
                 len(self.history_orders), len(self.deals), self.account.balance, replace(self.counters))
        tx = _Tx()
        yield tx
        if tx.rolled_back:
            self.positions, self.closed_positions, self.pending, n_orders, n_deals, self.account.balance, self.counters = saved
            del self.history_orders[n_orders:]
            del self.deals[n_deals:]

    def _dispatch(self, req: dict, sym: Symbol | None) -> dict:
        if not self.trade_allowed:
            raise TradeError(C.TRADE_RETCODE_CLIENT_DISABLES_AT)  # ref: 10027, the Algo Trading switch is off
        if not self.account.trade_allowed:
            raise TradeError(C.TRADE_RETCODE_TRADE_DISABLED)
        action = req["action"]
        if action == C.TRADE_ACTION_DEAL:
            return self._market(req, self._need(sym))
        if action == C.TRADE_ACTION_PENDING:
            return self._place_pending(req, self._need(sym))
        if action == C.TRADE_ACTION_SLTP:
            return self._modify_position(req)
        if action == C.TRADE_ACTION_MODIFY:
            return self._modify_pending(req)
        if action == C.TRADE_ACTION_REMOVE:
            return self._remove_pending(req)
        if action == C.TRADE_ACTION_CLOSE_BY:
            return self._close_by(req)
        raise TradeError(C.TRADE_RETCODE_INVALID)

    @staticmethod
    def _need(sym: Symbol | None) -> Symbol:
        if sym is None:
            raise TradeError(C.TRADE_RETCODE_INVALID)
        return sym

    def _market_quote(self, sym: Symbol) -> tuple[float, float]:
        quote = self.prices(sym)
        if quote is None:
            raise TradeError(C.TRADE_RETCODE_PRICE_OFF)  # ref: retcode=10021, comment='No prices'
        if not sym.feed.is_open(self.now):
            raise TradeError(C.TRADE_RETCODE_MARKET_CLOSED)
        if sym.trade_mode != C.SYMBOL_TRADE_MODE_FULL:
            raise TradeError(C.TRADE_RETCODE_TRADE_DISABLED)
        return quote

    def _market(self, req: dict, sym: Symbol) -> dict:
        otype, volume = req["type"], req["volume"]
        if otype not in (BUY, SELL):
            raise TradeError(C.TRADE_RETCODE_INVALID)
        bid, ask = self._market_quote(sym)
        self._check_volume(sym, volume)
        self._check_filling(sym, req["type_filling"], pending=False)
        price = ask if otype == BUY else bid  # ref: market fills at ask (buy) / bid (sell)
        netting = self.account.margin_mode != C.ACCOUNT_MARGIN_MODE_RETAIL_HEDGING
        target = self._close_target(req, sym) if req["position"] else (self._net_position(sym) if netting else None)
        # ref: deviation in points; a price that moved further than that is a requote.
        if req["price"] and abs(req["price"] - price) > req["deviation"] * sym.point + sym.point * 1e-6:
            raise TradeError(C.TRADE_RETCODE_REQUOTE)
        opens = target is None or target.type == otype or (not req["position"] and volume > target.volume + EPS)
        if opens:
            self._check_stops(sym, otype, req["sl"], req["tp"], bid if otype == BUY else ask)
        if target is not None and target.type != otype:
            self._check_freeze(sym, target, bid, ask)
        order = self._new_order(sym, req, state=C.ORDER_STATE_FILLED, price=price)
        deal = self._fill(sym, order, otype, volume, price, target=target, sl=req["sl"], tp=req["tp"],
                          magic=req["magic"], comment=req["comment"], reason=C.DEAL_REASON_EXPERT)
        return {"retcode": C.TRADE_RETCODE_DONE, "deal": deal.ticket, "order": order.ticket, "volume": volume,
                "price": price, "bid": bid, "ask": ask, "comment": RETCODE_COMMENTS[C.TRADE_RETCODE_DONE],
                "request_id": 0, "retcode_external": 0}

    def _close_target(self, req: dict, sym: Symbol) -> Position:
        """The position a request names (`position=ticket`), checked for a close of it (ref, hedging)."""
        ticket = req["position"]
        pos = self.positions.get(ticket)
        if pos is None:
            if ticket in self.closed_positions:
                raise TradeError(C.TRADE_RETCODE_POSITION_CLOSED)  # ref: 10036 on a close of a closed position
            raise TradeError(C.TRADE_RETCODE_INVALID)
        if pos.symbol != sym.name or pos.type == req["type"]:
            raise TradeError(C.TRADE_RETCODE_INVALID)
        if req["volume"] > pos.volume + EPS:
            raise TradeError(C.TRADE_RETCODE_INVALID_CLOSE_VOLUME)
        return pos

    def _net_position(self, sym: Symbol) -> Position | None:
        return next((p for p in self.positions.values() if p.symbol == sym.name), None)

    @staticmethod
    def _check_volume(sym: Symbol, volume: float) -> None:
        # ref: volume min/step/max from symbol_info; anything else is 10014.
        steps = volume / sym.volume_step
        if volume < sym.volume_min - EPS or volume > sym.volume_max + EPS or abs(steps - round(steps)) > 1e-6:
            raise TradeError(C.TRADE_RETCODE_INVALID_VOLUME)

    @staticmethod
    def _check_filling(sym: Symbol, filling: int, *, pending: bool) -> None:
        # ref, Filling mode: FOK bit -> ORDER_FILLING_FOK, IOC bit -> ORDER_FILLING_IOC, neither -> RETURN.
        allowed = set()
        if sym.filling_mode & C.SYMBOL_FILLING_FOK:
            allowed.add(C.ORDER_FILLING_FOK)
        if sym.filling_mode & C.SYMBOL_FILLING_IOC:
            allowed.add(C.ORDER_FILLING_IOC)
        if pending or not allowed:
            allowed.add(C.ORDER_FILLING_RETURN)
        if filling not in allowed:
            raise TradeError(C.TRADE_RETCODE_INVALID_FILL)

    @staticmethod
    def _check_stops(sym: Symbol, otype: int, sl: float, tp: float, ref: float) -> None:
        """ref, Pitfalls: BUY needs Bid - SL >= stops level and TP - Bid >= stops level; SELL mirrors with Ask.

        `ref` is the Bid for a buy and the Ask for a sell (or the order price of a pending order)."""
        level = sym.trade_stops_level * sym.point - sym.point * 1e-6
        buy = otype in BUY_SIDE
        for stop, distance in ((sl, ref - sl if buy else sl - ref), (tp, tp - ref if buy else ref - tp)):
            if stop and (distance < level or distance <= 0):
                raise TradeError(C.TRADE_RETCODE_INVALID_STOPS)

    @staticmethod
    def _check_freeze(sym: Symbol, pos: Position, bid: float, ask: float) -> None:
        """ref, Pitfalls: inside the freeze level a modify or close gives 10029."""
        level = sym.trade_freeze_level * sym.point
        if level <= 0:
            return
        ref = bid if pos.type == BUY else ask
        for stop, distance in ((pos.sl, ref - pos.sl if pos.type == BUY else pos.sl - ref),
                               (pos.tp, pos.tp - ref if pos.type == BUY else ref - pos.tp)):
            if stop and distance < level - sym.point * 1e-6:
                raise TradeError(C.TRADE_RETCODE_FROZEN)

    # ---- fills ---------------------------------------------------------------------------------------------

    def _fill(self, sym: Symbol, order: Order, otype: int, volume: float, price: float, *, target: Position | None,
              sl: float, tp: float, magic: int, comment: str, reason: int) -> Deal:
        """Book a deal of `volume` at `price` (ref, Hedging vs netting): a new position, a bigger one, a reduced or
        closed one, or (netting) a reversal with one INOUT deal."""
        deal_type = C.DEAL_TYPE_BUY if otype == BUY else C.DEAL_TYPE_SELL
        common = {"order": order.ticket, "time": self.now, "type": deal_type, "magic": magic, "reason": reason,
                  "volume": volume, "price": price, "symbol": sym.name, "comment": comment}
        if target is None:
            pos = Position(ticket=order.ticket, symbol=sym.name, type=otype, volume=volume, price_open=price, sl=sl, tp=tp,
                           magic=magic, comment=comment, time=self.now, time_update=self.now)
            self.positions[pos.ticket] = pos
            order.position_id = pos.ticket
            return self._book(entry=C.DEAL_ENTRY_IN, position_id=pos.ticket, profit=0.0, **common)
        order.position_id = target.ticket
        if target.type == otype:  # netting: add to the position at the average price
            total = target.volume + volume
            target.price_open = (target.price_open * target.volume + price * volume) / total
            target.volume = round(total, 8)
            if sl or tp:
                target.sl, target.tp = sl, tp
            target.time_update = self.now
            return self._book(entry=C.DEAL_ENTRY_IN, position_id=target.ticket, profit=0.0, **common)
        closing = min(volume, target.volume)
        profit = round(trade_profit(sym, "buy" if target.type == BUY else "sell", closing, target.price_open, price), 2)
        if volume > target.volume + EPS:  # netting reversal: the rest opens the other way, same identifier
            target.type, target.volume, target.price_open = otype, round(volume - target.volume, 8), price
            target.sl, target.tp, target.time_update = sl, tp, self.now
            return self._book(entry=C.DEAL_ENTRY_INOUT, position_id=target.ticket, profit=profit, **common)
        target.volume = round(target.volume - closing, 8)
        target.time_update = self.now
        if target.volume <= EPS:
            del self.positions[target.ticket]
            self.closed_positions.add(target.ticket)
        return self._book(entry=C.DEAL_ENTRY_OUT, position_id=target.ticket, profit=profit, **common)

    def _book(self, **deal_fields) -> Deal:
        commission = round(-self.commission_per_lot * deal_fields["volume"], 2) + 0.0  # + 0.0: no -0.0
        deal = self._new_deal(commission=commission, **deal_fields)
        self.deals.append(deal)
        self.account.balance = round(self.account.balance + deal.profit + commission, 2)
        return deal

    def _new_deal(self, *, commission: float = 0.0, **deal_fields) -> Deal:
        deal = Deal(ticket=self.counters.deal, commission=commission, swap=0.0, fee=0.0, **deal_fields)
        self.counters.deal += 1
        return deal

    def _new_order(self, sym: Symbol, req: dict, *, state: int, price: float, reason: int = C.ORDER_REASON_EXPERT,
                   otype: int | None = None) -> Order:
        order = Order(ticket=self.counters.order, symbol=sym.name, type=req["type"] if otype is None else otype,
                      state=state, volume_initial=req["volume"], volume_current=0.0 if state == C.ORDER_STATE_FILLED else req["volume"],
                      price_open=price, sl=req["sl"], tp=req["tp"], type_time=req["type_time"],
                      type_filling=req["type_filling"], expiration=req["expiration"], magic=req["magic"],
                      comment=req["comment"], time_setup=self.now, reason=reason, price_current=price)
        self.counters.order += 1
        if state == C.ORDER_STATE_FILLED:
            order.time_done = self.now
            self.history_orders.append(order)
        return order

    def _close_by_stop(self, pos: Position, price: float, reason: int) -> None:
        """A stop-loss or take-profit hit: an order and an OUT deal with DEAL_REASON_SL/TP (ref, Constants)."""
        sym = self.symbols[pos.symbol]
        label = "sl" if reason == C.DEAL_REASON_SL else "tp"
        level = pos.sl if reason == C.DEAL_REASON_SL else pos.tp
        comment = f"[{label} {level:.{sym.digits}f}]"  # the terminal's own comment on stop-out deals
        otype = SELL if pos.type == BUY else BUY
        req = {"type": otype, "volume": pos.volume, "sl": 0.0, "tp": 0.0, "type_time": 0, "type_filling": C.ORDER_FILLING_FOK,
               "expiration": 0, "magic": pos.magic, "comment": comment}
        order = self._new_order(sym, req, state=C.ORDER_STATE_FILLED, price=price, reason=reason)
        self._fill(sym, order, otype, pos.volume, price, target=pos, sl=0.0, tp=0.0, magic=pos.magic, comment=comment, reason=reason)

    # ---- positions: SL/TP, close by ------------------------------------------------------------------------------

    def _modify_position(self, req: dict) -> dict:
        pos = self.positions.get(req["position"])
        if pos is None and not req["position"] and req["symbol"]:
            pos = self._net_position(self.symbols[req["symbol"]])
        if pos is None:
            if req["position"] in self.closed_positions:
                raise TradeError(C.TRADE_RETCODE_POSITION_CLOSED)
            raise TradeError(C.TRADE_RETCODE_INVALID)
        sym = self.symbols[pos.symbol]
        if req["symbol"] and req["symbol"] != pos.symbol:
            raise TradeError(C.TRADE_RETCODE_INVALID)
        bid, ask = self._market_quote(sym)
        if abs(req["sl"] - pos.sl) < EPS and abs(req["tp"] - pos.tp) < EPS:
            raise TradeError(C.TRADE_RETCODE_NO_CHANGES)
        self._check_freeze(sym, pos, bid, ask)
        self._check_stops(sym, pos.type, req["sl"], req["tp"], bid if pos.type == BUY else ask)
        pos.sl, pos.tp, pos.time_update = req["sl"], req["tp"], self.now
        return self._done(0, 0, 0.0, 0.0, bid, ask)

    def _close_by(self, req: dict) -> dict:
        if self.account.margin_mode != C.ACCOUNT_MARGIN_MODE_RETAIL_HEDGING:
            raise TradeError(C.TRADE_RETCODE_INVALID)
        pos, by = self.positions.get(req["position"]), self.positions.get(req["position_by"])
        if pos is None or by is None:
            closed = req["position"] in self.closed_positions or req["position_by"] in self.closed_positions
            raise TradeError(C.TRADE_RETCODE_POSITION_CLOSED if closed else C.TRADE_RETCODE_INVALID)
        if pos.symbol != by.symbol or pos.type == by.type:
            raise TradeError(C.TRADE_RETCODE_INVALID)
        sym = self.symbols[pos.symbol]
        bid, ask = self._market_quote(sym)
        volume = min(pos.volume, by.volume)
        price = by.price_open  # both legs close at the opposite position's open price
        order_req = {"type": C.ORDER_TYPE_CLOSE_BY, "volume": volume, "sl": 0.0, "tp": 0.0, "type_time": 0,
                     "type_filling": C.ORDER_FILLING_FOK, "expiration": 0, "magic": req["magic"], "comment": req["comment"]}
        order = self._new_order(sym, order_req, state=C.ORDER_STATE_FILLED, price=price)
        order.position_id, order.position_by_id = pos.ticket, by.ticket
        first = None
        for leg in (pos, by):
            leg_type = SELL if leg.type == BUY else BUY
            deal = self._fill(sym, order, leg_type, volume, price, target=leg, sl=0.0, tp=0.0, magic=req["magic"],
                              comment=req["comment"], reason=C.DEAL_REASON_EXPERT)
            deal.entry = C.DEAL_ENTRY_OUT_BY
            first = first or deal
        order.position_id = pos.ticket
        return self._done(first.ticket, order.ticket, volume, price, bid, ask)

    @staticmethod
    def _done(deal: int, order: int, volume: float, price: float, bid: float, ask: float, retcode: int = C.TRADE_RETCODE_DONE) -> dict:
        return {"retcode": retcode, "deal": deal, "order": order, "volume": volume, "price": price, "bid": bid, "ask": ask,
                "comment": RETCODE_COMMENTS[retcode], "request_id": 0, "retcode_external": 0}

    # ---- pending orders ---------------------------------------------------------------------------------------

    def _place_pending(self, req: dict, sym: Symbol) -> dict:
        if req["type"] not in PENDING_TYPES:
            raise TradeError(C.TRADE_RETCODE_INVALID)  # stop-limit orders are not simulated
        bid, ask = self._market_quote(sym)
        self._check_volume(sym, req["volume"])
        self._check_filling(sym, req["type_filling"], pending=True)
        self._check_pending_price(sym, req["type"], req["price"], bid, ask)
        self._check_stops(sym, req["type"], req["sl"], req["tp"], req["price"])
        expires_at = self._expiry(req)
        if len(self.pending) >= self.account.limit_orders:
            raise TradeError(C.TRADE_RETCODE_LIMIT_ORDERS)
        order = self._new_order(sym, req, state=C.ORDER_STATE_PLACED, price=req["price"])
        order.price_current = ask if req["type"] in BUY_SIDE else bid
        order.expires_at = expires_at
        self.pending[order.ticket] = order
        return self._done(0, order.ticket, req["volume"], req["price"], bid, ask, C.TRADE_RETCODE_PLACED)

    def _check_pending_price(self, sym: Symbol, otype: int, price: float, bid: float, ask: float) -> None:
        """A limit sits below (buy) / above (sell) the market, a stop beyond it, at least the stops level away."""
        level = sym.trade_stops_level * sym.point - sym.point * 1e-6
        distance = {C.ORDER_TYPE_BUY_LIMIT: ask - price, C.ORDER_TYPE_BUY_STOP: price - ask,
                    C.ORDER_TYPE_SELL_LIMIT: price - bid, C.ORDER_TYPE_SELL_STOP: bid - price}[otype]
        if price <= 0 or distance <= 0 or distance < level:
            raise TradeError(C.TRADE_RETCODE_INVALID_PRICE)

    def _expiry(self, req: dict) -> float | None:
        tt = req["type_time"]
        if tt == C.ORDER_TIME_GTC:
            return None
        if tt == C.ORDER_TIME_DAY:
            wall = from_epoch(self.to_server(self.now))
            midnight = (wall + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
            return self.from_server(int(midnight.timestamp()))
        if tt in (C.ORDER_TIME_SPECIFIED, C.ORDER_TIME_SPECIFIED_DAY):
            expires_at = self.from_server(req["expiration"])
            if expires_at <= self.now:
                raise TradeError(C.TRADE_RETCODE_INVALID_EXPIRATION)
            return expires_at
        raise TradeError(C.TRADE_RETCODE_INVALID_EXPIRATION)

    def _pending_order(self, ticket: int) -> Order:
        order = self.pending.get(ticket)
        if order is None:
            raise TradeError(C.TRADE_RETCODE_INVALID_ORDER if not ticket else C.TRADE_RETCODE_INVALID)
        return order

    def _check_order_freeze(self, sym: Symbol, order: Order, bid: float, ask: float) -> None:
        level = sym.trade_freeze_level * sym.point
        ref = ask if order.type in BUY_SIDE else bid
        if level > 0 and abs(order.price_open - ref) < level - sym.point * 1e-6:
            raise TradeError(C.TRADE_RETCODE_FROZEN)

    def _modify_pending(self, req: dict) -> dict:
        order = self._pending_order(req["order"])
        sym = self.symbols[order.symbol]
        bid, ask = self._market_quote(sym)
        if (abs(req["price"] - order.price_open) < EPS and abs(req["sl"] - order.sl) < EPS and abs(req["tp"] - order.tp) < EPS
                and req["type_time"] == order.type_time and req["expiration"] == order.expiration):
            raise TradeError(C.TRADE_RETCODE_NO_CHANGES)
        self._check_order_freeze(sym, order, bid, ask)
        self._check_pending_price(sym, order.type, req["price"], bid, ask)
        self._check_stops(sym, order.type, req["sl"], req["tp"], req["price"])
        order.expires_at = self._expiry(req)
        order.price_open, order.sl, order.tp = req["price"], req["sl"], req["tp"]
        order.type_time, order.expiration = req["type_time"], req["expiration"]
        return self._done(0, order.ticket, order.volume_current, order.price_open, bid, ask)

    def _remove_pending(self, req: dict) -> dict:
        order = self._pending_order(req["order"])
        sym = self.symbols[order.symbol]
        quote = self.prices(sym) or (0.0, 0.0)
        self._check_order_freeze(sym, order, *quote)
        self._retire(order, C.ORDER_STATE_CANCELED)
        return self._done(0, order.ticket, 0.0, 0.0, *quote)

    def _retire(self, order: Order, state: int) -> None:
        del self.pending[order.ticket]
        order.state, order.time_done = state, self.now
        self.history_orders.append(order)

    def _expire_orders(self) -> None:
        for order in [o for o in self.pending.values() if o.expires_at is not None and o.expires_at <= self.now]:
            self._retire(order, C.ORDER_STATE_EXPIRED)

    # ---- ticks -------------------------------------------------------------------------------------------------

    def _on_tick(self, sym: Symbol, tick: Tick) -> None:
        """Fire what this tick reaches: pending orders first, then stop losses and take profits.

        A long's stop and target trigger on the bid, a short's on the ask; inside a bar the price passes through
        the level and fills there; at a bar's open it jumped, so it fills at the open (arch, Fills)."""
        self._expire_orders()
        bid, ask = self.prices(sym, tick)
        for order in [o for o in self.pending.values() if o.symbol == sym.name]:
            buy = order.type in BUY_SIDE
            ref = ask if buy else bid
            limit = order.type in (C.ORDER_TYPE_BUY_LIMIT, C.ORDER_TYPE_SELL_LIMIT)
            hit = (ref <= order.price_open + EPS) if (buy == limit) else (ref >= order.price_open - EPS)
            if hit:
                self._trigger(sym, order, ref if tick.gap else order.price_open)
        for pos in [p for p in self.positions.values() if p.symbol == sym.name]:
            ref = bid if pos.type == BUY else ask
            up = pos.type == BUY
            if pos.sl and ((ref <= pos.sl + EPS) if up else (ref >= pos.sl - EPS)):
                self._close_by_stop(pos, ref if tick.gap else pos.sl, C.DEAL_REASON_SL)
            elif pos.tp and ((ref >= pos.tp - EPS) if up else (ref <= pos.tp + EPS)):
                self._close_by_stop(pos, ref if tick.gap else pos.tp, C.DEAL_REASON_TP)

    def _trigger(self, sym: Symbol, order: Order, price: float) -> None:
        otype = BUY if order.type in BUY_SIDE else SELL
        netting = self.account.margin_mode != C.ACCOUNT_MARGIN_MODE_RETAIL_HEDGING
        target = self._net_position(sym) if netting else None
        self._retire(order, C.ORDER_STATE_FILLED)
        order.volume_current, order.price_current = 0.0, price
        self._fill(sym, order, otype, order.volume_initial, price, target=target, sl=order.sl, tp=order.tp,
                   magic=order.magic, comment=order.comment, reason=C.DEAL_REASON_EXPERT)

    # ---- a readable dump for tests and the server's state call -------------------------------------------------

    def snapshot(self) -> dict:
        with self.lock:
            return {
                "now": self.now_utc().isoformat(),
                "server_now": self.to_server(self.now),
                "connected": self.link_up,
                "trade_allowed": self.trade_allowed,
                "account": {"login": self.account.login, "margin_mode": self.account.margin_mode, **self.totals()},
                "positions": [vars(p).copy() for p in self.positions.values()],
                "orders": [vars(o).copy() for o in self.pending.values()],
                "history_orders": len(self.history_orders),
                "deals": [vars(d).copy() for d in self.deals],
                "faults": self.faults.pending(),
            }


@dataclass
class _Tx:
    rolled_back: bool = field(default=False)

    def rollback(self) -> None:
        self.rolled_back = True


def trade_profit(sym: Symbol, side: str, volume: float, open_price: float, close_price: float) -> float:
    """ref: profit = contract size x price difference (gold 100, FX 100000), via the symbol's spec."""
    spec = sym.spec if sym.spec.contract_size == sym.trade_contract_size else sym.spec.model_copy(update={"contract_size": sym.trade_contract_size})
    return spec.profit(side, volume, open_price, close_price)


def _generic_spec(name: str, settings: dict) -> SymbolSpec:
    """A spec for a symbol the shipped defaults do not know, from its settings (digits, contract size, ...)."""
    digits = int(settings.get("digits", 5))
    point = float(settings.get("point", 10.0 ** -digits))
    return SymbolSpec(
        name=name, digits=digits, point=point, pip_size=point * 10,
        contract_size=float(settings.get("trade_contract_size", settings.get("contract_size", 100_000))),
        volume_min=float(settings.get("volume_min", 0.01)), volume_step=float(settings.get("volume_step", 0.01)),
        volume_max=float(settings.get("volume_max", 100.0)), base_currency=name[:3], quote_currency=name[3:6] or "USD",
        round_number_step=point * 1000,
    )
