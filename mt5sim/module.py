"""`SimulatedMT5`: the `MetaTrader5` module's functions over a simulated terminal, so `mt5 = SimulatedMT5(...)` stands
in for `import MetaTrader5 as mt5` (contract: ../shared/reference/mt5-and-rabbitmq.md section 1).
"""

from __future__ import annotations

import functools
import time as _time
from datetime import datetime
import numpy as np

from mt5sim.faults import FAULT_KINDS, Faults
from mt5sim.records import (
    ERROR_TEXTS,
    RETCODE_COMMENTS,
    FLOAT_KEYS,
    INT_KEYS,
    REQUEST_KEYS,
    STR_KEYS,
    AccountInfo,
    C,
    Constants,
    OrderCheckResult,
    OrderSendResult,
    SymbolInfo,
    TerminalInfo,
    Tick,
    TradeDeal,
    TradeOrder,
    TradePosition,
    TradeRequest,
)
from mt5sim.state import TIMEFRAME_S, LocalRefusal, Symbol, Terminal, match_group, trade_profit

# ref, Pitfalls: observed comment limits are 31, 29 and 28 characters and brackets/colons are refused;
# the simulator takes the loosest limit (31) and refuses those characters and anything outside printable ASCII.
COMMENT_MAX = 31
COMMENT_REFUSED = set("()[]{}<>:")
VERSION = (500, 4755, "24 Jan 2025")
_ON_FAILURE = {"initialize": False, "login": False, "symbol_select": False}


def _api(fn):
    """Wrap a module function: injected call faults, the IPC link, and the one global last_error (ref, Connection)."""
    name = fn.__name__.lstrip("_")  # `_order_send` answers to faults aimed at `order_send`
    failure = _ON_FAILURE.get(name)

    @functools.wraps(fn)
    def call(self: SimulatedMT5, *args, **kwargs):
        fault = self.terminal.faults.take_call(name)
        if fault is not None:
            if fault.delay_s:
                _time.sleep(fault.delay_s)
            self._last_error = (fault.code, fault.message)
            return failure
        with self.terminal.lock:
            if name != "initialize" and not self._connected():
                self._last_error = (C.RES_E_INTERNAL_FAIL_CONNECT, ERROR_TEXTS[C.RES_E_INTERNAL_FAIL_CONNECT])
                return failure
            try:
                value = fn(self, *args, **kwargs)
            except LocalRefusal as e:
                self._last_error = (e.code, e.message)
                return failure
            self._last_error = (C.RES_S_OK, ERROR_TEXTS[C.RES_S_OK])
            return value

    return call


