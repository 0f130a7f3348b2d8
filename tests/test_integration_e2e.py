"""End to end against the real services that `make test` starts: the simulator produces to
a 4-partition Kafka topic, the flow runs with two workers, and everything lands in
PostgreSQL, Kafka, Redis and a real HTTP receiver (through Apprise's json:// URL).

The flow is run twice over the same topic (the second run re-reads it from the start, as a
restart without recovery would), to show the sinks are effectively-once: no reading stored
twice, no alert delivered twice.
"""

from __future__ import annotations

import json
from collections import Counter

import psycopg
import pytest
from bytewax.testing import cluster_main
from confluent_kafka import Producer

from connectors.redis_state import RedisStatusStore
from connectors.settings import load_settings
from connectors.simulator import main as simulator_main
from flows.pipeline import build_flow
from tests.flow_process import consume_all, service_run
from tests.http_receiver import HttpReceiver

pytestmark = pytest.mark.integration

BAD_MESSAGES = [
    b'{"equipment_id": "x",',
    b'{"equipment_type": "pump", "ts": "2026-01-01T00:00:00Z", "sensors": {"a": 1}}',
    b'{"equipment_id": "p", "equipment_type": "pump", "ts": "2026-01-01T00:00:00Z",'
    b' "sensors": {"a": NaN}}',
    b"\xff\xfe",
]


@pytest.fixture
def services():
    with service_run("e2e", redis_db=3) as s:  # alert ids are deterministic: a clean Redis
        yield s.brokers, s.db, s.redis_url, s.topics, s.run


def test_simulator_kafka_flow_postgres_redis_alerts(services, model_dir, tmp_path):
    brokers, db, redis_url, topics, run = services
    # 1. simulator -> Kafka (keyed by equipment id), plus malformed messages
    n_equipment, n_readings = 8, 150
    assert simulator_main([
        "--num-equipment", str(n_equipment), "--equipment-type", "turbofan_engine",
        "--readings", str(n_readings), "--seed", "21", "--kafka", brokers, "--topic", topics["raw"],
    ]) == 0  # fmt: skip
    producer = Producer({"bootstrap.servers": brokers})
    for i, payload in enumerate(BAD_MESSAGES):
        producer.produce(topics["raw"], payload, key=f"bad-{i}".encode(), partition=i % 4)
    assert producer.flush(10) == 0
    produced = n_equipment * n_readings  # every unit of this seed lives past 150 cycles

    with HttpReceiver() as receiver:
        settings = load_settings(
            source="kafka",
            output="none",
            model=str(model_dir),
            kafka_brokers=brokers,
            database_url=db,
            redis_url=redis_url,
            apprise_urls=receiver.apprise_url(f"/alerts/{run}"),
            kafka={"input_topic": topics["raw"], "predictions_topic": topics["predictions"],
                   "alerts_topic": topics["alerts"], "dlq_topic": topics["dlq"], "tail": False},
            postgres={"buffer_size": 200, "write_interval_seconds": 1.0},
            alerts={"cooldown_s": 0.0},
        )  # fmt: skip
        for _ in range(2):  # the second run replays the whole topic
            cluster_main(build_flow(settings), [], 0, worker_count_per_proc=2)
        delivered = [r.json for r in receiver.requests]

    with psycopg.connect(db) as conn:
        readings = conn.execute("SELECT count(*), count(DISTINCT (equipment_id, ts)) "
                                "FROM sensor_readings").fetchone()  # fmt: skip
        predictions = conn.execute("SELECT count(*) FROM predictions").fetchone()[0]
        alerts_rows = conn.execute("SELECT alert_id, state, severity FROM alerts").fetchall()
        equipment = conn.execute("SELECT count(*) FROM equipment").fetchone()[0]
    assert readings == (produced, produced), "every produced reading stored exactly once"
    assert predictions == produced
    assert equipment == n_equipment

    kafka_predictions = consume_all(brokers, topics["predictions"])
    ids = Counter(dict(m.headers())["message_id"] for m in kafka_predictions)
    assert len(ids) == produced  # every prediction on the topic (replays repeat message ids)
    assert all(json.loads(m.value())["schema_version"] == 1 for m in kafka_predictions[:10])

    dlq = consume_all(brokers, topics["dlq"])
    originals = {m.value() for m in dlq}
    assert set(BAD_MESSAGES) <= originals
    for m in dlq:
        headers = dict(m.headers())
        assert headers["dlq.reason"] and headers["dlq.source.partition"] is not None
        assert headers["dlq.source.topic"].decode() == topics["raw"]

    # alerts: each alert id delivered exactly once to the HTTP receiver, despite 2 workers
    # and a full replay; the alerts table holds each transition once.
    assert alerts_rows, "degrading engines should raise alerts"
    assert len({a for a, _, _ in alerts_rows}) == len(alerts_rows)
    delivered_ids = Counter(
        line.split(": ", 1)[1]
        for d in delivered
        for line in d["message"].splitlines()
        if line.startswith("alert id: ")
    )
    assert set(delivered_ids) == {a for a, _, _ in alerts_rows}
    assert set(delivered_ids.values()) == {1}
    assert all(d["type"] in ("warning", "failure", "success") for d in delivered)
    kafka_alerts = consume_all(brokers, topics["alerts"])
    assert {dict(m.headers())["message_id"].decode() for m in kafka_alerts} == {
        a for a, _, _ in alerts_rows
    }

    print(
        f"\ne2e: produced {produced} readings (+{len(BAD_MESSAGES)} malformed), stored "
        f"{readings[0]}, predictions rows {predictions}, prediction messages "
        f"{len(kafka_predictions)} ({len(ids)} distinct), alerts {len(alerts_rows)}, delivered "
        f"{len(delivered)}, dead letters {len(dlq)}"
    )
    status = RedisStatusStore(redis_url)
    assert len(status.equipment_ids()) == n_equipment
    latest = status.read("turbofan-0001")
    last_prediction_ts = max(
        json.loads(m.value())["ts"] for m in kafka_predictions
        if m.key() == b"turbofan-0001"
    )  # fmt: skip
    assert latest["ts"] == last_prediction_ts
    status.close()
