"""Integration tests of the feature_drift migration and connectors.drift_store against a
real PostgreSQL.

PM_TEST_DATABASE_URL names a role that may CREATE DATABASE; each test gets its own fresh
database, dropped afterwards.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import psycopg
import pytest

from connectors.drift_store import read_drift, write_drift
from connectors.migrate import apply_migrations, migration_files, storage_path
from models.drift import DriftMonitor, DriftReference

pytestmark = pytest.mark.integration

T0 = 1_795_000_000_000  # 2026-11-18T11:06:40Z
NAMES = ["T24__mean_30", "T30__std_10", "P15__last_60", "Nf__slope_30"]


@pytest.fixture
def db(fresh_db: str) -> str:
    """DSN of a new database with the migrations applied (dropped after the test)."""
    apply_migrations(fresh_db)
    return fresh_db


def query(dsn: str, text: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(text, params).fetchall()


def test_migration_creates_the_table_on_the_recorded_path(db: str) -> None:
    assert "004_feature_drift" in [p.stem for p in migration_files()]
    cols = query(
        db,
        "SELECT column_name, data_type FROM information_schema.columns"
        " WHERE table_name = 'feature_drift' ORDER BY ordinal_position",
    )
    assert cols == [
        ("ts", "timestamp with time zone"),
        ("equipment_type", "text"),
        ("model_version", "text"),
        ("feature", "text"),
        ("psi", "double precision"),
    ]
    pk = query(
        db,
        "SELECT a.attname FROM pg_index i"
        " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)"
        " WHERE i.indrelid = 'feature_drift'::regclass AND i.indisprimary"
        " ORDER BY array_position(i.indkey::int2[], a.attnum)",
    )
    assert [r[0] for r in pk] == ["equipment_type", "model_version", "feature", "ts"]
    retention = query(
        db, "SELECT enabled, detail FROM schema_features WHERE feature = 'feature_drift_retention'"
    )
    assert len(retention) == 1
    if storage_path(db) == "plain":
        assert retention[0][0] is False and "pm_drop_older_than" in retention[0][1]
        assert query(db, "SELECT to_regclass('feature_drift_ts_brin')::text") == [
            ("feature_drift_ts_brin",)
        ]
        # the retention helper the detail names works on this plain table
        write_drift(db, 1_577_880_000_000, "pump", "1", NAMES, np.array([0.4, 0, 0, 0]))  # 2020
        write_drift(db, T0, "pump", "1", NAMES, np.array([0.4, 0, 0, 0]))
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute("SELECT pm_drop_older_than('feature_drift', INTERVAL '365 days')")
        assert [r[0] for r in read_drift(db, "pump")] == [T0]
    else:
        hypertables = query(
            db,
            "SELECT hypertable_name FROM timescaledb_information.hypertables"
            " WHERE hypertable_name = 'feature_drift'",
        )
        assert hypertables == [("feature_drift",)]


def test_migration_file_runs_again_without_change(db: str) -> None:
    write_drift(db, T0, "pump", "3", NAMES, np.array([0.3, 0.0, 0.0, 0.0]))
    path = next(p for p in migration_files() if p.stem == "004_feature_drift")
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(path.read_text())
    assert query(db, "SELECT count(*) FROM feature_drift") == [(1,)]
    assert apply_migrations(db) == []


def test_write_keeps_features_above_the_floor_plus_the_max_and_is_idempotent(db: str) -> None:
    psi = np.array([0.02, 0.31, 0.12, 0.05])
    assert write_drift(db, T0, "turbofan_engine", "7", NAMES, psi, floor=0.1) == 2
    assert write_drift(db, T0, "turbofan_engine", "7", NAMES, psi, floor=0.1) == 0  # replay
    rows = read_drift(db, "turbofan_engine")
    assert rows == [
        (T0, "7", "P15__last_60", pytest.approx(0.12)),
        (T0, "7", "T30__std_10", pytest.approx(0.31)),
    ]
    # A calm evaluation still leaves its maximum; another model version is another key.
    calm = np.array([0.01, 0.02, 0.005, 0.03])
    assert write_drift(db, T0 + 60_000, "turbofan_engine", "7", NAMES, calm) == 1
    assert write_drift(db, T0 + 60_000, "turbofan_engine", "8", NAMES, calm) == 1
    assert write_drift(db, T0 + 60_000, "pump", "8", NAMES, calm) == 1
    assert [r[2] for r in read_drift(db, "turbofan_engine", since_ms=T0 + 1)] == [
        "Nf__slope_30",
        "Nf__slope_30",
    ]
    assert len(read_drift(db, "turbofan_engine", model_version="7")) == 3
    ts = query(db, "SELECT min(ts), max(ts) FROM feature_drift")[0]
    assert int(ts[0].timestamp() * 1000) == T0 and int(ts[1].timestamp() * 1000) == T0 + 60_000


def test_write_on_an_open_connection_commits_unless_the_caller_holds_a_transaction(
    db: str,
) -> None:
    psi = np.array([0.5, 0.0, 0.0, 0.0])
    with psycopg.connect(db) as conn:
        assert write_drift(conn, T0, "pump", "1", NAMES, psi) == 1
    assert len(read_drift(db, "pump")) == 1  # committed on its own
    with psycopg.connect(db) as conn:
        with conn.transaction():
            conn.execute("SELECT 1")
            assert write_drift(conn, T0 + 1000, "pump", "1", NAMES, psi) == 1
            assert len(read_drift(db, "pump")) == 1  # not visible before the caller commits
        assert len(read_drift(db, "pump")) == 2


def test_monitor_output_round_trips(db: str) -> None:
    rng = np.random.default_rng(0)
    ref = DriftReference.from_training(rng.normal(size=(3000, len(NAMES))), NAMES)
    mon = DriftMonitor(ref)
    live = rng.normal(size=(3000, len(NAMES)))
    live[:, 1] += 1.0
    mon.update(live)
    psi = mon.psi()
    write_drift(db, T0, "turbofan_engine", "2", NAMES, psi)
    rows = read_drift(db, "turbofan_engine", "2")
    assert [(r[2], r[3]) for r in rows] == [("T30__std_10", float(psi[1]))]
