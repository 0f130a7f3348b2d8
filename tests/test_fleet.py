"""The fleet CLI (``pm`` / ``python -m connectors.fleet``) against a real PostgreSQL: a
known fleet written by the project's writer (exact risk order, acknowledge, fatigue
figures), and a fleet produced by running the real flow over the simulator."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from bytewax.testing import run_main

from connectors.fleet_queries import MachineStatus, risk_key
from connectors.settings import load_settings
from flows.pipeline import build_flow
from jobs.fleet import main
from tests import fleet_data

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def fleet_db(fresh_db: str) -> str:
    fleet_data.fill(fresh_db)
    return fresh_db


def pm(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def pm_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    rc, out, err = pm(capsys, *argv, "--json")
    assert rc == 0, err
    return json.loads(out)


def test_status_orders_machines_by_risk(fleet_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    data = pm_json(capsys, "fleet", "status", "--database-url", fleet_db)
    machines = data["machines"]
    assert [m["equipment_id"] for m in machines] == fleet_data.RISK_ORDER
    top = machines[0]
    assert top["status"] == "critical"
    assert (top["rul_hours"], top["rul_lower_hours"], top["rul_upper_hours"]) == (10.0, 5.0, 15.0)
    assert top["health"] == pytest.approx(0.35)
    assert top["active_alerts"] == ["rul_low:critical"]  # the escalation, not the old firing
    assert top["last_reading"] == "2026-01-01T23:00:00+00:00"
    assert machines[1]["active_alerts"] == ["health_low:warning"]
    assert all(m["active_alerts"] == [] for m in machines[2:])


def test_status_table_escapes_ids_and_never_prints_the_password(
    fleet_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = pm(capsys, "fleet", "status", "--database-url", fleet_db)
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].startswith("| # | equipment")
    assert "pump-0001" in lines[2] and "critical" in lines[2] and "10.0 h [5.0-15.0]" in lines[2]
    assert "\x1b" not in out and "pump-\\x1b[31m<script>" in out
    # A DSN with a password at a closed port: a clear error, exit 2, the password masked.
    rc, out, err = pm(capsys, "fleet", "status", "--database-url",
                      "postgresql://pm:s3cretpw@127.0.0.1:9/pm")  # fmt: skip
    assert rc == 2 and out == ""
    assert err.startswith("pm: database error:") and "s3cretpw" not in err


def test_no_database_configured_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = pm(capsys, "fleet", "status")
    assert rc == 2 and "set PM_DATABASE_URL or pass --database-url" in err


def test_database_without_schema_says_to_migrate(
    fresh_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = pm(capsys, "fleet", "status", "--database-url", fresh_db)
    assert rc == 2 and out == ""
    assert err.startswith("pm: no fleet schema here: run python -m connectors.migrate")


def test_equipment_history_alerts_and_plot(
    fleet_db: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    png = tmp_path / "pump.png"
    data = pm_json(capsys, "fleet", "status", "--database-url", fleet_db,
                   "--equipment", "pump-0001", "--plot", str(png), "--limit", "5")  # fmt: skip
    assert data["machine"]["equipment_id"] == "pump-0001"
    assert [h["rul_hours"] for h in data["history"]] == [35.0, 30.0, 25.0, 20.0, 10.0]
    assert data["history"][-1]["status"] == "critical"  # oldest first, the newest last
    assert [a["alert_id"] for a in data["alerts"]] == ["a-fire-1", "a-res-1", "a-fire-2", "a-esc-2"]
    assert_real_plot(png)

    rc, _, err = pm(capsys, "fleet", "status", "--database-url", fleet_db, "--equipment", "nope")
    assert rc == 1 and "unknown equipment nope" in err
    rc, _, err = pm(capsys, "fleet", "status", "--database-url", fleet_db, "--plot", "x.png")
    assert rc == 2 and "--plot needs --equipment" in err


def assert_real_plot(path: Path) -> None:
    """A PNG of the plot's size with many colours (lines, band, text), not a blank canvas."""
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(path)
    assert img.shape[:2] == (600, 1000)
    colours = {tuple(px) for px in img.reshape(-1, img.shape[2])[::7].round(2).tolist()}
    assert len(colours) > 50


