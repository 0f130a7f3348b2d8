"""Champion/challenger retraining against a real PostgreSQL (history) and a real MLflow
(local SQLite registry)."""

from __future__ import annotations

import os
import uuid

import mlflow
import psycopg
import pytest

from connectors import mlflow_registry
from connectors.history import load_units, record_events
from connectors.migrate import apply_migrations
from connectors.postgres_sink import PostgresWriter
from connectors.simulator import SimConfig, simulate
from models.equipment import EQUIPMENT_TYPES
from models.parsing import parse_reading
from models.retrain import main as retrain_main
from models.schemas import Origin, Reading
from models.train import main as train_main

pytestmark = pytest.mark.integration
NAME = "predictive_maintenance_model"


@pytest.fixture(scope="module")
def history_db():
    base = os.environ.get("PM_TEST_DATABASE_URL")
    if not base:
        pytest.skip("PM_TEST_DATABASE_URL is not set: no PostgreSQL to test against")
    name = f"pm_retrain_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = base.rsplit("/", 1)[0] + f"/{name}"
    apply_migrations(dsn)
    # 24 turbofans run to failure, stored as the flow would store them; failures recorded
    readings, last_ts, healthy = [], {}, set()
    for doc, truth in simulate(SimConfig(num_equipment=24, seed=31, healthy_fraction=0.2)):
        r = parse_reading(doc, Origin("test"))
        assert isinstance(r, Reading)
        readings.append(r)
        last_ts[r.equipment_id] = r.ts_ms
        if truth.healthy:
            healthy.add(r.equipment_id)
    with PostgresWriter(dsn, buffer_size=5000) as writer:
        writer.add_readings(readings)
    failures = [(eid, ts, "failure") for eid, ts in last_ts.items() if eid not in healthy]
    assert record_events(dsn, failures) == len(failures)
    yield dsn, len(failures)
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_history_becomes_run_to_failure_units(history_db):
    dsn, n_failed = history_db
    etype = EQUIPMENT_TYPES["turbofan_engine"]
    units = load_units(dsn, "turbofan_engine", etype.sensors, etype.rul_unit)
    assert len(units) == n_failed  # healthy (never failed) units are censored
    for u in units:
        assert u.rul[-1] == 0 and u.rul[0] == len(u.rul) - 1
        assert u.sensors.shape == (len(u.rul), len(etype.sensors))


def test_challenger_replaces_a_weak_champion_but_not_a_strong_one(history_db, tmp_path):
    dsn, _ = history_db
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    weak = tmp_path / "weak"
    assert train_main(["--equipment-type", "turbofan_engine", "--units", "6", "--folds", "0",
                       "--max-iter", "3", "--no-quantiles", "--no-mlflow", "--seed", "5",
                       "--out", str(weak)]) == 0  # fmt: skip
    mlflow_registry.setup(uri)
    with mlflow.start_run():
        v_weak = mlflow_registry.log_bundle(sorted(weak.glob("*.onnx")))
    client = mlflow.MlflowClient(uri)

    args = ["--database-url", dsn, "--tracking-uri", uri, "--max-iter", "80"]
    assert retrain_main([*args, "--margin", "0.05"]) == 0
    promoted = client.get_model_version_by_alias(NAME, "production").version
    assert promoted != v_weak
    run = client.get_run(client.get_model_version(NAME, promoted).run_id)
    assert run.data.tags["decision"] == "promote"
    assert run.data.metrics["challenger_rmse"] < run.data.metrics["champion_rmse"]

    # an impossible margin: the new challenger is registered but the alias stays
    assert retrain_main([*args, "--margin", "0.99", "--seed", "1"]) == 0
    assert client.get_model_version_by_alias(NAME, "production").version == promoted
    latest = max(int(v.version) for v in client.search_model_versions(f"name='{NAME}'"))
    run = client.get_run(client.get_model_version(NAME, str(latest)).run_id)
    assert run.data.tags["decision"] == "keep_champion"
    assert "champion_rmse" in run.data.metrics and "challenger_rmse" in run.data.metrics
