"""The flow's guards against floods and changes, run in process: a flood of invented ids
is bounded by ``limits.max_equipment_per_process`` (dead letters beyond it), a flood of
invented types shares one metric label, and a restart from recovery with another feature
layout re-warms the stored state with a log line instead of crashing or feeding wrong
features."""

from __future__ import annotations

import logging
from datetime import timedelta

from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main
from prometheus_client import REGISTRY

from connectors.settings import load_settings
from connectors.simulator import SimConfig, simulate
from flows.pipeline import build_flow
from models.schemas import Prediction, ms_to_iso
from tests.flow_helpers import records_from_dicts, run_flow


def invented(n_ids: int, n_types: int, readings: int = 3) -> list[dict]:
    return [
        {
            "equipment_id": f"flood-{i:04d}",
            "equipment_type": f"invented-{i % n_types}",
            "ts": ms_to_iso(1_767_225_600_000 + k * 60_000),
            "sensors": {"a": float(i + k), "b": 1.0},
        }
        for k in range(readings)
        for i in range(n_ids)
    ]


def test_a_flood_of_ids_is_bounded_by_the_equipment_limit():
    settings = load_settings(model="none", output="none", limits={"max_equipment_per_process": 5})
    preds, _alerts, dead = run_flow(settings, records_from_dicts(invented(8, 2)))
    assert len({p.equipment_id for p in preds}) == 5
    assert len(preds) == 5 * 3
    assert len(dead) == 3 * 3 and all("equipment limit reached" in d.reason for d in dead)
    assert {d.equipment_id for d in dead}.isdisjoint({p.equipment_id for p in preds})


def _label_values(metric: str, label: str) -> set[str]:
    return {
        s.labels[label]
        for family in REGISTRY.collect()
        if family.name == metric
        for s in family.samples
        if label in s.labels
    }


def test_a_flood_of_types_shares_one_metric_label():
    settings = load_settings(model="none", output="none")
    run_flow(settings, records_from_dicts(invented(60, 60, readings=1)))
    for metric in ("pm_readings", "pm_predictions", "pm_anomaly_score"):
        values = _label_values(metric, "equipment_type")
        assert "other" in values
        assert not any(v.startswith("invented-") for v in values), (metric, values)


def _run(settings, items, recovery):
    out: list = []
    flow = build_flow(settings, source=TestingSource(items, batch_size=10), output=TestingSink(out))
    run_main(flow, epoch_interval=timedelta(0), recovery_config=recovery)
    return [x[1] for x in out]


def test_restart_with_another_window_layout_rewarms_the_state(tmp_path, caplog):
    readings = [r for r, _ in simulate(SimConfig(num_equipment=2, readings=80, seed=3))]
    records = records_from_dicts(readings)
    init_db_dir(tmp_path, 1)
    recovery = RecoveryConfig(str(tmp_path))
    cut = len(records) // 2
    items = [*records[:cut], TestingSource.ABORT(), *records[cut:]]
    before = load_settings(model="none", output="none", features={"windows": (10, 30, 60)})
    first = _run(before, items, recovery)
    assert first and all(isinstance(x, Prediction) for x in first)

    after = load_settings(model="none", output="none", features={"windows": (5, 20)})
    with caplog.at_level(logging.WARNING):
        second = _run(after, items, recovery)
    preds = [x for x in second if isinstance(x, Prediction)]
    assert len(preds) >= len(records) - cut  # everything after the snapshot is predicted
    rewarms = [r.message for r in caplog.records if "re-warming" in r.message]
    assert rewarms and "windows (10, 30, 60)" in rewarms[0] and "windows (5, 20)" in rewarms[0]
    # the same layout again: nothing to re-warm
    caplog.clear()
    (tmp_path / "again").mkdir()
    init_db_dir(tmp_path / "again", 1)
    again = RecoveryConfig(str(tmp_path / "again"))
    _run(before, items, again)
    with caplog.at_level(logging.WARNING):
        _run(before, items, again)
    assert not [r for r in caplog.records if "re-warming" in r.message]
