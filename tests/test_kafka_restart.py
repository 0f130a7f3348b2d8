"""A Kafka broker restart under a running flow: ``python -m bytewax.run flows.main`` reads a
topic on a private broker (own ports and data dir, infra/scripts/kafka.sh), the broker is
stopped and started again (its data kept), more readings are produced, and the flow carries
on: every reading ends up in PostgreSQL exactly once, and the flow never exits."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from connectors.simulator import SimConfig, simulate
from tests.flow_process import interrupt
from tests.private_services import PrivateServices
from tests.test_pg_faults import wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def private_kafka() -> Iterator[PrivateServices]:
    if shutil.which("java") is None:
        pytest.skip("java is not installed")
    svc = PrivateServices()
    try:
        svc.start("kafka", fresh=True)
        yield svc
    finally:
        svc.close()


def produce(brokers: str, topic: str, readings: list[dict]) -> None:
    p = Producer({"bootstrap.servers": brokers})
    for r in readings:
        p.produce(topic, json.dumps(r).encode(), key=r["equipment_id"].encode())
    assert p.flush(60) == 0


def test_flow_resumes_after_a_broker_restart(private_kafka, fresh_db, tmp_path):
    brokers = private_kafka.kafka_brokers
    topic = f"restart-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": brokers})
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(30)
    readings = [r for r, _ in simulate(SimConfig(num_equipment=4, readings=60, seed=9))]
    half = len(readings) // 2
    produce(brokers, topic, readings[:half])

    env = {k: v for k, v in os.environ.items() if not k.startswith("PM_")}
    env.update(
        PM_SOURCE="kafka", PM_KAFKA_BROKERS=brokers, PM_KAFKA__INPUT_TOPIC=topic,
        PM_KAFKA__OUTPUT_ENABLED="false", PM_DATABASE_URL=fresh_db, PM_MODEL="none",
        PM_OUTPUT="none", PM_POSTGRES__WRITE_INTERVAL_SECONDS="0.5",
    )  # fmt: skip
    log_path = tmp_path / "flow.log"
    log = log_path.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "bytewax.run", "flows.main", "-s", "1"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip

    def count() -> int:
        with psycopg.connect(fresh_db) as conn:
            exists = conn.execute("SELECT to_regclass('sensor_readings')").fetchone()
            if not exists or exists[0] is None:
                return 0
            row = conn.execute("SELECT count(*) FROM sensor_readings").fetchone()
        return int(row[0]) if row else 0

    try:
        wait_for(lambda: proc.poll() is not None or count() == half, "the first half", 240)
        assert proc.poll() is None, log_path.read_text()
        private_kafka.stop("kafka")
        private_kafka.start("kafka")  # the same data dir: the topic and offsets are still there
        produce(brokers, topic, readings[half:])
        wait_for(lambda: proc.poll() is not None or count() == len(readings),
                 "the second half after the restart", 240)  # fmt: skip
        assert proc.poll() is None, "the flow kept running across the restart"
    except BaseException:
        print("flow log:\n" + log_path.read_text()[-4000:])
        raise
    finally:
        interrupt(proc)
        log.close()
    with psycopg.connect(fresh_db) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT (equipment_id, ts)),"
            " (SELECT count(*) FROM predictions) FROM sensor_readings"
        ).fetchone()
    n = len(readings)
    assert row == (n, n, n), "every reading and prediction stored exactly once"
