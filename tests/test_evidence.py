"""Explainable alerts: every alert carries its evidence (sensors against the machine's own
baseline, the RUL trend and band, the model) from the state step through the prediction to
the alert, its notification text and its JSON; old pickled alert states still load."""

from __future__ import annotations

import json
import pickle

import pytest

from alerting.notify import render
from alerting.rules import RUL_HISTORY, RULES, AlertState, RuleState, Thresholds, _example, evaluate
from connectors.settings import load_settings
from connectors.simulator import SimConfig, simulate
from models.anomaly import AnomalyDetector
from models.equipment_state import EquipmentState, Scored
from models.features import FeatureConfig
from models.schemas import Reading
from tests.flow_helpers import records_from_dicts, run_flow


def test_sensor_evidence_is_value_baseline_and_z_against_the_machines_own_mean():
    cfg = FeatureConfig(sensors=("a", "b"), windows=(2,))
    st = EquipmentState(cfg, AnomalyDetector(window_size=5, warmup=5), lateness_ms=0)
    for i in range(50):
        st.ingest(Reading("e1", "t", 1000 * i, {"a": 10.0 + (i % 2), "b": 5.0 + 0.1 * (i % 3)}))
    means = dict(st.detector.scaler.means)
    variances = dict(st.detector.scaler.vars)
    out = st.ingest(Reading("e1", "t", 100_000, {"a": 20.0, "b": 5.1}))
    assert isinstance(out, Scored)
    name, value, baseline, z = out.sensor_evidence[0]
    assert (name, value) == ("a", 20.0)
    assert baseline == means["a"]  # the baseline before this reading was learnt
    assert abs(z - (20.0 - means["a"]) / variances["a"] ** 0.5) < 1e-9 and z > 5
    assert out.top_sensors == tuple(e[0] for e in out.sensor_evidence)


def _fleet_alerts(model_dir):
    cfg = SimConfig(
        num_equipment=4, equipment_types=("pump",), healthy_fraction=0.0, seed=3,
        faults=("spike", "drift"), fault_rate=0.02,
    )  # fmt: skip
    readings = [r for r, _ in simulate(cfg)]
    settings = load_settings(model=str(model_dir), output="none")
    return run_flow(settings, records_from_dicts(readings))


def test_alerts_of_the_flow_carry_sensor_evidence_trend_and_model(model_dir):
    preds, alerts, _ = _fleet_alerts(model_dir)
    alerts = [a for a in alerts if a.rule in RULES]  # not the fleet's drift alerts
    assert alerts, "the case raises alerts"
    by_key = {(p.equipment_id, p.ts_ms): p for p in preds}
    for a in alerts:
        p = by_key[(a.equipment_id, a.ts_ms)]
        ev = a.evidence
        assert ev["model_name"] == p.model_name and ev["model_version"] == p.model_version
        assert [s["sensor"] for s in ev["sensors"]] == list(p.top_sensors)
        assert ev["sensors"] == p.sensor_evidence_dicts()
        json.dumps(a.to_json_dict(), allow_nan=False)  # plain JSON for the topic and jsonb
        if a.rule == "rul_low":
            assert ev["rul_trend"][-1]["rul_hours"] == ev["rul_hours"]
            assert ev["model_version"] != "none"
    assert any(a.evidence["sensors"] for a in alerts)
    assert any(a.rule == "rul_low" for a in alerts)
    doc = preds[-1].to_json_dict()
    assert doc["sensor_evidence"] == preds[-1].sensor_evidence_dicts()  # a key added


def test_rul_trend_keeps_the_last_predictions_with_band_in_hours_and_slope():
    th = Thresholds()
    st = AlertState()
    alerts = []
    for i in range(8):  # RUL in cycles, 2 h per cycle, falling 1.5 cycles (3 h) per hour
        p = _example(
            ts_ms=i * 3_600_000, rul=40.0 - 1.5 * i, rul_hours=80.0 - 3.0 * i,
            rul_lower=35.0 - 1.5 * i, rul_upper=45.0 - 1.5 * i,
            sensor_evidence=(("T24", 644.0, 642.0, 4.0),),
        )  # fmt: skip
        alerts += evaluate(st, p, th)
    assert len(st.rul_history) == RUL_HISTORY
    a = alerts[-1] if alerts else None
    assert a is not None and a.rule == "rul_low"
    trend = a.evidence["rul_trend"]
    assert [t["rul_hours"] for t in trend][-1] == a.evidence["rul_hours"]
    assert len(trend) <= RUL_HISTORY
    first = alerts[0].evidence
    assert first["rul_trend"][-1] == {
        "ts": "1970-01-01T03:00:00.000Z", "rul_hours": 71.0, "lower_hours": 61.0,
        "upper_hours": 81.0,
    }  # fmt: skip
    assert first["rul_slope_h_per_h"] == -3.0
    assert first["sensors"] == [{"sensor": "T24", "value": 644.0, "baseline": 642.0, "z": 4.0}]


