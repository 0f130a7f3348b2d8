"""The migrations' TimescaleDB path on a real TimescaleDB (PM_TEST_TIMESCALE_URL: PostgreSQL 17
with TimescaleDB 2.23, the PGlite WASM build that infra/scripts/timescaledb.sh serves).

That server cannot COPY, so the COPY writer is proven on PostgreSQL 15 (test_postgres.py);
here rows go in with INSERT, and the writer's own INSERT ... SELECT ... ON CONFLICT statements
run from staging tables filled by INSERT. The fleet tool's queries must give the same answers
as on PostgreSQL 15 (the dashboards' queries: test_dashboards.py). It has no background
workers: the policies are run in the foreground with CALL run_job(), as an operator would.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from connectors.migrate import apply_migrations, migration_files, schema_features, storage_path
from connectors.postgres_sink import _STAGES

pytestmark = pytest.mark.integration

HYPERTABLES = {
    # table -> chunk interval
    "sensor_readings": timedelta(days=1),
    "sensor_features": timedelta(days=1),
    "predictions": timedelta(days=7),
    "alerts": timedelta(days=30),
    "feature_drift": timedelta(days=30),
}


@pytest.fixture
def tsdb(fresh_tsdb: str) -> str:
    """The TimescaleDB server, emptied, with the migrations applied."""
    assert apply_migrations(fresh_tsdb) == [p.stem for p in migration_files()]
    return fresh_tsdb


def rows(dsn: str, text: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(text, params).fetchall()


def run_jobs(dsn: str, proc: str, table: str) -> int:
    """Run the policy jobs ``proc`` of ``table`` now, in this session; return how many ran."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        ids = conn.execute(
            "SELECT job_id FROM timescaledb_information.jobs"
            " WHERE proc_name = %s AND hypertable_name = %s",
            (proc, table),
        ).fetchall()
        for (job_id,) in ids:
            conn.execute("CALL run_job(%s)", (job_id,))
    return len(ids)


def chunks(dsn: str, table: str) -> tuple[int, int]:
    """(chunks, compressed chunks) of a hypertable."""
    ((n, compressed),) = rows(
        dsn,
        "SELECT count(*), count(*) FILTER (WHERE is_compressed)"
        " FROM timescaledb_information.chunks WHERE hypertable_name = %s",
        (table,),
    )
    return int(n), int(compressed)


