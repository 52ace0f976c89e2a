"""Prometheus for real: the embedded stack (`scalper run`, a replay of gold) scraped every second by a real
`prometheus`; every dashboard query and every alert rule's expression is run through Prometheus's HTTP API."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import need
from tests.observability.promql import ALERTS, EVENT_ONLY, MT5_ONLY, alert_rules, dashboard_queries, metric_names

pytestmark = pytest.mark.slow

SCALPER = Path(sys.executable).with_name("scalper")
# Dashboard queries that select a label value a healthy run never has (no server error happened).
HEALTHY_EMPTY = ('status="5xx"',)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(check: Callable[[], bool], what: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {proc.returncode}:\n{log.read_text()[-3000:] if log else ''}")
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}" + (f":\n{log.read_text()[-3000:]}" if log else ""))


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture
def embedded(tmp_path, gold_file) -> Iterator[int]:
    """`scalper run` on a free port: a fast replay of gold, its own SQLite; the port it serves."""
    need(SCALPER.exists(), f"{SCALPER} is not installed", required_by="SCALPER_REQUIRE_SERVICES")
    port = _free_port()
    env = {
        **os.environ,
        "SCALPER_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'live.db'}",
        "SCALPER_BUS_URL": "memory://",
        "SCALPER_SCAN_INTERVAL_S": "60",
        "SCALPER_MONITOR_INTERVAL_S": "600",
        "SCALPER_ORDER_TTL_S": "3600",
        "SCALPER_LOG_LEVEL": "WARNING",
    }
    env.pop("SCALPER_OTLP_ENDPOINT", None)
    log = tmp_path / "scalper.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(SCALPER), "run", "--feed", f"replay:{gold_file}", "--speed", "3000", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
        )
    try:
        _wait(lambda: httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200, "scalper run", 60, proc, log)
        yield port
    finally:
        _stop(proc)


@pytest.fixture
def prometheus(tmp_path, embedded) -> Iterator[str]:
    """A real prometheus scraping the embedded stack every second, with the shipped alert rules; its base URL."""
    binary = shutil.which("prometheus")
    need(binary is not None, "prometheus is not installed (apt-get install prometheus)", required_by="SCALPER_REQUIRE_SERVICES")
    port = _free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{"job_name": "embedded", "static_configs": [{"targets": [f"127.0.0.1:{embedded}"]}]}],
    }
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    log = tmp_path / "prometheus.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [binary, f"--config.file={path}", f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: httpx.get(f"{url}/-/ready", timeout=2).status_code == 200, "prometheus ready", 60, proc, log)
        yield url
    finally:
        _stop(proc)


def _query(url: str, expr: str) -> list:
    answer = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", f"{expr}: {answer}"
    return answer["data"]["result"]


def _has(url: str, name: str) -> bool:
    return bool(_query(url, f'count({{__name__="{name}"}})'))


def test_dashboard_queries_and_alert_rules_run_on_a_live_scrape(prometheus, embedded):
    url = prometheus
    httpx.get(f"http://127.0.0.1:{embedded}/", timeout=5)  # an instrumented request for the HTTP panels
    # Trades happened and were scraped, and several scrapes exist for the rates.
    _wait(lambda: bool(_query(url, 'orders_placed_total{status="filled"} > 0')), "a filled order in Prometheus", 120)
    _wait(lambda: bool(_query(url, "bot_trades_closed > 0")), "a closed trade in Prometheus", 120)
    httpx.get(f"http://127.0.0.1:{embedded}/", timeout=5)
    time.sleep(4)

    empty = []
    for where, expr in dashboard_queries():
        result = _query(url, expr)
        if result:
            continue
        names = metric_names(expr)
        if names & EVENT_ONLY or any(marker in expr for marker in HEALTHY_EMPTY):
            assert all(_has(url, n) or n in EVENT_ONLY for n in names), f"{where}: {expr}"
            continue
        empty.append(f"{where}: {expr}")
    assert not empty, "dashboard queries with no data:\n" + "\n".join(empty)

    for name, expr in alert_rules():
        _query(url, expr)  # evaluates without error; a healthy run may legitimately return nothing
        for metric in metric_names(expr):
            base = metric.removesuffix("_bucket")
            assert metric in EVENT_ONLY or metric in MT5_ONLY or _has(url, metric) or _has(url, f"{base}_bucket"), f"{name}: no series {metric}"

    # Prometheus itself evaluated every shipped rule without error.
    def evaluated() -> bool:
        groups = httpx.get(f"{url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return len(rules) == len(alert_rules()) and all(r.get("lastEvaluation", "").startswith("20") for r in rules)

    _wait(evaluated, "every rule evaluated", 30)
    groups = httpx.get(f"{url}/api/v1/rules", timeout=10).json()["data"]["groups"]
    unhealthy = [(r["name"], r.get("lastError")) for g in groups for r in g["rules"] if r["health"] != "ok"]
    assert not unhealthy, unhealthy
