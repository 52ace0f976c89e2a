"""Distributed-mode test kit: a RabbitMQ vhost and a PostgreSQL database of one's own, and services as OS processes.

Used by tests/distributed and by bench/. Every name carries a uuid, so runs never share queues or tables.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parents[2]
SCALPER = REPO / ".venv" / "bin" / "scalper"
RABBIT_HOST = os.environ.get("SCALPER_TEST_RABBIT_HOST", "127.0.0.1:5672")
PG_ADMIN_URL = os.environ.get("SCALPER_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")


SERVICE_TOKEN = f"test-token-{uuid.uuid4().hex}"
SECRET_KEY = f"test-secret-key-{uuid.uuid4().hex}"  # 32+ characters, as SCALPER_SECRET_KEY takes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def eventually(check: Callable[[], object], *, timeout: float, interval: float = 0.2, what: str = "condition") -> object:
    """Poll `check` until it returns something truthy; its last answer, or AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # noqa: BLE001  a check may fail while things start
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout}s (last: {last!r})")


# --- RabbitMQ vhost -----------------------------------------------------------------------------------------


def rabbitmqctl_available() -> str | None:
    """None when `rabbitmqctl` can manage the local broker, else why not."""
    if shutil.which("rabbitmqctl") is None:
        return "rabbitmqctl is not installed"
    done = subprocess.run(["rabbitmqctl", "-q", "list_vhosts"], capture_output=True, text=True, timeout=30)
    return None if done.returncode == 0 else f"rabbitmqctl cannot reach the broker: {done.stderr.strip()[:200]}"


def add_vhost(ctl: list[str] | None = None) -> str:
    ctl = ctl or ["rabbitmqctl"]
    name = f"scalper-test-{uuid.uuid4().hex[:12]}"
    subprocess.run([*ctl, "-q", "add_vhost", name], check=True, capture_output=True, timeout=30)
    subprocess.run([*ctl, "-q", "set_permissions", "-p", name, "guest", ".*", ".*", ".*"], check=True, capture_output=True, timeout=30)
    return name


def delete_vhost(name: str, ctl: list[str] | None = None) -> None:
    subprocess.run([*(ctl or ["rabbitmqctl"]), "-q", "delete_vhost", name], capture_output=True, timeout=60)


def amqp_url(vhost: str, host: str = RABBIT_HOST) -> str:
    return f"amqp://guest:guest@{host}/{vhost}"


# --- PostgreSQL database ------------------------------------------------------------------------------------


def _pg_admin(sql: str, admin_url: str = PG_ADMIN_URL) -> None:
    import asyncpg

    dsn = make_url(admin_url).set(drivername="postgresql").render_as_string(hide_password=False)

    async def run() -> None:
        conn = await asyncpg.connect(dsn, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def create_database(admin_url: str = PG_ADMIN_URL) -> str:
    """A fresh database with a uuid name; its async URL."""
    name = f"scalper_test_{uuid.uuid4().hex[:12]}"
    _pg_admin(f'CREATE DATABASE "{name}"', admin_url)
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str, admin_url: str = PG_ADMIN_URL) -> None:
    name = make_url(url).database
    _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', admin_url)


# --- services as processes ----------------------------------------------------------------------------------


