"""Maintenance windows (migration 008, ``pm maintenance``): a machine's alerts inside its
window are stored in ``alerts`` and the ledger ('suppressed') but not sent; checked with
the real PostgreSQL and a real HTTP receiver through Apprise."""

from __future__ import annotations

import json
import time

import psycopg
import pytest

from connectors import metrics
from connectors.alert_delivery import build_worker
from connectors.maintenance import WindowCache, list_windows
from connectors.migrate import apply_migrations
from jobs.fleet import main as pm
from models.schemas import iso_to_ms
from tests.http_receiver import HttpReceiver
from tests.test_alert_delivery import FAST, delivered_ids, wait_until
from tests.test_notify import make_alert

pytestmark = pytest.mark.integration

T_IN = iso_to_ms("2026-11-27T10:00:00Z")
T_AFTER = iso_to_ms("2026-11-27T13:00:00Z")


@pytest.fixture
def db(fresh_db: str) -> str:
    apply_migrations(fresh_db)
    return fresh_db


def add(db: str, *args: str) -> int:
    return pm(["maintenance", "add", *args, "--database-url", db])


def test_alerts_inside_a_window_are_recorded_not_sent(db: str, capsys) -> None:
    window = ["--from", "2026-11-27T09:00:00Z", "--to", "2026-11-27T12:00:00Z"]
    assert add(db, "turbofan-0007", *window, "--reason", "bearing swap", "--by", "alice") == 0
    assert "alerts are recorded, not notified" in capsys.readouterr().out
    suppressed = metrics.ALERT_DELIVERIES.labels("suppressed")
    before = suppressed._value.get()
    inside = make_alert(alert_id="a000000000000001", ts_ms=T_IN)
    after = make_alert(alert_id="a000000000000002", ts_ms=T_AFTER)
    other = make_alert(alert_id="a000000000000003", ts_ms=T_IN, equipment_id="pump-0001")
    with HttpReceiver() as rx:
        worker = build_worker([rx.apprise_url("/hook")], db, None, FAST)
        try:
            assert worker.submit([inside, after, other]) == 3
            wait_until(lambda: len(delivered_ids(rx.requests)) == 2, what="two delivered")
            assert worker.wait_idle(10)
            assert worker.submit([inside, after, other]) == 0  # a replay changes nothing
            assert worker.wait_idle(10)
            time.sleep(3 * FAST.poll_interval_s)
        finally:
            worker.close()
        assert delivered_ids(rx.requests) == {after.alert_id: 1, other.alert_id: 1}
    assert suppressed._value.get() - before == 1
    with psycopg.connect(db) as conn:
        states = dict(conn.execute("SELECT alert_id, state FROM alert_deliveries").fetchall())
        stored = {r[0] for r in conn.execute("SELECT alert_id FROM alerts").fetchall()}
    assert states == {inside.alert_id: "suppressed", after.alert_id: "delivered",
                      other.alert_id: "delivered"}  # fmt: skip
    assert stored == {inside.alert_id, after.alert_id, other.alert_id}  # all recorded


def test_maintenance_list_and_bad_input(db: str, capsys) -> None:
    assert add(db, "pump-0001", "--from", "2026-11-27T09:00", "--to", "2026-11-27T10:30",
               "--reason", "seal", "--by", "bob") == 0  # fmt: skip
    assert add(db, "pump-0001", "--from", "2026-11-27T11:00", "--to", "2026-11-27T10:00",
               "--reason", "x") == 2  # fmt: skip
    assert "must be after" in capsys.readouterr().err
    assert add(db, "pump-0001", "--to", "tomorrow", "--reason", "x") == 2
    assert "not an ISO-8601 time" in capsys.readouterr().err
    assert pm(["maintenance", "list", "--database-url", db, "--json"]) == 0
    (w,) = json.loads(capsys.readouterr().out)
    assert (w["equipment_id"], w["reason"], w["created_by"]) == ("pump-0001", "seal", "bob")
    assert w["starts_at"] == "2026-11-27T09:00:00+00:00"  # naive input means UTC
    assert pm(["maintenance", "list", "--database-url", db]) == 0
    out = capsys.readouterr().out
    assert "| pump-0001" in out and "2026-11-27 10:30:00Z" in out


