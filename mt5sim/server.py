"""The simulator as its own process on 127.0.0.1 (its state outlives a killed client, as a terminal outlives a killed
executor) and `RemoteMT5`, the client that speaks the `MetaTrader5` module's functions and test controls to it."""

from __future__ import annotations

import argparse
import socket
import socketserver
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from mt5sim.module import SimulatedMT5
from mt5sim.records import Constants
from mt5sim.state import Terminal
from mt5sim.wire import decode, encode, recv_frame, send_frame

HOST = "127.0.0.1"  # never anything else: a bridge port must not be reachable from the network (ref, mt5linux)

# The MetaTrader5 module functions a client may call.
MT5_FUNCTIONS = (
    "initialize", "login", "shutdown", "version", "last_error", "terminal_info", "account_info", "symbols_total",
    "symbols_get", "symbol_info", "symbol_select", "symbol_info_tick", "copy_rates_from_pos", "copy_rates_from",
    "copy_rates_range", "order_check", "order_send", "order_calc_margin", "order_calc_profit", "positions_total",
    "positions_get", "orders_total", "orders_get", "history_orders_total", "history_orders_get",
    "history_deals_total", "history_deals_get",
)
# Test controls (not in the MetaTrader5 module).
CONTROLS = ("advance_to", "advance", "step", "now", "inject", "reconnect", "set_algo_trading", "set_symbol", "set_account", "state")


class _Handler(socketserver.BaseRequestHandler):
    """One client connection = one module session (its own initialize() and last_error) on the shared terminal."""

    def handle(self) -> None:
        session = SimulatedMT5(terminal=self.server.terminal)
        while True:
            try:
                message = recv_frame(self.request)
            except (ConnectionError, OSError):
                return
            if message is None:
                return
            name = message.get("name")
            try:
                if name not in MT5_FUNCTIONS and name not in CONTROLS:
                    raise AttributeError(f"the simulator has no function {name!r}")
                args, kwargs = decode(message.get("args", [])), decode(message.get("kwargs", {"__dict__": []}))
                reply = {"ok": True, "value": encode(getattr(session, name)(*args, **kwargs))}
            except Exception as e:  # the client re-raises it, as mt5linux re-raises remote exceptions
                reply = {"ok": False, "error": type(e).__name__, "message": str(e)}
            try:
                send_frame(self.request, reply)
            except OSError:
                return


class SimulatorServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, terminal: Terminal, port: int = 0) -> None:
        super().__init__((HOST, port), _Handler)
        self.terminal = terminal

    @property
    def port(self) -> int:
        return self.server_address[1]


_REMOTE_ERRORS = {"TypeError": TypeError, "ValueError": ValueError, "KeyError": KeyError, "AttributeError": AttributeError}


class RemoteMT5(Constants):
    """The `MetaTrader5` module's functions and constants over a connection to `mt5sim.server`.

    Rate arrays arrive as the same numpy structured arrays and records as the same namedtuples. A dead server
    raises ConnectionError; an answer slower than `timeout` raises TimeoutError and closes the connection.
    """

    def __init__(self, host: str = HOST, port: int = 18812, timeout: float = 300.0) -> None:
        self._sock: socket.socket | None = socket.create_connection((host, port), timeout=timeout)
        self._lock = threading.Lock()

    def _call(self, function: str, /, *args, **kwargs):
        with self._lock:
            if self._sock is None:
                raise ConnectionError("the connection to the simulator is closed")
            try:
                send_frame(self._sock, {"name": function, "args": encode(list(args)), "kwargs": encode(kwargs)})
                reply = recv_frame(self._sock)
            except (TimeoutError, OSError):
                self.close()
                raise
            if reply is None:
                self.close()
                raise ConnectionError("the simulator closed the connection")
        if not reply["ok"]:
            raise _REMOTE_ERRORS.get(reply["error"], RuntimeError)(reply["message"])
        return decode(reply["value"])

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def __enter__(self) -> RemoteMT5:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # Test controls, as on SimulatedMT5.
    def advance_to(self, when: datetime | float) -> None:
        self._call("advance_to", when)

    def advance(self, seconds: float) -> None:
        self._call("advance", seconds)

    def step(self, n_bars: int = 1, symbol: str | None = None) -> None:
        self._call("step", n_bars, symbol)

    def now(self) -> datetime:
        return self._call("now")

    def inject(self, kind: str, **kwargs) -> None:
        self._call("inject", kind, **kwargs)

    def reconnect(self) -> None:
        self._call("reconnect")

    def set_algo_trading(self, enabled: bool) -> None:
        self._call("set_algo_trading", enabled)

    def set_symbol(self, name: str, **changes) -> None:
        self._call("set_symbol", name, **changes)

    def set_account(self, **changes) -> None:
        self._call("set_account", **changes)

    def state(self) -> dict:
        return self._call("state")


