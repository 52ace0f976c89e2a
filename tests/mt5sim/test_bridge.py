"""The simulator behind the real mt5linux bridge: `scalper sim mt5` as its own process, driven over RPyC by the
mt5linux client from PyPI, unmodified, and by MT5Broker built from the settings as a Linux user's executor is.

Not a live terminal: the far side is mt5sim (../shared/reference/mt5-and-rabbitmq.md section 1). What this proves is
the wire: the client's calls, rpyc's netrefs and obtained numpy arrays, and the adapter on top of them.
"""

from __future__ import annotations

import csv
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mt5sim.records import RATES_DTYPE

mt5linux = pytest.importorskip("mt5linux", reason="mt5linux is not installed (pip install -e '.[test]')")

from services.executor.brokers.base import BrokerUnavailable, OrderRequest  # noqa: E402
from services.executor.brokers.mt5 import MT5Broker, module_from_settings  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.timeutil import ManualClock  # noqa: E402

SCALPER = Path(sys.executable).with_name("scalper")
START = datetime(2026, 4, 1, 10, 0, tzinfo=UTC)  # a Wednesday inside the gold file; server clock us_dst = UTC+3
START_WALL = "2026-04-01 13:00:00"  # START on the broker's wall clock, as the file stamps it
LOGIN = 5_000_001
SYMBOL = "XAUUSDm"


@dataclass
class Sim:
    proc: subprocess.Popen
    port: int
    banner: str


def start_sim(log: Path, *args: str) -> Sim:
    """Run `scalper sim mt5 ARGS`; wait for its ready line (30 s at most) and return it with the port it names."""
    with log.open("w") as err:
        proc = subprocess.Popen([str(SCALPER), "sim", "mt5", "--port", "0", *args], stdout=subprocess.PIPE, stderr=err, text=True)
    lines: queue.Queue[str | None] = queue.Queue()
    # A thread reads the lines: a selector on a buffered text pipe misses a line already read into the buffer.
    threading.Thread(target=_read_lines, args=(proc, lines), daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + 30
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        if line.startswith("mt5 simulator ready on "):
            host, port = line.split(" on ", 1)[1].strip().rsplit(":", 1)
            assert host == "127.0.0.1", "the bridge must bind to localhost by default"
            return Sim(proc, int(port), "".join(seen))
    stop(proc)
    pytest.fail(f"`scalper sim mt5` printed no ready line within 30 s; stdout {seen!r}; stderr: {log.read_text()}")


def _read_lines(proc: subprocess.Popen, lines: queue.Queue) -> None:
    with proc.stdout:  # closed here, at the end of the output, once the process is gone
        for line in proc.stdout:
            lines.put(line)
    lines.put(None)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def sim_args(gold_file: Path, *extra: str) -> list[str]:
    return ["--data", str(gold_file), "--symbol", "XAUUSD", "--suffix", "m", "--server-time", "us_dst", *extra]


@pytest.fixture(scope="module")
def frozen(gold_file: Path, tmp_path_factory) -> Iterator[Sim]:
    """One simulator for the module, its clock still at START (--speed 0: only the test hooks move it)."""
    log = tmp_path_factory.mktemp("bridge") / "sim.log"
    sim = start_sim(log, *sim_args(gold_file, "--start", START.isoformat(), "--speed", "0"))
    yield sim
    stop(sim.proc)
    assert sim.proc.returncode in (0, -15), f"the simulator exited with {sim.proc.returncode}: {log.read_text()}"


@pytest.fixture
def mt5(frozen: Sim):
    """The mt5linux client from PyPI, unmodified, connected and initialised."""
    client = mt5linux.MetaTrader5(host="127.0.0.1", port=frozen.port)
    assert client.initialize(login=LOGIN), client.last_error()
    assert client.symbol_select(SYMBOL, True), client.last_error()
    return client


def file_rows(path: Path, *, before_wall: str, count: int) -> list[dict]:
    """The last `count` rows of the gold file stamped before `before_wall`, read with plain csv (not mt5sim's loader)."""
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["time"] < before_wall]
    return rows[-count:]


def wall_epoch(stamp: str) -> int:
    """A broker wall-clock stamp as MT5 stores it: the wall time read as if it were UTC."""
    return int(datetime.fromisoformat(stamp).replace(tzinfo=UTC).timestamp())


def cid() -> str:
    return "t" + uuid.uuid4().hex[:20]


# ---- the mt5linux client against the simulator ---------------------------------------------------------------


def test_the_ready_line_says_what_runs(frozen: Sim) -> None:
    assert "symbol XAUUSDm" in frozen.banner
    assert "clock 2026-04-01T10:00:00Z" in frozen.banner
    assert "speed x0" in frozen.banner


