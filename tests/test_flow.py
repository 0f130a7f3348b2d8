"""The whole dataflow on simulator data, under one and two workers (no services)."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest

from connectors.settings import load_settings
from connectors.simulator import SimConfig, simulate
from tests.flow_helpers import records_from_dicts, run_flow


@pytest.fixture(scope="module")
def fleet() -> tuple[list[dict], dict[str, list]]:
    config = SimConfig(num_equipment=8, equipment_types=("turbofan_engine",), seed=5)
    readings, truths = [], defaultdict(list)
    for reading, truth in simulate(config):
        readings.append(reading)
        truths[truth.equipment_id].append(truth)
    return readings, truths


@pytest.mark.parametrize("workers", [1, 2])
def test_degrading_units_warn_then_go_critical_before_failure_and_healthy_ones_stay_quiet(
    fleet, model_dir, workers
):
    readings, truths = fleet
    settings = load_settings(model=str(model_dir), output="none")
    preds, alerts, dead = run_flow(settings, records_from_dicts(readings), workers=workers)

    assert not dead
    assert len(preds) == len(readings)  # predict_every=1: one prediction per reading
    healthy = {eid for eid, ts in truths.items() if ts[0].healthy}
    degrading = set(truths) - healthy
    assert healthy and degrading

    by_unit = defaultdict(list)
    for p in preds:
        by_unit[p.equipment_id].append(p)
    alerts_by_unit = defaultdict(list)
    for a in alerts:
        alerts_by_unit[a.equipment_id].append(a)

    for eid in degrading:
        ps = sorted(by_unit[eid], key=lambda p: p.ts_ms)
        true_rul = np.array([t.rul for t in truths[eid]])
        pred_rul = np.array([p.rul for p in ps])
        assert np.corrcoef(pred_rul, np.minimum(true_rul, 125))[0, 1] > 0.8, eid
        assert pred_rul[-10:].mean() < pred_rul[:10].mean() - 30, eid
        failure_ts = truths[eid][-1].ts_ms
        unit_alerts = alerts_by_unit[eid]
        warn = [a.ts_ms for a in unit_alerts if a.severity == "warning" and a.state == "firing"]
        crit = [a.ts_ms for a in unit_alerts if a.severity == "critical" and a.state != "resolved"]
        assert warn and crit, (eid, [(a.rule, a.severity, a.state) for a in unit_alerts])
        assert min(warn) < min(crit) <= failure_ts, eid

    for eid in healthy:
        assert not alerts_by_unit[eid], [a.message for a in alerts_by_unit[eid]]
        assert min(p.rul for p in by_unit[eid]) > 72


def test_bad_input_becomes_dead_letters_with_reasons_and_the_flow_goes_on(model_dir):
    good = [r for r, _ in simulate(SimConfig(num_equipment=2, readings=20, seed=1))]
    bad = [
        b'{"equipment_id": "x", ',  # truncated JSON
        b'{"equipment_type": "pump", "ts": "2026-01-01T00:00:00Z", "sensors": {"a": 1}}',
        b'{"equipment_id": "p", "equipment_type": "pump", "ts": "2026-01-01T00:00:00Z",'
        b' "sensors": {"a": NaN}}',
        b'{"equipment_id": "p", "equipment_type": "pump", "ts": 12, "sensors": {"a": 1}}',
        b'{"equipment_id": "p", "equipment_type": "pump", "ts": "2026-01-01T00:00:00Z",'
        b' "sensors": {"a": "high"}}',
        b"\xff\xfe not utf-8",
        b"[1, 2, 3]",
    ]
    payloads = [json.dumps(r).encode() for r in good]
    mixed = payloads[:10] + bad + payloads[10:]
    from connectors.kafka_io import RawRecord
    from models.schemas import Origin

    records = [RawRecord(p, Origin("test", "0", i)) for i, p in enumerate(mixed)]
    settings = load_settings(model=str(model_dir), output="none")
    preds, _alerts, dead = run_flow(settings, records)

    assert len(preds) == len(good)
    assert len(dead) == len(bad)
    reasons = [d.reason for d in dead]
    for expected in ("invalid JSON", "missing field 'equipment_id'", "not a finite number",
                     "ts must be an ISO-8601 string", "is not a number", "not UTF-8",
                     "must be a JSON object"):  # fmt: skip
        assert any(expected in r for r in reasons), (expected, reasons)
    assert sorted(d.origin.offset for d in dead) == list(range(10, 10 + len(bad)))
    assert all(d.raw is not None for d in dead)


def test_late_and_duplicate_readings_are_counted_not_scored(model_dir):
    base = [r for r, _ in simulate(SimConfig(num_equipment=1, readings=30, seed=2))]
    duplicate = dict(base[20])
    late = dict(base[0], ts="2026-01-01T00:30:00.000Z")  # 28.5 h behind the newest reading
    records = records_from_dicts([*base, duplicate, late])
    settings = load_settings(model=str(model_dir), output="none", allowed_lateness_s=3600)
    preds, _alerts, dead = run_flow(settings, records)
    assert len(preds) == len(base)
    assert len(dead) == 1 and dead[0].reason.startswith("late by"), dead
    assert dead[0].equipment_id == base[0]["equipment_id"]
    assert json.loads(dead[0].payload)["ts"] == late["ts"]  # the late reading, as JSON


def test_feature_drift_raises_one_fleet_alert_naming_the_drifted_sensor(model_dir):
    readings = [
        r for r, _ in simulate(SimConfig(num_equipment=4, readings=300, seed=9,
                                          healthy_fraction=1.0))
    ]  # fmt: skip
    for r in readings:
        r["sensors"]["T50"] += 40.0  # far outside anything the model was trained on
    settings = load_settings(
        model=str(model_dir),
        output="none",
        drift={"min_count": 300, "every_s": 3600.0, "warning": 0.5},
    )
    _preds, alerts, _dead = run_flow(settings, records_from_dicts(readings))
    drift = [a for a in alerts if a.rule == "feature_drift"]
    assert [a.state for a in drift] == ["firing"], drift
    alert = drift[0]
    assert alert.equipment_id == "fleet:turbofan_engine" and alert.severity == "warning"
    top = [f["feature"] for f in alert.evidence["top_features"]]
    assert top and all(name.startswith("T50__") for name in top), top
