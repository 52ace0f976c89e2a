"""`scalper run` as an OS process on SCALPER_BROKER=mt5 and SCALPER_FEED=mt5 against `scalper sim mt5` as another:
the whole embedded stack reads its bars through the executor's terminal session over the real mt5linux bridge and
trades on that terminal. Every order the API lists as filled on the mt5 account is exactly one entry deal in the
terminal, named by its client order id; no entry deal in the terminal lacks its order.

Not a live terminal: the far side is mt5sim (docs/mt5.md). The data is the real gold M1 file.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

mt5linux = pytest.importorskip("mt5linux", reason="mt5linux is not installed (pip install -e '.[test]')")

from tests.distributed.cluster import free_port  # noqa: E402
from tests.mt5sim.test_bridge import LOGIN, SCALPER, sim_args, start_sim, stop  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.data]

SPEED = 300  # a simulated minute every 0.2 s of wall time
START = datetime(2026, 4, 1, 17, 0, tzinfo=UTC)  # a Wednesday afternoon (UTC) inside the gold file, market open
SERVER = "Simulated-Demo"  # mt5sim's trade server name
MIN_FILLS = 3
RUN_FOR_S = 120.0  # at most, waiting for MIN_FILLS fills on the mt5 account
KEY_LINE = re.compile(r"Its API key \(shown once\): (\S+)")
DEAL_BUY, DEAL_SELL, ENTRY_IN = 0, 1, 0


def engine_env(*, sim_port: int, db: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCALPER_")}
    env.update({
        "SCALPER_BROKER": "mt5", "SCALPER_FEED": "mt5",
        "SCALPER_MT5_HOST": "127.0.0.1", "SCALPER_MT5_PORT": str(sim_port),
        "SCALPER_MT5_LOGIN": str(LOGIN), "SCALPER_MT5_SERVER": SERVER, "SCALPER_MT5_PASSWORD": "demo-password",
        "SCALPER_MT5_SERVER_TIME": "us_dst", "SCALPER_MT5_SUFFIX": "m",
        "SCALPER_SPEED": str(SPEED),  # the engine's terminal clock runs as fast as the simulator's
        "SCALPER_DATABASE_URL": f"sqlite+aiosqlite:///{db}",
        "SCALPER_SCAN_MODE": "aligned", "SCALPER_SCAN_INTERVAL_S": "0.2", "SCALPER_MONITOR_INTERVAL_S": "0.5",
        "SCALPER_PORT": str(port), "PYTHONUNBUFFERED": "1",
    })
    return env


def api_get(base: str, key: str, path: str, *, paged: bool = True) -> list[dict]:
    """Every item of a list endpoint (following next_cursor when it is paged)."""
    out: list[dict] = []
    cursor = None
    while True:
        query = {"limit": 500, **({"cursor": cursor} if cursor else {})} if paged else {}
        r = httpx.get(f"{base}{path}", params=query, headers={"X-API-Key": key}, timeout=10)
        r.raise_for_status()
        page = r.json()
        out += page["data"]
        cursor = page.get("next_cursor")
        if not cursor:
            return out


def mt5_account_id(base: str, key: str) -> int:
    (account,) = [a for a in api_get(base, key, "/api/v1/accounts", paged=False) if a["broker"] == "mt5" and str(a["login"]) == str(LOGIN)]
    return account["id"]


def entry_deals(port: int) -> list:
    """The terminal's buy/sell entry deals (not the balance deal), read with the unmodified mt5linux client."""
    client = mt5linux.MetaTrader5(host="127.0.0.1", port=port)
    assert client.initialize(login=LOGIN), client.last_error()
    now = datetime.now(UTC)  # the history is read over a range much wider than the simulated run
    deals = client.history_deals_get(datetime(2020, 1, 1), now + timedelta(days=3650))
    assert deals is not None, client.last_error()
    return [{"ticket": d.ticket, "order": d.order, "comment": d.comment, "magic": d.magic, "volume": d.volume}
            for d in deals if d.type in (DEAL_BUY, DEAL_SELL) and d.entry == ENTRY_IN]