class SimulatedMT5(Constants):
    """One client session of the `MetaTrader5` module, attached to a `Terminal` (its own, or a shared one).

    Build it like `SimulatedMT5({"XAUUSD": bars}, server_time="us_dst", suffix="m", start=..., margin_mode="netting")`
    (keywords: see `Terminal`), then drive the clock with `advance_to`, `advance` and `step`, and inject faults
    with `inject(kind, **kwargs)` or `faults.<kind>(...)`.
    """

    def __init__(self, bars: dict | None = None, *, terminal: Terminal | None = None, **terminal_options) -> None:
        if terminal is not None and (bars or terminal_options):
            raise TypeError("give either a terminal or the options to build one")
        self.terminal = terminal or Terminal(bars, **terminal_options)
        self._session: int | None = None
        self._last_error: tuple[int, str] = (C.RES_S_OK, ERROR_TEXTS[C.RES_S_OK])

    # ---- controls for tests (not part of the MetaTrader5 module) -------------------------------------------------

    @property
    def faults(self) -> Faults:
        return self.terminal.faults

    def inject(self, kind: str, **kwargs) -> None:
        """Inject a fault by name: one of mt5sim.faults.FAULT_KINDS, with that method's keyword arguments."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; known: {', '.join(FAULT_KINDS)}")
        getattr(self.terminal.faults, kind)(**kwargs)

    def advance_to(self, when: datetime | float) -> None:
        self.terminal.advance_to(when)

    def advance(self, seconds: float) -> None:
        self.terminal.advance(seconds)

    def step(self, n_bars: int = 1, symbol: str | None = None) -> None:
        self.terminal.step(n_bars, symbol)

    def now(self) -> datetime:
        return self.terminal.now_utc()

    def reconnect(self) -> None:
        """Bring a dropped terminal link back; a client must still call initialize() again."""
        self.terminal.reconnect()

    def set_algo_trading(self, enabled: bool) -> None:
        self.terminal.set_algo_trading(enabled)

    def set_symbol(self, name: str, **changes) -> None:
        """Change a symbol's settings by symbol_info() field (trade_stops_level, filling_mode, spread, ...)."""
        with self.terminal.lock:
            self.terminal.configure(self.terminal.symbol_by_canonical(name), **changes)

    def set_account(self, **changes) -> None:
        """Change account fields (trade_allowed, leverage, margin_mode, balance, ...)."""
        with self.terminal.lock:
            for key, value in changes.items():
                if not hasattr(self.terminal.account, key):
                    raise ValueError(f"unknown account field {key!r}")
                setattr(self.terminal.account, key, value)

    def state(self) -> dict:
        """Plain-dict dump of the terminal (account, positions, pending orders, deals, clock, faults)."""
        return self.terminal.snapshot()

    def _connected(self) -> bool:
        t = self.terminal
        return t.link_up and self._session == t.link_epoch

    # ---- connection ----------------------------------------------------------------------------------------

    @_api
    def initialize(self, path=None, *, login=None, password=None, server=None, timeout=60000, portable=False) -> bool:
        t = self.terminal
        fault = t.faults.take_initialize()
        if fault is not None:
            raise LocalRefusal(fault.code, fault.message)
        if not t.link_up:
            raise LocalRefusal(C.RES_E_INTERNAL_FAIL_INIT, ERROR_TEXTS[C.RES_E_INTERNAL_FAIL_INIT])
        if login is not None:
            self._authorize(login, password, server)
        self._session = t.link_epoch
        return True

    @_api
    def login(self, login, password=None, server=None, timeout=60000) -> bool:
        self._authorize(login, password, server)
        return True

    def _authorize(self, login, password, server) -> None:
        acc = self.terminal.account
        if (login != acc.login or (acc.password is not None and password != acc.password)
                or (server is not None and server != acc.server)):
            raise LocalRefusal(C.RES_E_AUTH_FAILED, ERROR_TEXTS[C.RES_E_AUTH_FAILED])

    def shutdown(self) -> None:
        self._session = None
        self._last_error = (C.RES_S_OK, ERROR_TEXTS[C.RES_S_OK])

    def last_error(self) -> tuple[int, str]:
        return self._last_error

    @_api
    def version(self):
        return VERSION

    @_api
    def terminal_info(self):
        t = self.terminal
        return TerminalInfo(
            community_account=False, community_connection=False, connected=t.link_up, dlls_allowed=False,
            trade_allowed=t.trade_allowed, tradeapi_disabled=False, email_enabled=False, ftp_enabled=False,
            notifications_enabled=False, mqid=False, build=t.build, maxbars=t.maxbars, codepage=0, ping_last=25_000,
            community_balance=0.0, retransmission=0.0, company=t.account.company, name="MetaTrader 5 (simulated)",
            language="English", path="C:\\Program Files\\MetaTrader 5", data_path="C:\\Program Files\\MetaTrader 5",
            commondata_path="C:\\Users\\sim\\AppData\\Roaming\\MetaQuotes\\Terminal\\Common",
        )

    @_api
    def account_info(self):
        t = self.terminal
        a = t.account
        v = t.totals()
        return AccountInfo(
            login=a.login, trade_mode=a.trade_mode, leverage=a.leverage, limit_orders=a.limit_orders, margin_so_mode=0,
            trade_allowed=a.trade_allowed, trade_expert=a.trade_expert, margin_mode=a.margin_mode, currency_digits=2,
            fifo_close=False, balance=v["balance"], credit=a.credit, profit=v["profit"], equity=v["equity"],
            margin=v["margin"], margin_free=v["margin_free"], margin_level=v["margin_level"],
            margin_so_call=a.margin_so_call, margin_so_so=a.margin_so_so, margin_initial=0.0, margin_maintenance=0.0,
            assets=0.0, liabilities=0.0, commission_blocked=0.0, name=a.name, server=a.server, currency=a.currency,
            company=a.company,
        )

    # ---- symbols ---------------------------------------------------------------------------------------------

    def _symbol(self, name, *, selected: bool = False) -> Symbol:
        if not isinstance(name, str):
            raise LocalRefusal(C.RES_E_INVALID_PARAMS, 'Invalid "symbol" argument')
        sym = self.terminal.symbols.get(name)
        if sym is None:
            # ref: on a suffix broker symbol_info("XAUUSD") is None; resolve with symbols_get(group="*XAUUSD*").
            raise LocalRefusal(C.RES_E_NOT_FOUND, ERROR_TEXTS[C.RES_E_NOT_FOUND])
        if selected and not sym.select:
            # ref: "the official examples select a symbol whose visible is False before using it". [unsure: the
            # real terminal may answer stale data here; the simulator insists on symbol_select first]
            raise LocalRefusal(C.RES_E_FAIL, ERROR_TEXTS[C.RES_E_FAIL])
        return sym

    @_api
    def symbols_total(self) -> int:
        return len(self.terminal.symbols)

    @_api
    def symbols_get(self, group=None):
        return tuple(self._symbol_info(s) for s in self.terminal.symbols.values() if match_group(s.name, group))

    @_api
    def symbol_info(self, symbol):
        return self._symbol_info(self._symbol(symbol))

    def _symbol_info(self, sym: Symbol):
        quote = self.terminal.prices(sym) if sym.select else None
        bid, ask = quote or (0.0, 0.0)
        tick = self.terminal.tick(sym) if quote else None
        spread = int(round((ask - bid) / sym.point)) if quote else 0
        tick_value = sym.trade_contract_size * sym.point
        if sym.spec.base_currency == self.terminal.account.currency and bid:
            tick_value /= bid
        values = dict.fromkeys(SymbolInfo._fields, 0)
        values.update(
            custom=False, select=sym.select, visible=sym.select, time=self.terminal.to_server(tick.time) if tick else 0,
            digits=sym.digits, spread=spread, spread_float=sym.spread is None, trade_calc_mode=0, trade_mode=sym.trade_mode,
            trade_stops_level=sym.trade_stops_level, trade_freeze_level=sym.trade_freeze_level,
            trade_exemode=sym.trade_exemode, swap_mode=1, swap_rollover3days=3, margin_hedged_use_leg=False,
            expiration_mode=15, filling_mode=sym.filling_mode, order_mode=127, order_gtc_mode=0,
            bid=bid, bidhigh=bid, bidlow=bid, ask=ask, askhigh=ask, asklow=ask, last=0.0, point=sym.point,
            trade_tick_value=tick_value, trade_tick_value_profit=tick_value, trade_tick_value_loss=tick_value,
            trade_tick_size=sym.point, trade_contract_size=sym.trade_contract_size, volume_min=sym.volume_min,
            volume_max=sym.volume_max, volume_step=sym.volume_step, volume_limit=0.0, swap_long=0.0, swap_short=0.0,
            margin_initial=0.0, margin_maintenance=0.0, margin_hedged=sym.trade_contract_size,
            currency_base=sym.spec.base_currency, currency_profit=sym.spec.quote_currency,
            currency_margin=sym.spec.base_currency, bank="", description=sym.description, exchange="", formula="",
            isin="", name=sym.name, page="", path=sym.path, category="", basis="",
        )
        for f in ("volume_real", "volumehigh_real", "volumelow_real", "option_strike", "trade_accrued_interest",
                  "trade_face_value", "trade_liquidity_rate", "session_volume", "session_turnover", "session_interest",
                  "session_buy_orders_volume", "session_sell_orders_volume", "session_open", "session_close",
                  "session_aw", "session_price_settlement", "session_price_limit_min", "session_price_limit_max",
                  "price_change", "price_volatility", "price_theoretical", "price_greeks_delta", "price_greeks_theta",
                  "price_greeks_gamma", "price_greeks_vega", "price_greeks_rho", "price_greeks_omega",
                  "price_sensitivity", "lasthigh", "lastlow"):
            values[f] = 0.0
        return SymbolInfo(**values)

    @_api
    def symbol_select(self, symbol, enable=True) -> bool:
        sym = self._symbol(symbol)
        if not enable and any(p.symbol == sym.name for p in self.terminal.positions.values()):
            raise LocalRefusal(C.RES_E_FAIL, ERROR_TEXTS[C.RES_E_FAIL])  # a symbol with open positions stays
        sym.select = bool(enable)
        return True

    @_api
    def symbol_info_tick(self, symbol):
        sym = self._symbol(symbol, selected=True)
        tick = self.terminal.tick(sym)
        if tick is None:
            raise LocalRefusal(C.RES_E_FAIL, ERROR_TEXTS[C.RES_E_FAIL])
        bid, ask = self.terminal.prices(sym, tick)
        server = self.terminal.to_server(tick.time)
        return Tick(time=server, bid=bid, ask=ask, last=0.0, volume=0, time_msc=server * 1000, flags=6, volume_real=0.0)

    # ---- bars ------------------------------------------------------------------------------------------------

    def _rates(self, symbol, timeframe) -> np.ndarray:
        sym = self._symbol(symbol, selected=True)
        if type(timeframe) is not int or timeframe not in TIMEFRAME_S:
            code = C.RES_E_UNSUPPORTED if timeframe in (C.TIMEFRAME_W1, C.TIMEFRAME_MN1) else C.RES_E_INVALID_PARAMS
            raise LocalRefusal(code, 'Invalid "timeframe" argument')
        return self.terminal.rates(sym, timeframe)

    @_api
    def copy_rates_from_pos(self, symbol, timeframe, start_pos, count):
        """ref: `start_pos=0` is the still-forming bar (the last row); closed bars only from `start_pos=1`."""
        _need_int("start_pos", start_pos, minimum=0)
        _need_int("count", count, minimum=1)
        bars = self._rates(symbol, timeframe)
        end = len(bars) - start_pos
        return bars[max(0, end - count): max(0, end)].copy()

    @_api
    def copy_rates_from(self, symbol, timeframe, date_from, count):
        _need_int("count", count, minimum=1)
        until = _epoch("date_from", date_from)
        bars = self._rates(symbol, timeframe)
        end = int(np.searchsorted(bars["time"], until, side="right"))
        return bars[max(0, end - count): end].copy()

    @_api
    def copy_rates_range(self, symbol, timeframe, date_from, date_to):
        lo, hi = _epoch("date_from", date_from), _epoch("date_to", date_to)
        bars = self._rates(symbol, timeframe)
        return bars[(bars["time"] >= lo) & (bars["time"] <= hi)].copy()

    # ---- trading ---------------------------------------------------------------------------------------------

    def _parse_request(self, request) -> dict:
        """Check a request as the terminal does before sending it: plain int/float/str values only (ref, Orders)."""
        if not isinstance(request, dict):
            raise LocalRefusal(C.RES_E_INVALID_PARAMS, "Invalid arguments")
        for key, value in request.items():
            if key not in REQUEST_KEYS:
                raise LocalRefusal(C.RES_E_INVALID_PARAMS, f'Invalid "{key}" argument')
            # type() and not isinstance(): numpy.float64 subclasses float, bool subclasses int; both are refused.
            ok = (type(value) is int if key in INT_KEYS else type(value) in (int, float) if key in FLOAT_KEYS else type(value) is str)
            if not ok:
                raise LocalRefusal(C.RES_E_INVALID_PARAMS, f'Invalid "{key}" argument')
        comment = request.get("comment", "")
        if len(comment) > COMMENT_MAX or any(ch in COMMENT_REFUSED or not (32 <= ord(ch) < 127) for ch in comment):
            raise LocalRefusal(C.RES_E_INVALID_PARAMS, 'Invalid "comment" argument')  # ref, Pitfalls
        if "action" not in request:
            raise LocalRefusal(C.RES_E_INVALID_PARAMS, 'Invalid "action" argument')
        req = {k: (0.0 if k in FLOAT_KEYS else "" if k in STR_KEYS else 0) for k in REQUEST_KEYS}
        req.update({k: float(v) if k in FLOAT_KEYS else v for k, v in request.items()})
        if req["symbol"]:
            self._symbol(req["symbol"], selected=True)  # an unknown or unselected symbol never reaches the server
        return req

    @_api
    def order_check(self, request):
        req = self._parse_request(request)
        out = self.terminal.send(req, dry_run=True)
        acc = out["account"]
        retcode = 0 if out["retcode"] in (C.TRADE_RETCODE_DONE, C.TRADE_RETCODE_PLACED) else out["retcode"]
        return OrderCheckResult(retcode=retcode, balance=acc["balance"], equity=acc["equity"], profit=acc["profit"],
                                margin=acc["margin"], margin_free=acc["margin_free"], margin_level=acc["margin_level"],
                                comment="Done" if retcode == 0 else out["comment"], request=TradeRequest(**req))

    def order_send(self, request):
        """ref: None when refused locally (see last_error), otherwise an OrderSendResult with a retcode."""
        result = self._order_send(request)
        if isinstance(result, _Lost):
            if result.delay_s:
                _time.sleep(result.delay_s)
            self._last_error = (result.code, result.message)
            return None
        return result

    @_api
    def _order_send(self, request):
        req = self._parse_request(request)
        fault = self.terminal.faults.take_order_send()
        if fault is not None and fault.kind == "partial":
            if req["action"] != C.TRADE_ACTION_DEAL:
                return _send_result(self.terminal.send(req), req)  # only a market order fills partially
            req_sent = {**req, "volume": min(fault.volume, req["volume"])}
            out = self.terminal.send(req_sent)
            if out["retcode"] == C.TRADE_RETCODE_DONE:
                out = {**out, "retcode": C.TRADE_RETCODE_DONE_PARTIAL, "comment": fault.message}
            return _send_result(out, req)
        if fault is not None and fault.placed:
            self.terminal.send(req)  # the trade server executes it; only the answer goes astray
        if fault is not None and fault.kind == "lost":
            return _Lost(fault.code, fault.message, fault.delay_s)
        if fault is not None:
            quote = self.terminal.prices(self.terminal.symbols[req["symbol"]]) if req["symbol"] else None
            bid, ask = quote if quote and not fault.placed else (0.0, 0.0)
            out = {"retcode": fault.retcode, "deal": 0, "order": 0, "volume": 0.0, "price": 0.0, "bid": bid, "ask": ask,
                   "comment": _comment(fault.retcode), "request_id": 0, "retcode_external": 0}
            return _send_result(out, req)
        return _send_result(self.terminal.send(req), req)

    @_api
    def order_calc_margin(self, action, symbol, volume, price):
        sym = self._symbol(symbol)
        if action not in (C.ORDER_TYPE_BUY, C.ORDER_TYPE_SELL) or type(volume) not in (int, float) or type(price) not in (int, float):
            raise LocalRefusal(C.RES_E_INVALID_PARAMS, "Invalid arguments")
        return round(self.terminal.margin_for(sym, float(volume), float(price)), 2)

    @_api
    def order_calc_profit(self, action, symbol, volume, price_open, price_close):
        sym = self._symbol(symbol)
        if action not in (C.ORDER_TYPE_BUY, C.ORDER_TYPE_SELL):
            raise LocalRefusal(C.RES_E_INVALID_PARAMS, "Invalid arguments")
        side = "buy" if action == C.ORDER_TYPE_BUY else "sell"
        return round(trade_profit(sym, side, float(volume), float(price_open), float(price_close)), 2)

    # ---- positions, orders, history -----------------------------------------------------------------------------

    @_api
    def positions_total(self) -> int:
        return len(self.terminal.positions)

    @_api
    def positions_get(self, symbol=None, group=None, ticket=None):
        """ref: `positions_get()`, `(symbol=)`, `(group="*USD*,!EUR*")`, `(ticket=)`; () when nothing matches."""
        chosen = _filter(sorted(self.terminal.positions.values(), key=lambda p: p.ticket), symbol, group, ticket, "ticket")
        return tuple(self._position(p) for p in chosen)

    @_api
    def orders_total(self) -> int:
        return len(self.terminal.pending)

    @_api
    def orders_get(self, symbol=None, group=None, ticket=None):
        chosen = _filter(sorted(self.terminal.pending.values(), key=lambda o: o.ticket), symbol, group, ticket, "ticket")
        return tuple(self._order(o) for o in chosen)

    @_api
    def history_orders_total(self, date_from, date_to) -> int:
        lo, hi = _epoch("date_from", date_from), _epoch("date_to", date_to)
        return sum(1 for o in self.terminal.history_orders if lo <= self.terminal.to_server(o.time_setup) <= hi)

    @_api
    def history_orders_get(self, date_from=None, date_to=None, group=None, ticket=None, position=None):
        t = self.terminal
        orders = t.history_orders
        if ticket is not None:
            chosen = [o for o in orders if o.ticket == ticket]
        elif position is not None:
            chosen = [o for o in orders if o.position_id == position]
        else:
            lo, hi = _range(date_from, date_to)
            chosen = [o for o in orders if lo <= t.to_server(o.time_setup) <= hi and match_group(o.symbol, group)]
        return tuple(self._order(o) for o in chosen)

    @_api
    def history_deals_total(self, date_from, date_to) -> int:
        lo, hi = _epoch("date_from", date_from), _epoch("date_to", date_to)
        return sum(1 for d in self.terminal.deals if lo <= self.terminal.to_server(d.time) <= hi)

    @_api
    def history_deals_get(self, date_from=None, date_to=None, group=None, ticket=None, position=None):
        """ref: `ticket=X` filters by the ORDER ticket (DEAL_ORDER), not the deal ticket; dates compare with
        server-time stamps, so a `date_to` of "now in UTC" misses the last hours on a UTC+3 server."""
        t = self.terminal
        if ticket is not None:
            chosen = [d for d in t.deals if d.order == ticket]
        elif position is not None:
            chosen = [d for d in t.deals if d.position_id == position]
        else:
            lo, hi = _range(date_from, date_to)
            chosen = [d for d in t.deals if lo <= t.to_server(d.time) <= hi and match_group(d.symbol, group)]
        return tuple(self._deal(d) for d in chosen)

    # ---- records ---------------------------------------------------------------------------------------------

    def _position(self, p) -> TradePosition:
        t = self.terminal
        quote = t.prices(t.symbols[p.symbol])
        current = (quote[0] if p.type == C.POSITION_TYPE_BUY else quote[1]) if quote else p.price_open
        return TradePosition(
            ticket=p.ticket, time=t.to_server(p.time), time_msc=t.to_server_msc(p.time), time_update=t.to_server(p.time_update),
            time_update_msc=t.to_server_msc(p.time_update), type=p.type, magic=p.magic, identifier=p.identifier,
            reason=p.reason, volume=p.volume, price_open=round(p.price_open, 8), sl=p.sl, tp=p.tp, price_current=current,
            swap=0.0, profit=t.position_profit(p), symbol=p.symbol, comment=p.comment, external_id="",
        )

    def _order(self, o) -> TradeOrder:
        t = self.terminal
        return TradeOrder(
            ticket=o.ticket, time_setup=t.to_server(o.time_setup), time_setup_msc=t.to_server_msc(o.time_setup),
            time_done=t.to_server(o.time_done) if o.time_done else 0, time_done_msc=t.to_server_msc(o.time_done) if o.time_done else 0,
            time_expiration=o.expiration, type=o.type, type_time=o.type_time, type_filling=o.type_filling, state=o.state,
            magic=o.magic, position_id=o.position_id, position_by_id=o.position_by_id, reason=o.reason,
            volume_initial=o.volume_initial, volume_current=o.volume_current, price_open=o.price_open, sl=o.sl, tp=o.tp,
            price_current=o.price_current, price_stoplimit=0.0, symbol=o.symbol, comment=o.comment, external_id="",
        )

    def _deal(self, d) -> TradeDeal:
        t = self.terminal
        return TradeDeal(
            ticket=d.ticket, order=d.order, time=t.to_server(d.time), time_msc=t.to_server_msc(d.time), type=d.type,
            entry=d.entry, magic=d.magic, position_id=d.position_id, reason=d.reason, volume=d.volume, price=d.price,
            commission=d.commission, swap=d.swap, profit=d.profit, fee=d.fee, symbol=d.symbol, comment=d.comment,
            external_id="",
        )


