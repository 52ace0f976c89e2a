"""Private RabbitMQ and PostgreSQL instances (own port, own data directory) that a test may stop and restart,
so the machine's shared instances are never disturbed."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _free_port_pair() -> int:
    """A port p with p and p + 1 free (RabbitMQ: AMQP and Erlang distribution)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 60000 and not _port_open(port + 1) and not (35672 <= port <= 35683):
            return port
    raise RuntimeError("no free port pair")


def _listener_pid(port: int) -> int | None:
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True).stdout
    for part in out.split("pid=")[1:]:
        return int(part.split(",")[0])
    return None


@dataclass
class PrivateRabbit:
    """`rabbitmq-server` with its own node name, ports, data and log directories; empty plugin list."""

    port: int
    node: str
    root: Path

    @classmethod
    def create(cls) -> PrivateRabbit:
        if shutil.which("rabbitmq-server") is None:
            raise RuntimeError("rabbitmq-server is not installed")
        root = Path(tempfile.mkdtemp(prefix="scalper-rabbit-"))
        port = _free_port_pair()
        (root / "enabled_plugins").write_text("")
        (root / "rabbitmq.conf").write_text(f"listeners.tcp.1 = 127.0.0.1:{port}\nloopback_users = none\n")
        shutil.chown(root, "rabbitmq", "rabbitmq")
        for child in root.iterdir():
            shutil.chown(child, "rabbitmq", "rabbitmq")
        return cls(port=port, node=f"scalpertest{uuid.uuid4().hex[:8]}@localhost", root=root)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.port + 1),
            "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.root / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.root / "rabbitmq.conf"),
        }

    def start(self, timeout: float = 60.0) -> None:
        # Polled on its AMQP port, not with rabbitmqctl: the CLI's own distribution ports can collide during boot.
        with (self.root / "server.out").open("ab") as out:
            subprocess.Popen(["rabbitmq-server"], env=self._env(), cwd=self.root, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not _port_open(self.port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"private RabbitMQ did not start:\n{(self.root / 'server.out').read_text()[-2000:]}")
            time.sleep(0.3)

    def stop(self) -> None:
        subprocess.run(["rabbitmqctl", "-n", self.node, "stop"], capture_output=True, timeout=60)
        pid = _listener_pid(self.port)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while _port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.2)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class PrivatePostgres:
    """A PostgreSQL 15 cluster of its own (initdb as the postgres user, which initdb and postgres require)."""

    port: int
    root: Path

    @classmethod
    def create(cls) -> PrivatePostgres:
        if not (PG_BIN / "initdb").exists():
            raise RuntimeError(f"{PG_BIN / 'initdb'} is absent")
        root = Path(tempfile.mkdtemp(prefix="scalper-pg-"))
        shutil.chown(root, "postgres", "postgres")
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D", str(root / "data"), "-A", "trust", "-U", "postgres"],
            check=True, capture_output=True, timeout=120,
        )
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return cls(port=port, root=root)

    @property
    def admin_url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(self.root / "data"), *args],
            check=True, capture_output=True, timeout=120,
        )

    def start(self) -> None:
        self._ctl("-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1", "-l", str(self.root / "server.log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._ctl("-m", mode, "-w", "stop")

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
