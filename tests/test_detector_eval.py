"""The labelled evaluation harness (models/detector_eval.py) and the simulator's level-shift
fault it relies on: metrics that add up, an oracle that scores perfectly, a null detector
that does not, determinism, and a working command line."""

from __future__ import annotations

import dataclasses
import math
from array import array
from pathlib import Path

import pytest

from alerting.rules import Thresholds
from connectors import simulator
from connectors.sim_faults import FAULT_KINDS
from connectors.sim_models import MODELS
from connectors.simulator import SimConfig, fault_episodes, simulate
from models import detector_eval as de
from models.detector_eval import (
    DetectorSpec,
    EquipmentRun,
    EvalConfig,
    Incident,
    Metrics,
    Span,
    alerts,
    score_run,
)

TINY = EvalConfig(units_per_type=1, readings=700, fault_rate=0.02, settle=200, tolerance=5)
ANY_SCORE = Thresholds(anomaly_warning=0.9, anomaly_critical=0.99, anomaly_min_consecutive=1)


@pytest.fixture(scope="module")
def tiny_runs() -> dict[str, list[EquipmentRun]]:
    scorers = {
        "new": de.state_scorer(lambda: de.AnomalyDetector()),
        "null": de.null_scorer(0),
        "oracle": de.oracle_scorer(),
    }
    runs, cost = de.score_cases(TINY, scorers)
    assert set(cost) == set(scorers) and all(v >= 0 for v in cost.values())
    return runs


def test_oracle_is_perfect_and_null_is_not(tiny_runs: dict[str, list[EquipmentRun]]) -> None:
    specs = [
        DetectorSpec("oracle", "oracle", Thresholds(anomaly_min_consecutive=1)),
        DetectorSpec("null", "null", ANY_SCORE),  # alerts on 10 % of readings
        DetectorSpec("new", "new"),
    ]
    m = de.summarise(tiny_runs, specs, TINY)
    assert set(tiny_runs) == set(FAULT_KINDS)
    for kind in (*FAULT_KINDS, de.ALL):
        oracle = m[kind, "oracle"]
        assert oracle.episodes > 0, kind
        assert oracle.precision == oracle.recall == 1.0
        assert set(oracle.delays) == {0} and oracle.false_alarms_per_day == 0.0
        assert oracle.alerts_per_detection == 1.0
    null, new = m[de.ALL, "null"], m[de.ALL, "new"]
    assert null.alerts > 3 * null.episodes  # it does raise plenty of alerts ...
    assert null.false_alarms_per_day > 1.0  # ... mostly false, as it hits an episode only
    assert m["spike", "null"].precision < 0.3  # by chance: rarely for one-reading spikes,
    assert null.precision < new.precision - 0.3  # more for 20-50 reading episodes
    assert new.recall > 0.75 and new.precision > 0.8  # (a short run: little calibration)


def test_metrics_add_up(tiny_runs: dict[str, list[EquipmentRun]]) -> None:
    specs = [DetectorSpec("null", "null", ANY_SCORE), DetectorSpec("new", "new")]
    m = de.summarise(tiny_runs, specs, TINY)
    for name in ("null", "new"):
        total = Metrics()
        for kind in FAULT_KINDS:
            part = m[kind, name]
            assert part.true_alerts <= part.alerts and part.detected <= part.episodes
            assert len(part.delays) == len(part.delays_h) == part.detected
            assert all(d >= 0 for d in part.delays)
            total += part
        pooled = m[de.ALL, name]
        no_days = {"equipment_days": 0.0}
        assert dataclasses.replace(total, **no_days) == dataclasses.replace(pooled, **no_days)
        days = pooled.equipment_days
        hours = len(FAULT_KINDS) * (TINY.readings - TINY.settle) * (1 + 1 / 6)  # one of each
        assert days == pytest.approx(total.equipment_days) == pytest.approx(hours / 24)
        false = pooled.alerts - pooled.true_alerts
        assert pooled.false_alarms_per_day == pytest.approx(false / days)


def test_evaluation_is_deterministic() -> None:
    cfg = dataclasses.replace(TINY, kinds=("spike",), readings=300)
    scorers = {"new": de.state_scorer(lambda: de.AnomalyDetector()), "null": de.null_scorer(3)}
    specs = [DetectorSpec("new", "new"), DetectorSpec("null", "null", ANY_SCORE)]
    a = de.run_evaluation(cfg, scorers, specs)
    b = de.run_evaluation(cfg, scorers, specs)
    assert a.metrics == b.metrics
    assert "spike" in de.table(a) and "null" in de.table(a)


