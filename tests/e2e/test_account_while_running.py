"""An account and a bot created while `scalper run` runs (a real process, replaying the gold file fast): the
executor serves the new account within a scan interval, the bot trades on it, and kill, resume and `POST /kill`
answer 200 with the flatten reaching the broker (the paper broker closes the positions, and their `closed` events
come back to decision's read model)."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from tests.distributed.cluster import SCALPER, eventually
from tests.e2e.test_crash_loop import Life, _env

pytestmark = [pytest.mark.slow, pytest.mark.data]


def test_an_account_and_bot_made_while_running_trade_and_are_flattened_by_kill(tmp_path, gold_file):
    assert SCALPER.exists(), f"{SCALPER} is not installed"
    life = Life(1, replay=gold_file, env=_env(f"sqlite+aiosqlite:///{tmp_path / 'late.db'}"), log_dir=tmp_path)
    try:
        eventually(life.ready, timeout=60, interval=0.1, what="scalper run ready")
        key = re.search(r"Its API key \(shown once\): (\S+)", life.log(tail=100_000)).group(1)
        api = httpx.Client(base_url=f"http://127.0.0.1:{life.port}/api/v1", headers={"X-API-Key": key}, timeout=10)

        account = api.post("/accounts", json={"name": "opened later"})
        assert account.status_code == 201, account.text
        bot = api.post("/bots", json={"account_id": account.json()["id"], "symbol": "XAUUSDm", "auto_trade": True,
                                      "risk_max_concurrent_positions": 3})
        assert bot.status_code == 201, bot.text
        bot_id, account_id = bot.json()["id"], account.json()["id"]

        def open_positions() -> list[dict]:
            rows = api.get("/positions", params={"bot_id": bot_id, "limit": 100}).json()["data"]
            return [p for p in rows if p["status"] == "open"]

        opened = eventually(open_positions, timeout=60, interval=0.2, what="a position of the new bot open at the broker")
        assert {p["account_id"] for p in opened} == {account_id}

        killed = api.post(f"/bots/{bot_id}/kill")
        assert killed.status_code == 200, killed.text
        eventually(lambda: not open_positions(), timeout=30, interval=0.2, what="the kill's flatten at the broker")
        closed = [p for p in api.get("/positions", params={"bot_id": bot_id, "limit": 100}).json()["data"]
                  if p["ticket"] in {o["ticket"] for o in opened}]
        assert {p["close_reason"] for p in closed} <= {"kill_switch", "sl", "tp", "trail", "early_exit"} and closed

        resumed = api.post(f"/bots/{bot_id}/resume")
        assert resumed.status_code == 200 and resumed.json()["status"] == "active", resumed.text
        eventually(open_positions, timeout=60, interval=0.2, what="trading again after resume")

        everything = api.post("/kill")
        assert everything.status_code == 200, everything.text
        assert bot_id in everything.json()["killed"] and everything.json()["failed"] == []
        eventually(lambda: not open_positions(), timeout=30, interval=0.2, what="POST /kill's flatten at the broker")
        time.sleep(1)  # a window in flight when the kill landed must not open anything
        assert open_positions() == []
        assert life.interrupt() in (0, 130, -2)
    finally:
        life.kill()
