"""The simulator as its own process: state outlives a killed client, and types survive the wire."""

from __future__ import annotations

import selectors
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from mt5sim.records import RATES_DTYPE, AccountInfo, OrderSendResult, TradePosition
from mt5sim.server import RemoteMT5
from tests.mt5sim.simdata import START, SYMBOL, flat

REPO = Path(__file__).resolve().parents[2]


def write_csv(path: Path, rows, start: datetime = START) -> Path:
    """An MT5 rates export (`time,open,high,low,close,tick_volume,spread,real_volume`)."""
    lines = ["time,open,high,low,close,tick_volume,spread,real_volume"]
    for i, (o, h, lo, c) in enumerate(rows):
        stamp = (start + timedelta(minutes=i)).strftime("%Y-%m-%d %H:%M:%S")
        lines.append(f"{stamp},{o},{h},{lo},{c},100,10,0")
    path.write_text("\n".join(lines) + "\n")
    return path


def start_server(log: Path, *args: str) -> tuple[subprocess.Popen, int]:
    """Start `python -m mt5sim.server ARGS`; return it and the port from its first line. Its stderr goes to `log`."""
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "mt5sim.server", *args], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=err, text=True)
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout=30):
            stop(proc)
            pytest.fail("the simulator server did not start within 30 s")
    line = proc.stdout.readline()
    if not line.startswith("mt5sim listening on 127.0.0.1:"):
        stop(proc)
        pytest.fail(f"unexpected start line {line!r}; stderr: {log.read_text()}")
    return proc, int(line.rsplit(":", 1)[1])


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    if proc.stdout:
        proc.stdout.close()


@pytest.fixture
def server(tmp_path) -> Iterator[int]:
    data = write_csv(tmp_path / "XAUUSD_M1.csv", flat(300))
    start = (START + timedelta(minutes=100)).isoformat()
    proc, port = start_server(tmp_path / "server.err", "--port", "0", "--data", str(data), "--symbol", "XAUUSD", "--suffix", "m",
                              "--server-time", "us_dst", "--start", start)
    try:
        yield port
    finally:
        stop(proc)


@pytest.fixture
def client(server) -> Iterator[RemoteMT5]:
    mt5 = RemoteMT5("127.0.0.1", server, timeout=10)
    assert mt5.initialize(), mt5.last_error()
    assert mt5.symbol_select(SYMBOL, True)
    yield mt5
    mt5.close()


CLIENT_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from mt5sim.server import RemoteMT5
    mt5 = RemoteMT5("127.0.0.1", int(sys.argv[1]))
    assert mt5.initialize() and mt5.symbol_select("XAUUSDm")
    r = mt5.order_send({"action": mt5.TRADE_ACTION_DEAL, "symbol": "XAUUSDm", "volume": 0.2, "type": mt5.ORDER_TYPE_BUY,
                        "type_filling": mt5.ORDER_FILLING_FOK, "magic": 9, "comment": "c-killed"})
    print(r.retcode, r.order, flush=True)
    time.sleep(600)
    """
)


def test_positions_outlive_a_killed_client(server):
    executor = subprocess.Popen([sys.executable, "-c", CLIENT_SCRIPT, str(server)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        retcode, ticket = map(int, executor.stdout.readline().split())
        assert retcode == 10009
    finally:
        executor.send_signal(signal.SIGKILL)
        executor.wait(timeout=5)
        executor.stdout.close()
    with RemoteMT5("127.0.0.1", server, timeout=10) as fresh:
        assert fresh.positions_get() is None  # a new process starts uninitialised
        assert fresh.last_error() == (-10004, "No IPC connection")
        assert fresh.initialize()
        (pos,) = fresh.positions_get()
        assert isinstance(pos, TradePosition)
        assert (pos.ticket, pos.volume, pos.magic, pos.comment) == (ticket, 0.2, 9, "c-killed")


def test_types_arrive_as_the_module_gives_them(client):
    bars = client.copy_rates_from_pos(SYMBOL, client.TIMEFRAME_M1, 1, 5)
    assert isinstance(bars, np.ndarray) and bars.dtype == RATES_DTYPE and len(bars) == 5
    assert int(bars["time"][-1]) == int(datetime(2025, 7, 1, 16, 39, tzinfo=UTC).timestamp())  # server time, us_dst
    acc = client.account_info()
    assert isinstance(acc, AccountInfo) and acc._asdict()["balance"] == 10_000.0
    assert client.symbol_info("XAUUSD") is None and client.last_error() == (-4, "Terminal: Not found")
    assert [s.name for s in client.symbols_get(group="*XAUUSD*")] == [SYMBOL]
    assert client.positions_get() == () and client.ORDER_FILLING_RETURN == 2
    result = client.order_send({"action": 1, "symbol": SYMBOL, "volume": 0.1, "type": 0, "comment": "c-1"})
    assert isinstance(result, OrderSendResult) and type(result.request).__name__ == "TradeRequest"
    assert result.retcode == 10009 and result.request.comment == "c-1"


@pytest.mark.parametrize("volume", [Decimal("0.1"), np.float64(0.1)])
def test_non_plain_values_are_refused_across_the_bridge(client, volume):
    assert client.order_send({"action": 1, "symbol": SYMBOL, "volume": volume, "type": 0}) is None
    assert client.last_error() == (-2, 'Invalid "volume" argument')


def test_controls_over_the_wire(client):
    client.inject("order_send_answer", retcode=10031, placed=True)
    result = client.order_send({"action": 1, "symbol": SYMBOL, "volume": 0.1, "type": 0, "comment": "c-31", "sl": 1999.0})
    assert result.retcode == 10031
    assert [p.comment for p in client.positions_get()] == ["c-31"]
    state = client.state()
    assert state["positions"][0]["comment"] == "c-31" and state["account"]["balance"] == 10_000.0
    client.advance(20)  # the bar's low (1999.50) does not reach the stop
    client.step(1)
    assert client.now() == START + timedelta(minutes=101)
    with pytest.raises(ValueError):
        client.inject("meteor_strike")
    with pytest.raises(AttributeError):
        client._call("__init__")


def test_a_slow_answer_times_out_the_client(server):
    with RemoteMT5("127.0.0.1", server, timeout=10) as control:
        control.inject("fail_call", name="positions_get", code=-10005, delay_s=1.0)
    slow = RemoteMT5("127.0.0.1", server, timeout=0.2)
    assert slow.initialize()
    with pytest.raises(TimeoutError):
        slow.positions_get()
    with pytest.raises(ConnectionError):
        slow.positions_get()  # the connection is closed after a timeout


def test_the_server_binds_127_0_0_1_only(server):
    socket.create_connection(("127.0.0.1", server), timeout=2).close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.2", server), timeout=2).close()


@pytest.mark.data
def test_server_on_the_real_gold_file(gold_file, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc, bound = start_server(tmp_path / "server.err", "--port", str(port), "--data", str(gold_file), "--data-time", "us_dst", "--suffix", "m",
                               "--server-time", "us_dst", "--start", "2026-04-01T12:00:00Z", "--margin-mode", "netting",
                               "--select", "XAUUSD")
    try:
        assert bound == port
        with RemoteMT5("127.0.0.1", port, timeout=10) as mt5:
            assert mt5.initialize()
            assert mt5.account_info().margin_mode == 0
            bars = mt5.copy_rates_from_pos(SYMBOL, mt5.TIMEFRAME_M1, 1, 100)
            assert len(bars) == 100
            assert int(bars["time"][-1]) == int(datetime(2026, 4, 1, 14, 59, tzinfo=UTC).timestamp())
    finally:
        stop(proc)
