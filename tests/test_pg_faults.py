"""PostgreSQL faults through the real flow and writer.

* Outage: the flow runs in-process against a private PostgreSQL (own port and data dir,
  started by infra/scripts/postgres.sh), which is stopped mid-stream. While it is down the
  sink logs a WARNING, ``/metrics`` shows ``pm_sink_up{sink="postgres"} 0`` with a growing
  backlog and retries, ``/readyz`` answers 503, and the flow waits instead of crashing.
  After the restart every reading and prediction is stored exactly once.
* A locked table: another session holds ACCESS EXCLUSIVE on ``sensor_readings``; the
  writer's lock (or statement) timeout cancels its INSERT, it logs, retries, and finishes
  once the lock is released.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.testing import run_main

from connectors import health
from connectors.migrate import apply_migrations
from connectors.postgres_sink import PostgresWriter
from connectors.settings import load_settings
from connectors.simulator import SimConfig, simulate
from flows.pipeline import build_flow
from tests.flow_helpers import records_from_dicts
from tests.test_postgres import readings as make_readings

pytestmark = pytest.mark.integration
OUTAGE_S = float(os.environ.get("PM_TEST_PG_OUTAGE_S", "30"))


def wait_for(predicate: Any, what: str, timeout_s: float = 120.0) -> Any:
    """Poll ``predicate`` until it returns something truthy (a bound, not a speed claim)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def scrape(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def sample(text: str, name: str, labels: str = "") -> float | None:
    """The value of one series in Prometheus text format (None when absent)."""
    pattern = rf"^{re.escape(name)}{re.escape('{' + labels + '}') if labels else ''} (\S+)$"
    m = re.search(pattern, text, re.MULTILINE)
    return float(m.group(1)) if m else None


class _GatedPartition(StatefulSourcePartition[Any, int]):
    def __init__(self, src: GatedSource, pos: int) -> None:
        self.src, self.pos = src, pos

    def next_batch(self) -> list[Any]:
        if self.pos >= len(self.src.items):
            raise StopIteration
        limit = len(self.src.items) if self.src.gate.is_set() else self.src.gate_at
        batch = self.src.items[self.pos : min(self.pos + 50, limit)]
        self.pos += len(batch)
        return batch

    def next_awake(self) -> datetime | None:
        if self.pos >= self.src.gate_at and not self.src.gate.is_set():
            return datetime.now(UTC) + timedelta(milliseconds=50)
        return None

    def snapshot(self) -> int:
        return self.pos


class GatedSource(FixedPartitionedSource[Any, int]):
    """Emits ``items[:gate_at]``, then waits until ``gate`` is set, then the rest."""

    def __init__(self, items: list[Any], gate_at: int) -> None:
        self.items, self.gate_at, self.gate = items, gate_at, threading.Event()

    def list_parts(self) -> list[str]:
        return ["0"]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _GatedPartition:
        return _GatedPartition(self, resume_state or 0)


def counts(dsn: str) -> tuple[int, int, int]:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM sensor_readings),"
            " (SELECT count(DISTINCT (equipment_id, ts)) FROM sensor_readings),"
            " (SELECT count(*) FROM predictions)"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def test_postgres_outage_pauses_the_flow_is_visible_and_loses_nothing(private_pg, caplog):
    caplog.set_level(logging.WARNING, logger="connectors.postgres_sink")
    dsn = private_pg.database_url
    apply_migrations(dsn)
    readings = [r for r, _ in simulate(SimConfig(num_equipment=4, readings=150, seed=5))]
    records = records_from_dicts(readings)
    half = len(records) // 2
    source = GatedSource(records, half)
    settings = load_settings(
        model="none", output="none", database_url=dsn,
        postgres={"buffer_size": 100, "write_interval_seconds": 0.5},
    )  # fmt: skip
    server = health.HealthServer("127.0.0.1", 0)
    server.add_check("sinks", health.sinks_check)
    server.add_check("postgres", health.postgres_check(dsn))
    server.start()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            run_main(build_flow(settings, source=source), epoch_interval=timedelta(seconds=0.5))
        except BaseException as exc:  # reported by the test below
            errors.append(exc)

    flow = threading.Thread(target=run, name="flow-under-test", daemon=True)
    flow.start()
    restarted = False
    try:
        wait_for(lambda: counts(dsn)[0] == half, "the first half in PostgreSQL")
        assert scrape(server.port, "/readyz")[0] == 200
        private_pg.stop("postgres")
        stopped = time.monotonic()
        source.gate.set()  # the second half arrives while the database is down

        def outage_visible() -> str | None:
            _, text = scrape(server.port, "/metrics")
            return text if sample(text, "pm_sink_up", 'sink="postgres"') == 0 else None

        text = wait_for(outage_visible, "pm_sink_up 0 during the outage", 60)
        assert (sample(text, "pm_sink_backlog_rows", 'sink="postgres"') or 0) > 0
        wait_for(lambda: any("write failed" in r.getMessage() for r in caplog.records),
                 "a WARNING about the outage")  # fmt: skip

        def unready() -> str | None:
            status, body = scrape(server.port, "/readyz")
            checks = json.loads(body)["checks"]
            failing = not checks["postgres"]["ok"] and not checks["sinks"]["ok"]
            return body if status == 503 and failing else None

        body = wait_for(unready, "/readyz 503 with postgres and sinks failing", 30)
        assert "pm:pm@" not in body
        before = sample(scrape(server.port, "/metrics")[1], "pm_sink_retries_total",
                        'sink="postgres"') or 0  # fmt: skip
        wait_for(lambda: (sample(scrape(server.port, "/metrics")[1], "pm_sink_retries_total",
                                 'sink="postgres"') or 0) >= before + 3,
                 "the outage to go on for 3 more retries")  # fmt: skip
        # hold the outage for the 30 s (PM_TEST_PG_OUTAGE_S), still visible at its end
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped)))
        assert sample(scrape(server.port, "/metrics")[1], "pm_sink_up", 'sink="postgres"') == 0
        assert flow.is_alive() and not errors, "the flow waits for the database, it does not stop"
        private_pg.start("postgres")
        restarted = True
        flow.join(300)
        assert not flow.is_alive(), "the flow finishes after the database is back"
    finally:
        source.gate.set()
        if not restarted:
            private_pg.start("postgres")
        server.close()
    assert not errors, errors
    n = len(records)
    assert counts(dsn) == (n, n, n), "every reading and prediction stored exactly once"
    messages = [r.getMessage() for r in caplog.records]
    assert any("writing again after" in m for m in messages), messages
    assert not any("pm:pm@" in m for m in messages), "no DSN with its password in the logs"
    from prometheus_client import REGISTRY

    assert REGISTRY.get_sample_value("pm_sink_up", {"sink": "postgres"}) == 1
    assert REGISTRY.get_sample_value("pm_sink_backlog_rows", {"sink": "postgres"}) == 0


