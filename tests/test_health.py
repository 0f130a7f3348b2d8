"""``/metrics``, ``/healthz`` and ``/readyz`` of the real entry point
(``python -m bytewax.run flows.main``) reading a Kafka topic into a private PostgreSQL:
the endpoints listen on 127.0.0.1 only, every documented metric is exported (non-zero where
there was activity), equipment types outside the catalog share the label ``other``, and
``/readyz`` turns unready while PostgreSQL is stopped and ready again after its restart."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from connectors.simulator import main as simulator_main
from models.equipment import EQUIPMENT_TYPES
from tests.flow_process import interrupt
from tests.private_services import free_port
from tests.test_pg_faults import sample, scrape, wait_for

ROOT = Path(__file__).resolve().parents[1]


def documented_metrics() -> set[str]:
    """The ``pm_*`` metric names the README's Operations section lists."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Operations\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"`(pm_[a-z_]+)", section))


# Which metrics this run must have moved.
ACTIVE = [
    ("pm_readings_total", ""),
    ("pm_predictions_total", ""),
    ("pm_dead_letters_total", 'reason="parse"'),
    ("pm_sink_batch_size_count", 'sink="postgres"'),
    ("pm_sink_write_seconds_count", 'sink="postgres"'),
    ("pm_event_lag_seconds_count", ""),
    ("pm_anomaly_score_count", ""),
    ("pm_equipment_active", ""),
    ("pm_model_info", ""),
    ("pm_sink_up", 'sink="postgres"'),
]


def total(text: str, name: str, labels: str = "") -> float:
    """Sum of the series of ``name`` whose labels contain ``labels``."""
    s = 0.0
    for m in re.finditer(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", text, re.MULTILINE):
        if labels in (m.group(1) or ""):
            s += float(m.group(2))
    return s


def listens_on_loopback_only(port: int) -> bool:
    """From /proc/net/tcp: every listening socket on ``port`` is bound to 127.0.0.1."""
    binds = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, hexport = local.split(":")
        if int(hexport, 16) == port and state == "0A":
            binds.append(addr)
    return binds == ["0100007F"]


@pytest.fixture
def topic() -> Iterator[tuple[str, str]]:
    brokers = os.environ.get("PM_TEST_KAFKA_BROKERS")
    if not brokers:
        pytest.skip("PM_TEST_KAFKA_BROKERS is not set")
    name = f"health-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": brokers})
    admin.create_topics([NewTopic(name, 2, 1)])[name].result(30)
    yield brokers, name
    admin.delete_topics([name])


def test_readyz_names_failing_checks_and_sink_state_is_per_partition():
    from connectors import health, metrics

    def broken() -> tuple[bool, str]:
        raise RuntimeError("cannot reach postgresql://pm:hunter2@db/pm")

    server = health.HealthServer("127.0.0.1", 0)
    server.add_check("fine", lambda: (True, "ok"))
    server.add_check("broken", broken)
    server.add_check("sinks", health.sinks_check)
    server.start()
    try:
        metrics.sink_state("unit_sink", "a", True, 0)
        metrics.sink_state("unit_sink", "b", False, 7)
        status, body = scrape(server.port, "/readyz")
        checks = json.loads(body)["checks"]
        assert status == 503 and checks["fine"]["ok"] and not checks["broken"]["ok"]
        assert "RuntimeError" in checks["broken"]["detail"] and "hunter2" not in body
        assert checks["sinks"] == {"ok": False, "detail": "failing: unit_sink"}
        text = scrape(server.port, "/metrics")[1]
        assert sample(text, "pm_sink_up", 'sink="unit_sink"') == 0
        assert sample(text, "pm_sink_backlog_rows", 'sink="unit_sink"') == 7
        metrics.sink_state("unit_sink", "b", True, 0)
        text = scrape(server.port, "/metrics")[1]
        assert sample(text, "pm_sink_up", 'sink="unit_sink"') == 1
        assert "unit_sink" not in metrics.sinks_down()
        assert scrape(server.port, "/healthz") == (200, '{"status": "alive"}')
        assert scrape(server.port, "/nowhere")[0] == 404
    finally:
        server.close()
        metrics._sink_parts.pop("unit_sink", None)
        metrics.SINK_UP.remove("unit_sink")
        metrics.SINK_BACKLOG.remove("unit_sink")