def test_connection_and_account_over_the_bridge(mt5) -> None:
    assert mt5.last_error() == (1, "Success")
    assert mt5.login(LOGIN) is True
    assert mt5.login(LOGIN + 1) is False
    assert mt5.last_error()[0] == -6  # auth failed, read back over the wire as a plain tuple
    assert mt5.login(LOGIN)
    version = mt5.version()
    assert version[0] == 500
    info = mt5.account_info()
    assert info.login == LOGIN and info.trade_mode == 0 and info.margin_mode == 2
    fields = info._asdict()
    assert fields["currency"] == "USD" and fields["balance"] > 0
    terminal = mt5.terminal_info()
    assert terminal.connected is True and terminal.trade_allowed is True


def test_symbols_resolve_with_the_suffix(mt5) -> None:
    assert mt5.symbol_info("XAUUSD") is None  # ref: on a suffix broker the bare name is not found
    assert mt5.last_error()[0] == -4
    names = [s.name for s in mt5.symbols_get(group="*XAUUSD*")]
    assert names == [SYMBOL]
    info = mt5.symbol_info(SYMBOL)
    assert (info.digits, info.point, info.visible) == (2, 0.01, True)
    assert info.ask > info.bid > 0
    # At START the forming bar has shown only its open tick: the bid is that bar's open in the file.
    (row,) = file_rows(mt5_data_file(), before_wall="2026-04-01 13:00:01", count=1)
    assert row["time"] == START_WALL
    assert info.bid == pytest.approx(float(row["open"]))


def mt5_data_file() -> Path:
    return Settings().data_dir / "XAUUSD_M1.csv"


def test_rates_arrive_as_numpy_arrays_in_server_time(mt5, gold_file: Path) -> None:
    rates = mt5.copy_rates_from_pos(SYMBOL, mt5.TIMEFRAME_M1, 1, 30)
    assert isinstance(rates, np.ndarray) and not type(rates).__module__.startswith("rpyc")  # obtained, by value
    assert rates.dtype == RATES_DTYPE
    expected = file_rows(gold_file, before_wall=START_WALL, count=30)
    assert len(rates) == 30
    assert rates["time"].tolist() == [wall_epoch(r["time"]) for r in expected]
    for field in ("open", "high", "low", "close"):
        assert rates[field].tolist() == pytest.approx([float(r[field]) for r in expected]), field
    assert rates["tick_volume"].tolist() == [int(r["tick_volume"]) for r in expected]
    # Position 0 is the still-forming bar: it opened at START.
    forming = mt5.copy_rates_from_pos(SYMBOL, mt5.TIMEFRAME_M1, 0, 1)
    assert forming["time"].tolist() == [wall_epoch(START_WALL)]


def test_orders_positions_and_deals_over_the_bridge(mt5) -> None:
    comment = cid()
    tick = mt5.symbol_info_tick(SYMBOL)
    request = {"action": mt5.TRADE_ACTION_DEAL, "symbol": SYMBOL, "volume": 0.1, "type": mt5.ORDER_TYPE_BUY,
               "price": tick.ask, "deviation": 20, "magic": 77, "comment": comment, "type_time": mt5.ORDER_TIME_GTC,
               "type_filling": mt5.ORDER_FILLING_FOK}
    check = mt5.order_check(request)
    assert check.retcode == 0, check
    result = mt5.order_send(request)
    assert result.retcode == 10009, result
    assert result.price == pytest.approx(tick.ask)
    assert result.request._asdict()["comment"] == comment
    (position,) = mt5.positions_get(ticket=result.order)
    assert (position.comment, position.magic, position.volume, position.type) == (comment, 77, 0.1, 0)
    assert any(p.comment == comment for p in mt5.positions_get(symbol=SYMBOL))
    # ref: history_deals_get(ticket=X) filters by the ORDER ticket.
    (deal,) = mt5.history_deals_get(ticket=result.order)
    assert (deal.entry, deal.comment, deal.price) == (0, comment, result.price)
    wall_now = datetime.fromisoformat(START_WALL)
    everything = mt5.history_deals_get(wall_now - timedelta(days=1), wall_now + timedelta(days=1))
    assert deal.ticket in [d.ticket for d in everything]


def test_a_refused_request_answers_none_with_last_error(mt5) -> None:
    tick = mt5.symbol_info_tick(SYMBOL)
    request = {"action": 1, "symbol": SYMBOL, "volume": 0.1, "type": 0, "price": tick.ask, "deviation": 20, "magic": 1,
               "comment": "x" * 40, "type_time": 0, "type_filling": 0}
    assert mt5.order_send(request) is None
    assert mt5.last_error()[0] == -2