def test_acknowledge_is_idempotent_and_unknown_ids_are_clear(
    fleet_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = pm(
        capsys, "alerts", "ack", "h-fire-1", "--by", "alice", "--database-url", fleet_db
    )
    assert rc == 0 and "acknowledged by alice" in out and "already" not in out
    rc, out, _ = pm(capsys, "alerts", "ack", "h-fire-1", "--by", "bob", "--database-url", fleet_db)
    assert rc == 0 and "already acknowledged by alice" in out
    with psycopg.connect(fleet_db) as conn:
        rows = conn.execute(
            "SELECT alert_id, acknowledged_by, acknowledged_at IS NOT NULL FROM alerts"
            " WHERE acknowledged_at IS NOT NULL OR acknowledged_by IS NOT NULL"
        ).fetchall()
    assert rows == [("h-fire-1", "alice", True)]

    rc, _, err = pm(capsys, "alerts", "ack", "no-such", "--by", "bob", "--database-url", fleet_db)
    assert rc == 1 and err.strip() == "alerts: unknown alert id no-such"
    rc, _, err = pm(capsys, "alerts", "ack", "a-esc-2", "--by", " ", "--database-url", fleet_db)
    assert rc == 2 and "--by must name who acknowledges" in err

    open_alerts = pm_json(capsys, "alerts", "open", "--database-url", fleet_db)["open_alerts"]
    assert {a["alert_id"] for a in open_alerts} == fleet_data.OPEN_ALERTS
    assert open_alerts[0]["alert_id"] == "a-esc-2"  # unacknowledged critical first
    assert open_alerts[1]["acknowledged_by"] == "alice"


def test_fatigue_figures_per_machine_and_rule(
    fleet_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["alerts", "ack", "a-fire-2", "--by", "carol", "--database-url", fleet_db])
    capsys.readouterr()
    report = pm_json(capsys, "alerts", "fatigue", "--database-url", fleet_db)
    machines = {m["key"]: m for m in report["machines"]}
    pump = machines["pump-0001"]
    assert report["machines"][0]["key"] == "pump-0001"  # most alerts per machine-day first
    assert (pump["alerts"], pump["episodes"], pump["flaps"], pump["acked"]) == (3, 2, 1, 1)
    assert pump["machine_days"] == pytest.approx(23 / 24, abs=1e-3)
    assert pump["per_machine_day"] == pytest.approx(3 / (23 / 24), abs=1e-2)
    assert pump["ack_median_s"] > 0  # wall clock now minus the alert's event time
    assert machines["turbofan-0004"]["alerts"] == 0
    rules = {r["key"]: r for r in report["rules"]}
    assert (rules["rul_low"]["alerts"], rules["rul_low"]["flaps"]) == (3, 1)
    assert (rules["health_low"]["alerts"], rules["health_low"]["flaps"]) == (1, 0)
    assert rules["rul_low"]["per_machine_day"] == pytest.approx(3 / (5 * 23 / 24), abs=1e-2)

    # The re-fire came 2 h after the resolve: with a 1 h dwell it is no flap.
    short = pm_json(capsys, "alerts", "fatigue", "--dwell-hours", "1", "--database-url", fleet_db)
    assert {m["key"]: m["flaps"] for m in short["machines"]}["pump-0001"] == 0

    rc, out, _ = pm(capsys, "alerts", "fatigue", "--database-url", fleet_db)
    assert rc == 0 and "per machine" in out and "| rul_low" in out and "50%" in out


def test_redis_status_is_used_when_newer(fleet_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    url = os.environ.get("PM_TEST_REDIS_URL")
    if not url:
        pytest.skip("PM_TEST_REDIS_URL is not set")
    from connectors.redis_state import RedisStatusStore
    from models.schemas import Prediction

    redis_url = f"{url.rsplit('/', 1)[0]}/11"
    store = RedisStatusStore(redis_url)
    store.client.flushdb()
    try:
        ts_ms = fleet_data.T0 + 30 * fleet_data.HOUR  # newer than PostgreSQL's latest
        newer = Prediction("turbofan-0004", "turbofan_engine", ts_ms, 2.0, "hours", 2.0,
                           1.0, 3.0, 0.2, 0.9, "critical", "rul", "v-test")  # fmt: skip
        store.write([newer])
        data = pm_json(
            capsys, "fleet", "status", "--database-url", fleet_db, "--redis-url", redis_url
        )
    finally:
        store.client.flushdb()
        store.close()
    first = data["machines"][0]
    assert (first["equipment_id"], first["source"], first["rul_lower_hours"]) == (
        "turbofan-0004", "redis", 1.0,
    )  # fmt: skip
    assert all(m["source"] == "postgres" for m in data["machines"][1:])


def test_module_alias_runs_the_same_cli(fleet_db: str) -> None:
    """``python -m connectors.fleet status`` is ``pm fleet status`` (a real subprocess)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PM_")}
    run = subprocess.run(
        [sys.executable, "-m", "connectors.fleet", "status", "--json", "--database-url", fleet_db],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    ids = [m["equipment_id"] for m in json.loads(run.stdout)["machines"]]
    assert ids == fleet_data.RISK_ORDER


def test_status_of_a_fleet_the_real_flow_wrote(
    fresh_db: str, model_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The simulator's fleet through the real flow into PostgreSQL, then the CLI on it."""
    settings = load_settings(
        source="simulator", output="none", model=str(model_dir), database_url=fresh_db,
        simulator={"num_equipment": 4, "equipment_types": ["turbofan_engine"], "seed": 3,
                   "healthy_fraction": 0.0},
        alerts={"cooldown_s": 0.0}, postgres={"buffer_size": 500},
    )  # fmt: skip
    run_main(build_flow(settings))
    machines = pm_json(capsys, "fleet", "status", "--database-url", fresh_db)["machines"]
    assert len(machines) == 4
    assert all(m["status"] in ("ok", "warning", "critical") for m in machines)
    assert all(m["rul_hours"] is not None and m["last_reading"] for m in machines)
    statuses = [_status(m) for m in machines]
    assert statuses == sorted(statuses, key=risk_key)
    # Run to failure: every unit ends critical, with an open rul_low or health_low alert.
    assert machines[0]["status"] == "critical" and machines[0]["active_alerts"]

    png = tmp_path / "top.png"
    top = machines[0]["equipment_id"]
    one = pm_json(capsys, "fleet", "status", "--database-url", fresh_db,
                  "--equipment", top, "--plot", str(png))  # fmt: skip
    assert one["alerts"] and {a["state"] for a in one["alerts"]} >= {"firing"}
    assert_real_plot(png)
    report = pm_json(capsys, "alerts", "fatigue", "--database-url", fresh_db)
    assert sum(m["alerts"] for m in report["machines"]) >= 4
    assert all(math.isfinite(m["per_machine_day"]) for m in report["machines"])


def _status(d: dict[str, Any]) -> MachineStatus:
    names = MachineStatus.__dataclass_fields__
    return MachineStatus(**{k: v for k, v in d.items() if k in names})
