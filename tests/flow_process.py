"""Run the real flow as users do (``python -m bytewax.run flows.main``) in child processes,
with recovery, against the services of ``make test``; kill it and restart it (for the
whole-flow reliability tests). Also small helpers to produce to and read back from Kafka
and PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

PROJECT_DIR = Path(__file__).resolve().parent.parent


def flow_env(**settings: Any) -> dict[str, str]:
    """The environment of a flow process: this one's, less every ``PM_`` variable, plus
    ``settings`` as ``PM_`` variables (nested sections as dicts: ``kafka={"tail": False}``
    gives ``PM_KAFKA__TAIL=false``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PM_")}
    env["PYTHONUNBUFFERED"] = "1"

    def put(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                put(f"{prefix}__{k.upper()}", v)
        elif isinstance(value, bool):
            env[prefix] = "true" if value else "false"
        elif isinstance(value, list | tuple):
            env[prefix] = ",".join(str(v) for v in value)
        elif value is not None:
            env[prefix] = str(value)

    for name, value in settings.items():
        put(f"PM_{name.upper()}", value)
    return env


def interrupt(proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    """Stop a flow process as Ctrl-C does (SIGINT); kill it if it does not end in time."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


class FlowProcesses:
    """``processes`` Bytewax processes of the flow (``workers`` each), one cluster, sharing
    one recovery directory (one partition per process, created on first start)."""

    def __init__(
        self,
        env: Mapping[str, str],
        recovery_dir: Path,
        log_dir: Path,
        *,
        processes: int = 1,
        workers: int = 1,
        snapshot_s: int = 1,
        base_port: int | None = None,
    ) -> None:
        self.env = dict(env)
        self.recovery_dir = recovery_dir
        self.log_dir = log_dir
        self.processes = processes
        self.workers = workers
        self.snapshot_s = snapshot_s
        self.base_port = base_port or 21000 + (os.getpid() * 7) % 20000
        self.procs: list[subprocess.Popen[bytes]] = []
        self.runs = 0

    def start(self, **env: str) -> None:
        if not self.recovery_dir.exists():
            self.recovery_dir.mkdir(parents=True)
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bytewax.recovery",
                    str(self.recovery_dir),
                    str(self.processes),
                ],
                check=True,
                cwd=PROJECT_DIR,
                env=self.env,
            )
        self.runs += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # fresh ports per run: a killed cluster's sockets may linger
        port = self.base_port + 10 * self.runs
        addresses = ";".join(f"127.0.0.1:{port + i}" for i in range(self.processes))
        cmd = [
            sys.executable,
            "-m",
            "bytewax.run",
            "flows.main",
            "-w",
            str(self.workers),
            "-r",
            str(self.recovery_dir),
            "-s",
            str(self.snapshot_s),
            "-b",
            "0",
        ]
        self.procs = []
        for i in range(self.processes):
            args = [*cmd, "-i", str(i), "-a", addresses] if self.processes > 1 else cmd
            log = open(self.log_dir / f"run{self.runs}-proc{i}.log", "wb")  # noqa: SIM115
            self.procs.append(
                subprocess.Popen(
                    args,
                    cwd=PROJECT_DIR,
                    env={**self.env, **env},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )

    def kill(self) -> None:
        """SIGKILL every process of the cluster (and its children), as a crash would."""
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        for p in self.procs:
            p.wait(30)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Interrupt every process (SIGINT, as Ctrl-C) and wait; SIGKILL what is left."""
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGINT)
        deadline = time.monotonic() + timeout_s
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill()

    def wait(self, timeout_s: float) -> list[int]:
        """Wait for every process to end by itself; exit codes. Kills them on time-out."""
        deadline = time.monotonic() + timeout_s
        try:
            return [p.wait(max(0.1, deadline - time.monotonic())) for p in self.procs]
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"flow did not finish in {timeout_s:g} s:\n{self.tail()}"
            ) from None

    def alive(self) -> bool:
        return any(p.poll() is None for p in self.procs)

    def tail(self, lines: int = 40) -> str:
        out = []
        for f in sorted(self.log_dir.glob(f"run{self.runs}-proc*.log")):
            text = f.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {f.name}\n" + "\n".join(text))
        return "\n".join(out)

    def logs(self) -> str:
        return "\n".join(f.read_text(errors="replace") for f in sorted(self.log_dir.glob("*.log")))


def wait_until(
    predicate: Callable[[], bool],
    timeout_s: float,
    what: str,
    poll_s: float = 0.2,
    alive: Callable[[], bool] | None = None,
) -> None:
    """Poll ``predicate`` until it holds; fail naming ``what`` on time-out (or when
    ``alive`` says the process under test died)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        if alive is not None and not alive():
            if predicate():
                return
            raise AssertionError(f"the flow ended before {what}")
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


def create_topics(
    brokers: str, topics: Mapping[str, int], config: Mapping[str, str] | None = None
) -> None:
    admin = AdminClient({"bootstrap.servers": brokers})
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=n, config=dict(config or {})) for t, n in topics.items()]
    )
    for f in futures.values():
        f.result(30)


def delete_topics(brokers: str, topics: Sequence[str]) -> None:
    AdminClient({"bootstrap.servers": brokers}).delete_topics(list(topics))


def produce(
    brokers: str,
    topic: str,
    messages: Sequence[tuple[bytes | None, bytes | None]],
    config: Mapping[str, str] | None = None,
) -> list[tuple[int, int]]:
    """Produce ``(key, value)`` messages in order; their (partition, offset)s."""
    placed: list[tuple[int, int] | None] = [None] * len(messages)
    producer = Producer(
        {
            "bootstrap.servers": brokers,
            "enable.idempotence": "true",
            "linger.ms": "5",
            **(config or {}),
        }
    )

    def report(i: int) -> Callable[[Any, Any], None]:
        def on_delivery(err: Any, msg: Any) -> None:
            if err is not None:
                raise RuntimeError(f"message {i} not delivered: {err}")
            placed[i] = (msg.partition(), msg.offset())

        return on_delivery

    for i, (key, value) in enumerate(messages):
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=report(i))
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(60) == 0
    assert all(p is not None for p in placed)
    return [p for p in placed if p is not None]


def consume_all(brokers: str, topic: str, timeout_s: float = 60.0) -> list[Any]:
    """Every message now in ``topic`` (all partitions, from the start)."""
    c = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": f"t-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "receive.message.max.bytes": 200_000_000,
        }
    )
    meta = c.list_topics(topic, timeout=10).topics[topic]
    parts, total = [], 0
    for p in meta.partitions:
        _lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        if hi > 0:
            parts.append(TopicPartition(topic, p, 0))
            total += hi
    c.assign(parts)
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < total and time.monotonic() < deadline:
        for m in c.consume(1000, timeout=0.5):
            if not m.error():
                out.append(m)
    c.close()
    return out


@dataclass
class ServiceRun:
    """Per-test resources on the services of ``make test``: a fresh database, topics named
    after the run, a Redis database flushed clean."""

    brokers: str
    db: str
    redis_url: str
    topics: dict[str, str]
    run: str

    def flow_settings(self, model_dir: Path, apprise_url: str, **overrides: Any) -> dict[str, Any]:
        """The flow's settings with every output on (Kafka in and out, PostgreSQL, Redis,
        alert delivery to ``apprise_url``); ``overrides`` replace whole entries."""
        settings: dict[str, Any] = {
            "source": "kafka",
            "output": "none",
            "model": str(model_dir),
            "kafka_brokers": self.brokers,
            "database_url": self.db,
            "redis_url": self.redis_url,
            "apprise_urls": apprise_url,
            "kafka": {
                "input_topic": self.topics["raw"],
                "predictions_topic": self.topics["predictions"],
                "alerts_topic": self.topics["alerts"],
                "dlq_topic": self.topics["dlq"],
                "tail": True,
            },
            "alerts": {"cooldown_s": 0.0},
        }
        return settings | overrides

    def count(self, table: str) -> int:
        """Rows in ``table`` of the run's database (0 before the migrations)."""
        import psycopg

        with psycopg.connect(self.db) as conn:
            if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] is None:
                return 0
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