@pytest.mark.integration
def test_endpoints_metrics_and_readiness_through_a_postgres_outage(
    private_pg, topic, model_dir, tmp_path
):
    brokers, name = topic
    n_eq, n_readings = 3, 60
    assert simulator_main(["--num-equipment", str(n_eq), "--equipment-type", "turbofan_engine",
                           "--readings", str(n_readings), "--seed", "4", "--kafka", brokers,
                           "--topic", name]) == 0  # fmt: skip
    producer = Producer({"bootstrap.servers": brokers})
    for i in range(5):  # types outside the catalog, and one malformed message
        reading = {"equipment_id": f"odd-{i}", "equipment_type": f"mystery-{uuid.uuid4().hex[:6]}",
                   "ts": "2026-01-01T00:00:00Z", "sensors": {"a": 1.0 + i}}  # fmt: skip
        producer.produce(name, json.dumps(reading).encode(), key=f"odd-{i}".encode())
    producer.produce(name, b'{"equipment_id": "x",', key=b"bad")
    assert producer.flush(30) == 0
    valid = n_eq * n_readings + 5

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PM_")}
    env.update(
        PM_SOURCE="kafka", PM_KAFKA_BROKERS=brokers, PM_KAFKA__INPUT_TOPIC=name,
        PM_KAFKA__OUTPUT_ENABLED="false", PM_DATABASE_URL=private_pg.database_url,
        PM_MODEL=str(model_dir), PM_OUTPUT="none", PM_METRICS_PORT=str(port),
        PM_POSTGRES__WRITE_INTERVAL_SECONDS="0.5",
    )  # fmt: skip
    log = (tmp_path / "flow.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "bytewax.run", "flows.main", "-s", "1"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    pg_stopped = False
    try:

        def ready_or_exited() -> bool:
            if proc.poll() is not None:
                return True
            return _port_open(port) and scrape(port, "/readyz")[0] == 200

        wait_for(ready_or_exited, "/readyz 200", 240)
        assert proc.poll() is None, (tmp_path / "flow.log").read_text()
        assert listens_on_loopback_only(port), "the default address is 127.0.0.1"
        assert scrape(port, "/healthz") == (200, '{"status": "alive"}')

        def stored() -> bool:
            with psycopg.connect(private_pg.database_url) as conn:
                row = conn.execute("SELECT count(*) FROM sensor_readings").fetchone()
            return row is not None and row[0] == valid

        wait_for(stored, "every valid reading in PostgreSQL", 240)
        text = scrape(port, "/metrics")[1]
        documented = documented_metrics()
        assert {"pm_readings_total", "pm_sink_up", "pm_sink_backlog_rows"} <= documented
        for metric in documented:
            assert f"# TYPE {metric} " in text, f"{metric} is documented but not exported"
        for metric, labels in ACTIVE:
            assert total(text, metric, labels) > 0, f"{metric}{{{labels}}} is 0 after a run"
        assert total(text, "pm_readings_total") == valid
        types = set(re.findall(r'equipment_type="([^"]*)"', text))
        assert "other" in types and types <= {*EQUIPMENT_TYPES, "other"}, types
        assert sample(text, "pm_sink_up", 'sink="postgres"') == 1

        private_pg.stop("postgres")
        pg_stopped = True

        def unready() -> dict | None:
            status, body = scrape(port, "/readyz")
            checks = json.loads(body)["checks"]
            return checks if status == 503 and not checks["postgres"]["ok"] else None

        checks = wait_for(unready, "/readyz 503 while PostgreSQL is stopped", 60)
        assert checks["model"]["ok"], checks
        assert "pm:pm@" not in json.dumps(checks)
        assert scrape(port, "/healthz")[0] == 200, "alive while not ready"

        private_pg.start("postgres")
        pg_stopped = False
        wait_for(lambda: scrape(port, "/readyz")[0] == 200, "/readyz 200 after the restart", 60)
        assert proc.poll() is None, "the flow kept running"
    except BaseException:
        print("flow log:\n" + (tmp_path / "flow.log").read_text()[-4000:])
        raise
    finally:
        if pg_stopped:
            private_pg.start("postgres")
        interrupt(proc)
        log.close()


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0