def test_notification_text_shows_the_evidence():
    st = AlertState()
    th = Thresholds()
    alert = None
    for i in range(4):
        p = _example(
            equipment_id="pump-0001", equipment_type="pump", ts_ms=i * 3_600_000,
            rul=90.0 - 10 * i, rul_unit="hours", rul_hours=90.0 - 10 * i,
            rul_lower=80.0 - 10 * i, rul_upper=100.0 - 10 * i, model_name="rul_gbr",
            model_version="7", top_sensors=("vibration_rms",),
            sensor_evidence=(("vibration_rms", 4.8, 2.1, 5.4), ("temperature", 71.0, 65.0, 2.2)),
        )  # fmt: skip
        out = evaluate(st, p, th)
        alert = out[0] if out else alert
    assert alert is not None and alert.rule == "rul_low"
    body = render(alert).body
    assert "vibration_rms: 4.8 vs baseline 2.1 (z +5.4)" in body
    assert "temperature: 71 vs baseline 65 (z +2.2)" in body
    assert "RUL band: 60 .. 80 hours" in body
    assert "RUL trend, last 3 predictions: 90 -> 80 -> 70 h (-10 h per hour)" in body
    assert "model: rul_gbr v7" in body


def test_alert_states_pickled_before_the_evidence_still_load():
    st = AlertState()
    evaluate(st, _example(health=0.3), Thresholds())
    # what a state pickled by the previous version held: no rul_history, no clear_since_ts_ms
    old_rules = {
        k: (None, {f: getattr(v, f) for f in RuleState.__slots__ if f != "clear_since_ts_ms"})
        for k, v in st.rules.items()
    }
    loaded = AlertState.__new__(AlertState)
    loaded.__setstate__((None, {"rules": {}}))
    for k, state in old_rules.items():
        r = RuleState.__new__(RuleState)
        r.__setstate__(state)
        loaded.rules[k] = r
    assert loaded.rul_history == [] and loaded.rule("health_low").clear_since_ts_ms is None
    back = pickle.loads(pickle.dumps(loaded))
    out = evaluate(back, _example(health=0.95, ts_ms=60_000), Thresholds(resolve_dwell_s=0.0))
    assert [(a.rule, a.state) for a in out] == [("health_low", "resolved")]


def _evidenced_alert():
    st = AlertState()
    out = []
    for i in range(3):
        p = _example(ts_ms=i * 3_600_000, rul=40.0 - 5 * i, rul_hours=80.0 - 10 * i,
                     rul_lower=30.0 - 5 * i, rul_upper=45.0 - 5 * i,
                     sensor_evidence=(("T24", 644.5, 642.1, 4.25),))  # fmt: skip
        out += evaluate(st, p, Thresholds())
    (alert,) = out
    return alert


def test_the_alerts_topic_message_carries_the_evidence():
    from connectors.kafka_io import alert_message

    alert = _evidenced_alert()
    _key, value, _headers = alert_message(alert)
    ev = json.loads(value)["evidence"]
    assert ev["sensors"] == [{"sensor": "T24", "value": 644.5, "baseline": 642.1, "z": 4.25}]
    assert [t["rul_hours"] for t in ev["rul_trend"]] == [80.0, 70.0]
    assert ev["rul_slope_h_per_h"] == -10.0 and ev["model_version"] == "3"


@pytest.mark.integration
def test_the_alerts_table_stores_the_evidence(fresh_db):
    import psycopg

    from connectors.delivery_ledger import PostgresLedger
    from connectors.migrate import apply_migrations

    apply_migrations(fresh_db)
    alert = _evidenced_alert()
    ledger = PostgresLedger(fresh_db, targets=["f" * 16])
    try:
        assert ledger.record([render(alert)], {"f" * 16: "json://127.0.0.1/x"}, [alert]) == 1
    finally:
        ledger.close()
    with psycopg.connect(fresh_db) as conn:
        (ev,) = conn.execute("SELECT evidence FROM alerts WHERE alert_id = %s",
                             (alert.alert_id,)).fetchone()  # fmt: skip
    assert ev == json.loads(json.dumps(alert.evidence))
    assert ev["sensors"][0]["sensor"] == "T24" and len(ev["rul_trend"]) == 2