@pytest.mark.parametrize(
    ("lock_timeout_s", "statement_timeout_s", "message"),
    [(0.3, 60.0, "lock timeout"), (60.0, 0.3, "statement timeout")],
)
def test_locked_table_times_out_logs_retries_and_finishes(
    db_for_lock, caplog, lock_timeout_s, statement_timeout_s, message
):
    caplog.set_level(logging.WARNING, logger="connectors.postgres_sink")
    rows = make_readings(40)
    writer = PostgresWriter(db_for_lock, retry_initial_s=0.1, retry_max_s=0.5,
                            lock_timeout_s=lock_timeout_s,
                            statement_timeout_s=statement_timeout_s)  # fmt: skip
    writer.add_readings(rows)
    holder = psycopg.connect(db_for_lock)
    holder.execute("LOCK TABLE sensor_readings IN ACCESS EXCLUSIVE MODE")  # held until commit

    def release_after_retries() -> None:
        wait_for(lambda: writer.retries >= 2, "two timed-out attempts", 60)
        holder.commit()

    releaser = threading.Thread(target=release_after_retries, daemon=True)
    releaser.start()
    try:
        assert writer.flush() == len(rows)
    finally:
        releaser.join(60)
        holder.close()
        writer.close()
    assert writer.retries >= 2
    warnings = [r.getMessage() for r in caplog.records]
    assert any(message in w and "write failed" in w for w in warnings), warnings
    assert any("writing again after" in w for w in warnings), warnings
    with psycopg.connect(db_for_lock) as conn:
        assert conn.execute("SELECT count(*) FROM sensor_readings").fetchone() == (len(rows),)


@pytest.fixture
def db_for_lock(fresh_db: str) -> str:
    apply_migrations(fresh_db)
    return fresh_db
