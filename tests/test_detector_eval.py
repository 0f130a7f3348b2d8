"""The labelled evaluation harness (models/detector_eval.py) and the simulator's level-shift
fault it relies on: metrics that add up, an oracle that scores perfectly, a null detector
that does not, determinism, and a working command line."""

from __future__ import annotations

import csv
import dataclasses
import math
from array import array
from pathlib import Path

import numpy as np
import pytest

from alerting.rules import Thresholds
from connectors import simulator
from connectors.sim_faults import FAULT_KINDS
from connectors.sim_models import MODELS
from connectors.simulator import SimConfig, fault_episodes, simulate
from models import detector_eval as de
from models import nab_eval, nab_scoring, score_csv
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

NAB_FIXTURE = Path(__file__).parent / "nab_fixture"
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
    argv += ["--nab-dir", str(NAB_FIXTURE), "--joint-units", "1"]
    assert de.main([*argv, "--oracle"]) == 0
    out = capsys.readouterr().out
    summary = [
        line for line in out.splitlines() if line.startswith(("NAB dev", "simulator", "pump"))
    ]
    assert [line[:24].strip() for line in summary] == [
        "NAB dev (2 files)",
        "NAB dev (2 files)",
        "NAB dev (2 files)",
        "simulator faults (all)",
        "pump, joint fault",
    ]
    assert "NAB, flow rule (defaults): 2 files, 600 rows, 2 windows" in out
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
    assert de.main(["--nab-dir", str(NAB_FIXTURE / "data")]) == 2  # not a NAB directory
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


# --- NAB scoring and the NAB section --------------------------------------------------------

WINDOWS = {"synthetic/spike.csv": (190, 209), "synthetic/dip.csv": (235, 254)}  # rows


def write_scores(out: Path, detections: dict[str, list[int]]) -> Path:
    """Score files for the fixture: 1.0 on the given rows of each file, else 0.0."""
    for key in WINDOWS:
        with (NAB_FIXTURE / "data" / key).open() as f:
            stamps = [r["timestamp"] for r in csv.DictReader(f)]
        target = out / key
        target.parent.mkdir(parents=True, exist_ok=True)
        hits = set(detections.get(key, []))
        rows = [f"{t},{1.0 if i in hits else 0.0}" for i, t in enumerate(stamps)]
        target.write_text("timestamp,anomaly_score\n" + "\n".join(rows) + "\n")
    return out


def nab_line(capsys: pytest.CaptureFixture[str], out: Path) -> dict[str, float]:
    argv = ["--scores", str(out), "--data-dir", str(NAB_FIXTURE), "--threshold", "0.5"]
    assert nab_scoring.main(argv) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]  # NAB standard=.. low_FP=.. ...
    return {k: float(v) for k, v in (w.split("=") for w in last.split()[1:4])}


def sigma(y: float) -> float:
    return 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


@pytest.mark.parametrize(
    ("detections", "expected"),
    [
        # each window's first row: every window earns A_TP = 1 (perfect)
        ({"synthetic/spike.csv": [190], "synthetic/dip.csv": [235]}, (100.0, 100.0, 100.0)),
        ({}, (0.0, 0.0, 0.0)),  # never alarming
        # one false positive before the first window, nothing else: below never alarming,
        # raw -2 - A_FP against S_null = -2 (-4 low-FN), S_perfect = 2
        ({"synthetic/spike.csv": [100]}, (-2.75, -5.5, 100 * (-4.11 + 4) / 6)),
        # the last row of a 20-row window earns sigma(-1/20) / sigma(-1); the other is perfect
        (
            {"synthetic/spike.csv": [209], "synthetic/dip.csv": [235]},
            tuple(100 * (sigma(-1 / 20) / sigma(-1) + 1 - n) / (2 - n) for n in (-2, -2, -4)),
        ),
        # a detection inside probation (first 15 % = 45 rows) counts for nothing
        ({"synthetic/spike.csv": [10, 190], "synthetic/dip.csv": [235]}, (100.0, 100.0, 100.0)),
    ],
)
def test_scorer_reproduces_hand_computed_scores(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    detections: dict[str, list[int]],
    expected: tuple[float, float, float],
) -> None:
    got = nab_line(capsys, write_scores(tmp_path, detections))
    assert (got["standard"], got["low_FP"], got["low_FN"]) == pytest.approx(expected, abs=0.006)


