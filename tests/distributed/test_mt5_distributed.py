"""Distributed mode on SCALPER_BROKER=mt5 and SCALPER_FEED=mt5: decision, market data, two strategy workers and an
active and a standby executor, each its own OS process (`scalper serve`), on the machine's RabbitMQ (a vhost of this
test) and PostgreSQL (a database of this test), against `scalper sim mt5` on the real gold file. A user made with
`scalper user create`, its mt5 account through POST /api/v1/accounts and an auto-trading bot through `scalper bot
setup`. Every order the API lists as filled on that account is exactly one entry deal in the terminal named by its
client order id; no entry deal lacks its order; no order was sent twice.

Not a live terminal: the far side is mt5sim (docs/mt5.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

mt5linux = pytest.importorskip("mt5linux", reason="mt5linux is not installed (pip install -e '.[test]')")

from tests.distributed import cluster as kit  # noqa: E402
from tests.e2e.test_mt5_embedded import SERVER, api_get, entry_deals, in_market_watch  # noqa: E402
from tests.mt5sim.test_bridge import LOGIN, sim_args, start_sim, stop  # noqa: E402

pytestmark = [pytest.mark.services, pytest.mark.slow, pytest.mark.data]

SPEED = 300
START = datetime(2026, 4, 1, 17, 0, tzinfo=UTC)  # a Wednesday afternoon (UTC) inside the gold file, market open
MIN_FILLS = 3
RUN_FOR_S = 120.0


def sim_now(port: int) -> datetime:
    """The simulated terminal's clock (UTC), through the bridge's test hook."""
    client = mt5linux.MetaTrader5(host="127.0.0.1", port=port)
    client.execute("import mt5sim.bridge as sim")
    return datetime.fromtimestamp(float(client.eval("sim.terminal.now")), UTC)


def leaders(procs: list[kit.ServiceProc]) -> list[kit.ServiceProc]:
    """The live executor processes holding their accounts' leader lock (/readyz `leader`)."""
    out = []
    for proc in procs:
        try:
            ready = proc.get("/readyz", timeout=3).json() if proc.alive() else {}
        except (httpx.HTTPError, ValueError):
            ready = {}
        if ready.get("leader", (ready.get("executor") or {}).get("leader")) is True:
            out.append(proc)
    return out


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([str(kit.SCALPER), *args], env=env, cwd=kit.REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"scalper {' '.join(args)} exited {done.returncode}: {done.stdout}\n{done.stderr}"
    return done.stdout


def test_mt5_through_separate_processes_orders_once_per_deal(vhost, pg_url, gold_file: Path, tmp_path: Path, make_cluster) -> None:
    started = time.monotonic()
    sim = start_sim(tmp_path / "sim.log", *sim_args(gold_file, "--start", START.isoformat(), "--speed", str(SPEED)))
    try:
        in_market_watch(sim.port)
        md_port, strategy_port = kit.free_port(), kit.free_port()
        # One clock for every process, the simulator's: its time now at this wall instant, running as fast as it.
        env = kit.base_env(
            bus_url=kit.amqp_url(vhost), database_url=pg_url, feed="mt5", clock_start=sim_now(sim.port), speed=SPEED,
            BROKER="mt5", MT5_HOST="127.0.0.1", MT5_PORT=str(sim.port), MT5_SERVER_TIME="us_dst",
            SCAN_INTERVAL_S="0.5", MONITOR_INTERVAL_S="0.5",
            MARKET_DATA_URL=f"http://127.0.0.1:{md_port}", STRATEGY_URL=f"http://127.0.0.1:{strategy_port}",
        )
        env["SCALPER_MT5_SECRET"] = "demo-password"
        cluster = make_cluster(env)
        decision = cluster.start("decision")

        full_env = {**os.environ, **env}
        out = cli(full_env, "user", "create", "trader")
        user = json.loads(out.splitlines()[0])
        key = out.split("API key (shown once, keep it safe): ", 1)[1].split()[0]
        created = httpx.post(f"{decision.url}/api/v1/accounts", headers={"X-API-Key": key}, timeout=10, json={
            "name": "mt5 demo", "broker": "mt5", "login": str(LOGIN), "server": SERVER, "password": "env:SCALPER_MT5_SECRET",
            "server_time": "us_dst", "symbol_suffix": "m", "is_demo": True,
        })
        assert created.status_code == 201, created.text
        account_id = created.json()["id"]
        cli(full_env, "bot", "setup", "--symbol", "XAUUSDm", "--user-id", str(user["id"]), "--account-id", str(account_id), "--auto-trade")

        executors = [cluster.start("executor"), cluster.start("executor")]
        kit.eventually(lambda: len(leaders(executors)) == 1, timeout=30, what="one leading executor")
        cluster.start("strategy", port=strategy_port)
        cluster.start("strategy")
        cluster.start("market_data", port=md_port)

        def orders() -> list[dict]:
            return [o for o in api_get(decision.url, key, "/api/v1/orders") if o["account_id"] == account_id]

        deadline = time.monotonic() + RUN_FOR_S
        while sum(o["status"] == "filled" for o in orders()) < MIN_FILLS:
            assert all(p.alive() for p in cluster.procs), cluster.logs()
            assert time.monotonic() < deadline, f"fewer than {MIN_FILLS} fills within {RUN_FOR_S:.0f} s: {orders()}\n{cluster.logs()}"
            time.sleep(1.0)
        api_filled = {o["client_order_id"] for o in orders() if o["status"] == "filled"}
        leader = leaders(executors)
        cluster.stop()
        final = orders_after_stop(pg_url, account_id)
        deals = entry_deals(sim.port)
    finally:
        stop(sim.proc)

    filled = {o["client_order_id"]: o for o in final if o["status"] == "filled"}
    by_comment = Counter(d["comment"] for d in deals)
    print(f"mt5 account {account_id}: {len(final)} orders ({Counter(o['status'] for o in final)}), {len(filled)} filled "
          f"({len(api_filled)} by the API before the stop), {len(deals)} entry deals in the terminal, leader {[p.name for p in leader]}, "
          f"{time.monotonic() - started:.1f} s")
    assert len(api_filled) >= MIN_FILLS
    assert api_filled <= set(filled), "an order the API listed as filled is not filled in the tables"
    cids = Counter(o["client_order_id"] for o in final)
    assert max(cids.values()) == 1, f"an order recorded twice: {cids.most_common(3)}"
    decisions = Counter(o["decision_id"] for o in final)
    assert max(decisions.values()) == 1, f"a decision with two orders: {decisions.most_common(3)}"
    for cid, order in filled.items():
        assert by_comment[cid] == 1, f"filled order {cid}: {by_comment[cid]} entry deals in the terminal"
        (deal,) = [d for d in deals if d["comment"] == cid]
        assert deal["order"] == order["ticket"], (order, deal)
    strays = [d for d in deals if d["comment"] not in filled]
    assert strays == [], f"entry deals in the terminal with no filled order of ours: {strays}"


def orders_after_stop(url: str, account_id: int) -> list[dict]:
    import asyncio

    from sqlalchemy import select

    from shared.db.engine import create_engine, session_factory
    from shared.db.models import Order

    async def fetch() -> list[dict]:
        engine = create_engine(url)
        try:
            async with session_factory(engine)() as session:
                rows = (await session.execute(select(Order).where(Order.account_id == account_id))).scalars()
                return [{"client_order_id": o.client_order_id, "status": o.status, "ticket": o.ticket, "decision_id": o.decision_id}
                        for o in rows]
        finally:
            await engine.dispose()

    return asyncio.run(fetch())