def test_migrations_take_the_timescaledb_path(
    tsdb: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ((version,),) = rows(tsdb, "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
    ((server,),) = rows(tsdb, "SHOW server_version")
    assert version.startswith("2.")
    assert storage_path(tsdb) == "timescaledb"
    feats = schema_features(tsdb)
    assert feats["hypertable"] == (True, f"timescaledb {version}")
    not_enabled = {name: detail for name, (on, detail) in feats.items() if not on}
    assert not_enabled == {}, "a TimescaleDB feature fell back to the plain path"

    found = dict(
        rows(
            tsdb,
            "SELECT h.hypertable_name, d.time_interval"
            " FROM timescaledb_information.hypertables h"
            " JOIN timescaledb_information.dimensions d USING (hypertable_schema, hypertable_name)"
            " WHERE h.hypertable_schema = 'public' AND d.column_name = 'ts'",
        )
    )
    assert found == HYPERTABLES
    with capsys.disabled():
        print(f"\nPostgreSQL {server}, TimescaleDB {version}; hypertables (chunk interval):")
        for table, interval in sorted(found.items()):
            print(f"  {table:<16} {interval}")

    # Running the migrations again, or any file by itself again, changes nothing.
    assert apply_migrations(tsdb) == []
    with psycopg.connect(tsdb, autocommit=True) as conn:
        for path in migration_files():
            conn.execute(path.read_text())
    assert schema_features(tsdb) == feats


def test_compression_settings_and_policies(tsdb: str) -> None:
    compressed = {
        r[0]
        for r in rows(
            tsdb,
            "SELECT hypertable_name FROM timescaledb_information.hypertables"
            " WHERE compression_enabled",
        )
    }
    assert compressed == {"sensor_readings", "sensor_features", "predictions"}
    settings = rows(
        tsdb,
        "SELECT hypertable_name, attname, segmentby_column_index, orderby_column_index,"
        " orderby_asc FROM timescaledb_information.compression_settings",
    )
    assert set(settings) == {
        ("predictions", "equipment_id", 1, None, None),
        ("predictions", "ts", None, 1, False),
        ("predictions", "model_version", None, 2, True),
        ("sensor_features", "equipment_id", 1, None, None),
        ("sensor_features", "ts", None, 1, False),
        ("sensor_features", "feature_set", None, 2, True),
        ("sensor_readings", "equipment_id", 1, None, None),
        ("sensor_readings", "ts", None, 1, False),
    }

    jobs = rows(
        tsdb,
        "SELECT proc_name, hypertable_name, config FROM timescaledb_information.jobs"
        " WHERE hypertable_schema = 'public' ORDER BY 1, 2",
    )
    policies = {(proc, table): config for proc, table, config in jobs}
    assert set(policies) == {
        ("policy_compression", "predictions"),
        ("policy_compression", "sensor_features"),
        ("policy_compression", "sensor_readings"),
        ("policy_refresh_continuous_aggregate", "health_hourly"),
        ("policy_retention", "feature_drift"),
        ("policy_retention", "predictions"),
        ("policy_retention", "sensor_features"),
        ("policy_retention", "sensor_readings"),
    }
    for table in ("predictions", "sensor_features", "sensor_readings"):
        assert policies[("policy_compression", table)]["compress_after"] == "7 days"
    retention = {t: c["drop_after"] for (p, t), c in policies.items() if p == "policy_retention"}
    assert retention == {
        "sensor_readings": "90 days",
        "sensor_features": "90 days",
        "predictions": "730 days",
        "feature_drift": "365 days",
    }
    refresh = policies[("policy_refresh_continuous_aggregate", "health_hourly")]
    assert (refresh["start_offset"], refresh["end_offset"]) == ("3 days", "01:00:00")


def test_policies_compress_and_drop_chunks_and_the_writer_sql_still_upserts(tsdb: str) -> None:
    # One reading a day for 120 days: one chunk per day.
    with psycopg.connect(tsdb, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO sensor_readings (equipment_id, ts, sensors)"
            " SELECT 'pump-0001', now() - make_interval(days => i), jsonb_build_object('x', i)"
            " FROM generate_series(0, 119) AS i"
        )
    assert chunks(tsdb, "sensor_readings") == (120, 0)

    assert run_jobs(tsdb, "policy_retention", "sensor_readings") == 1
    n, _ = chunks(tsdb, "sensor_readings")
    assert 89 <= n <= 91  # chunks wholly older than 90 days are gone
    ((oldest,),) = rows(tsdb, "SELECT min(ts) FROM sensor_readings")
    assert oldest > datetime.now(UTC) - timedelta(days=91)

    assert run_jobs(tsdb, "policy_compression", "sensor_readings") == 1
    n, compressed = chunks(tsdb, "sensor_readings")
    assert compressed >= n - 8 and compressed > 0  # all but the last 7-8 days
    assert rows(tsdb, "SELECT count(*), sum((sensors->>'x')::int) FROM sensor_readings") == [
        (n, sum(range(n)))
    ]  # compressed rows read back unchanged

    # A replay (recovery) writes old rows again: the writer's idempotent INSERT ... SELECT
    # must skip them in compressed chunks and add the new ones.
    ddl, _, insert = _STAGES["sensor_readings"]
    with psycopg.connect(tsdb) as conn:
        conn.execute(f"CREATE TEMP TABLE pm_stage_sensor_readings ({ddl})")
        conn.execute(
            "INSERT INTO pm_stage_sensor_readings (equipment_id, ts, settings, sensors)"
            " SELECT equipment_id, ts, settings, sensors || '{\"replayed\": true}'"
            " FROM sensor_readings WHERE ts < now() - INTERVAL '30 days'"
            " UNION ALL SELECT 'pump-0002', now() - INTERVAL '20 days', '{}', '{\"x\": -1}'"
        )
        cur = conn.execute(insert)
        assert cur.rowcount == 1
    assert rows(tsdb, "SELECT count(*) FROM sensor_readings WHERE sensors ? 'replayed'") == [(0,)]
    assert rows(tsdb, "SELECT count(*) FROM sensor_readings") == [(n + 1,)]

    # pm_drop_older_than, the plain path's retention, also works on hypertables.
    ((dropped,),) = rows(tsdb, "SELECT pm_drop_older_than('sensor_readings', INTERVAL '10 days')")
    assert dropped >= 79
    ((oldest,),) = rows(tsdb, "SELECT min(ts) FROM sensor_readings")
    assert oldest > datetime.now(UTC) - timedelta(days=11)


def test_health_hourly_continuous_aggregate(tsdb: str) -> None:
    assert rows(
        tsdb,
        "SELECT materialized_only, materialization_hypertable_name IS NOT NULL"
        " FROM timescaledb_information.continuous_aggregates WHERE view_name = 'health_hourly'",
    ) == [(False, True)]
    t0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=5)
    values = [
        (f"pump-000{e}", t0 + timedelta(minutes=10 * i), 1.0 - 0.01 * i - 0.1 * e, 100.0 - i)
        for e in (1, 2)
        for i in range(18)  # 3 hours of predictions every 10 minutes
    ]
    insert = (
        "INSERT INTO predictions (equipment_id, ts, model_name, model_version, rul, rul_unit,"
        " rul_hours, health, anomaly_score, status)"
        " VALUES (%s, %s, 'pm', '1', %s, 'hours', %s, %s, 0.5, 'ok')"
    )
    with psycopg.connect(tsdb, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.executemany(insert, [(e, ts, r, r, h) for e, ts, h, r in values])
        conn.execute("CALL refresh_continuous_aggregate('health_hourly', NULL, NULL)")
        ((materialized,),) = conn.execute(
            "SELECT count(*) FROM _timescaledb_internal."
            + conn.execute(
                "SELECT materialization_hypertable_name"
                " FROM timescaledb_information.continuous_aggregates"
                " WHERE view_name = 'health_hourly'"
            ).fetchall()[0][0]
        ).fetchall()
    assert materialized == 6  # 2 machines x 3 hours, materialised by the refresh

    def expected() -> list[tuple[Any, ...]]:
        return rows(
            tsdb,
            "SELECT time_bucket(INTERVAL '1 hour', ts), equipment_id, avg(health), min(health),"
            " min(rul_hours), max(anomaly_score), count(*) FROM predictions GROUP BY 1, 2"
            " ORDER BY 1, 2",
        )

    query = (
        "SELECT bucket, equipment_id, health_avg, health_min, rul_hours_min, anomaly_score_max,"
        " predictions FROM health_hourly ORDER BY 1, 2"
    )
    got = rows(tsdb, query)
    assert len(got) == 6 and [g[:2] for g in got] == [e[:2] for e in expected()]
    for g, e in zip(got, expected(), strict=True):
        assert g[2:] == pytest.approx(e[2:])
    assert {g[6] for g in got} == {6}

    # Real-time aggregate: rows newer than the last refresh show up without a refresh.
    with psycopg.connect(tsdb, autocommit=True) as conn:
        conn.execute(insert, ("pump-0001", t0 + timedelta(hours=4), 40.0, 40.0, 0.2))
    got = rows(tsdb, query)
    assert len(got) == 7 and got[-1][1] == "pump-0001" and got[-1][3] == pytest.approx(0.2)


def fleet_answers(dsn: str) -> dict[str, Any]:
    """Everything the fleet tool (pm fleet / alerts, the web page) reads, for the seed."""
    from connectors import fleet_queries as fq
    from connectors.fleet_fatigue import fatigue

    with fq.connect(dsn) as conn:
        out: dict[str, Any] = {
            "status": [asdict(m) for m in fq.fleet_status(conn)],
            "machine": asdict(fq.machine(conn, "pump-0001")),  # type: ignore[arg-type]
            "history": fq.history(conn, "turbofan-0001"),
            "alerts_for": fq.alerts_for(conn, "pump-0001"),
            "open": [
                {k: v for k, v in r.items() if k != "acknowledged_at"} for r in fq.open_alerts(conn)
            ],
            "spans": fq.observed_spans(conn),
        }
        ack = fq.acknowledge(conn, "a3", "alice")
        out["ack"] = (ack.alert_id, ack.rule, ack.acknowledged_by, ack.already)
        out["ack_again"] = fq.acknowledge(conn, "a3", "bob").already
        report = fatigue(fq.all_alerts(conn), fq.observed_spans(conn))
        out["fatigue"] = report.to_json_dict()
    return _when_acknowledged_as_flag(out)


def _when_acknowledged_as_flag(node: Any) -> Any:
    """``acknowledged_at`` and the times to acknowledge (they count from now(), the time of
    the run) as whether they are set."""
    if isinstance(node, dict):
        return {
            k: (v is not None)
            if re.fullmatch(r"acknowledged_at|ack_\w+_s", k)
            else _when_acknowledged_as_flag(v)
            for k, v in node.items()
        }
    if isinstance(node, list | tuple):
        return type(node)(_when_acknowledged_as_flag(v) for v in node)
    return node


def test_the_fleet_tool_answers_the_same_on_both_schema_paths(
    fresh_db: str, fresh_tsdb: str
) -> None:
    from tests.test_dashboards import seed

    answers = {}
    for dsn in (fresh_db, fresh_tsdb):
        apply_migrations(dsn)
        seed(dsn)
        answers[storage_path(dsn)] = fleet_answers(dsn)
    plain, tsdb = answers["plain"], answers["timescaledb"]
    assert [m["equipment_id"] for m in tsdb["status"]] == ["pump-0001", "turbofan-0001"]
    assert tsdb["ack"] == ("a3", "rul_low", "alice", False) and tsdb["ack_again"] is True
    assert len(tsdb["history"]) == 2 and len(tsdb["alerts_for"]) == 3
    for key in plain:
        assert tsdb[key] == plain[key], key