def test_a_numpy_scalar_cannot_cross_the_bridge(mt5) -> None:
    """mt5linux sends the request as source text: numpy 2's repr `np.float64(0.1)` names nothing on the far side
    (why the adapter sends plain float/int)."""
    request = {"action": 1, "symbol": SYMBOL, "volume": np.float64(0.1), "type": 0, "price": 1.0, "deviation": 20,
               "magic": 1, "comment": "np", "type_time": 0, "type_filling": 0}
    with pytest.raises(NameError):
        mt5.order_send(request)


def test_the_clock_stands_still_at_speed_zero(mt5) -> None:
    mt5.execute("import mt5sim.bridge as sim")
    first = mt5.eval("sim.terminal.now")
    time.sleep(0.3)  # long enough for a clock thread (0.1 s period) to have moved it, were there one
    assert mt5.eval("sim.terminal.now") == first == START.timestamp()


# ---- MT5Broker, built from the settings as on Linux -----------------------------------------------------------


def bridge_broker(monkeypatch, port: int, **options) -> MT5Broker:
    monkeypatch.setenv("SCALPER_MT5_HOST", "127.0.0.1")
    monkeypatch.setenv("SCALPER_MT5_PORT", str(port))
    connect = module_from_settings(Settings())
    return MT5Broker(connect=connect, clock=ManualClock(START), server_time="us_dst", symbol_suffix="m", login=LOGIN, **options)


async def test_mt5broker_trades_over_the_bridge(monkeypatch, frozen: Sim, gold_file: Path) -> None:
    broker = bridge_broker(monkeypatch, frozen.port)
    try:
        await broker.start()
        assert type(broker._mt5).__module__ == "mt5linux"  # the bridge client, not a local stand-in
        order = OrderRequest(client_order_id=cid(), symbol="XAUUSD", side="buy", volume=0.02, sl=None, tp=None, magic=4242)
        placed = await broker.place(order)
        assert placed.status == "filled", placed
        assert placed.volume == pytest.approx(0.02)
        assert placed.filled_at == START
        found = await broker.find_order(order.client_order_id, magic=4242)
        assert found is not None and found.ticket == placed.ticket and found.price == pytest.approx(placed.price)
        assert await broker.find_order(cid(), magic=4242) is None
        assert placed.ticket in [p.ticket for p in await broker.positions()]
        assert (await broker.account()).balance > 0

        bars = await broker.rates("XAUUSD", 5)
        expected = file_rows(gold_file, before_wall=START_WALL, count=5)
        # Server wall 12:55..12:59 (UTC+3 in April under us_dst) are 09:55..09:59 UTC.
        assert bars.time.tolist() == [int((START - timedelta(minutes=5 - i)).timestamp()) for i in range(5)]
        assert bars.close.tolist() == pytest.approx([float(r["close"]) for r in expected])

        closed = await broker.close(placed.ticket, "manual")
        assert closed is not None and closed.ticket == placed.ticket
        assert placed.ticket not in [p.ticket for p in await broker.positions()]
    finally:
        await broker.aclose()


async def test_a_lost_answer_over_the_bridge_is_found_by_comment(monkeypatch, frozen: Sim) -> None:
    """order_send answers None (an IPC time-out) although the order was executed: the adapter finds it, no resend."""
    broker = bridge_broker(monkeypatch, frozen.port)
    hooks = mt5linux.MetaTrader5(host="127.0.0.1", port=frozen.port)
    hooks.execute("import mt5sim.bridge as sim")
    try:
        await broker.start()
        order = OrderRequest(client_order_id=cid(), symbol="XAUUSD", side="sell", volume=0.01, sl=None, tp=None, magic=4343)
        hooks.eval("sim.control.inject('order_send_lost', placed=True)")
        placed = await broker.place(order)
        assert placed.status == "filled" and "found" in placed.reason, placed
        mine = [p for p in await broker.positions() if p.comment == order.client_order_id]
        assert len(mine) == 1 and mine[0].side == "sell"
    finally:
        await broker.aclose()


async def test_another_clients_shutdown_ends_the_session_for_all_and_the_broker_reopens_it(monkeypatch, frozen: Sim) -> None:
    """One bridge process holds one MetaTrader5 module: a shutdown() from any client (say a market-data feed on the
    same bridge) ends the session for every client. The broker sees the IPC error and opens it again."""
    broker = bridge_broker(monkeypatch, frozen.port, reconnect_max_wait_s=0.1)
    other = mt5linux.MetaTrader5(host="127.0.0.1", port=frozen.port)
    try:
        await broker.start()
        opened = broker.health.reconnects
        other.shutdown()
        assert other.account_info() is None and other.last_error()[0] == -10004
        assert (await broker.account()).balance > 0
        assert broker.health.reconnects == opened + 1
    finally:
        await broker.aclose()


