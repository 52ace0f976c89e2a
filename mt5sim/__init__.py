"""A simulator of the `MetaTrader5` Python module, driven by M1 bars, for testing the executor's MT5 adapter.

`SimulatedMT5` runs in-process; `mt5sim.server` runs one terminal as its own process and `RemoteMT5` talks to it;
`mt5sim.bridge` (`scalper sim mt5`) serves it as the `MetaTrader5` module behind the mt5linux bridge's RPyC wire.
"""

from mt5sim.module import SimulatedMT5
from mt5sim.records import RATES_DTYPE, Constants
from mt5sim.server import RemoteMT5
from mt5sim.state import Terminal

__all__ = ["RATES_DTYPE", "Constants", "RemoteMT5", "SimulatedMT5", "Terminal"]