def test_the_cache_sees_new_windows_after_its_refresh_and_keeps_them_in_an_outage(
    db: str, caplog
) -> None:
    now = [0.0]
    cache = WindowCache(lambda: list_windows(db), refresh_s=30.0, clock=lambda: now[0])
    assert cache.window_for("turbofan-0007", T_IN) is None
    add(db, "turbofan-0007", "--from", "2026-11-27T09:00:00Z", "--to", "2026-11-27T12:00:00Z",
        "--reason", "r", "--by", "c")  # fmt: skip
    assert cache.window_for("turbofan-0007", T_IN) is None  # cached for refresh_s
    now[0] = 31.0
    w = cache.window_for("turbofan-0007", T_IN)
    assert w is not None and w.reason == "r"
    assert cache.window_for("turbofan-0007", T_AFTER) is None  # the end is exclusive of after
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("ALTER TABLE maintenance_windows RENAME TO mw_away")
    now[0] = 62.0
    assert cache.window_for("turbofan-0007", T_IN) is not None  # kept while unreadable
    assert any("cannot read them" in r.getMessage() for r in caplog.records)


# -- re-baselining after a recorded repair (in process, real PostgreSQL) ---------------------


def _fleet() -> list[dict]:
    from connectors.simulator import SimConfig, simulate

    cfg = SimConfig(num_equipment=3, equipment_types=("pump",), readings=160, seed=5,
                    healthy_fraction=0.0)  # fmt: skip
    return [r for r, _ in simulate(cfg)]


def _after(preds, eq: str, t_ms: int) -> list[tuple]:
    return [(p.ts_ms, p.rul, p.anomaly_score, p.health, p.top_sensors) for p in preds
            if p.equipment_id == eq and p.ts_ms >= t_ms]  # fmt: skip


def test_a_recorded_repair_restarts_the_machines_state_as_for_a_new_machine(
    db: str, model_dir, caplog
) -> None:
    import logging

    from connectors.settings import load_settings
    from tests.flow_helpers import records_from_dicts, run_flow

    caplog.set_level(logging.INFO, logger="flows.steps")
    readings = _fleet()
    eq = readings[0]["equipment_id"]
    mine = [r for r in readings if r["equipment_id"] == eq]
    repair_ts = mine[90]["ts"]
    t_ms = iso_to_ms(repair_ts)
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO maintenance_events (equipment_id, ts, kind, note)"
            " VALUES (%s, %s, 'maintenance', 'pump seal replaced')", (eq, repair_ts),
        )  # fmt: skip
    with_db = load_settings(model=str(model_dir), output="none", database_url=db)
    plain = load_settings(model=str(model_dir), output="none")

    repaired, _, _ = run_flow(with_db, records_from_dicts(readings))
    # the same machine as if it were new at the repair: its earlier readings never seen
    fresh_stream = [r for r in readings if r["equipment_id"] != eq or iso_to_ms(r["ts"]) >= t_ms]
    fresh, _, _ = run_flow(plain, records_from_dicts(fresh_stream))
    unrepaired, _, _ = run_flow(plain, records_from_dicts(readings))

    got = _after(repaired, eq, t_ms)
    assert len(got) == len(mine) - 90
    assert got == _after(fresh, eq, t_ms)
    assert got != _after(unrepaired, eq, t_ms)  # the reset is what made them equal
    for other in {r["equipment_id"] for r in readings} - {eq}:  # other machines untouched
        assert _after(repaired, other, 0) == _after(unrepaired, other, 0)
    lines = [r.getMessage() for r in caplog.records if "re-baselining" in r.getMessage()]
    assert len(lines) == 1 and eq in lines[0]
