"""Faults a test can inject into the simulated terminal: IPC errors, lost or misleading order_send answers, a dropped link."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mt5sim.records import ERROR_TEXTS, RETCODE_COMMENTS

if TYPE_CHECKING:
    from mt5sim.state import Terminal

# What `inject(kind, **kwargs)` accepts: the public methods below, by name.
FAULT_KINDS = (
    "fail_call",
    "fail_initialize",
    "order_send_answer",
    "order_send_lost",
    "order_send_partial",
    "drop_connection",
    "algo_trading_off",
    "clear",
)


@dataclass
class CallFault:
    """A call that answers None (False for initialize) with `last_error() == (code, message)`."""

    name: str
    code: int
    message: str
    delay_s: float
    times: int


@dataclass
class SendFault:
    """How the next order_send answers: `answer` a retcode, `lost` (None), or `partial` (10010 for `volume`).

    `placed` says whether the trade server executed the order although the answer says otherwise.
    """

    kind: str
    retcode: int
    placed: bool
    code: int
    message: str
    delay_s: float
    volume: float
    times: int


class Faults:
    """The queue of pending faults; each is used up by the calls it hits (`times`)."""

    def __init__(self, terminal: Terminal) -> None:
        self._terminal = terminal
        self._lock = threading.Lock()
        self._calls: list[CallFault] = []
        self._initialize: list[CallFault] = []
        self._sends: list[SendFault] = []

    def fail_call(self, name: str = "*", *, code: int = -10004, message: str | None = None, times: int = 1, delay_s: float = 0.0) -> None:
        """Make the next `times` calls of `name` (`*`: any call but last_error) fail with an IPC error.

        Reference: -10004 "No IPC connection", -10005 IPC timeout (real terminals answer it after ~60 s:
        `delay_s` stands for that wait).
        """
        with self._lock:
            self._calls.append(CallFault(name, code, message or ERROR_TEXTS.get(code, "Terminal: Call failed"), delay_s, times))

    def fail_initialize(self, *, code: int = -10003, message: str | None = None, times: int = 1) -> None:
        """Make the next `times` initialize() calls return False (reference: -10003 terminal not found, -6 auth failed)."""
        with self._lock:
            self._initialize.append(CallFault("initialize", code, message or ERROR_TEXTS.get(code, "Terminal: Call failed"), 0.0, times))

    def order_send_answer(self, retcode: int, *, placed: bool = False, times: int = 1) -> None:
        """Make the next order_send answer `retcode`: 10004 requote and 10020 price changed with nothing placed,
        or 10031 CONNECTION with `placed=True`: the position and deals exist although the answer says no
        (reference section 1, "outcome unknown": reconcile before any resend)."""
        with self._lock:
            self._sends.append(SendFault("answer", retcode, placed, 1, "", 0.0, 0.0, times))

    def order_send_lost(self, *, placed: bool = True, code: int = -10005, message: str | None = None, delay_s: float = 0.0, times: int = 1) -> None:
        """Make the next order_send return None, as a bridge timeout does, after executing the order when `placed`."""
        with self._lock:
            text = message or ERROR_TEXTS.get(code, "Terminal: Call failed")
            self._sends.append(SendFault("lost", 0, placed, code, text, delay_s, 0.0, times))

    def order_send_partial(self, volume: float, *, times: int = 1) -> None:
        """Make the next market order fill only `volume` lots and answer 10010 DONE_PARTIAL."""
        with self._lock:
            self._sends.append(SendFault("partial", 10010, True, 1, RETCODE_COMMENTS[10010], 0.0, float(volume), times))

    def drop_connection(self) -> None:
        """Drop the terminal link: every call fails with -10004 until `reconnect()` and a fresh initialize()."""
        self._terminal.drop_connection()

    def algo_trading_off(self) -> None:
        """Switch the terminal's Algo Trading button off: trade requests answer 10027 (reference, retry policy)."""
        self._terminal.set_algo_trading(False)

    def clear(self) -> None:
        with self._lock:
            self._calls.clear()
            self._initialize.clear()
            self._sends.clear()

    def take_call(self, name: str) -> CallFault | None:
        with self._lock:
            return _take(self._calls, lambda f: f.name in ("*", name))

    def take_initialize(self) -> CallFault | None:
        with self._lock:
            return _take(self._initialize, lambda f: True)

    def take_order_send(self) -> SendFault | None:
        with self._lock:
            return _take(self._sends, lambda f: True)

    def pending(self) -> dict[str, int]:
        with self._lock:
            return {"calls": len(self._calls), "initialize": len(self._initialize), "order_send": len(self._sends)}


def _take(queue: list, matches):
    for i, fault in enumerate(queue):
        if matches(fault):
            fault.times -= 1
            if fault.times <= 0:
                del queue[i]
            return fault
    return None