def in_market_watch(port: int) -> None:
    """Put XAUUSDm in the terminal's Market Watch, as a logged-in terminal shows its symbols: the executor sets the
    engine's terminal clock at start from a Market Watch symbol's last tick (without one the clock stays on its
    wall-clock guess, far from the simulator's time, and market data's scan loop waits for that guess)."""
    client = mt5linux.MetaTrader5(host="127.0.0.1", port=port)
    assert client.initialize(login=LOGIN), client.last_error()
    assert client.symbol_select("XAUUSDm", True), client.last_error()


@pytest.fixture
def sim(gold_file: Path, tmp_path: Path):
    """`scalper sim mt5` on the gold file from START at SPEED, stopped at teardown whatever the test did."""
    running = start_sim(tmp_path / "sim.log", *sim_args(gold_file, "--start", START.isoformat(), "--speed", str(SPEED)))
    try:
        yield running
    finally:
        stop(running.proc)


def test_scalper_run_trades_on_the_simulated_terminal(sim, tmp_path: Path) -> None:
    started = time.monotonic()
    in_market_watch(sim.port)
    port = free_port()
    log = tmp_path / "run.log"
    with log.open("w") as out:
        run = subprocess.Popen([str(SCALPER), "run", "--port", str(port)], env=engine_env(sim_port=sim.port, db=tmp_path / "s.db", port=port),
                               stdout=out, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        key = None
        deadline = time.monotonic() + 60
        while key is None:
            assert run.poll() is None, f"scalper run exited with {run.returncode}:\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"no API key printed within 60 s:\n{log.read_text()[-4000:]}"
            if match := KEY_LINE.search(log.read_text()):
                key = match.group(1)
            time.sleep(0.2)
        account_id = mt5_account_id(base, key)

        def mt5_orders() -> list[dict]:
            return [o for o in api_get(base, key, "/api/v1/orders") if o["account_id"] == account_id]

        deadline = time.monotonic() + RUN_FOR_S
        while sum(o["status"] == "filled" for o in mt5_orders()) < MIN_FILLS:
            assert run.poll() is None, f"scalper run exited with {run.returncode}:\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, (
                f"fewer than {MIN_FILLS} fills on the mt5 account within {RUN_FOR_S:.0f} s: {mt5_orders()}\n{log.read_text()[-4000:]}")
            time.sleep(1.0)
        api_filled = {o["client_order_id"] for o in mt5_orders() if o["status"] == "filled"}
    finally:
        if run.poll() is None:
            run.terminate()
            try:
                run.wait(timeout=30)
            except subprocess.TimeoutExpired:
                run.kill()
                run.wait(timeout=10)
    # The engine is stopped: what it recorded is final. Read it back from its tables (the API is gone with it).
    with sqlite3.connect(tmp_path / "s.db") as db:
        db.row_factory = sqlite3.Row
        orders = [dict(r) for r in db.execute("SELECT client_order_id, status, ticket, account_id FROM orders WHERE account_id = ?", (account_id,))]
    deals = entry_deals(sim.port)

    filled = {o["client_order_id"]: o for o in orders if o["status"] == "filled"}
    by_comment = Counter(d["comment"] for d in deals)
    print(f"mt5 account {account_id}: {len(orders)} orders ({Counter(o['status'] for o in orders)}), {len(filled)} filled ({len(api_filled)} by the API before the stop), "
          f"{len(deals)} entry deals in the terminal, {time.monotonic() - started:.1f} s")
    assert len(api_filled) >= MIN_FILLS
    assert api_filled <= set(filled), "an order the API listed as filled is not filled in the tables"
    assert run.returncode in (0, -15), f"scalper run exited with {run.returncode}:\n{log.read_text()[-4000:]}"
    for cid, order in filled.items():
        assert by_comment[cid] == 1, f"filled order {cid}: {by_comment[cid]} entry deals in the terminal"
        (deal,) = [d for d in deals if d["comment"] == cid]
        assert deal["order"] == order["ticket"], (order, deal)
    strays = [d for d in deals if d["comment"] not in filled]
    assert strays == [], f"entry deals in the terminal with no filled order of ours: {strays}"
    not_filled = {o["client_order_id"] for o in orders if o["status"] != "filled"}
    assert not (not_filled & set(by_comment)), "an order not recorded as filled has a deal in the terminal"