async def test_a_dead_bridge_is_broker_unavailable(monkeypatch, gold_file: Path, tmp_path: Path) -> None:
    sim = start_sim(tmp_path / "sim.log", *sim_args(gold_file, "--start", START.isoformat(), "--speed", "0"))
    broker = bridge_broker(monkeypatch, sim.port, reconnect_attempts=2, reconnect_max_wait_s=0.1)
    try:
        await broker.start()
        assert await broker.positions() == []
        stop(sim.proc)
        with pytest.raises(BrokerUnavailable):
            await broker.positions()
        assert broker.health.connected is False
    finally:
        stop(sim.proc)
        await broker.aclose()


# ---- the clock ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_speed_runs_the_terminal_clock_that_many_times_faster(gold_file: Path, tmp_path: Path) -> None:
    speed = 300.0
    sim = start_sim(tmp_path / "sim.log", *sim_args(gold_file, "--start", START.isoformat(), "--speed", f"{speed:g}"))
    try:
        mt5 = mt5linux.MetaTrader5(host="127.0.0.1", port=sim.port)
        assert mt5.initialize(), mt5.last_error()
        assert mt5.symbol_select(SYMBOL, True)
        mt5.execute("import mt5sim.bridge as sim")
        offset = 3 * 3600  # us_dst in April: server wall clock = UTC+3

        def look() -> tuple[float, float]:
            """The clock as a client sees it (tick time, forming bar), bracketed by the terminal's clock before and after."""
            wall, before = time.monotonic(), mt5.eval("sim.terminal.now")
            tick = mt5.symbol_info_tick(SYMBOL).time - offset
            bar = int(mt5.copy_rates_from_pos(SYMBOL, mt5.TIMEFRAME_M1, 0, 1)["time"][0]) - offset
            after = mt5.eval("sim.terminal.now")
            assert before - 15 <= tick <= after, (before, tick, after)  # ticks every 15 s (mt5sim.market)
            assert before - 60 < bar <= after, (before, bar, after)
            return wall, before

        wall0, sim0 = look()
        time.sleep(3.0)  # the interval over which the rate is measured
        wall1, sim1 = look()
        rate = (sim1 - sim0) / (wall1 - wall0)
        assert 0.8 * speed <= rate <= 1.2 * speed, f"the clock ran x{rate:.0f}, not x{speed:g}"
        assert sim0 >= START.timestamp()
    finally:
        stop(sim.proc)


# ---- the command's errors --------------------------------------------------------------------------------------


def invoke(*args: str):
    from scalper.cli import app

    return CliRunner().invoke(app, ["sim", "mt5", *args])


def write_bars(path: Path, first: str = "2026-04-01 13:00:00", n: int = 30) -> Path:
    t0 = datetime.fromisoformat(first)
    lines = ["time,open,high,low,close,tick_volume,spread,real_volume"]
    lines += [f"{(t0 + timedelta(minutes=i)):%Y-%m-%d %H:%M:%S},2000.0,2000.5,1999.5,2000.0,100,10,0" for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "missing.csv", "no such file"),
        (lambda tmp: (tmp / "junk.csv").write_text("hello\nworld\n") and tmp / "junk.csv", "not an M1 file"),
        (lambda tmp: (tmp / "empty.csv").write_text("time,open,high,low,close\n") and tmp / "empty.csv", "no bars"),
    ],
    ids=["missing", "junk", "empty"],
)
def test_a_bad_file_exits_2_with_a_message(tmp_path: Path, make, message: str) -> None:
    result = invoke("--data", str(make(tmp_path)), "--port", "0")
    assert result.exit_code == 2, result.output
    assert message in result.output


@pytest.mark.parametrize("start", ["2026-03-31T09:00:00Z", "2026-04-01T11:00:00Z", "yesterday"])
def test_a_start_outside_the_data_exits_2(tmp_path: Path, start: str) -> None:
    # The file is on a UTC+3 wall clock: its 30 bars run 10:00..10:30 UTC.
    result = invoke("--data", str(write_bars(tmp_path / "XAUUSD_M1.csv")), "--server-time", "us_dst", "--start", start)
    assert result.exit_code == 2, result.output
    assert ("outside the data" in result.output and "2026-04-01T10:00:00Z to 2026-04-01T10:30:00Z" in result.output) or (
        "not an ISO time" in result.output)


def test_a_bad_server_time_rule_exits_2(tmp_path: Path) -> None:
    result = invoke("--data", str(write_bars(tmp_path / "XAUUSD_M1.csv")), "--server-time", "moon")
    assert result.exit_code == 2 and "unknown server time rule" in result.output