@contextmanager
def service_run(
    name: str, redis_db: int, raw_partitions: int = 4, raw_config: Mapping[str, str] | None = None
) -> Iterator[ServiceRun]:
    """A :class:`ServiceRun`, dropped afterwards; skips without the services."""
    import psycopg
    import pytest
    import redis

    brokers = os.environ.get("PM_TEST_KAFKA_BROKERS")
    admin = os.environ.get("PM_TEST_DATABASE_URL")
    redis_url = os.environ.get("PM_TEST_REDIS_URL")
    if not (brokers and admin and redis_url):
        pytest.skip("needs PM_TEST_KAFKA_BROKERS, PM_TEST_DATABASE_URL, PM_TEST_REDIS_URL")
    run = uuid.uuid4().hex[:8]
    dbname = f"pm_{name}_{run}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    topics = {k: f"{k}-{name}-{run}" for k in ("raw", "predictions", "alerts", "dlq")}
    create_topics(brokers, {topics["raw"]: raw_partitions}, raw_config)
    test_redis = f"{redis_url.rsplit('/', 1)[0]}/{redis_db}"
    redis.Redis.from_url(test_redis).flushdb()
    try:
        yield ServiceRun(brokers, admin.rsplit("/", 1)[0] + f"/{dbname}", test_redis, topics, run)
    finally:
        delete_topics(brokers, list(topics.values()))
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
