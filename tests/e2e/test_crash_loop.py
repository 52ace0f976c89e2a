"""Crash loop of the embedded stack: `scalper run` replaying the real gold file fast, SIGKILLed five times at random
moments and restarted on the same SQLite file, then stopped gracefully; the money path's tables must still agree.

Each life: start `scalper run --feed replay:XAUUSD_M1.csv --speed 3000` (the demo bot trades XAUUSDm on its own, a
bar every 20 ms, `aligned` scans), wait for GET /readyz, let it trade a seeded random 4-10 s, then SIGKILL its whole
process group. Between two lives the database is quiet, so the test snapshots it (tests/crash_kit.py, `Boundary`):
that is what the next life's paper broker is rebuilt from. The sixth life runs until it has filled an order and a
few seconds more (and until every decision the kills left `sent` is settled), then gets SIGINT and must exit
cleanly. The order life is 5 real seconds and the re-send grace 2, so such a decision is re-sent within that life.

The checks are crash_kit.check's (see its module docstring for what each proves and what cannot be checked from
outside): every filled order has exactly one position row (account, client_order_id, same ticket); no ticket is
shared by two orders of an account; nothing left `received`/`sending`; every decision to open has a filled,
rejected, failed or expired order; no position row without its filled order; every leg the decision service's risk
counts as open is an open position row (else the bot is blocked by a phantom); and every open row is explained by the
paper broker's state (restored at the final life's start, or filled in the final life). The run must have filled
orders before the first kill, after it, and in the final life, so the test cannot pass by trading nothing.

Seed: SCALPER_CRASH_SEED (default fixed). Logs of each life: the test's tmp_path (life-N.log).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests import crash_kit
from tests.distributed.cluster import SCALPER, eventually, free_port

pytestmark = [pytest.mark.slow, pytest.mark.data]

SPEED = 3000.0
KILLS = 5
LIFE_S = (4.0, 10.0)  # a life's length after it is ready, before its SIGKILL
FINAL_RUN_S = 6.0  # the final life, after its first fill
ORDER_TTL_S = 5.0  # real seconds (at 3000x, about 4 hours of feed time)
RESEND_GRACE_S = 2.0


class Life:
    """One `scalper run` process (its own process group, so the kill takes all of it)."""

    def __init__(self, n: int, *, replay: Path, env: dict[str, str], log_dir: Path) -> None:
        self.n = n
        self.port = free_port()
        self.log_path = log_dir / f"life-{n}.log"
        with self.log_path.open("wb") as out:
            self.popen = subprocess.Popen(
                [str(SCALPER), "run", "--feed", f"replay:{replay}", "--speed", str(SPEED), "--port", str(self.port)],
                cwd=log_dir, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def ready(self) -> bool:
        if self.popen.poll() is not None:
            raise RuntimeError(f"life {self.n} exited with {self.popen.returncode}:\n{self.log()}")
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=3).status_code == 200
        except httpx.HTTPError:
            return False

    def log(self, tail: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:]

    def kill(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)

    def interrupt(self, timeout: float = 40.0) -> int:
        """SIGINT (Ctrl-C): uvicorn stops the stack gracefully; its exit code (SIGKILL after `timeout`)."""
        os.killpg(self.popen.pid, signal.SIGINT)
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"life {self.n} did not stop within {timeout}s of SIGINT:\n{self.log()}") from None


def _env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCALPER_")}
    env.update({
        "SCALPER_DATABASE_URL": url,
        "SCALPER_BUS_URL": "memory://",
        "SCALPER_BROKER": "paper",
        "SCALPER_SCAN_MODE": "aligned",  # a scan one (sim) second after each M1 close
        # Short enough that a decision a kill left `sent` (its intent lost with the in-memory bus) is past its expiry
        # and the grace within the final life, and decision's re-send settles it (services/decision/resend.py).
        "SCALPER_ORDER_TTL_S": str(ORDER_TTL_S),
        "SCALPER_INTENT_RESEND_GRACE_S": str(RESEND_GRACE_S),
        "SCALPER_LOG_FORMAT": "json",
        "SCALPER_LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
    })
    if os.environ.get("SCALPER_DATA_DIR"):
        env["SCALPER_DATA_DIR"] = os.environ["SCALPER_DATA_DIR"]
    return env


def _filled(url: str) -> set[str]:
    return {o.client_order_id for o in crash_kit.load(url).orders if o.status == "filled"}


def _left_sent(url: str, through_id: int) -> list[int]:
    return [d.id for d in crash_kit.load(url).decisions if d.action == "open" and d.order_status == "sent" and d.id <= through_id]


def test_embedded_stack_survives_five_sigkills_with_consistent_orders_and_positions(tmp_path, gold_file):
    assert SCALPER.exists(), f"{SCALPER} is not installed"
    seed = crash_kit.seed()
    rng = random.Random(seed)
    delays = crash_kit.kill_delays(rng, KILLS, *LIFE_S)
    url = f"sqlite+aiosqlite:///{tmp_path / 'crash.db'}"
    env = _env(url)
    boundaries: list[crash_kit.Boundary] = []
    lives: list[Life] = []
    started = time.monotonic()
    try:
        for n, delay in enumerate(delays, start=1):
            life = Life(n, replay=gold_file, env=env, log_dir=tmp_path)
            lives.append(life)
            eventually(life.ready, timeout=60, interval=0.1, what=f"life {n} ready")
            time.sleep(delay)  # the random kill moment (not a condition: any moment will do)
            life.kill()
            boundaries.append(crash_kit.boundary(url, after_life=n))

        final = Life(KILLS + 1, replay=gold_file, env=env, log_dir=tmp_path)
        lives.append(final)
        eventually(final.ready, timeout=60, interval=0.1, what="final life ready")
        before = boundaries[-1].filled
        try:
            eventually(lambda: _filled(url) - before, timeout=25, interval=0.5, what="a fill in the final life")
        except AssertionError:
            pass  # reported by the checks below (the final life filled nothing), with everything else
        try:
            # Every decision the killed lives left `sent` is answered in this one (re-sent past its expiry and grace).
            eventually(lambda: not _left_sent(url, boundaries[-1].max_decision_id), timeout=30, interval=0.5,
                       what="the killed lives' `sent` decisions settled")
        except AssertionError:
            pass  # reported by the checks below (a decision to open without a final order), with everything else
        time.sleep(FINAL_RUN_S)
        code = final.interrupt()
    finally:
        for life in lives:
            if life.popen.poll() is None:
                life.kill()
    elapsed = time.monotonic() - started

    tables = crash_kit.load(url)
    report = crash_kit.check(tables, boundaries, lives=KILLS + 1)
    report.summary.update({"seed": seed, "life_seconds": delays, "elapsed_s": round(elapsed, 1), "final_exit_code": code})
    logs = [life.log_path for life in lives]
    odd, first_odd = crash_kit.odd_log_lines(logs)
    report.summary["log_errors"] = odd
    print(report.text())
    print("warnings by event:", crash_kit.warnings_by_event(logs))
    if first_odd:
        print("first errors in the logs:\n  " + "\n  ".join(first_odd))
    if code != 0:
        report.problems.append(f"the final life exited with {code} after SIGINT (0 expected):\n{final.log(3000)}")
    report.fail_if_any()
