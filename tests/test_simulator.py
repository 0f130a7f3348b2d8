"""Tests for the built-in simulator (connectors/simulator.py, sim_models.py, sim_faults.py)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import socket
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from connectors import simulator
from connectors.sim_models import MODELS, wear
from connectors.simulator import (
    HOURS_PER_READING,
    RUL_UNIT,
    SENSORS,
    SETTINGS,
    SimConfig,
    TokenBucket,
    Truth,
    fault_episodes,
    healthy_flags,
    main,
    simulate,
    simulate_units,
)
from models.schemas import iso_to_ms, ms_to_iso

ROOT = Path(__file__).resolve().parents[1]
TURBOFAN_SENSORS = list(SENSORS["turbofan_engine"])


def run(cfg: SimConfig) -> list[tuple[dict, Truth]]:
    return list(simulate(cfg))


def by_equipment(items: list[tuple[dict, Truth]]) -> dict[str, list[tuple[dict, Truth]]]:
    out: dict[str, list[tuple[dict, Truth]]] = defaultdict(list)
    for reading, truth in items:
        out[reading["equipment_id"]].append((reading, truth))
    return out


def test_public_tables() -> None:
    expected = "T2 T24 T30 T50 P2 P15 P30 Nf Nc epr Ps30 phi NRf NRc BPR farB htBleed Nf_dmd"
    assert SENSORS["turbofan_engine"] == (*expected.split(), "PCNfR_dmd", "W31", "W32")
    assert SETTINGS["turbofan_engine"] == ("op_setting_1", "op_setting_2", "op_setting_3")
    assert SETTINGS["pump"] == ("speed_rpm",)
    assert RUL_UNIT == {"turbofan_engine": "cycles", "pump": "hours"}
    assert HOURS_PER_READING == {"turbofan_engine": 1.0, "pump": 600 / 3600}


def test_wear_curve_ends_at_one_and_rises() -> None:
    t = np.arange(0, 201, dtype=float)
    w = wear(t, w0=0.05, k=4.5, life=200)
    assert w[0] == pytest.approx(0.05) and w[-1] == pytest.approx(1.0)
    assert np.all(np.diff(w) > 0) and np.all(np.diff(w, 2) > 0)  # rising, convex


def test_deterministic_by_seed_and_seed_matters() -> None:
    cfg = SimConfig(num_equipment=4, equipment_types=("turbofan_engine", "pump"), readings=50)
    a, b = run(cfg), run(cfg)
    assert a == b
    c = run(
        SimConfig(num_equipment=4, equipment_types=("turbofan_engine", "pump"), readings=50, seed=1)
    )
    assert [r for r, _ in a] != [r for r, _ in c]


def test_equipment_does_not_depend_on_fleet_size_or_interleaving() -> None:
    small = by_equipment(run(SimConfig(num_equipment=2, readings=40, healthy_fraction=0.0)))
    big = by_equipment(run(SimConfig(num_equipment=7, readings=40, healthy_fraction=0.0)))
    assert small["turbofan-0002"] == big["turbofan-0002"]


def test_chunking_does_not_change_results(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = SimConfig(
        num_equipment=2,
        equipment_types=("turbofan_engine", "pump"),
        readings=300,
        replace_on_failure=True,
        faults=("spike", "drift", "stuck"),
        fault_rate=0.03,
    )
    whole = run(cfg)
    monkeypatch.setattr(simulator, "_BUFFERED_ROWS", 1)  # 32-reading chunks
    assert run(cfg) == whole
    assert len({t.fault_start_ms for _, t in whole}) > 5


def test_reading_schema_ids_and_event_time_order() -> None:
    cfg = SimConfig(num_equipment=5, equipment_types=("turbofan_engine", "pump"), readings=30)
    items = run(cfg)
    ids = {r["equipment_id"] for r, _ in items}
    assert ids == {"turbofan-0001", "turbofan-0002", "turbofan-0003", "pump-0001", "pump-0002"}
    ts_all = [iso_to_ms(r["ts"]) for r, _ in items]
    assert ts_all == sorted(ts_all)  # event-time order across the fleet
    for reading, truth in items:
        assert set(reading) == {
            "equipment_id",
            "equipment_type",
            "ts",
            "settings",
            "sensors",
            "schema_version",
        }
        typ = reading["equipment_type"]
        assert reading["schema_version"] == 1
        assert list(reading["sensors"]) == list(SENSORS[typ])
        assert list(reading["settings"]) == list(SETTINGS[typ])
        assert all(isinstance(v, float) and np.isfinite(v) for v in reading["sensors"].values())
        assert ms_to_iso(iso_to_ms(reading["ts"])) == reading["ts"]
        assert reading["ts"].endswith("Z") and iso_to_ms(reading["ts"]) == truth.ts_ms
        json.dumps(reading)  # wire-serialisable as is
    for eq_id, rows in by_equipment(items).items():
        ts = [iso_to_ms(r["ts"]) for r, _ in rows]
        period = 3_600_000 if eq_id.startswith("turbofan") else 600_000
        assert ts[0] == cfg.start_ms and np.all(np.diff(ts) == period)
        assert len(rows) == 30


def test_truth_never_inside_reading() -> None:
    items = run(SimConfig(num_equipment=3, readings=20, faults=("spike",), fault_rate=0.2))
    banned = {"rul", "wear", "healthy", "fault", "life", "truth"}
    for reading, _ in items:
        text = json.dumps(reading).lower()
        assert not any(f'"{word}' in text for word in banned)


def test_turbofan_degrades_in_fd001_directions_and_runs_to_failure() -> None:
    cfg = SimConfig(num_equipment=12, healthy_fraction=0.0, seed=3)
    units = by_equipment(run(cfg))
    assert len(units) == 12
    names = SENSORS["turbofan_engine"]
    rises, falls = ["T24", "T30", "T50", "Ps30", "BPR", "htBleed"], ["W31", "W32", "P30", "phi"]
    for rows in units.values():
        x = np.array([[r["sensors"][n] for n in names] for r, _ in rows])
        rul = np.array([t.rul for _, t in rows])
        assert 130 <= len(rows) <= 360
        assert rul[-1] == 0 and np.all(np.diff(rul) == -1)  # stops at failure, cycles
        assert rows[-1][1].wear == pytest.approx(1.0)
        change = x[-15:].mean(0) - x[:30].mean(0)
        for s in rises:
            assert change[names.index(s)] > 0, s
        for s in falls:
            assert change[names.index(s)] < 0, s
        for s in ["T2", "P2", "epr", "farB", "Nf_dmd", "PCNfR_dmd"]:  # constant in FD001
            assert np.ptp(x[:, names.index(s)]) == 0, s
        assert np.ptp(x[:, names.index("T50")]) > 0


def test_healthy_units_stay_far_from_failure() -> None:
    cfg = SimConfig(num_equipment=8, healthy_fraction=0.5, readings=300)
    units = by_equipment(run(cfg))
    healthy = {k: v for k, v in units.items() if v[0][1].healthy}
    assert len(healthy) == 4
    for rows in healthy.values():
        assert len(rows) == 300  # never stops early
        assert min(t.rul for _, t in rows) > 1000
        assert max(t.wear for _, t in rows) < 0.05
    degrading = [v for v in units.values() if not v[0][1].healthy]
    assert all(rows[-1][1].rul == 0 or len(rows) == 300 for rows in degrading)


def test_healthy_flags_fraction_and_prefix_stable() -> None:
    flags = healthy_flags(40, 0.25, 7, "turbofan_engine")
    assert flags.sum() == 10
    assert np.array_equal(healthy_flags(13, 0.25, 7, "turbofan_engine"), flags[:13])
    assert not healthy_flags(10, 0.0, 7, "pump").any()
    assert healthy_flags(10, 1.0, 7, "pump").all()


def test_replace_on_failure_continues_with_a_fresh_unit() -> None:
    cfg = SimConfig(num_equipment=1, healthy_fraction=0.0, readings=900, replace_on_failure=True)
    rows = run(cfg)
    assert len(rows) == 900
    lives = [t.life for _, t in rows]
    assert lives[-1] >= 2  # lives are at most 360 cycles
    i = lives.index(1)
    assert rows[i - 1][1].rul == 0 and rows[i][1].rul > 100
    assert rows[i][1].wear < 0.2 < rows[i - 1][1].wear
    t50 = [r["sensors"]["T50"] for r, _ in rows]
    assert np.mean(t50[i - 10 : i]) - np.mean(t50[i : i + 10]) > 10  # level shift down


def test_duration_limits_event_time_span() -> None:
    cfg = SimConfig(
        num_equipment=2,
        equipment_types=("turbofan_engine", "pump"),
        duration_s=7200.0,
        healthy_fraction=1.0,
    )
    units = by_equipment(run(cfg))
    assert len(units["turbofan-0001"]) == 2 and len(units["pump-0001"]) == 12
    assert units["pump-0001"][0][1].rul_unit == "hours"


def test_cycle_seconds_sets_turbofan_period() -> None:
    rows = run(SimConfig(num_equipment=1, readings=3, cycle_seconds=10.0))
    assert [r["ts"] for r, _ in rows] == [
        "2026-01-01T00:00:00.000Z",
        "2026-01-01T00:00:10.000Z",
        "2026-01-01T00:00:20.000Z",
    ]


def test_simulate_units_matches_simulate() -> None:
    histories = list(simulate_units("pump", 3, seed=5, healthy_fraction=0.34))
    streamed = by_equipment(run(SimConfig(3, ("pump",), seed=5, healthy_fraction=0.34)))
    for eq_id, settings, sensors, rul in histories:
        rows = streamed[eq_id]
        assert sensors.shape == (len(rows), 6) and settings.shape == (len(rows), 1)
        assert np.array_equal(sensors, [list(r["sensors"].values()) for r, _ in rows])
        assert np.array_equal(settings, [list(r["settings"].values()) for r, _ in rows])
        assert np.allclose(rul, [t.rul for _, t in rows])
    assert sum(rows[0][1].healthy for rows in streamed.values()) == 1


def test_simulate_units_turbofan_shapes() -> None:
    for eq_id, settings, sensors, rul in simulate_units("turbofan_engine", 3, seed=0):
        assert eq_id.startswith("turbofan-")
        assert settings.shape == (len(rul), 3) and sensors.shape == (len(rul), 21)
        assert rul[-1] == 0 and rul[0] == len(rul) - 1
        assert abs(settings[:, 0].std() - 0.0022) < 0.001 and np.all(settings[:, 2] == 100.0)


def test_pump_fault_tone_grows_in_fft_while_rms_barely_moves() -> None:
    col = SENSORS["pump"].index("vibration")
    fault_bins = slice(13, 16)  # 0.23 cycles/reading * 60 readings = bin 13.8
    for _, _, sensors, rul in simulate_units("pump", 4, seed=2):
        v = sensors[:, col]

        def spectrum(w: np.ndarray) -> np.ndarray:
            return np.abs(np.fft.rfft(w - w.mean()))

        early, late = spectrum(v[:60]), spectrum(v[-60:])
        assert late[fault_bins].sum() > 3 * early[fault_bins].sum()
        assert set(np.argsort(late[1:])[-2:] + 1) == {3, 14}  # shaft tone and fault tone
        mid = len(v) // 2
        assert v[mid : mid + 60].std() < 1.15 * v[:60].std()
        temp = sensors[:, SENSORS["pump"].index("bearing_temp_c")]
        flow = sensors[:, SENSORS["pump"].index("flow_m3h")]
        assert temp[-60:].mean() > temp[:60].mean() + 5
        assert flow[-60:].mean() < flow[:60].mean()
        assert rul[-1] == 0 and rul[-2] == pytest.approx(600 / 3600)


@pytest.mark.parametrize("kind", ["spike", "drift", "stuck"])
def test_faults_are_recorded_and_visible(kind: str) -> None:
    base = SimConfig(num_equipment=3, readings=400, healthy_fraction=0.0, seed=11)
    clean = run(base)
    faulty = run(dataclasses.replace(base, faults=(kind,), fault_rate=0.01))
    episodes = fault_episodes(t for _, t in faulty)
    assert episodes and all(e.kind == kind for e in episodes)
    assert [t.ts_ms for _, t in faulty] == [t.ts_ms for _, t in clean]
    last_ts = {t.equipment_id: t.ts_ms for _, t in clean}  # runs stop at failure
    for e in episodes:
        length = (e.end_ms - e.start_ms) // 3_600_000 + 1
        if kind == "spike":
            assert length == 1
        else:
            assert length <= 50 and (length >= 20 or e.end_ms == last_ts[e.equipment_id])
        assert e.sensor not in {"T2", "P2", "epr", "farB", "Nf_dmd", "PCNfR_dmd"}
    changed_episodes = set()
    for (r0, _), (r1, t1) in zip(clean, faulty, strict=True):
        for name, v in r1["sensors"].items():
            if v != r0["sensors"][name]:
                assert t1.fault == kind and t1.fault_sensor == name, (t1, name)
                assert t1.fault_start_ms is not None and t1.fault_end_ms is not None
                assert t1.fault_start_ms <= t1.ts_ms <= t1.fault_end_ms
                changed_episodes.add((t1.equipment_id, t1.fault_start_ms))
        if kind == "spike" and t1.fault_sensor is not None:
            sd = MODELS["turbofan_engine"].fault_scale[TURBOFAN_SENSORS.index(t1.fault_sensor)]
            jump = r1["sensors"][t1.fault_sensor] - r0["sensors"][t1.fault_sensor]
            assert 5.9 * sd <= jump <= 10.1 * sd
    assert changed_episodes == {(e.equipment_id, e.start_ms) for e in episodes}
    if kind == "stuck":
        for e in episodes:
            values = [
                r["sensors"][e.sensor]
                for r, t in faulty
                if t.equipment_id == e.equipment_id and e.start_ms <= t.ts_ms <= e.end_ms
            ]
            assert len(set(values)) == 1
    if kind == "drift":
        for e in episodes:
            col = TURBOFAN_SENSORS.index(e.sensor)
            sd = MODELS["turbofan_engine"].fault_scale[col]
            offsets = [
                r1["sensors"][e.sensor] - r0["sensors"][e.sensor]
                for (r0, _), (r1, t) in zip(clean, faulty, strict=True)
                if t.equipment_id == e.equipment_id and e.start_ms <= t.ts_ms <= e.end_ms
            ]
            assert abs(offsets[0]) < abs(offsets[-1])  # ramps away
            if e.end_ms != last_ts[e.equipment_id]:
                assert 5.9 * sd <= abs(offsets[-1]) <= 10.1 * sd


def test_faults_on_pump_vibration_and_rate_zero_injects_nothing() -> None:
    cfg = SimConfig(2, ("pump",), readings=500, faults=("spike", "drift", "stuck"), fault_rate=0.0)
    assert all(t.fault is None for _, t in run(cfg))
    cfg = SimConfig(2, ("pump",), readings=500, faults=("spike", "drift", "stuck"), fault_rate=0.05)
    kinds = {e.kind for e in fault_episodes(t for _, t in run(cfg))}
    assert kinds == {"spike", "drift", "stuck"}


@pytest.mark.parametrize(
    "bad",
    [
        {"num_equipment": 0},
        {"equipment_types": ("boiler",)},
        {"healthy_fraction": 1.5},
        {"faults": ("melt",)},
        {"replace_on_failure": True},
        {"readings": 0},
        {"seed": -1},
    ],
)
def test_bad_config_is_rejected(bad: dict) -> None:
    with pytest.raises(ValueError):
        SimConfig(**bad)


def test_token_bucket_limits_rate_without_sleeping_per_message() -> None:
    now = [0.0]
    sleeps: list[float] = []

    def sleep(s: float) -> None:
        sleeps.append(s)
        now[0] += s

    bucket = TokenBucket(1000.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(5000):
        bucket.take()
    assert 4.8 <= now[0] <= 5.1  # 5000 tokens at 1000/s, minus the initial burst of 100
    assert len(sleeps) < 600  # batched: at most one sleep per ~10 messages


def test_cli_writes_jsonl_and_truth(tmp_path: Path) -> None:
    out, truth = tmp_path / "r.jsonl", tmp_path / "t.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "connectors.simulator",
        "--num-equipment",
        "3",
        "--equipment-type",
        "turbofan_engine",
        "--equipment-type",
        "pump",
        "--readings",
        "5",
        "--seed",
        "4",
        "--out",
        str(out),
        "--truth-out",
        str(truth),
    ]
    proc = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    readings = [json.loads(line) for line in out.read_text().splitlines()]
    truths = [json.loads(line) for line in truth.read_text().splitlines()]
    assert len(readings) == len(truths) == 15
    expected = [r for r, _ in simulate(SimConfig(3, ("turbofan_engine", "pump"), 5, seed=4))]
    assert readings == expected
    assert [(t["equipment_id"], t["ts"]) for t in truths] == [
        (r["equipment_id"], r["ts"]) for r in readings
    ]
    assert {"rul", "rul_unit", "wear", "healthy", "fault"} <= set(truths[0])


def test_cli_kafka_counts_failed_deliveries_and_exits_nonzero() -> None:
    with socket.socket() as sock:  # a port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "connectors.simulator",
        "--num-equipment",
        "2",
        "--readings",
        "3",
        "--kafka",
        f"127.0.0.1:{port}",
        "--delivery-timeout",
        "1",
    ]
    proc = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "produced 6 readings (6 failed)" in proc.stderr


def test_cli_bad_arguments_exit_with_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--num-equipment", "0"], ["--equipment-type", "boiler"], ["--start", "never"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_cli_stdout_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--num-equipment", "2", "--readings", "2", "--equipment-type", "pump"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(x)["equipment_id"] for x in lines] == ["pump-0001", "pump-0002"] * 2


def test_mixed_fleet_split_first_type_takes_remainder() -> None:
    cfg = SimConfig(num_equipment=5, equipment_types=("pump", "turbofan_engine"), readings=1)
    ids = sorted(r["equipment_id"] for r, _ in run(cfg))
    assert ids == ["pump-0001", "pump-0002", "pump-0003", "turbofan-0001", "turbofan-0002"]
    assert len(list(itertools.islice(simulate(cfg), 3))) == 3
