"""The MT5 executor as its own OS process (`scalper serve executor`), killed mid-order and restarted: it reaches the
terminal through the real mt5linux client and the bridge's RPyC wire (`scalper sim mt5`, another process whose state
outlives a killed executor), and the bus through RabbitMQ, exactly as a deployment does; its tables are a SQLite file.

Not a live terminal: the far side of the bridge is mt5sim, which follows ../shared/reference/mt5-and-rabbitmq.md
section 1. Its faults are set over the same bridge connection (`mt5sim.bridge.control`).
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import rpyc

from shared.bus import create_bus, topology
from shared.bus.base import QueueSpec
from shared.messages import ExecutorCommand, Message, OrderIntent
from tests.distributed import cluster as kit
from tests.mt5sim.simdata import SYMBOL, flat
from tests.mt5sim.test_bridge import start_sim, stop
from tests.mt5sim.test_server import write_csv

pytestmark = [pytest.mark.services, pytest.mark.slow]

ACCOUNT = 1
wait_for = kit.eventually


class EventTap:
    """The test's end of the bus, on a loop of its own: publishes intents and commands, and records every event the
    executor publishes (ExecutionReport, PositionEvent) as JSON."""

    def __init__(self, url: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._bus = create_bus(url)
        self.events: list[tuple[str, dict]] = []
        self._run(self._start())

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    async def _start(self) -> None:
        await self._bus.start()
        # The account's queues exist before any executor consumes them, as decision's outbox makes sure they do.
        await self._bus.declare_queue(topology.executor_orders_queue(ACCOUNT))
        await self._bus.declare_queue(topology.executor_commands_queue(ACCOUNT))
        spec = QueueSpec(f"test.events.{uuid.uuid4().hex[:8]}", exclusive=True,
                         bindings=((topology.EXECUTION_EVENTS, "report.*"), (topology.EXECUTION_EVENTS, "position.*")))

        async def record(message: Message, delivery) -> None:
            self.events.append((message.type_name, message.model_dump(mode="json")))

        await self._bus.consume(spec, record)

    def send(self, message: Message) -> None:
        exchange = topology.EXECUTION_COMMANDS if isinstance(message, ExecutorCommand) else topology.EXECUTION_ORDERS
        self._run(self._bus.publish(message, exchange=exchange, routing_key=str(ACCOUNT)))

    def close(self) -> None:
        self._run(self._bus.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


class Stack:
    """The simulator behind the bridge, the executor process (restartable), the bus tap and the tables."""

    def __init__(self, tmp: Path, vhost: str) -> None:
        self.tmp = tmp
        now = datetime.now(UTC).replace(second=0, microsecond=0)
        data = write_csv(tmp / "XAUUSD_M1.csv", flat(600), start=now - timedelta(minutes=300))
        # --speed 1: the simulated terminal's clock runs with the wall clock, as a real terminal's does.
        self.sim = start_sim(tmp / "sim.err", "--data", str(data), "--data-time", "utc", "--symbol", "XAUUSD",
                             "--suffix", "m", "--server-time", "us_dst", "--start", now.isoformat(), "--speed", "1")
        self.proc: subprocess.Popen | None = None
        self.log = tmp / "executor.log"
        self.runs = 0
        self.bridge = self.tap = None
        try:
            self.bridge = rpyc.classic.connect("127.0.0.1", self.sim.port)
            self.mt5 = self.bridge.modules["mt5sim.bridge"].control  # the session the executor's client shares
            assert self.mt5.initialize(), self.mt5.last_error()
            assert self.mt5.symbol_select(SYMBOL, True)
            self.db = tmp / "executor.db"
            self.bus_url = kit.amqp_url(vhost)
            self._make_tables()
            self.tap = EventTap(self.bus_url)
        except BaseException:
            self.close()  # the simulator process must not outlive a failed set-up
            raise

    def _make_tables(self) -> None:
        env = {**kit.base_env(bus_url="memory://", database_url=f"sqlite+aiosqlite:///{self.db}", feed="synthetic",
                              clock_start=datetime.now(UTC), speed=1)}
        subprocess.run([str(kit.SCALPER), "db", "upgrade"], env=env, check=True, capture_output=True, timeout=120)
        with sqlite3.connect(self.db) as c:
            c.execute("INSERT INTO users (id, name, is_admin, created_at) VALUES (1, 'trader', 0, '2026-01-01 00:00:00')")
            c.execute("INSERT INTO broker_accounts (id, user_id, name, broker, server_time, symbol_suffix, margin_mode, currency, "
                      "is_demo, is_active, leverage, created_at) VALUES (1, 1, 'sim', 'mt5', 'us_dst', 'm', 'hedging', 'USD', 1, "
                      "1, 100, '2026-01-01 00:00:00')")

    def start(self) -> None:
        self.runs += 1
        self.log = self.tmp / f"executor.{self.runs}.log"
        env = kit.base_env(bus_url=self.bus_url, database_url=f"sqlite+aiosqlite:///{self.db}", feed="mt5",
                           clock_start=datetime.now(UTC), speed=1, mt5_host="127.0.0.1", mt5_port=str(self.sim.port),
                           monitor_interval_s="0.5", log_format="text")
        for pinned in ("SCALPER_CLOCK_START", "SCALPER_CLOCK_ANCHOR", "SCALPER_SPEED"):
            env.pop(pinned)  # the mt5 feed's clock: the terminal's, in real time
        with self.log.open("w") as out:
            self.proc = subprocess.Popen([str(kit.SCALPER), "serve", "executor", "--port", str(kit.free_port()),
                                          "--account-id", str(ACCOUNT)], env=env, stdout=out, stderr=subprocess.STDOUT)
        wait_for(lambda: "executor started" in self.log.read_text() or self.proc.poll() is not None, timeout=60,
                 what="executor start")
        assert self.proc.poll() is None, self.log.read_text()

    def kill(self, sig=signal.SIGKILL) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)

    def terminate(self) -> None:
        """SIGTERM: a graceful stop (uvicorn re-raises the signal once the app has shut down, hence -15)."""
        assert self.kill(signal.SIGTERM) in (0, -signal.SIGTERM)
        assert "executor stopped" in self.log.read_text(), self.log.read_text()[-3000:]

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
        if self.tap is not None:
            self.tap.close()
        if self.bridge is not None:
            self.bridge.close()
        stop(self.sim.proc)

    def send(self, message: Message) -> None:
        self.tap.send(message)

    def events(self, type_name: str | None = None) -> list[dict]:
        return [body for kind, body in list(self.tap.events) if type_name is None or kind == type_name]

    def reports(self, cid: str) -> list[dict]:
        return [e for e in self.events("ExecutionReport") if e["client_order_id"] == cid]

    def order_status(self, cid: str) -> str | None:
        with sqlite3.connect(self.db) as c:
            row = c.execute("SELECT status FROM orders WHERE client_order_id = ?", (cid,)).fetchone()
        return row[0] if row else None

    def sim_positions(self, cid: str | None = None):
        return [p for p in (self.mt5.positions_get() or ()) if cid is None or p.comment == cid]


@pytest.fixture
def stack(tmp_path, vhost) -> Iterator[Stack]:
    s = Stack(tmp_path, vhost)
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
                       expires_at=now + timedelta(seconds=ttl_s), produced_at=now, entry=2000.0)


def assert_exactly_once(stack: Stack, cid: str) -> None:
    wait_for(lambda: stack.reports(cid), timeout=60, what=f"report of {cid}")
    (pos,) = stack.sim_positions(cid)
    # The intent left unacked by the kill is redelivered after the restart, and the executor answers every repeat
    # (a lost report must be recoverable): the same report again, under the same message id, which decision applies
    # once. One order, one position, one answer.
    reports = stack.reports(cid)
    assert len({r["message_id"] for r in reports}) == 1, reports
    assert {(r["status"], r["ticket"]) for r in reports} == {("filled", pos.ticket)}
    assert stack.order_status(cid) == "filled"
    opened = [e for e in stack.events("PositionEvent") if e["kind"] == "opened" and e["client_order_id"] == cid]
    assert len(opened) == 1


def test_killed_between_sending_and_the_brokers_answer(stack):
    stack.start()
    stack.mt5.inject("order_send_lost", placed=True, delay_s=60)  # the terminal executes it; the answer hangs
    message = intent()
    stack.send(message)
    wait_for(lambda: stack.order_status(message.client_order_id) == "sending" and stack.sim_positions(message.client_order_id),
             timeout=60, what="order recorded as sending and placed at the terminal")
    stack.kill()
    assert stack.order_status(message.client_order_id) == "sending" and stack.reports(message.client_order_id) == []

    stack.start()
    assert_exactly_once(stack, message.client_order_id)


def test_killed_after_the_broker_filled_but_before_the_report_was_written(stack):
    stack.start()
    stack.mt5.inject("order_send_lost", placed=True, delay_s=1.0)
    message = intent()
    stack.send(message)
    wait_for(lambda: stack.order_status(message.client_order_id) == "sending", timeout=60, what="order recorded as sending")
    # Hold the database so the executor cannot write what it learns from the broker.
    lock = sqlite3.connect(stack.db, timeout=30)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        wait_for(lambda: "outcome unknown: reconciling" in stack.log.read_text(), timeout=60, what="the executor asking the broker")
        wait_for(lambda: stack.sim_positions(message.client_order_id), timeout=60, what="the fill at the terminal")
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
    wait_for(lambda: stack.order_status(message.client_order_id) == "sending", timeout=60, what="order recorded as sending")
    wait_for(lambda: stack.mt5.state()["faults"]["calls"] == 0, timeout=60, what="the executor inside order_send")
    stack.kill()
    assert stack.sim_positions(message.client_order_id) == []
    stack.start()
    assert_exactly_once(stack, message.client_order_id)


def test_sigterm_finishes_the_call_in_flight_and_leaves_nothing_in_sending(stack):
    stack.start()
    stack.mt5.inject("order_send_lost", placed=True, delay_s=2.0)
    message = intent()
    stack.send(message)
    wait_for(lambda: stack.order_status(message.client_order_id) == "sending", timeout=60, what="order recorded as sending")
    stack.terminate()
    assert stack.order_status(message.client_order_id) == "filled"
    with sqlite3.connect(stack.db) as c:
        assert c.execute("SELECT count(*) FROM orders WHERE status = 'sending'").fetchone()[0] == 0
    wait_for(lambda: stack.reports(message.client_order_id), timeout=10, what="its report")
    assert [r["status"] for r in stack.reports(message.client_order_id)] == ["filled"]


def test_kill_switch_and_positions_opened_outside_the_engine(stack):
    by_hand = stack.mt5.order_send({"action": 1, "symbol": SYMBOL, "volume": 0.3, "type": 1, "type_filling": 0, "magic": 0,
                                    "comment": "manual"})
    assert by_hand.retcode == 10009
    stack.start()
    wait_for(lambda: [e for e in stack.events("PositionEvent") if e["ticket"] == by_hand.order], timeout=60, what="external reported")
    [external] = [e for e in stack.events("PositionEvent") if e["ticket"] == by_hand.order]
    assert (external["kind"], external["bot_id"], external["volume"]) == ("opened", None, 0.3)

    first, second = intent(), intent()
    stack.send(first)
    stack.send(second)
    wait_for(lambda: stack.reports(second.client_order_id), timeout=60, what="two fills")
    stack.send(ExecutorCommand(command="close_all", account_id=ACCOUNT, bot_id=7, reason="kill_switch"))
    wait_for(lambda: len([e for e in stack.events("PositionEvent") if e["kind"] == "closed"]) == 2, timeout=60, what="both closes")
    closes = [e for e in stack.events("PositionEvent") if e["kind"] == "closed"]
    assert sorted(c["client_order_id"] for c in closes) == sorted([first.client_order_id, second.client_order_id])
    assert {c["close_reason"] for c in closes} == {"kill_switch"}
    assert [p.ticket for p in stack.sim_positions()] == [by_hand.order]  # untouched

    refused = intent()
    stack.send(refused)
    wait_for(lambda: stack.reports(refused.client_order_id), timeout=60, what="refusal")
    assert [(r["status"], r["reason"]) for r in stack.reports(refused.client_order_id)] == [("rejected", "bot_killed")]

    stack.terminate()
    stack.start()  # the block survives the restart
    still = intent()
    stack.send(still)
    wait_for(lambda: stack.reports(still.client_order_id), timeout=60, what="refusal after restart")
    assert stack.reports(still.client_order_id)[0]["reason"] == "bot_killed"

    stack.send(ExecutorCommand(command="resume_bot", account_id=ACCOUNT, bot_id=7))

    def blocks() -> int:
        with sqlite3.connect(stack.db) as c:
            return c.execute("SELECT count(*) FROM bot_blocks").fetchone()[0]

    wait_for(lambda: blocks() == 0, timeout=60, what="the block lifted")  # commands and orders are separate queues
    again = intent()
    stack.send(again)
    wait_for(lambda: stack.reports(again.client_order_id), timeout=60, what="fill after resume")
    assert stack.reports(again.client_order_id)[0]["status"] == "filled"
    assert len(stack.sim_positions()) == 2