@dataclass
class ServiceProc:
    name: str
    port: int
    popen: subprocess.Popen
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self, tail: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def get(self, path: str, timeout: float = 5.0) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=timeout)

    def ready(self) -> bool:
        if not self.alive():
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{self.log()}")
        try:
            return self.get("/readyz", timeout=3).status_code == 200
        except httpx.HTTPError:
            return False

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a Prometheus sample in /metrics with these labels."""
        total = 0.0
        for line in self.get("/metrics").text.splitlines():
            if not line.startswith(name) or line.startswith("#"):
                continue
            head, _, value = line.rpartition(" ")
            metric, _, rest = head.partition("{")
            if metric != name or not all(f'{k}="{v}"' in rest for k, v in labels.items()):
                continue
            total += float(value)
        return total

    def kill(self) -> None:
        """SIGKILL: as a crash, nothing acked, connections dropped."""
        if self.alive():
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(timeout=10)

    def terminate(self, timeout: float = 15.0) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Cluster:
    """Services of one test as OS processes, on one vhost and one database, sharing one simulated clock."""

    env: dict[str, str]
    log_dir: Path
    procs: list[ServiceProc] = field(default_factory=list)

    def start(
        self, service: str, *args: str, env: dict[str, str] | None = None, wait: bool = True, timeout: float = 60, port: int | None = None
    ) -> ServiceProc:
        port = port or free_port()
        n = sum(1 for p in self.procs if p.name.startswith(service))
        name = f"{service}-{n + 1}"
        log_path = self.log_dir / f"{name}.log"
        full_env = {**os.environ, **self.env, **(env or {})}
        with log_path.open("wb") as out:
            popen = subprocess.Popen(
                [str(SCALPER), "serve", service, "--port", str(port), *args],
                cwd=REPO, env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        proc = ServiceProc(name, port, popen, log_path)
        self.procs.append(proc)
        if wait:
            eventually(proc.ready, timeout=timeout, what=f"{name} ready")
        return proc

    def stop(self) -> None:
        """Terminate every process this cluster started (kill what does not stop)."""
        for proc in reversed(self.procs):
            proc.terminate()

    def logs(self) -> str:
        return "\n".join(f"===== {p.name} =====\n{p.log()}" for p in self.procs)


def base_env(*, bus_url: str, database_url: str, feed: str, clock_start, speed: float, anchor_delay_s: float = 0.0, **extra: str) -> dict[str, str]:
    """SCALPER_* settings every process of a cluster shares (one clock: same start, anchor and speed)."""
    from datetime import UTC, datetime, timedelta

    anchor = datetime.now(UTC) + timedelta(seconds=anchor_delay_s)
    env = {
        "SCALPER_BUS_URL": bus_url,
        "SCALPER_DATABASE_URL": database_url,
        "SCALPER_FEED": feed,
        "SCALPER_SPEED": str(speed),
        "SCALPER_CLOCK_START": clock_start.isoformat(),
        "SCALPER_CLOCK_ANCHOR": anchor.isoformat(),
        "SCALPER_LOG_FORMAT": "json",
        "SCALPER_LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
        "SCALPER_SCAN_MODE": "aligned",
        # the routes of market data, strategy and the executor answer only calls carrying it
        "SCALPER_SERVICE_TOKEN": SERVICE_TOKEN,
        # decision and the executor seal and open MT5 passwords with it (required in distributed mode)
        "SCALPER_SECRET_KEY": SECRET_KEY,
    }
    env.update({k if k.startswith("SCALPER_") else f"SCALPER_{k.upper()}": str(v) for k, v in extra.items()})
    return env


def first_run(database_url: str, *, name: str = "trader", symbol: str = "XAUUSDm") -> str:
    """What an operator does on a fresh distributed install (`scalper serve` makes no demo user): a user, a paper
    account and an auto-trading scalper bot on it (account 1 and bot 1 of a fresh database). Return the user's key."""
    from shared.db.engine import create_engine, session_factory, transaction, upgrade
    from services.decision.bots import setup_bot
    from services.decision.users import create_user, ensure_paper_account

    async def run() -> str:
        await asyncio.to_thread(upgrade, database_url)
        engine = create_engine(database_url)
        try:
            async with transaction(session_factory(engine)) as session:
                user, key = await create_user(session=session, name=name)
                account = await ensure_paper_account(session=session, user_id=user.id)
                await setup_bot(session=session, user_id=user.id, account_id=account.id, symbol=symbol, auto_trade=True)
            return key
        finally:
            await engine.dispose()

    return asyncio.run(run())


def python() -> str:
    return sys.executable


def services_problem() -> str | None:
    """Why RabbitMQ (rabbitmqctl, for a vhost of the run) or PostgreSQL cannot be used here; None when both can."""
    problem = rabbitmqctl_available()
    if problem:
        return problem
    try:
        drop_database(f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/scalper_probe_absent")
    except Exception as exc:  # noqa: BLE001  the reason is the answer
        return f"PostgreSQL unreachable at {PG_ADMIN_URL}: {exc!r}"
    return None


# --- active and standby executors (tests/distributed/test_crash_loop.py) -------------------------------------


def readiness(proc: ServiceProc) -> dict:
    """The process's GET /readyz answer as JSON ({} when it does not answer)."""
    try:
        return proc.get("/readyz", timeout=3).json()
    except (httpx.HTTPError, ValueError):
        return {}


def leaders(procs: list[ServiceProc]) -> list[ServiceProc]:
    """The live executor processes that hold their accounts' leader lock (/readyz `leader`)."""
    return [p for p in procs if p.alive() and readiness(p).get("leader") is True]
