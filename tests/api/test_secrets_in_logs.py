"""A real `scalper run`: an HTTP 500 called with a known API key leaves the key in no log line, in text and JSON
formats; JSON carries the stack as text; /healthz answers within 1 s while the 500s are logged (before: 4.6-10 s,
rich's traceback with local values); a literal MT5 password is stored sealed, beside a 0600 key file.

The 500 is a real one: the test renames the audit table under the running engine, so GET /api/v1/audit fails deep in
SQLAlchemy (a long traceback whose frames hold the request, its headers and the key)."""

from __future__ import annotations

import os
import re
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

SCALPER = Path(sys.executable).with_name("scalper")
MT5_PASSWORD = "Mt5-literal-pw-4242"


def _until(predicate, *, timeout: float, what: str):
    """Poll `predicate` until it returns a truthy value (this test drives a subprocess from plain threads)."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(0.05)
    return value


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(params=["text", "json"])
def engine(request, tmp_path):
    """`scalper run` on SQLite under tmp_path/var, its stdout and stderr in files; yields (base_url, key, paths)."""
    port = _free_port()
    db = tmp_path / "var" / "scalper.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCALPER_")}
    env.update(SCALPER_DATABASE_URL=f"sqlite+aiosqlite:///{db}", SCALPER_LOG_FORMAT=request.param, COLUMNS="400",
               SCALPER_SCAN_INTERVAL_S="3600")
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen([str(SCALPER), "run", "--port", str(port)], stdout=stdout, stderr=stderr, env=env,
                                cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        key = _until(lambda: _announced_key(out), timeout=60, what="the demo key on stdout")
        _until(lambda: _ready(base), timeout=60, what="/healthz")
        yield base, key, db, out, err, request.param
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _announced_key(out: Path) -> str | None:
    match = re.search(r"API key \(shown once\): (\S+)", out.read_text())
    return match.group(1) if match else None


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _log_lines(out: Path, err: Path) -> list[str]:
    """Everything the process printed but the one line that announces the demo key (printed, not logged)."""
    lines = out.read_text().splitlines() + err.read_text().splitlines()
    return [line for line in lines if "API key (shown once)" not in line]


def test_a_500_leaves_the_key_in_no_log_line_and_health_answers_meanwhile(engine):
    base, key, db, out, err, fmt = engine
    headers = {"X-API-Key": key}
    assert httpx.get(f"{base}/api/v1/audit", headers=headers, timeout=10).status_code == 200

    created = httpx.post(f"{base}/api/v1/accounts", headers=headers, timeout=10,
                         json={"name": "mt5 literal", "broker": "paper", "password": MT5_PASSWORD})
    assert created.status_code == 201, created.text
    with sqlite3.connect(db) as conn:
        (stored,) = conn.execute("SELECT password_ref FROM broker_accounts WHERE name = 'mt5 literal'").fetchone()
        conn.execute("ALTER TABLE audit_log RENAME TO audit_log_gone")  # GET /audit fails from now on
    assert stored.startswith("enc:v1:") and MT5_PASSWORD not in stored
    key_file = db.parent / "secret.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    answers: list[int] = []

    def fail() -> None:
        answers.append(httpx.get(f"{base}/api/v1/audit", headers=headers, timeout=30).status_code)

    failing = [threading.Thread(target=fail) for _ in range(3)]
    for thread in failing:
        thread.start()
    slowest = 0.0
    started = time.monotonic()
    while any(t.is_alive() for t in failing) or time.monotonic() - started < 1.5:
        t0 = time.monotonic()
        assert httpx.get(f"{base}/healthz", timeout=30).status_code == 200
        slowest = max(slowest, time.monotonic() - t0)
    for thread in failing:
        thread.join()
    assert answers == [500, 500, 500]
    assert slowest < 1.0, f"/healthz took {slowest:.2f} s while the 500s were logged"

    # The three tracebacks are written (off the loop: wait for them).
    _until(lambda: err.read_text().count("Exception in ASGI application") >= 3, timeout=10, what="3 tracebacks")
    lines = _log_lines(out, err)
    chunks = {key[i:i + 12] for i in range(len(key) - 11)}  # nor any part of it (a narrow terminal cut it before)
    leaking = [line for line in lines if any(chunk in line for chunk in chunks)]
    assert not leaking, leaking[:3]
    assert not [line for line in lines if MT5_PASSWORD in line]
    text = "\n".join(lines)
    assert "<traceback object>" not in text
    assert "no such table: audit_log" in text
    if fmt == "json":
        import json

        records = [json.loads(line) for line in err.read_text().splitlines() if line.startswith("{")]
        failures = [r for r in records if r.get("event") == "Exception in ASGI application"]
        assert len(failures) == 3
        assert all("Traceback (most recent call last)" in r["exception"] for r in failures)
        assert all("OperationalError" in r["exception"] for r in failures)
