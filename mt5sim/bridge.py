"""The simulator behind the real mt5linux bridge: an RPyC classic server (what `python -m mt5linux` runs beside a
terminal under Wine) in whose process `import MetaTrader5` gives the simulator, so the unmodified mt5linux client
drives it over the real wire.

Test hooks ride the same classic connection (the bridge runs whatever it is sent, as the real one does):
`rpyc.classic.connect(host, port).modules["mt5sim.bridge"].control.advance(60)`, or through the mt5linux client
`mt5.execute("import mt5sim.bridge as sim")` then `mt5.eval("sim.control.inject('lost_reply', ...)")`. `control` is
the process's one module session (a `SimulatedMT5`: advance, advance_to, step, now, inject, reconnect,
set_algo_trading, set_symbol, set_account, state); `terminal` is the `Terminal` behind it.
"""

from __future__ import annotations

import signal
import sys
import threading
import types
from collections.abc import Callable

from mt5sim.module import VERSION, SimulatedMT5
from mt5sim.records import RECORD_TYPES, Constants
from mt5sim.server import MT5_FUNCTIONS, run_clock
from mt5sim.state import Terminal

MODULE_NAME = "MetaTrader5"

control: SimulatedMT5 | None = None
terminal: Terminal | None = None


def as_module(session: SimulatedMT5) -> types.ModuleType:
    """A module object named MetaTrader5 whose functions are `session`'s and whose constants are the module's.

    One session for the whole process, as the real module is one per Python process: every bridge connection shares
    its initialize() state and its one global last_error(), and a shutdown() from one client ends it for all.
    """
    module = types.ModuleType(MODULE_NAME, "The MetaTrader5 module, simulated by mt5sim (no terminal behind it).")
    for name in dir(Constants):
        if name.isupper():
            setattr(module, name, getattr(Constants, name))
    for name in MT5_FUNCTIONS:
        setattr(module, name, getattr(session, name))
    for name, record in RECORD_TYPES.items():
        setattr(module, name, record)
    module.__version__ = f"5.0.{VERSION[1]}"
    module.__author__ = "MetaQuotes Ltd. (simulated by mt5sim)"
    return module


def install(term: Terminal) -> SimulatedMT5:
    """Make `import MetaTrader5` in this process give the simulator on `term`; return its session (the test hooks)."""
    global control, terminal
    session = SimulatedMT5(terminal=term)
    sys.modules[MODULE_NAME] = as_module(session)
    control, terminal = session, term
    return session


def serve(term: Terminal, *, host: str = "127.0.0.1", port: int = 18812, speed: float = 1.0,
          on_ready: Callable[[str, int], None] | None = None, sync_request_timeout: float = 300.0) -> None:
    """Serve the classic RPyC service (rpyc's SlaveService, as `python -m mt5linux` does) until SIGTERM or Ctrl-C.

    The clock runs `speed` times real time from the terminal's start (0: it moves only through the test hooks).
    `on_ready(host, port)` is called once the port is listening (port 0 picks a free one).
    """
    from rpyc.core import SlaveService
    from rpyc.utils.server import ThreadedServer

    install(term)
    server = ThreadedServer(SlaveService, hostname=host, port=port, reuse_addr=True,
                            protocol_config={"sync_request_timeout": sync_request_timeout})
    stop = threading.Event()

    def terminate(signum, frame):  # noqa: ARG001
        raise SystemExit(0)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        server._listen()  # bind and listen now, so the ready line is true when it is printed (start() listens too)
        if speed > 0:
            threading.Thread(target=run_clock, args=(term, speed, stop), name="mt5sim-clock", daemon=True).start()
        if on_ready is not None:
            on_ready(host, server.port)
        server.start()
    finally:
        stop.set()
        server.close()
        signal.signal(signal.SIGTERM, previous)
