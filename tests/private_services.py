"""A private set of services for fault tests: the project's own scripts
(infra/scripts/*.sh) started on free ports with their own PM_SERVICES_DIR, so a test can stop
and start PostgreSQL, Kafka or Redis without touching the services other tests share."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "infra" / "scripts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateServices:
    """Ports and a services dir of one private instance; ``start``/``stop`` run the scripts.
    The dir is under /tmp and world-readable, so PostgreSQL (run as ``postgres`` by root)
    can reach it."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="pm-svc-"))
        self.dir.chmod(0o755)
        self.pg_port = free_port()
        self.redis_port = free_port()
        self.kafka_port = free_port()
        self.kafka_controller_port = free_port()
        self.started: set[str] = set()

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "PM_SERVICES_FRESH"}
        env.update(
            PM_SERVICES_DIR=str(self.dir),
            PM_PG_PORT=str(self.pg_port),
            PM_REDIS_PORT=str(self.redis_port),
            PM_KAFKA_PORT=str(self.kafka_port),
            PM_KAFKA_CONTROLLER_PORT=str(self.kafka_controller_port),
            PM_KAFKA_HEAP="256m",
        )
        return env

    @property
    def database_url(self) -> str:
        return f"postgresql://pm:pm@127.0.0.1:{self.pg_port}/pm"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def kafka_brokers(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    def run(self, service: str, action: str, *args: str, timeout: float = 180) -> str:
        """Run ``infra/scripts/<service>.sh action args``; returns its output, raises on
        failure (with the output in the message)."""
        proc = subprocess.run(
            [str(SCRIPTS / f"{service}.sh"), action, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        out = proc.stdout + proc.stderr
        if proc.returncode != 0:
            raise RuntimeError(f"{service}.sh {action} failed ({proc.returncode}):\n{out}")
        return out

    def start(self, service: str, fresh: bool = False) -> str:
        out = self.run(service, "start", *(["--fresh"] if fresh else []))
        self.started.add(service)
        return out

    def stop(self, service: str) -> str:
        return self.run(service, "stop")

    def close(self) -> None:
        """Stop whatever was started and delete the data."""
        for service in sorted(self.started):
            try:
                self.stop(service)
            except Exception as exc:  # best effort in teardown
                print(f"private services: stopping {service}: {exc}")
        base = self.dir / "postgres" / "base"
        if base.is_file():  # the cluster may live outside self.dir (see postgres.sh)
            cluster = Path(base.read_text().strip())
            if cluster != self.dir / "postgres" and cluster.name.startswith("pm-postgres-"):
                shutil.rmtree(cluster, ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)
