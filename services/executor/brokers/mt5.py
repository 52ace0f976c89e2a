"""The MT5 broker back end: the `MetaTrader5` module (Windows), `mt5linux.MetaTrader5(host, port)` (Linux bridge) or any
object with the same functions (mt5sim.SimulatedMT5 / RemoteMT5 in the tests) behind the Broker protocol.

Facts and numbers: ../shared/reference/mt5-and-rabbitmq.md section 1. The module is a blocking C API with one global
`last_error`: every call runs on ONE dedicated thread (a single-thread executor) that owns the terminal session. Whole
operations (check, send, read the deal back) run on that thread as one sync function, so no other call can overwrite
`last_error` in between. The session reconnects with bounded back-off (tenacity); an order is never resent inside
`place` after an unknown outcome: the adapter looks for it (positions and deals by comment and magic) and otherwise
raises BrokerUnavailable, so the executor keeps the order in `sending` and asks again before anything else.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import Counter
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from services.executor.brokers.base import (
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
from shared.bus.base import TransientError
from shared.logging import get_logger
from shared.symbols import DEFAULT_SPECS, SymbolSpec, canonical_symbol, learn_spec
from shared.timeutil import Clock, server_offset, server_to_utc

log = get_logger(__name__)

mt5_alerts_total = Counter("mt5_alerts_total", "MT5 conditions that need a person (algo trading off, live account...)", ["kind"])
mt5_reconnects_total = Counter("mt5_reconnects_total", "MT5 terminal sessions (re)opened")

# Numbers from the reference (section 1, Constants and Trade server return codes); mt5linux may not carry every one.
ACTION_DEAL, ACTION_SLTP = 1, 6
TYPE_BUY, TYPE_SELL = 0, 1
FILLING_FOK, FILLING_IOC, FILLING_RETURN = 0, 1, 2
SYMBOL_FILLING_FOK, SYMBOL_FILLING_IOC = 1, 2
TIME_GTC = 0
ENTRY_IN, ENTRY_OUT, ENTRY_INOUT, ENTRY_OUT_BY = 0, 1, 2, 3
DEAL_REASON_SL, DEAL_REASON_TP, DEAL_REASON_SO = 4, 5, 6
ACCOUNT_DEMO = 0
MARGIN_NETTING, MARGIN_EXCHANGE, MARGIN_HEDGING = 0, 1, 2
TIMEFRAME_M1 = 1

SUCCESS = frozenset({10008, 10009, 10010})
REQUOTE = frozenset({10004, 10020, 10021})  # nothing placed; a fresh price may do
UNKNOWN = frozenset({10011, 10012, 10031})  # the order may or may not exist: reconcile before anything else
ALGO_OFF = 10027
NO_CHANGES = 10025
POSITION_CLOSED = 10036
# last_error codes that mean the IPC link to the terminal is gone (-10001 send .. -10005 timeout); -10000 internal.
IPC_ERRORS = frozenset({-10000, -10001, -10002, -10003, -10004, -10005})
LOCAL_REFUSED = -2  # invalid params: refused by the terminal, nothing sent
REQUOTE_ATTEMPTS = 3
HISTORY_LOOKBACK = timedelta(days=30)
COMMENT_OK = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
COMMENT_MAX = 26  # ref, Pitfalls: observed limits 31/29/28; safe is 26 of [A-Za-z0-9_-]


class LiveAccountRefused(RuntimeError):
    """The terminal is logged in to a real-money account and SCALPER_ALLOW_LIVE is not set. Never transient."""


def module_from_settings(settings) -> Callable[[], Any]:
    """A factory of the module object the settings choose: mt5linux when SCALPER_MT5_HOST is set, else MetaTrader5."""
    if settings.mt5_host:

        def bridge():
            from mt5linux import MetaTrader5  # type: ignore[import-not-found]

            return MetaTrader5(host=settings.mt5_host, port=settings.mt5_port)

        return bridge

    def local():
        import MetaTrader5  # type: ignore[import-not-found]  # Windows only

        return MetaTrader5

    return local


def safe_comment(text: str) -> str:
    """The client order id as an MT5 comment: at most 26 characters of [A-Za-z0-9_-] (anything else is refused)."""
    if not text or len(text) > COMMENT_MAX or any(ch not in COMMENT_OK for ch in text):
        raise ValueError(f"comment {text!r} is not 1..{COMMENT_MAX} characters of [A-Za-z0-9_-]")
    return text


def filling_for(filling_mode: int) -> int:
    """ref: FOK bit -> ORDER_FILLING_FOK (0), IOC bit -> ORDER_FILLING_IOC (1), neither -> ORDER_FILLING_RETURN (2)."""
    if filling_mode & SYMBOL_FILLING_FOK:
        return FILLING_FOK
    if filling_mode & SYMBOL_FILLING_IOC:
        return FILLING_IOC
    return FILLING_RETURN


def spec_from_info(info, canonical: str) -> SymbolSpec:
    """A SymbolSpec from `symbol_info()`: the broker's numbers, the shipped spec's pip size where it knows the symbol."""
    known = DEFAULT_SPECS.get(canonical)
    point = float(info.point)
    return SymbolSpec(
        name=canonical,
        digits=int(info.digits),
        point=point,
        pip_size=known.pip_size if known else point * 10,
        contract_size=float(info.trade_contract_size),
        volume_min=float(info.volume_min),
        volume_step=float(info.volume_step),
        volume_max=float(info.volume_max),
        stops_level=int(info.trade_stops_level),
        freeze_level=int(info.trade_freeze_level),
        base_currency=str(getattr(info, "currency_base", "") or (known.base_currency if known else "USD")),
        quote_currency=str(getattr(info, "currency_profit", "") or (known.quote_currency if known else "USD")),
        round_number_step=known.round_number_step if known else point * 1000,
        typical_spread_points=max(0, int(info.spread)),
    )


@dataclass
class _Symbol:
    name: str  # the broker's name (with suffix)
    canonical: str
    spec: SymbolSpec
    filling: int


@dataclass
class SessionHealth:
    connected: bool = False
    trade_allowed: bool | None = None
    account_login: int | None = None
    margin_mode: str | None = None
    last_error: tuple[int, str] | None = None
    trading_disabled: str = ""
    refused: str = ""
    reconnects: int = 0
    extra: dict = field(default_factory=dict)


class MT5Broker:
    """One MT5 terminal session (one trading account) behind the Broker protocol.

    `connect` returns the module object (called again to reconnect: a dead RemoteMT5/mt5linux connection needs a new
    one; for an in-process module return the same object). `server_time` is the account's rule (utc, us_dst, +2).
    `max_volume` caps every order (the account's cap) on top of the symbol's volume_max.
    """

    def __init__(
        self,
        *,
        connect: Callable[[], Any],
        clock: Clock,
        server_time: str = "utc",
        symbol_suffix: str = "",
        login: int | None = None,
        password: str | None = None,
        server: str | None = None,
        path: str | None = None,
        timeout_ms: int = 60_000,
        allow_live: bool = False,
        max_volume: float | None = None,
        reconnect_attempts: int = 4,
        reconnect_max_wait_s: float = 8.0,
    ) -> None:
        self._connect = connect
        self._clock = clock
        self.server_time = server_time
        self._suffix = symbol_suffix or ""
        self._login, self._password, self._server, self._path = login, password, server, path
        self._timeout_ms = timeout_ms
        self._allow_live = allow_live
        self._max_volume = max_volume
        self._attempts = reconnect_attempts
        self._max_wait = reconnect_max_wait_s
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mt5-session")
        self._mt5: Any = None
        self._symbols: dict[str, _Symbol] = {}
        self.margin_mode: str = "hedging"
        self.health = SessionHealth()

    # --- the session thread --------------------------------------------------------------------------------

    async def _run(self, fn: Callable, *args, retry_reads: bool = False):
        """Run `fn(*args)` on the session thread after making sure the session is open (bounded back-off)."""
        loop = asyncio.get_running_loop()
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(self._attempts if retry_reads else 1),
            wait=wait_exponential(multiplier=0.2, max=self._max_wait),
            retry=retry_if_exception_type(BrokerUnavailable),
            reraise=True,
        ):
            with attempt:
                await self._ensure_session()
                return await loop.run_in_executor(self._pool, fn, *args)
        raise AssertionError("unreachable")

    async def _ensure_session(self) -> None:
        if self.health.connected:
            return
        loop = asyncio.get_running_loop()
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential(multiplier=0.2, max=self._max_wait),
            retry=retry_if_exception_type(BrokerUnavailable),
            reraise=True,
        ):
            with attempt:
                await loop.run_in_executor(self._pool, self._open_session)

    async def start(self) -> None:
        """Open the session now (the executor calls it at start-up): a live account without allow_live raises here."""
        await self._ensure_session()

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self._close_session)
        self._pool.shutdown(wait=True)

    def _close_session(self) -> None:
        if self._mt5 is not None:
            try:
                self._mt5.shutdown()
            except Exception:  # noqa: BLE001  the link may already be gone
                pass
            close = getattr(self._mt5, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:  # noqa: BLE001
                    pass
        self.health.connected = False

    def _open_session(self) -> None:
        if self.health.refused:
            raise LiveAccountRefused(self.health.refused)
        try:
            if self._mt5 is None:
                self._mt5 = self._connect()
            kwargs: dict[str, Any] = {"timeout": self._timeout_ms}
            if self._login is not None:
                kwargs.update(login=int(self._login), password=self._password or "", server=self._server or "")
                if self._password is None:
                    kwargs.pop("password")
                if self._server is None:
                    kwargs.pop("server")
            ok = self._mt5.initialize(self._path, **kwargs) if self._path else self._mt5.initialize(**kwargs)
        except (OSError, EOFError, ConnectionError, TimeoutError) as exc:
            self._mt5 = None  # a dead bridge connection: a new one next attempt
            raise BrokerUnavailable(f"MT5 terminal unreachable: {exc!r}") from exc
        if not ok:
            error = self._last_error()
            self.health.last_error = error
            raise BrokerUnavailable(f"MT5 initialize failed: {error}")
        info = self._mt5.account_info()
        if info is None:
            raise BrokerUnavailable(f"MT5 account_info failed: {self._last_error()}")
        if int(info.trade_mode) != ACCOUNT_DEMO and not self._allow_live:
            reason = (f"account {info.login} on {info.server} is not a demo account (trade_mode {info.trade_mode}): "
                      "refused; set SCALPER_ALLOW_LIVE=true to trade real money")
            self.health.refused = reason
            mt5_alerts_total.labels(kind="live_account_refused").inc()
            log.error("MT5 live account refused", login=info.login, server=info.server, trade_mode=info.trade_mode)
            self._mt5.shutdown()
            raise LiveAccountRefused(reason)
        mode = int(info.margin_mode)
        self.margin_mode = "hedging" if mode == MARGIN_HEDGING else "netting"
        self.health.connected = True
        self.health.account_login = int(info.login)
        self.health.margin_mode = self.margin_mode
        self.health.reconnects += 1
        self._symbols.clear()  # symbol settings may have changed while the session was down
        mt5_reconnects_total.inc()
        log.info("MT5 session open", login=info.login, server=info.server, margin_mode=self.margin_mode, demo=int(info.trade_mode) == ACCOUNT_DEMO)

    def _last_error(self) -> tuple[int, str]:
        try:
            code, text = self._mt5.last_error()
            return int(code), str(text)
        except Exception as exc:  # noqa: BLE001
            return (-10004, f"last_error unavailable: {exc!r}")

    def _lost(self, why: str) -> BrokerUnavailable:
        """The IPC link is gone: the next call reopens the session."""
        self.health.connected = False
        log.warning("MT5 session lost", reason=why)
        return BrokerUnavailable(f"MT5 session lost: {why}")

    def _call(self, name: str, *args, **kwargs):
        """One module call on the session thread. IPC failures raise BrokerUnavailable; other None answers return None."""
        try:
            value = getattr(self._mt5, name)(*args, **kwargs)
        except (OSError, EOFError, ConnectionError, TimeoutError) as exc:
            self._mt5 = None
            raise self._lost(f"{name}: {exc!r}") from exc
        if value is None or value is False:
            error = self._last_error()
            self.health.last_error = error
            if error[0] in IPC_ERRORS:
                raise self._lost(f"{name}: {error}")
        return value

    def _utc(self, server_epoch: int | float) -> datetime:
        """ref: bar, tick and deal times are the broker's server wall clock stored as epoch seconds."""
        wall = datetime.fromtimestamp(float(server_epoch), UTC).replace(tzinfo=None)
        return server_to_utc(self.server_time, wall)

    def _server_epoch(self, at: datetime) -> int:
        return int(at.timestamp() + server_offset(self.server_time, at).total_seconds())

    # --- symbols -----------------------------------------------------------------------------------------------

    def _resolve(self, symbol: str) -> _Symbol:
        """The broker's symbol for `symbol` (XAUUSD or XAUUSDm), selected in Market Watch, with its spec."""
        cached = self._symbols.get(symbol)
        if cached is not None:
            return cached
        info = self._call("symbol_info", symbol)
        if info is None:
            # ref: on a suffix broker symbol_info("XAUUSD") is None: resolve with symbols_get(group="*XAUUSD*").
            canonical = canonical_symbol(symbol, self._suffix)
            found = self._call("symbols_get", group=f"*{canonical}*") or ()
            names = sorted((s.name for s in found if s.name.upper().startswith(canonical.upper())), key=len)
            preferred = canonical + self._suffix
            name = preferred if preferred in names else (names[0] if names else None)
            if name is None:
                raise LookupError(f"the broker has no symbol for {symbol!r} (looked for *{canonical}*)")
            info = self._call("symbol_info", name)
            if info is None:
                raise BrokerUnavailable(f"symbol_info({name!r}) failed: {self._last_error()}")
        if not info.visible:
            if not self._call("symbol_select", info.name, True):
                raise BrokerUnavailable(f"symbol_select({info.name!r}) failed: {self._last_error()}")
            info = self._call("symbol_info", info.name) or info
        canonical = canonical_symbol(info.name, self._suffix)
        resolved = _Symbol(name=info.name, canonical=canonical, spec=spec_from_info(info, canonical), filling=filling_for(int(info.filling_mode)))
        self._symbols[symbol] = resolved
        learn_spec(resolved.spec)  # the broker's word on digits, lots and stops level, for this whole process
        return resolved

    def specs(self) -> list[SymbolSpec]:
        return list({s.canonical: s.spec for s in self._symbols.values()}.values())

    async def spec(self, symbol: str) -> SymbolSpec:
        return (await self._run(self._resolve, symbol, retry_reads=True)).spec

    # --- trading switch ------------------------------------------------------------------------------------

    def _trading_blocked(self) -> str:
        """Why the terminal will not trade now (ref: 10027 / terminal_info().trade_allowed False), or ''."""
        term = self._call("terminal_info")
        if term is None:
            raise BrokerUnavailable(f"terminal_info failed: {self._last_error()}")
        self.health.trade_allowed = bool(term.trade_allowed)
        if not term.trade_allowed:
            self._alert_algo_off("terminal_info().trade_allowed is False")
            return self.health.trading_disabled
        if self.health.trading_disabled:
            log.warning("MT5 Algo Trading is on again: sending resumes")
            self.health.trading_disabled = ""
        return ""

    def _alert_algo_off(self, why: str) -> None:
        if not self.health.trading_disabled:
            mt5_alerts_total.labels(kind="algo_trading_off").inc()
            log.error("MT5 ALERT: the terminal's Algo Trading switch is off: no order is sent until it is on", reason=why)
        self.health.trading_disabled = f"Algo Trading is off in the terminal ({why}): switch it on"

    # --- Broker: place ---------------------------------------------------------------------------------------

    async def place(self, request: OrderRequest) -> PlaceResult:
        return await self._run(self._place, request)

    def _place(self, request: OrderRequest) -> PlaceResult:
        try:
            comment = safe_comment(request.client_order_id)
        except ValueError as exc:
            return PlaceResult(status="rejected", reason=str(exc))
        try:
            sym = self._resolve(request.symbol)
        except LookupError as exc:
            return PlaceResult(status="rejected", retcode=10013, reason=str(exc))
        spec = sym.spec
        cap = spec.volume_max if self._max_volume is None else min(spec.volume_max, self._max_volume)
        steps = request.volume / spec.volume_step
        if request.volume > cap + 1e-9:
            return PlaceResult(status="rejected", retcode=10014, reason=f"volume {request.volume} exceeds the maximum {cap} per order")
        if request.volume < spec.volume_min - 1e-9 or abs(steps - round(steps)) > 1e-6:
            return PlaceResult(status="rejected", retcode=10014,
                               reason=f"invalid volume {request.volume}: {sym.name} trades {spec.volume_min}.. in steps of {spec.volume_step}")
        blocked = self._trading_blocked()
        if blocked:
            return PlaceResult(status="failed", retcode=ALGO_OFF, reason=blocked)
        decimals = max(0, -math.floor(math.log10(spec.volume_step)))
        last: PlaceResult | None = None
        for _ in range(REQUOTE_ATTEMPTS):
            if request.expires_at is not None and self._clock.now() >= request.expires_at:
                break
            tick = self._call("symbol_info_tick", sym.name)
            if tick is None:
                last = PlaceResult(status="rejected", retcode=10021, reason=f"no prices for {sym.name}: {self._last_error()}")
                continue
            buy = request.side == "buy"
            # Plain float/int only: a Decimal or numpy scalar is refused (and cannot cross the mt5linux bridge).
            req = {
                "action": ACTION_DEAL,
                "symbol": str(sym.name),
                "volume": float(round(request.volume, decimals)),
                "type": TYPE_BUY if buy else TYPE_SELL,
                "price": float(tick.ask if buy else tick.bid),
                "sl": float(spec.round_price(request.sl)) if request.sl is not None else 0.0,
                "tp": float(spec.round_price(request.tp)) if request.tp is not None else 0.0,
                "deviation": int(request.deviation),
                "magic": int(request.magic),
                "comment": comment,
                "type_time": TIME_GTC,
                "type_filling": int(sym.filling),
            }
            check = self._call("order_check", req)
            if check is None:
                # Refused locally before anything was sent (bad argument): final.
                return PlaceResult(status="rejected", reason=f"order_check refused the request: {self._last_error()}")
            if check.retcode not in (0, *SUCCESS):
                if check.retcode in REQUOTE:
                    last = PlaceResult(status="rejected", retcode=int(check.retcode), reason=str(check.comment))
                    continue
                if check.retcode == ALGO_OFF:
                    self._alert_algo_off("order_check answered 10027")
                    return PlaceResult(status="failed", retcode=ALGO_OFF, reason=self.health.trading_disabled)
                return PlaceResult(status="rejected", retcode=int(check.retcode), reason=f"order_check: {check.comment}")
            try:
                result = self._call("order_send", req)
            except BrokerUnavailable:
                return self._after_unknown(request, "order_send: the terminal link failed during the call")
            if result is None:
                code, text = self.health.last_error or (0, "")
                if code == LOCAL_REFUSED:
                    return PlaceResult(status="rejected", reason=f"order_send refused the request locally: {text}")
                return self._after_unknown(request, f"order_send returned None ({code}, {text})")
            rc = int(result.retcode)
            if rc in SUCCESS:
                return self._filled(sym, request, result)
            if rc in REQUOTE:
                last = PlaceResult(status="rejected", retcode=rc, reason=str(result.comment))
                continue
            if rc in UNKNOWN:
                return self._after_unknown(request, f"order_send answered {rc} {result.comment}")
            if rc == ALGO_OFF:
                self._alert_algo_off("order_send answered 10027")
                return PlaceResult(status="failed", retcode=rc, reason=self.health.trading_disabled)
            return PlaceResult(status="rejected", retcode=rc, reason=str(result.comment))
        # Requoted every time (or expired meanwhile): the executor retries within the intent's expiry.
        return last or PlaceResult(status="rejected", retcode=10004, reason="requoted until the intent expired")

    def _after_unknown(self, request: OrderRequest, why: str) -> PlaceResult:
        """Outcome unknown: look for the order (positions and deals by comment and magic) before anything else."""
        log.warning("MT5 order outcome unknown: reconciling", client_order_id=request.client_order_id, reason=why)
        try:
            found = self._find(request.client_order_id, request.magic)
        except BrokerUnavailable as exc:
            raise BrokerUnavailable(f"{why}; reconciling failed too: {exc}") from exc
        if found is not None:
            return found
        raise BrokerUnavailable(f"{why}; the order is not at the broker (yet): it stays unsettled")

    def _filled(self, sym: _Symbol, request: OrderRequest, result) -> PlaceResult:
        deals = [d for d in (self._call("history_deals_get", ticket=int(result.order)) or ()) if d.symbol == sym.name]
        if not deals:
            # The deal is not in the history yet: on a hedging account result.order is the position's ticket.
            ticket = int(result.order)
            position = self._position(ticket) if self.margin_mode == "hedging" else self._net_position(sym.name)
            return PlaceResult(status="filled", ticket=position.ticket if position else ticket, price=float(result.price),
                               volume=float(result.volume), retcode=int(result.retcode), reason=str(result.comment),
                               filled_at=position.opened_at if position else self._clock.now(), position=position)
        return self._from_deals(deals, retcode=int(result.retcode), reason=str(result.comment))

    def _from_deals(self, deals, *, retcode: int, reason: str) -> PlaceResult:
        """What an order's deals did: opened/added to a position, or (netting) closed part of one."""
        volume = round(sum(float(d.volume) for d in deals), 8)
        price = float(deals[0].price) if len(deals) == 1 else round(sum(float(d.price) * float(d.volume) for d in deals) / volume, 8)
        at = self._utc(deals[0].time)
        position_id = int(deals[0].position_id)
        closed: list[ClosedPosition] = []
        for d in deals:
            if int(d.entry) in (ENTRY_OUT, ENTRY_INOUT, ENTRY_OUT_BY):
                closed.append(self._closed_from_deal(d, "early_exit", open_position=None))
        position = self._position(position_id)
        if closed and position is not None and int(deals[0].entry) != ENTRY_INOUT:
            position = None  # a netting reduction: the position stays, smaller; the executor sees the partial close
        return PlaceResult(status="filled", ticket=position_id, price=price, volume=volume, retcode=retcode, reason=reason,
                           filled_at=at, position=position, closed=tuple(closed))

    # --- Broker: find ------------------------------------------------------------------------------------------

    async def find_order(self, client_order_id: str, magic: int | None = None) -> PlaceResult | None:
        return await self._run(self._find, client_order_id, magic, retry_reads=True)

    def _find(self, client_order_id: str, magic: int | None) -> PlaceResult | None:
        def ours(record) -> bool:
            return record.comment == client_order_id and (magic is None or int(record.magic) == int(magic))

        now = self._clock.now()
        # ref: dates compare with server-time stamps; ask with a `to` in the future, in server epoch seconds.
        date_from = self._server_epoch(now - HISTORY_LOOKBACK)
        date_to = self._server_epoch(now + timedelta(days=2))
        deals = self._call("history_deals_get", date_from, date_to)
        if deals is None:
            raise BrokerUnavailable(f"history_deals_get failed: {self._last_error()}")
        matching = [d for d in deals if ours(d) and int(d.entry) in (ENTRY_IN, ENTRY_INOUT, ENTRY_OUT)]
        if matching:
            first_order = int(matching[0].order)
            mine = [d for d in matching if int(d.order) == first_order]
            return self._from_deals(mine, retcode=10009, reason="found in the deal history by comment and magic")
        positions = self._call("positions_get")
        if positions is None:
            raise BrokerUnavailable(f"positions_get failed: {self._last_error()}")
        for p in positions:
            if ours(p):
                pos = self._broker_position(p)
                return PlaceResult(status="filled", ticket=pos.ticket, price=pos.open_price, volume=pos.volume, retcode=10009,
                                   reason="found among open positions by comment and magic", filled_at=pos.opened_at, position=pos)
        return None

    # --- Broker: positions ------------------------------------------------------------------------------------

    def _broker_position(self, p) -> BrokerPosition:
        return BrokerPosition(
            ticket=int(p.ticket),
            symbol=str(p.symbol),
            side="buy" if int(p.type) == TYPE_BUY else "sell",
            volume=float(p.volume),
            open_price=float(p.price_open),
            sl=float(p.sl) or None,
            tp=float(p.tp) or None,
            opened_at=self._utc(p.time),
            magic=int(p.magic),
            comment=str(p.comment),
        )

    def _position(self, ticket: int) -> BrokerPosition | None:
        found = self._call("positions_get", ticket=int(ticket))
        if found is None:
            raise BrokerUnavailable(f"positions_get failed: {self._last_error()}")
        return self._broker_position(found[0]) if found else None

    def _net_position(self, name: str) -> BrokerPosition | None:
        found = self._call("positions_get", symbol=name) or ()
        return self._broker_position(found[0]) if found else None

    async def positions(self) -> list[BrokerPosition]:
        def read():
            found = self._call("positions_get")
            if found is None:
                raise BrokerUnavailable(f"positions_get failed: {self._last_error()}")
            return [self._broker_position(p) for p in found]

        return await self._run(read, retry_reads=True)

    # --- Broker: close ---------------------------------------------------------------------------------------

    async def close(self, ticket: int, reason: CloseReason) -> ClosedPosition | None:
        return await self._run(self._close, ticket, reason)

    async def find_close(self, ticket: int, reason: CloseReason = "manual") -> ClosedPosition | None:
        """How a position that is no longer open was closed (its OUT deals), or None when it is still open or unknown."""

        def read():
            if self._position(ticket) is not None:
                return None
            return self._closed_from_history(ticket, reason)

        return await self._run(read, retry_reads=True)

    def _closed_from_history(self, ticket: int, reason: CloseReason) -> ClosedPosition | None:
        deals = self._call("history_deals_get", position=int(ticket)) or ()
        opening = [d for d in deals if int(d.entry) == ENTRY_IN]
        outs = [d for d in deals if int(d.entry) in (ENTRY_OUT, ENTRY_OUT_BY, ENTRY_INOUT)]
        if not outs:
            return None
        last = outs[-1]
        volume = round(sum(float(d.volume) for d in outs), 8)
        pnl = round(sum(float(d.profit) + float(d.commission) + float(d.swap) + float(d.fee) for d in outs), 2)
        why: CloseReason = {DEAL_REASON_SL: "sl", DEAL_REASON_TP: "tp"}.get(int(last.reason), reason)  # type: ignore[assignment]
        return ClosedPosition(
            ticket=int(ticket), symbol=str(last.symbol), side="sell" if int(last.type) == TYPE_BUY else "buy", volume=volume,
            open_price=float(opening[0].price) if opening else float(last.price), close_price=float(last.price),
            closed_at=self._utc(last.time), reason=why, pnl=pnl,
            commission=round(sum(float(d.commission) for d in outs), 2), magic=int(last.magic),
            comment=str(opening[0].comment) if opening else "",
        )

    def _closed_from_deal(self, d, reason: CloseReason, *, open_position) -> ClosedPosition:
        return ClosedPosition(
            ticket=int(d.position_id), symbol=str(d.symbol), side="sell" if int(d.type) == TYPE_BUY else "buy",
            volume=float(d.volume), open_price=float(open_position.open_price) if open_position else float(d.price),
            close_price=float(d.price), closed_at=self._utc(d.time), reason=reason,
            pnl=round(float(d.profit) + float(d.commission) + float(d.swap) + float(d.fee), 2),
            commission=float(d.commission), magic=int(d.magic), comment=str(d.comment),
        )

    def _close(self, ticket: int, reason: CloseReason) -> ClosedPosition | None:
        pos = self._position(ticket)
        if pos is None:
            return self._closed_from_history(ticket, reason)
        sym = self._resolve(pos.symbol)
        blocked = self._trading_blocked()
        if blocked:
            raise TransientError(f"cannot close {ticket}: {blocked}")
        for _ in range(REQUOTE_ATTEMPTS):
            tick = self._call("symbol_info_tick", sym.name)
            if tick is None:
                continue
            long = pos.side == "buy"
            req = {
                "action": ACTION_DEAL,
                "symbol": sym.name,
                "volume": float(pos.volume),
                "type": TYPE_SELL if long else TYPE_BUY,
                "price": float(tick.bid if long else tick.ask),
                "deviation": 20,
                "magic": int(pos.magic),
                "comment": f"close-{reason}"[:COMMENT_MAX].replace("_", "-"),
                "type_time": TIME_GTC,
                "type_filling": int(sym.filling),
            }
            if self.margin_mode == "hedging":
                # Hedging: every deal opens a new position unless it names the one it closes (ref, Pitfalls).
                req["position"] = int(ticket)
            # Netting: the opposite deal of the same volume closes the symbol's one position.
            try:
                result = self._call("order_send", req)
            except BrokerUnavailable:
                result = None
            if result is None or int(result.retcode) in UNKNOWN:
                still = self._position(ticket)
                if still is None:
                    return self._closed_from_history(ticket, reason)
                raise BrokerUnavailable(f"close of {ticket}: outcome unknown and the position is still open")
            rc = int(result.retcode)
            if rc in SUCCESS or rc == POSITION_CLOSED:
                return self._closed_from_history(ticket, reason) or self._closed_from_result(pos, result, reason)
            if rc in REQUOTE:
                continue
            if rc == ALGO_OFF:
                self._alert_algo_off("a close answered 10027")
            raise TransientError(f"close of {ticket} refused by the broker: {rc} {result.comment}")
        raise TransientError(f"close of {ticket}: requoted {REQUOTE_ATTEMPTS} times")

    def _closed_from_result(self, pos: BrokerPosition, result, reason: CloseReason) -> ClosedPosition:
        spec = self._resolve(pos.symbol).spec
        price = float(result.price)
        return ClosedPosition(ticket=pos.ticket, symbol=pos.symbol, side=pos.side, volume=pos.volume, open_price=pos.open_price,
                              close_price=price, closed_at=self._clock.now(), reason=reason,
                              pnl=round(spec.profit(pos.side, pos.volume, pos.open_price, price), 2), magic=pos.magic, comment=pos.comment)

    # --- Broker: modify, account, health, quotes, rates -------------------------------------------------------

    async def modify(self, ticket: int, sl: float | None, tp: float | None) -> ModifyResult:
        return await self._run(self._modify, ticket, sl, tp)

    def _modify(self, ticket: int, sl: float | None, tp: float | None) -> ModifyResult:
        pos = self._position(ticket)
        if pos is None:
            return ModifyResult(ok=False, retcode=POSITION_CLOSED, reason=f"no open position {ticket}")
        sym = self._resolve(pos.symbol)
        req = {"action": ACTION_SLTP, "position": int(ticket), "symbol": sym.name, "magic": int(pos.magic),
               "sl": float(sym.spec.round_price(sl)) if sl is not None else 0.0,
               "tp": float(sym.spec.round_price(tp)) if tp is not None else 0.0}
        result = self._call("order_send", req)
        if result is None:
            return ModifyResult(ok=False, reason=f"order_send returned None: {self.health.last_error}")
        rc = int(result.retcode)
        if rc in SUCCESS or rc == NO_CHANGES:
            return ModifyResult(ok=True, retcode=rc)
        return ModifyResult(ok=False, retcode=rc, reason=str(result.comment))

    async def account(self) -> AccountInfo:
        def read():
            info = self._call("account_info")
            if info is None:
                raise BrokerUnavailable(f"account_info failed: {self._last_error()}")
            return AccountInfo(balance=float(info.balance), equity=float(info.equity), margin=float(info.margin),
                               margin_free=float(info.margin_free))

        return await self._run(read, retry_reads=True)

    async def healthy(self) -> bool:
        def probe():
            term = self._call("terminal_info")
            if term is None:
                return False
            self.health.trade_allowed = bool(term.trade_allowed)
            return bool(term.connected)

        try:
            return await self._run(probe)
        except Exception:  # noqa: BLE001  readiness reports, it does not raise
            return False

    def health_details(self) -> dict:
        h = self.health
        return {"connected": h.connected, "trade_allowed": h.trade_allowed, "login": h.account_login, "margin_mode": h.margin_mode,
                "last_error": list(h.last_error) if h.last_error else None, "trading_disabled": h.trading_disabled,
                "refused": h.refused, "sessions_opened": h.reconnects}

    async def quote(self, symbol: str) -> tuple[float, float] | None:
        """(bid, ask) now, or None without prices."""

        def read():
            sym = self._resolve(symbol)
            tick = self._call("symbol_info_tick", sym.name)
            return None if tick is None else (float(tick.bid), float(tick.ask))

        return await self._run(read, retry_reads=True)

    async def terminal_time(self, symbol: str | None = None) -> datetime | None:
        """The terminal's time in UTC: the time of its latest tick of `symbol` (the module has no clock call; on a live
        market the last tick is at most seconds old), or the forming M1 bar's minute while a symbol has no tick yet.
        Without a symbol: the first with a price among those in Market Watch, then the instruments we know."""

        def at(name: str) -> datetime | None:
            tick = self._call("symbol_info_tick", name)
            if tick is not None and int(tick.time):
                return self._utc(int(tick.time))
            forming = self._call("copy_rates_from_pos", name, TIMEFRAME_M1, 0, 1)
            return None if forming is None or len(forming) == 0 else self._utc(int(forming["time"][-1]))

        def read():
            if symbol is not None:
                return at(self._resolve(symbol).name)
            watched = [s.name for s in (self._call("symbols_get") or ()) if s.visible]
            for candidate in dict.fromkeys([*watched, *DEFAULT_SPECS]):
                try:
                    found = at(self._resolve(candidate).name)
                except LookupError:
                    continue  # the broker has no such instrument
                if found is not None:
                    return found
            return None

        return await self._run(read, retry_reads=True)

    async def rates(self, symbol: str, count: int) -> Bars:
        """The last `count` CLOSED M1 bars (start_pos=1: position 0 is the forming bar), times converted to UTC."""

        def read():
            sym = self._resolve(symbol)
            rows = self._call("copy_rates_from_pos", sym.name, TIMEFRAME_M1, 1, int(count))
            if rows is None:
                raise BrokerUnavailable(f"copy_rates_from_pos({sym.name}) failed: {self._last_error()}")
            times = [int(self._utc(int(t)).timestamp()) for t in rows["time"]]
            return Bars.from_columns(time=times, open=rows["open"].tolist(), high=rows["high"].tolist(), low=rows["low"].tolist(),
                                     close=rows["close"].tolist(), tick_volume=[int(v) for v in rows["tick_volume"]],
                                     spread=[int(v) for v in rows["spread"]])

        return await self._run(read, retry_reads=True)


def resolve_secret(ref: str | None) -> str | None:
    """A `password_ref` as broker_accounts stores it: `enc:v1:...` (sealed with SCALPER_SECRET_KEY), `env:NAME`,
    `file:PATH`, or a legacy clear value (shared/secrets.py)."""
    from shared.secrets import open_secret

    return open_secret(ref)


def broker_for_account(account, *, settings, clock: Clock, connect: Callable[[], Any] | None = None) -> MT5Broker:
    """The MT5 broker of one `broker_accounts` row (login, server, password_ref, server_time, symbol_suffix, max_volume),
    on the module the settings choose (or `connect`, e.g. an mt5sim RemoteMT5 factory)."""
    return MT5Broker(
        connect=connect or module_from_settings(settings),
        clock=clock,
        server_time=account.server_time or "utc",
        symbol_suffix=account.symbol_suffix or "",
        login=int(account.login) if account.login else None,
        password=resolve_secret(account.password_ref),
        server=account.server,
        allow_live=bool(settings.allow_live),
        max_volume=account.max_volume,
    )
