"""Backup and restore for real: the flow reads the first half of a Kafka topic with recovery
into PostgreSQL; ``infra/scripts/backup.sh`` archives the database, the recovery store and
an MLflow registry with a registered model; everything is then thrown away and
``restore.sh`` puts it into a new database, a new recovery dir and a new MLflow root. The
flow, run again on the restored state, resumes where it stopped: every reading is stored
exactly once, and the restored registry still serves the model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, run_main
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from psycopg.conninfo import make_conninfo

from connectors.settings import load_settings
from connectors.simulator import SimConfig, simulate
from flows.pipeline import build_flow
from models.schemas import Prediction
from tests.conftest import drop_database

pytestmark = pytest.mark.integration
SCRIPTS = Path(__file__).resolve().parents[1] / "infra" / "scripts"


@pytest.fixture
def topic() -> Iterator[tuple[str, str]]:
    brokers = os.environ.get("PM_TEST_KAFKA_BROKERS")
    if not brokers:
        pytest.skip("PM_TEST_KAFKA_BROKERS is not set")
    name = f"backup-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": brokers})
    admin.create_topics([NewTopic(name, 2, 1)])[name].result(30)
    yield brokers, name
    admin.delete_topics([name])


@pytest.fixture
def restored_db(admin_url: str) -> Iterator[str]:
    """The URL of a database that does not exist yet (restore creates it); dropped after."""
    name = f"pm_restored_{uuid.uuid4().hex[:10]}"
    yield make_conninfo(admin_url, dbname=name)
    drop_database(admin_url, name)


def produce(brokers: str, topic: str, readings: list[dict]) -> None:
    p = Producer({"bootstrap.servers": brokers})
    for r in readings:
        p.produce(topic, json.dumps(r).encode(), key=r["equipment_id"].encode())
    assert p.flush(30) == 0


def run_flow(brokers: str, topic: str, dsn: str, recovery: Path) -> list[Prediction]:
    settings = load_settings(
        source="kafka", output="none", model="none", kafka_brokers=brokers, database_url=dsn,
        kafka={"input_topic": topic, "tail": False, "output_enabled": False},
        postgres={"write_interval_seconds": 0.5},
    )  # fmt: skip
    out: list = []
    run_main(build_flow(settings, output=TestingSink(out)),
             recovery_config=RecoveryConfig(str(recovery)))  # fmt: skip
    return [x[1] for x in out if isinstance(x[1], Prediction)]


def stored(dsn: str) -> tuple[int, int]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*), count(DISTINCT (equipment_id, ts))"
                           " FROM sensor_readings").fetchone()  # fmt: skip
    assert row is not None
    return int(row[0]), int(row[1])


def script(name: str, *args: str, env: dict[str, str]) -> str:
    proc = subprocess.run([str(SCRIPTS / name), *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def register_model(model_dir: Path, root: Path) -> str:
    """An MLflow registry (SQLite + local artifacts under ``root``) with the bundle as
    version 1 of predictive_maintenance_model@production; returns its tracking URI."""
    import mlflow

    from connectors import mlflow_registry

    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.create_experiment("predictive_maintenance", artifact_location=str(root / "artifacts"))
    mlflow_registry.setup(uri)
    with mlflow.start_run():
        version = mlflow_registry.log_bundle(sorted(model_dir.glob("*.onnx")))
    assert version == "1"
    return uri


def test_backup_restore_and_resume(topic, fresh_db, restored_db, model_dir, tmp_path):
    brokers, name = topic
    readings = [r for r, _ in simulate(SimConfig(num_equipment=4, readings=80, seed=3))]
    half = len(readings) // 2
    produce(brokers, name, readings[:half])

    recovery = tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 2)
    first = run_flow(brokers, name, fresh_db, recovery)
    assert stored(fresh_db) == (half, half)
    mlflow_root = tmp_path / "mlflow"
    tracking_uri = register_model(model_dir, mlflow_root)

    out = script("backup.sh", "--out", str(tmp_path / "backups"), env={
        "PM_DATABASE_URL": fresh_db, "PM_RECOVERY_DIR": str(recovery),
        "PM_MLFLOW_TRACKING_URI": tracking_uri,
    })  # fmt: skip
    archive = Path(out.split("backup: ", 1)[1].splitlines()[0])
    assert archive.name.startswith("pm-backup-") and archive.name.endswith(".tar.gz")
    assert "database, mlflow, recovery" in out

    # Lose everything but the archive (the source database is dropped by its fixture).
    shutil.rmtree(recovery)
    shutil.rmtree(mlflow_root)
    new_recovery, new_mlflow = tmp_path / "recovery-restored", tmp_path / "mlflow-restored"
    new_uri = f"sqlite:///{new_mlflow / 'mlflow.db'}"
    script("restore.sh", str(archive), "--database-url", restored_db, "--recovery-dir",
           str(new_recovery), "--mlflow-tracking-uri", new_uri, "--mlflow-root",
           str(new_mlflow), env={})  # fmt: skip
    assert stored(restored_db) == (half, half)
    assert sorted(p.name for p in new_recovery.iterdir()) == ["part-0.sqlite3", "part-1.sqlite3"]

    # A second restore into the same targets is refused without --force.
    proc = subprocess.run([str(SCRIPTS / "restore.sh"), str(archive), "--database-url",
                           restored_db, "--recovery-dir", str(new_recovery)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2 and "already has tables" in proc.stderr, proc.stderr
    assert "pm:pm@" not in proc.stderr

    produce(brokers, name, readings[half:])
    second = run_flow(brokers, name, restored_db, new_recovery)
    n = len(readings)
    assert stored(restored_db) == (n, n), "every reading stored exactly once"
    assert len(first) == half
    assert len(second) < n, "the restored run resumed; it did not start from the beginning"
    keys = {(p.equipment_id, p.ts_ms) for p in first + second}
    assert len(keys) == n, "no reading left without a prediction"

    from connectors.model_store import load_registry

    bundle = load_registry("models:/predictive_maintenance_model@production", new_uri)
    assert bundle.version == "1" and set(bundle.models) == {"pump", "turbofan_engine"}