def _remote_function(name: str):
    def call(self, *args, **kwargs):
        return self._call(name, *args, **kwargs)

    call.__name__ = name
    call.__doc__ = getattr(SimulatedMT5, name).__doc__
    return call


for _name in MT5_FUNCTIONS:
    setattr(RemoteMT5, _name, _remote_function(_name))


def run_clock(terminal: Terminal, speed: float, stop: threading.Event) -> None:
    """Move the simulated clock `speed` times faster than the wall clock (for running a stack against it)."""
    last = time.monotonic()
    while not stop.wait(0.1):
        now = time.monotonic()
        terminal.advance(max(0.0, (now - last) * speed))
        last = now


def _parse_start(text: str | None) -> datetime | None:
    if not text:
        return None
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def main(argv: list[str] | None = None) -> int:
    """python -m mt5sim.server --port 18812 --data ../shared/data/XAUUSD_M1.csv --symbol XAUUSD --suffix m
    --server-time us_dst --start 2026-04-01T10:00:00Z   (prints "mt5sim listening on 127.0.0.1:PORT" when ready)"""
    p = argparse.ArgumentParser(prog="python -m mt5sim.server", description=__doc__)
    p.add_argument("--port", type=int, default=18812, help="TCP port on 127.0.0.1 (0: pick a free one)")
    p.add_argument("--data", action="append", default=[], help="M1 file (repeat with --symbol for several symbols)")
    p.add_argument("--symbol", action="append", default=[], help="canonical symbol of each --data (default: file name up to '_')")
    p.add_argument("--data-time", default="utc", help="clock of the data files: utc, +2, us_dst (default utc)")
    p.add_argument("--suffix", default="", help="broker suffix, e.g. m for XAUUSDm")
    p.add_argument("--server-time", default="utc", help="the broker's server clock: utc, +2, us_dst")
    p.add_argument("--start", help="simulated start, ISO (UTC unless it says otherwise); default the first bar")
    p.add_argument("--margin-mode", default="hedging", choices=["netting", "hedging"])
    p.add_argument("--trade-mode", default="demo", choices=["demo", "contest", "real"])
    p.add_argument("--login", type=int, default=5_000_001)
    p.add_argument("--password", default=None)
    p.add_argument("--balance", type=float, default=10_000.0)
    p.add_argument("--leverage", type=int, default=100)
    p.add_argument("--stops-level", type=int, default=None, help="stops level in points for every symbol with data")
    p.add_argument("--select", action="append", default=[], help="symbols visible in Market Watch from the start")
    p.add_argument("--speed", type=float, default=0.0, help="advance the clock this many times real time (0: only by control calls)")
    args = p.parse_args(argv)

    symbols = args.symbol + [Path(d).name.split("_")[0] for d in args.data[len(args.symbol):]]
    bars = dict(zip(symbols, args.data, strict=False))
    overrides = {s: {"trade_stops_level": args.stops_level} for s in symbols} if args.stops_level is not None else None
    terminal = Terminal(bars, start=_parse_start(args.start), server_time=args.server_time, suffix=args.suffix,
                        symbols=overrides, selected=tuple(args.select), login=args.login, password=args.password,
                        balance=args.balance, leverage=args.leverage, trade_mode=args.trade_mode,
                        margin_mode=args.margin_mode, data_time=args.data_time)
    server = SimulatorServer(terminal, args.port)
    stop = threading.Event()
    if args.speed > 0:
        threading.Thread(target=run_clock, args=(terminal, args.speed, stop), daemon=True).start()
    print(f"mt5sim listening on {HOST}:{server.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