class _Lost:
    """An order_send answer that never arrives (returned as None after the wrapper has run)."""

    def __init__(self, code: int, message: str, delay_s: float) -> None:
        self.code, self.message, self.delay_s = code, message, delay_s


def _send_result(out: dict, req: dict) -> OrderSendResult:
    return OrderSendResult(retcode=out["retcode"], deal=out["deal"], order=out["order"], volume=out["volume"],
                           price=out["price"], bid=out["bid"], ask=out["ask"], comment=out["comment"],
                           request_id=out["request_id"], retcode_external=out["retcode_external"], request=TradeRequest(**req))


def _comment(retcode: int) -> str:
    return RETCODE_COMMENTS.get(retcode, "Request rejected")


def _need_int(name: str, value, *, minimum: int) -> None:
    if type(value) is not int or value < minimum:
        raise LocalRefusal(C.RES_E_INVALID_PARAMS, f'Invalid "{name}" argument')


def _epoch(name: str, value) -> int:
    """A date argument as the module reads it: `datetime.timestamp()` (a naive one is local time) or int seconds;
    the number is then compared with server-time stamps as is (ref: naive local datetimes miss recent deals)."""
    if isinstance(value, datetime):
        return int(value.timestamp())
    if type(value) is int:
        return value
    raise LocalRefusal(C.RES_E_INVALID_PARAMS, f'Invalid "{name}" argument')


def _range(date_from, date_to) -> tuple[int, int]:
    if date_from is None or date_to is None:
        raise LocalRefusal(C.RES_E_INVALID_PARAMS, "Invalid arguments")
    return _epoch("date_from", date_from), _epoch("date_to", date_to)


def _filter(items, symbol, group, ticket, key):
    if ticket is not None:
        return [i for i in items if getattr(i, key) == ticket]
    if symbol is not None:
        return [i for i in items if i.symbol == symbol]
    if group is not None:
        return [i for i in items if match_group(i.symbol, group)]
    return items