def test_nab_section_scores_what_score_csv_pages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rep = nab_eval.run_nab(NAB_FIXTURE, tmp_path / "nab")
    assert (rep.files, rep.rows, rep.windows) == (2, 600, 2)
    pages_total = 0
    for key in WINDOWS:
        flow = tmp_path / "flow.csv"
        src = NAB_FIXTURE / "data" / key
        assert score_csv.main(["--input", str(src), "--timestamp-column", "timestamp",
                               "--output", str(flow)]) == 0  # fmt: skip
        with flow.open() as f:
            expected = list(csv.DictReader(f))
        with (tmp_path / "nab" / "pages" / key).open() as f:
            pages = list(csv.DictReader(f))
        with (tmp_path / "nab" / "raw" / key).open() as f:
            raw = list(csv.DictReader(f))
        assert [p["timestamp"] for p in pages] == [e["timestamp"] for e in expected]
        want = [1.0 if e["alert"].startswith("firing") else 0.0 for e in expected]
        assert [float(p["anomaly_score"]) for p in pages] == want
        assert [float(r["anomaly_score"]) for r in raw] == [float(e["score"]) for e in expected]
        pages_total += int(sum(want))
    capsys.readouterr()
    assert rep.pages == pages_total > 0
    page_scores = {r.signal: r for r in rep.results}[nab_eval.PAGES]
    cli = nab_line(capsys, tmp_path / "nab" / "pages")  # the scorer's command line agrees
    assert page_scores.scores == pytest.approx(cli, abs=0.006)
    assert page_scores.scores["standard"] > 50  # the fixture's spike and dip are paged


def test_joint_fault_shows_only_jointly() -> None:
    """During a fault every sensor stays inside its healthy range, while pressure departs
    from what flow implies by several times the healthy spread."""
    case = de.JointCase(units=2, readings=1500, faults_per_unit=2)
    units = de.joint_fault_units(case)
    assert len(units) == 2
    for x, episodes in units:
        assert len(episodes) == 2
        faulty = np.zeros(len(x), dtype=bool)
        for e in episodes:
            assert e.start >= case.settle and 40 <= e.end - e.start + 1 <= 80
            faulty[e.start : e.end + 1] = True
        lo, hi = x[~faulty].min(axis=0), x[~faulty].max(axis=0)
        inside = ((x[faulty] >= lo) & (x[faulty] <= hi)).mean(axis=0)
        assert np.all(inside > 0.9), inside
        residual = x[:, 1] - 1.5 * x[:, 0]
        spread = residual[~faulty].std()
        for e in episodes:
            deep = residual[e.start + case.ramp : e.end + 1]
            assert np.median(residual[~faulty]) - np.median(deep) > 4 * spread
    m = de.joint_fault_metrics(case)
    assert m.episodes == 4 and 0 <= m.detected <= 4


def test_cli_likelihood_rows(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--units", "1", "--readings", "300", "--kinds", "spike", "--settle", "100"]
    assert (
        de.main([*argv, "--nab-dir", str(NAB_FIXTURE), "--joint-units", "1", "--likelihood"]) == 0
    )
    out = capsys.readouterr().out
    rows = [
        line[24:58].strip() for line in out.splitlines() if line.startswith(("NAB dev", "pump"))
    ]
    assert rows == [
        "flow rule (defaults): pages",
        "raw score, best threshold",
        "warning-only rule: pages",
        "likelihood, flow rule: pages",
        "likelihood, best threshold",
        "flow rule (defaults)",
        "likelihood, flow rule",
    ]
    assert de.main([*argv, "--no-nab", "--joint-units", "0"]) == 0
    assert "NAB: skipped" in capsys.readouterr().out
