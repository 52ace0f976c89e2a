"""The executor as its own OS process (python -m services.executor) against the MT5 simulator as another process
(python -m mt5sim.server, whose state outlives a killed executor) and a SQLite file. The bus between the test and the
executor is the spool bus (JSON-lines inbox/outbox with acks: the in-memory bus cannot cross processes).

Not a live terminal: the MT5 side is mt5sim, which follows ../shared/reference/mt5-and-rabbitmq.md section 1.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mt5sim.server import RemoteMT5
from services.executor.spool import append_line, inbox_line
from shared.bus import topology
from shared.messages import ExecutorCommand, OrderIntent
from tests.mt5sim.test_server import start_server, stop, write_csv
from tests.mt5sim.simdata import SYMBOL, flat

REPO = Path(__file__).resolve().parents[2]
ACCOUNT = 1
ORDERS_Q = topology.executor_orders_queue(ACCOUNT).name
COMMANDS_Q = topology.executor_commands_queue(ACCOUNT).name


def wait_for(predicate, *, timeout: float = 60.0, what: str = "condition"):
    """Poll `predicate` until truthy (the processes run on their own: no sleeping and hoping)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s (last value {value!r})")
        time.sleep(0.05)


class Stack:
    """The simulator server, the executor process (restartable) and their files."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        now = datetime.now(UTC).replace(second=0, microsecond=0)
        data = write_csv(tmp / "XAUUSD_M1.csv", flat(600), start=now - timedelta(minutes=300))
        # --speed 1: the simulated terminal's clock runs with the wall clock, as a real terminal's does.
        self.sim_proc, self.port = start_server(tmp / "sim.err", "--port", "0", "--data", str(data), "--symbol", "XAUUSD",
                                                "--suffix", "m", "--server-time", "us_dst", "--start", datetime.now(UTC).isoformat(),
                                                "--speed", "1")
        self.mt5 = RemoteMT5("127.0.0.1", self.port, timeout=30)
        assert self.mt5.initialize(), self.mt5.last_error()
        assert self.mt5.symbol_select(SYMBOL, True)
        self.db = tmp / "executor.db"
        self.inbox, self.outbox = tmp / "inbox.jsonl", tmp / "outbox.jsonl"
        self.proc: subprocess.Popen | None = None
        self.log = tmp / "executor.log"
        self.runs = 0

    def start(self) -> None:
        self.runs += 1
        log = (self.tmp / f"executor.{self.runs}.log").open("w")
        self.log = Path(log.name)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.executor", "--account-id", str(ACCOUNT), "--database-url", f"sqlite+aiosqlite:///{self.db}",
             "--mt5-sim-port", str(self.port), "--server-time", "us_dst", "--suffix", "m", "--inbox", str(self.inbox),
             "--outbox", str(self.outbox), "--monitor-interval-s", "0.5"],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True,
        )
        wait_for(lambda: "executor ready" in self.log.read_text() or self.proc.poll() is not None, what="executor start")
        assert self.proc.poll() is None, self.log.read_text()

    def kill(self, sig=signal.SIGKILL) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
        self.mt5.close()
        stop(self.sim_proc)

    # --- the bus files -------------------------------------------------------------------------------------

    def send(self, message, queue: str = ORDERS_Q) -> None:
        append_line(self.inbox, inbox_line(queue, message))

    def events(self, type_name: str | None = None) -> list[dict]:
        if not self.outbox.exists():
            return []
        out = [json.loads(line) for line in self.outbox.read_text().splitlines() if line.strip()]
        return [e for e in out if type_name is None or e["type"] == type_name]

    def reports(self, cid: str) -> list[dict]:
        return [e["body"] for e in self.events("ExecutionReport") if e["body"]["client_order_id"] == cid]

    def order_status(self, cid: str) -> str | None:
        with sqlite3.connect(self.db) as c:
            row = c.execute("SELECT status FROM orders WHERE client_order_id = ?", (cid,)).fetchone()
        return row[0] if row else None

    def sim_positions(self, cid: str | None = None):
        return [p for p in self.mt5.positions_get() if cid is None or p.comment == cid]


@pytest.fixture
def stack(tmp_path) -> Iterator[Stack]:
    s = Stack(tmp_path)
    try:
        yield s
    finally:
        s.close()


_n = iter(range(1, 10_000))


def intent(*, bot_id: int = 7, side: str = "buy", ttl_s: float = 120.0) -> OrderIntent:
    n = next(_n)
    cid = f"p{bot_id}-{n}-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    return OrderIntent(client_order_id=cid, decision_id=n + 1000 * bot_id, signal_id=uuid.uuid4(), bot_id=bot_id, account_id=ACCOUNT,
                       symbol=SYMBOL, side=side, volume=0.1, sl=1990.0 if side == "buy" else 2010.0,
                       tp=2010.0 if side == "buy" else 1990.0, magic=100_000 + bot_id, comment=cid,
                       expires_at=now + timedelta(seconds=ttl_s), produced_at=now)


def assert_exactly_once(stack: Stack, cid: str) -> None:
    wait_for(lambda: stack.reports(cid), what=f"report of {cid}")
    (pos,) = stack.sim_positions(cid)
    [report] = stack.reports(cid)  # published once
    assert (report["status"], report["ticket"]) == ("filled", pos.ticket)
    assert stack.order_status(cid) == "filled"
    opened = [e for e in stack.events("PositionEvent") if e["body"]["kind"] == "opened" and e["body"]["client_order_id"] == cid]
    assert len(opened) == 1


def test_killed_between_sending_and_the_brokers_answer(stack):
    stack.start()
    stack.mt5.inject("order_send_lost", placed=True, delay_s=60)  # the terminal executes it; the answer hangs
    message = intent()
    stack.send(message)
    wait_for(lambda: stack.order_status(message.client_order_id) == "sending" and stack.sim_positions(message.client_order_id),
             what="order recorded as sending and placed at the terminal")
    stack.kill()
    assert stack.order_status(message.client_order_id) == "sending" and stack.reports(message.client_order_id) == []

    stack.start()
    assert_exactly_once(stack, message.client_order_id)


def test_killed_after_the_broker_filled_but_before_the_report_was_written(stack):
    stack.start()
    stack.mt5.inject("order_send_lost", placed=True, delay_s=1.0)
    message = intent()
    stack.send(message)
    wait_for(lambda: stack.order_status(message.client_order_id) == "sending", what="order recorded as sending")
    # Hold the database so the executor cannot write what it learns from the broker.
    lock = sqlite3.connect(stack.db, timeout=30)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        wait_for(lambda: "outcome unknown: reconciling" in stack.log.read_text(), what="the executor asking the broker")
        wait_for(lambda: stack.sim_positions(message.client_order_id), what="the fill at the terminal")
        stack.kill()
    finally:
        lock.rollback()
        lock.close()
    assert stack.order_status(message.client_order_id) == "sending" and stack.reports(message.client_order_id) == []

    stack.start()
    assert_exactly_once(stack, message.client_order_id)


def test_an_order_that_never_reached_the_terminal_is_sent_once_after_a_restart(stack):
    stack.start()
    stack.mt5.inject("fail_call", name="order_send", code=-10005, delay_s=60)  # an IPC time-out; nothing placed
    message = intent()
    stack.send(message)
    wait_for(lambda: stack.order_status(message.client_order_id) == "sending", what="order recorded as sending")
    wait_for(lambda: stack.mt5.state()["faults"]["calls"] == 0, what="the executor inside order_send")
    stack.kill()
    assert stack.sim_positions(message.client_order_id) == []
    stack.start()
    assert_exactly_once(stack, message.client_order_id)


def test_sigterm_finishes_the_call_in_flight_and_leaves_nothing_in_sending(stack):
    stack.start()
    stack.mt5.inject("order_send_lost", placed=True, delay_s=2.0)
    message = intent()
    stack.send(message)
    wait_for(lambda: stack.order_status(message.client_order_id) == "sending", what="order recorded as sending")
    assert stack.kill(signal.SIGTERM) == 0
    assert stack.order_status(message.client_order_id) == "filled"
    with sqlite3.connect(stack.db) as c:
        assert c.execute("SELECT count(*) FROM orders WHERE status = 'sending'").fetchone()[0] == 0
    assert [r["status"] for r in stack.reports(message.client_order_id)] == ["filled"]


def test_kill_switch_and_positions_opened_outside_the_engine(stack):
    by_hand = stack.mt5.order_send({"action": 1, "symbol": SYMBOL, "volume": 0.3, "type": 1, "type_filling": 0, "magic": 0,
                                    "comment": "manual"})
    assert by_hand.retcode == 10009
    stack.start()
    wait_for(lambda: [e for e in stack.events("PositionEvent") if e["body"]["ticket"] == by_hand.order], what="external reported")
    [external] = [e["body"] for e in stack.events("PositionEvent") if e["body"]["ticket"] == by_hand.order]
    assert (external["kind"], external["bot_id"], external["volume"]) == ("opened", None, 0.3)

    first, second = intent(), intent()
    stack.send(first)
    stack.send(second)
    wait_for(lambda: stack.reports(second.client_order_id), what="two fills")
    stack.send(ExecutorCommand(command="close_all", account_id=ACCOUNT, bot_id=7, reason="kill_switch"), COMMANDS_Q)
    closes = wait_for(lambda: [e["body"] for e in stack.events("PositionEvent") if e["body"]["kind"] == "closed"] or None,
                      what="closes")
    wait_for(lambda: len([e for e in stack.events("PositionEvent") if e["body"]["kind"] == "closed"]) == 2, what="both closes")
    closes = [e["body"] for e in stack.events("PositionEvent") if e["body"]["kind"] == "closed"]
    assert sorted(c["client_order_id"] for c in closes) == sorted([first.client_order_id, second.client_order_id])
    assert {c["close_reason"] for c in closes} == {"kill_switch"}
    assert [p.ticket for p in stack.sim_positions()] == [by_hand.order]  # untouched

    refused = intent()
    stack.send(refused)
    wait_for(lambda: stack.reports(refused.client_order_id), what="refusal")
    assert [(r["status"], r["reason"]) for r in stack.reports(refused.client_order_id)] == [("rejected", "bot_killed")]

    assert stack.kill(signal.SIGTERM) == 0
    stack.start()  # the block survives the restart
    still = intent()
    stack.send(still)
    wait_for(lambda: stack.reports(still.client_order_id), what="refusal after restart")
    assert stack.reports(still.client_order_id)[0]["reason"] == "bot_killed"

    stack.send(ExecutorCommand(command="resume_bot", account_id=ACCOUNT, bot_id=7), COMMANDS_Q)

    def blocks() -> int:
        with sqlite3.connect(stack.db) as c:
            return c.execute("SELECT count(*) FROM bot_blocks").fetchone()[0]

    wait_for(lambda: blocks() == 0, what="the block lifted")  # commands and orders are separate queues
    again = intent()
    stack.send(again)
    wait_for(lambda: stack.reports(again.client_order_id), what="fill after resume")
    assert stack.reports(again.client_order_id)[0]["status"] == "filled"
    assert len(stack.sim_positions()) == 2