def test_matching_rules() -> None:
    run = EquipmentRun("t", "turbofan_engine", 0, 3_600_000, n=200)
    run.episodes = [
        Span("drift", "T24", 50, 60),
        Span("spike", "T30", 64, 64),
        Span("x", "a", 5, 5),
    ]
    fires = [Incident(3), Incident(55), Incident(66), Incident(70), Incident(120)]
    m = score_run(run, fires, settle=10, tolerance=5)
    # the episode and alert before ``settle`` are ignored; 55 and 66 are true (66 is within
    # 5 readings of both episodes' ends but counts once); 70 and 120 are false
    assert (m.episodes, m.detected, m.alerts, m.true_alerts) == (2, 2, 4, 2)
    assert m.delays == (5, 2) and m.delays_h == (5.0, 2.0)
    assert m.alerts_per_detection == 1.0
    assert m.false_alarms_per_day == pytest.approx(2 / (190 / 24))
    assert math.isnan(score_run(run, [], 10, 5).precision)


def test_alerts_follow_the_flow_rule() -> None:
    run = EquipmentRun("p", "pump", 0, 600_000, n=8)
    run.scores = {"d": array("d", [0.1, 0.95, 0.5, 0.95, 0.95, 0.1, 0.1, 0.95])}
    # cooldown 0: every excursion is its own alert; hysteresis clears at <= 0.9 * 0.9
    th = dataclasses.replace(ANY_SCORE, cooldown_s=0.0)
    assert alerts(run, "d", th) == [Incident(1, 2), Incident(3, 5), Incident(7, None)]
    th = dataclasses.replace(ANY_SCORE, cooldown_s=3600.0)  # 6 pump readings
    assert [a.fire for a in alerts(run, "d", th)] == [1]  # the later ones are held back


def test_cli_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--units", "1", "--readings", "300", "--kinds", "spike", "--settle", "100"]
    assert de.main([*argv, "--oracle"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith(("spike", "all"))]
    assert [r[1] for r in rows[:6]] == [
        "new",
        "new-no-trees",
        "baseline",
        "baseline+rule",
        "null",
        "oracle",
    ]
    assert "reproduce: python -m models.detector_eval" in out
    assert de.main(["--kinds", "melt"]) == 2
    assert de.main(["--settle", "5000"]) == 2
    assert "error" in capsys.readouterr().err


# --- the simulator's level shift ------------------------------------------------------------


def _run(cfg: SimConfig) -> list:
    return list(simulate(cfg))


def test_level_shift_is_recorded_and_stays() -> None:
    base = SimConfig(num_equipment=3, readings=500, healthy_fraction=1.0, seed=11)
    clean = _run(base)
    faulty = _run(dataclasses.replace(base, faults=("level_shift",), fault_rate=0.01))
    episodes = fault_episodes(t for _, t in faulty)
    assert episodes and {e.kind for e in episodes} == {"level_shift"}
    names = simulator.SENSORS["turbofan_engine"]
    scale = MODELS["turbofan_engine"].fault_scale
    offsets: dict[tuple[str, str], float] = {}  # shifts in force per (equipment, sensor)
    for (r0, _), (r1, t1) in zip(clean, faulty, strict=True):
        eq = t1.equipment_id
        if t1.fault is not None and t1.ts_ms == t1.fault_start_ms:
            assert t1.fault_sensor is not None
            jump = r1["sensors"][t1.fault_sensor] - r0["sensors"][t1.fault_sensor]
            shift = jump - offsets.get((eq, t1.fault_sensor), 0.0)
            sd = scale[names.index(t1.fault_sensor)]
            assert 3.9 * sd <= abs(shift) <= 8.1 * sd, (t1, shift / sd)
            offsets[eq, t1.fault_sensor] = jump
        for name, v in r1["sensors"].items():  # every other reading: the shifts in force
            assert v == pytest.approx(r0["sensors"][name] + offsets.get((eq, name), 0.0))
    # the shift outlives its labelled episode (20-50 readings): it is the new normal
    for e in episodes:
        assert (
            20 <= (e.end_ms - e.start_ms) // 3_600_000 + 1 <= 50 or e.end_ms == clean[-1][1].ts_ms
        )


def test_level_shift_does_not_depend_on_chunking(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = SimConfig(
        num_equipment=2,
        equipment_types=("turbofan_engine", "pump"),
        readings=400,
        healthy_fraction=1.0,
        faults=FAULT_KINDS,
        fault_rate=0.05,
    )
    whole = _run(cfg)
    monkeypatch.setattr(simulator, "_BUFFERED_ROWS", 1)  # 32-reading chunks
    assert _run(cfg) == whole
    assert "level_shift" in {e.kind for e in fault_episodes(t for _, t in whole)}


def test_simulator_cli_accepts_level_shift(tmp_path: Path) -> None:
    out, truth = tmp_path / "r.jsonl", tmp_path / "t.jsonl"
    argv = ["--num-equipment", "1", "--readings", "200", "--faults", "level_shift"]
    argv += ["--fault-rate", "0.05", "--out", str(out), "--truth-out", str(truth)]
    assert simulator.main(argv) == 0
    assert '"fault":"level_shift"' in truth.read_text()
    assert len(out.read_text().splitlines()) == 200
