"""Integration tests of the migrations and PostgresWriter against a real PostgreSQL.

PM_TEST_DATABASE_URL names a role that may CREATE DATABASE; each test gets its own fresh
database, dropped afterwards.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg import sql

from connectors.migrate import (
    apply_migrations,
    migration_files,
    schema_features,
    storage_path,
)
from connectors.postgres_sink import PostgresWriter, feature_set_id
from models.schemas import Alert, Prediction, Reading

integration = pytest.mark.integration

T0 = 1_795_000_000_000  # 2026-11-18T11:06:40Z


@pytest.fixture
def db(fresh_db: str) -> str:
    """DSN of a fresh database with the migrations applied."""
    apply_migrations(fresh_db)
    return fresh_db


def query(dsn: str, text: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(text, params).fetchall()


def count(dsn: str, table: str) -> int:
    return int(query(dsn, f"SELECT count(*) FROM {table}")[0][0])


def readings(n: int, n_equipment: int = 5, t0: int = T0) -> list[Reading]:
    return [
        Reading(
            equipment_id=f"turbofan-{i % n_equipment:04d}",
            equipment_type="turbofan_engine",
            ts_ms=t0 + (i // n_equipment) * 1000,
            sensors={"T24": 642.0 + i * 0.01, "T30": 1590.5 - i * 0.02},
            settings={"op_setting_1": 0.0},
        )
        for i in range(n)
    ]


def predictions(n: int, n_equipment: int = 5) -> list[Prediction]:
    return [
        Prediction(
            equipment_id=f"turbofan-{i % n_equipment:04d}",
            equipment_type="turbofan_engine",
            ts_ms=T0 + (i // n_equipment) * 180_000,
            rul=100.0 - i,
            rul_unit="cycles",
            rul_hours=None if i % 2 else (100.0 - i) * 0.5,
            rul_lower=90.0 - i,
            rul_upper=110.0 - i,
            health=1.0 - i / (2 * n),
            anomaly_score=i / n,
            status="ok",
            model_name="pm",
            model_version="3",
            top_sensors=("T24", "T30"),
        )
        for i in range(n)
    ]


def alerts(n: int) -> list[Alert]:
    return [
        Alert(
            alert_id=f"alert-{i}",
            equipment_id=f"turbofan-{i % 5:04d}",
            ts_ms=T0 + i * 1000,
            rule="rul_below",
            severity="warning",
            state="firing",
            value=12.5,
            threshold=20.0,
            message=f"RUL below threshold ({i})",
            evidence={"rul": 12.5, "window": [1, 2, 3]},
        )
        for i in range(n)
    ]


def features(n: int, fs: str) -> list[tuple[str, int, str, np.ndarray]]:
    return [(f"turbofan-{i % 5:04d}", T0 + (i // 5) * 1000, fs, np.arange(4) + i) for i in range(n)]


# -- migrations --------------------------------------------------------------------------


@integration
def test_migrations_apply_in_order_once_and_files_are_idempotent(fresh_db: str) -> None:
    versions = [p.stem for p in migration_files()]
    assert versions == sorted(versions) and versions[0] == "001_core"

    assert apply_migrations(fresh_db) == versions
    assert apply_migrations(fresh_db) == []
    assert [r[0] for r in query(fresh_db, "SELECT version FROM schema_migrations ORDER BY 1")] == (
        versions
    )
    # Each file is idempotent by itself too: running them all again changes nothing.
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        for path in migration_files():
            conn.execute(path.read_text())
    assert apply_migrations(fresh_db) == []


@integration
def test_concurrent_migrators_apply_each_file_once(fresh_db: str) -> None:
    results: list[list[str]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run() -> None:
        try:
            barrier.wait()
            results.append(apply_migrations(fresh_db))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(results[0] + results[1]) == [p.stem for p in migration_files()]


@pytest.fixture(params=["postgresql", "timescaledb"])
def any_db(request: pytest.FixtureRequest) -> str:
    """A fresh migrated database on each schema path: the PostgreSQL 15 server (plain path
    unless it has the extension) and the TimescaleDB test server (PM_TEST_TIMESCALE_URL)."""
    fixture = "fresh_db" if request.param == "postgresql" else "fresh_tsdb"
    dsn = str(request.getfixturevalue(fixture))
    apply_migrations(dsn)
    return dsn


@integration
def test_storage_path_is_recorded_and_matches_the_schema(any_db: str) -> None:
    db = any_db
    feats = schema_features(db)
    assert {"hypertable", "compression", "retention", "continuous_aggregate"} <= set(feats)
    path = storage_path(db)
    if db == os.environ.get("PM_TEST_TIMESCALE_URL"):
        assert path == "timescaledb"
    tsdb_installed = query(
        db, "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'"
    )[0][0]
    if path == "plain":
        partitioned = {
            r[0] for r in query(db, "SELECT partrelid::regclass::text FROM pg_partitioned_table")
        }
        assert partitioned == {"sensor_readings", "sensor_features", "predictions"}
        assert query(db, "SELECT relkind FROM pg_class WHERE relname = 'health_hourly'") == [("v",)]
        assert feats["hypertable"][0] is False
        assert feats["compression"][0] is False
        assert "pm_drop_older_than" in feats["retention"][1]
    else:
        assert tsdb_installed == 1
        hypertables = {
            r[0]
            for r in query(db, "SELECT hypertable_name FROM timescaledb_information.hypertables")
        }
        assert {
            "sensor_readings",
            "sensor_features",
            "predictions",
            "alerts",
        } <= hypertables
        assert all(feats[f][0] for f in ("hypertable", "compression", "continuous_aggregate"))
        assert query(
            db,
            "SELECT count(*) FROM timescaledb_information.continuous_aggregates"
            " WHERE view_name = 'health_hourly'",
        ) == [(1,)]


@integration
def test_plain_partitions_and_retention_helpers(db: str) -> None:
    if storage_path(db) != "plain":
        pytest.skip("TimescaleDB path: partitions are chunks managed by TimescaleDB")
    old = "2020-01-01T06:00:00Z"
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO sensor_readings (equipment_id, ts, sensors) VALUES"
            " ('a', %s, '{}'), ('a', now(), '{}')",
            (old,),
        )
        assert query(db, "SELECT count(*) FROM sensor_readings_default") == [(1,)]
        # Creating the partition for that day moves the row out of the DEFAULT partition.
        conn.execute("SELECT pm_ensure_partitions('sensor_readings', '2020-01-01', 1)")
        assert query(db, "SELECT count(*) FROM sensor_readings_default") == [(0,)]
        assert query(db, "SELECT count(*) FROM sensor_readings_p20200101") == [(1,)]
        dropped = conn.execute(
            "SELECT pm_drop_older_than('sensor_readings', INTERVAL '30 days')"
        ).fetchone()
        assert dropped == (1,)
        assert conn.execute("SELECT pm_maintain()").fetchone() == (0,)  # all present already
    assert count(db, "sensor_readings") == 1
    assert query(db, "SELECT to_regclass('sensor_readings_p20200101')") == [(None,)]


@integration
def test_health_hourly_aggregates_predictions(db: str) -> None:
    preds = predictions(200)  # every 3 minutes per equipment: 40 over 2 hours
    with PostgresWriter(db) as w:
        w.add_predictions(preds)
    rows = query(
        db,
        "SELECT bucket, equipment_id, health_avg, health_min, rul_hours_min,"
        " anomaly_score_max, predictions FROM health_hourly ORDER BY 1, 2",
    )
    expected: dict[tuple[int, str], list[Prediction]] = {}
    for p in preds:
        expected.setdefault((p.ts_ms // 3_600_000, p.equipment_id), []).append(p)
    assert len(rows) == len(expected)
    for bucket, eq, h_avg, h_min, rul_min, an_max, n in rows:
        group = expected[(int(bucket.timestamp()) // 3600, eq)]
        assert n == len(group)
        assert h_avg == pytest.approx(sum(p.health for p in group) / len(group))
        assert h_min == pytest.approx(min(p.health for p in group))
        hours = [p.rul_hours for p in group if p.rul_hours is not None]
        assert rul_min == (pytest.approx(min(hours)) if hours else None)
        assert an_max == pytest.approx(max(p.anomaly_score for p in group))


# -- writer ------------------------------------------------------------------------------


@integration
def test_replayed_batch_is_written_exactly_once(db: str) -> None:
    fs = feature_set_id(["a", "b", "c", "d"])
    batch = (readings(500), predictions(100), alerts(20), features(50, fs))
    w = PostgresWriter(db)
    for _ in range(2):  # the second round is a replay of the same items
        w.add_readings(batch[0])
        w.add_predictions(batch[1])
        w.add_alerts(batch[2])
        w.add_features(batch[3])
        w.add_feature_set(fs, ["a", "b", "c", "d"])
        w.flush()
    w.close()

    assert count(db, "sensor_readings") == 500
    assert count(db, "predictions") == 100
    assert count(db, "alerts") == 20
    assert count(db, "sensor_features") == 50
    assert w.rows_written == {
        "equipment": 5,
        "sensor_readings": 500,
        "sensor_features": 50,
        "predictions": 100,
        "alerts": 20,
    }
    assert w.rows_received["sensor_readings"] == 1000
    assert query(db, "SELECT names FROM feature_sets") == [(["a", "b", "c", "d"],)]

    # Values survive the round trip.
    r = batch[0][7]
    got = query(
        db,
        "SELECT (extract(epoch FROM ts) * 1000)::bigint, sensors, settings FROM sensor_readings"
        " WHERE equipment_id = %s ORDER BY ts OFFSET 1 LIMIT 1",
        (r.equipment_id,),
    )
    assert got == [(r.ts_ms, r.sensors, r.settings)]
    p = batch[1][3]
    got = query(
        db,
        "SELECT rul, rul_hours, health, top_sensors, model_version FROM predictions"
        " WHERE equipment_id = %s AND ts = to_timestamp(%s / 1000.0)",
        (p.equipment_id, p.ts_ms),
    )
    assert got == [(p.rul, p.rul_hours, p.health, list(p.top_sensors), p.model_version)]
    assert query(db, "SELECT evidence FROM alerts WHERE alert_id = 'alert-3'") == [
        ({"rul": 12.5, "window": [1, 2, 3]},)
    ]
    assert query(db, "SELECT features FROM sensor_features ORDER BY ts, equipment_id LIMIT 1") == [
        ([0.0, 1.0, 2.0, 3.0],)
    ]


@integration
def test_flush_when_a_buffer_reaches_buffer_size(db: str) -> None:
    w = PostgresWriter(db, buffer_size=10, write_interval_s=1e9)
    batch = readings(10)
    w.add_readings(batch[:9])
    assert w.maybe_flush(0.0) is False
    assert count(db, "sensor_readings") == 0
    w.add_readings(batch[9:])
    assert w.maybe_flush(0.1) is True
    assert count(db, "sensor_readings") == 10
    assert w.pending == 0
    w.close()


@integration
def test_flush_when_write_interval_elapses(db: str) -> None:
    w = PostgresWriter(db, buffer_size=1000, write_interval_s=10.0)
    assert w.maybe_flush(100.0) is False  # starts the clock; nothing pending
    w.add_predictions(predictions(3))
    assert w.maybe_flush(109.9) is False
    assert count(db, "predictions") == 0
    assert w.maybe_flush(110.0) is True
    assert count(db, "predictions") == 3
    w.add_predictions(predictions(6)[3:])
    assert w.maybe_flush(115.0) is False  # 5 s since the last flush
    assert w.maybe_flush(120.0) is True
    assert count(db, "predictions") == 6
    w.close()


@integration
def test_max_buffer_flushes_inside_add(db: str) -> None:
    w = PostgresWriter(db, buffer_size=40, write_interval_s=1e9, max_buffer=50)
    batch = readings(60)
    for i in range(0, 60, 10):
        w.add_readings(batch[i : i + 10])
    assert w.flushes == 1
    assert count(db, "sensor_readings") == 50
    assert w.pending == 10
    w.close()
    assert count(db, "sensor_readings") == 60


@integration
def test_equipment_upserted_with_first_and_last_seen(db: str) -> None:
    w = PostgresWriter(db)
    w.add_alerts(alerts(1))  # alerts carry no equipment type
    w.flush()
    assert query(db, "SELECT equipment_type FROM equipment") == [(None,)]

    w.add_readings(readings(10, n_equipment=1, t0=T0 + 60_000))
    w.flush()
    w.add_readings(readings(5, n_equipment=1, t0=T0 + 600_000))
    w.add_readings(readings(1, n_equipment=1, t0=T0 - 5_000))
    w.flush()
    w.close()
    rows = query(
        db,
        "SELECT equipment_id, equipment_type, (extract(epoch FROM first_seen) * 1000)::bigint,"
        " (extract(epoch FROM last_seen) * 1000)::bigint FROM equipment",
    )
    assert rows == [("turbofan-0000", "turbofan_engine", T0 - 5_000, T0 + 600_000 + 4_000)]


@integration
def test_database_error_raises_at_once_and_keeps_the_buffer(fresh_db: str) -> None:
    w = PostgresWriter(fresh_db, retry_initial_s=0.01)
    w.add_readings(readings(7))
    with pytest.raises(psycopg.errors.UndefinedTable):
        w.flush()  # no schema yet: not a fault that retrying can fix
    assert w.pending == 7 and w.retries == 0
    apply_migrations(fresh_db)
    w.close()
    assert count(fresh_db, "sensor_readings") == 7


def _backend_pid(dsn: str, app: str, waiting_on_lock: bool, timeout_s: float = 10.0) -> int:
    deadline = time.monotonic() + timeout_s
    cond = "AND wait_event_type = 'Lock'" if waiting_on_lock else ""
    while time.monotonic() < deadline:
        rows = query(
            dsn,
            f"SELECT pid FROM pg_stat_activity WHERE application_name = %s {cond}",
            (app,),
        )
        if rows:
            return int(rows[0][0])
        time.sleep(0.01)
    raise AssertionError(f"no backend for {app} (waiting_on_lock={waiting_on_lock})")


@integration
def test_connection_killed_between_and_during_flushes_loses_nothing(db: str) -> None:
    app = f"pm-writer-{uuid.uuid4().hex[:8]}"
    w = PostgresWriter(db, retry_initial_s=0.05, retry_max_s=0.2, application_name=app)
    batch = readings(3000)
    w.add_readings(batch[:1000])
    w.flush()

    # 1. Killed while idle: the next flush notices, reconnects and writes.
    query(db, "SELECT pg_terminate_backend(%s)", (_backend_pid(db, app, False),))
    w.add_readings(batch[1000:2000])
    w.flush()
    assert count(db, "sensor_readings") == 2000
    assert w.reconnects == 1

    # 2. Killed mid-transaction: the staged rows were COPYed and the INSERT is waiting on
    # a lock we hold when the backend dies; the flush retries the whole batch.
    errors: list[BaseException] = []
    with psycopg.connect(db) as locker:
        locker.execute("LOCK TABLE sensor_readings IN EXCLUSIVE MODE")
        w.add_readings(batch[2000:])

        def flush() -> None:
            try:
                w.flush()
            except BaseException as exc:
                errors.append(exc)

        flusher = threading.Thread(target=flush)
        flusher.start()
        query(db, "SELECT pg_terminate_backend(%s)", (_backend_pid(db, app, True),))
        locker.rollback()
    flusher.join(30)
    assert not flusher.is_alive() and errors == []
    assert w.retries >= 2 and w.reconnects == 2
    assert count(db, "sensor_readings") == 3000
    assert w.rows_written["sensor_readings"] == 3000
    w.close()


@integration
def test_flush_blocks_while_database_is_unreachable_then_writes_all(
    admin_url: str, db: str
) -> None:
    app = f"pm-writer-{uuid.uuid4().hex[:8]}"
    w = PostgresWriter(db, retry_initial_s=0.05, retry_max_s=0.2, application_name=app)
    w.add_readings(readings(100))
    w.flush()
    dbname = psycopg.conninfo.conninfo_to_dict(db)["dbname"]
    ident = sql.Identifier(str(dbname))
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(ident))
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (app,),
        )
        w.add_readings(readings(500, t0=T0 + 10_000_000))
        flusher = threading.Thread(target=w.flush)
        flusher.start()
        deadline = time.monotonic() + 10
        while w.retries < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert w.retries >= 3
        assert flusher.is_alive() and w.pending == 500  # blocked, nothing dropped
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(ident))
    flusher.join(30)
    assert not flusher.is_alive()
    assert w.pending == 0
    assert count(db, "sensor_readings") == 600
    w.close()


def test_unreachable_database_blocks_with_capped_backoff_and_keeps_items() -> None:
    sleeps: list[float] = []

    def sleep(s: float) -> None:
        sleeps.append(s)
        if len(sleeps) == 5:
            w.max_retry_total_s = 0.0  # give up at the next failure

    w = PostgresWriter(
        "postgresql://pm@127.0.0.1:1/pm",
        retry_initial_s=0.5,
        retry_max_s=2.0,
        connect_timeout_s=2,
        sleep=sleep,
    )
    w.add_readings(readings(3))
    with pytest.raises(psycopg.OperationalError):
        w.flush()
    assert w.retries == 6 and w.pending == 3 and w.rows_received["sensor_readings"] == 0
    nominal = [0.5, 1.0, 2.0, 2.0, 2.0]  # doubling, capped at retry_max_s; +-20% jitter
    assert all(0.8 * n <= s <= 1.2 * n for s, n in zip(sleeps, nominal, strict=True))
    assert "OperationalError" in w.last_error


# -- throughput (a measurement, not an assertion) ----------------------------------------


@integration
@pytest.mark.bench
@pytest.mark.skipif(not os.environ.get("PM_BENCH"), reason="benchmark: set PM_BENCH=1 to run")
def test_copy_throughput_100k_readings(db: str) -> None:
    n = 100_000
    sensors = {f"s{j}": 600.0 + j for j in range(21)}
    batch = [
        Reading(
            f"turbofan-{i % 100:04d}",
            "turbofan_engine",
            T0 + (i // 100) * 1000,
            sensors,
        )
        for i in range(n)
    ]
    w = PostgresWriter(db, buffer_size=10_000, max_buffer=10_000)
    started = time.perf_counter()
    for i in range(0, n, 10_000):
        w.add_readings(batch[i : i + 10_000])  # flushes at max_buffer
    w.flush()
    elapsed = time.perf_counter() - started
    w.close()
    assert count(db, "sensor_readings") == n
    print(
        f"\nPostgresWriter: {n} readings (21 sensors) in {elapsed:.2f} s"
        f" = {n / elapsed:,.0f} rows/s"
    )
