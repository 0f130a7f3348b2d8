"""Behaviour of the anomaly detector on labelled synthetic signals: calibration, sensitivity at
several time scales, robustness to level shifts, spikes, stuck and quantised sensors.

The general contract (pickling, score before learn, bounded memory, ...) is in
tests/test_anomaly.py; the fleet-level evaluation is tests/test_detector_eval.py.
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from alerting.rules import FIRING, RESOLVED, AlertState, Thresholds, evaluate
from models.anomaly import AnomalyDetector, SensorBaselines, TailCalibrator, gauss_nats
from models.schemas import Prediction

ALERT = Thresholds().anomaly_warning  # the flow's default alert level
ONSET = 1_000  # readings of normal data before anything happens


def noise(n: int, k: int = 5, seed: int = 0, kind: str = "gauss") -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "gauss":
        return rng.normal(size=(n, k))
    if kind == "laplace":
        return rng.laplace(size=(n, k)) / math.sqrt(2.0)
    if kind == "student5":
        return rng.standard_t(5, size=(n, k))
    raise ValueError(kind)


def scores(det: AnomalyDetector, rows: np.ndarray, level: float = 0.0, scale: float = 1.0):
    names = [f"s{j}" for j in range(rows.shape[1])]
    return np.array(
        [det.score_learn(dict(zip(names, (level + scale * r).tolist(), strict=True))) for r in rows]
    )


# --- calibration ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_scores_on_stationary_noise_are_calibrated(seed: int) -> None:
    s = scores(AnomalyDetector(seed=seed), noise(12_000, k=8, seed=seed))[200:]
    assert 0.006 < np.mean(s > 0.99) < 0.015  # about 1 %
    assert 0.085 < np.mean(s > 0.9) < 0.115  # about 10 %
    assert np.mean(s > 0.999) < 0.003
    assert 0.47 < s.mean() < 0.53


def test_a_threshold_means_the_same_on_very_different_machines() -> None:
    """Level, scale, noise shape and sensor count differ; the exceedance rates do not."""
    machines = [
        (noise(10_000, k=3, seed=1), 1e3, 5e2),
        (noise(10_000, k=12, seed=2, kind="laplace"), -7.0, 1e-3),
        (noise(10_000, k=6, seed=3, kind="student5"), 40.0, 0.3),
    ]
    for rows, level, scale in machines:
        s = scores(AnomalyDetector(), rows, level, scale)[200:]
        assert 0.08 < np.mean(s > 0.9) < 0.12
        assert 0.005 < np.mean(s > 0.99) < 0.022  # heavy tails: within about 2x


# --- sensitivity at several time scales -------------------------------------------------------


def alerts(s: np.ndarray, start: int = 0) -> list[tuple[int, int | None, str]]:
    """``(fired, resolved, severity)`` of the flow's anomaly alerts on these scores (hourly
    readings, default thresholds), for alerts firing at or after reading ``start``."""
    state, out = AlertState(), []
    for i, score in enumerate(s):
        p = Prediction("e", "t", i * 3_600_000, None, "cycles", None, None, None, 1.0,
                       float(score), "ok", "m", "1")  # fmt: skip
        for a in evaluate(state, p, Thresholds()):
            if a.state == FIRING:
                out.append((i, None, a.severity))
            elif a.state == RESOLVED:
                out[-1] = (out[-1][0], i, out[-1][2])
    return [a for a in out if a[0] >= start]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_slow_drift_is_flagged_before_it_leaves_the_noise_band(seed: int) -> None:
    """A drift of 0.05 sigma per reading crosses the +-3 sigma band of single readings after
    60 readings; averaging over the short baseline catches it well before.

    (A drift this slow is hard to tell from a settled level shift within 20 readings: after
    alerting for about 20 readings the detector takes the new level as normal, and a drift
    that goes on raises a new alert some 30 readings later.)"""
    rows = noise(ONSET + 120, seed=seed)
    drift = 0.05 * np.arange(1, 121)
    rows[ONSET:, 0] += drift
    found = alerts(scores(AnomalyDetector(seed=seed), rows), start=ONSET)
    fired, resolved, _ = found[0]
    assert drift[fired - ONSET] < 3.0, f"flagged only at {drift[fired - ONSET]:.2f} sigma"
    assert resolved is None or resolved - fired >= 10


@pytest.mark.parametrize("seed", [4, 5, 6, 7])
def test_a_drift_raises_one_alert_that_lasts_while_it_drifts(seed: int) -> None:
    """A drift like the simulator's (to 7.5 sigma over 50 readings, then back): flagged early,
    not realigned away while it moves (the alert does not flap), at most one more alert
    when it snaps back."""
    rows = noise(ONSET + 300, seed=seed)
    rows[ONSET : ONSET + 50, 2] += 0.15 * np.arange(1, 51)
    found = alerts(scores(AnomalyDetector(seed=seed), rows), start=ONSET)
    fired, resolved, _ = found[0]
    assert fired - ONSET < 25
    assert resolved is not None and resolved >= ONSET + 45
    assert len(found) <= 2 and all(a[0] <= ONSET + 70 for a in found)


def test_a_spike_is_one_short_incident() -> None:
    rows = noise(ONSET + 50, seed=5)
    rows[ONSET, 1] += 8.0
    s = scores(AnomalyDetector(seed=5), rows)
    assert s[ONSET] >= ALERT
    assert s[ONSET + 1 : ONSET + 50].max() < ALERT  # the spike did not move the baselines
    [(fired, resolved, _)] = alerts(s, start=ONSET - 1)
    assert fired == ONSET and resolved is not None and resolved <= ONSET + 2


# --- robustness -------------------------------------------------------------------------------


@pytest.mark.parametrize(("shift", "seed"), [(6.0, 0), (-5.0, 1), (8.0, 2), (-6.0, 4)])
def test_level_shift_is_flagged_then_becomes_the_new_normal(shift: float, seed: int) -> None:
    rows = noise(ONSET + 600, seed=seed)
    rows[ONSET:, 0] += shift  # e.g. a sensor re-fitted during maintenance: it stays there
    s = scores(AnomalyDetector(seed=seed), rows)
    [(fired, resolved, _)] = alerts(s, start=ONSET)  # one incident, one alert
    assert fired - ONSET <= 2
    assert resolved is not None and resolved - ONSET <= 30
    settled = s[ONSET + 30 :]
    assert settled.max() < ALERT
    assert np.mean(settled > 0.99) < 0.025  # back to the calibrated ~1 %


def test_stuck_sensor_is_flagged_within_a_few_readings() -> None:
    rows = noise(ONSET + 60, seed=6)
    rows[ONSET : ONSET + 30, 3] = rows[ONSET - 1, 3]  # repeats its last value
    s = scores(AnomalyDetector(seed=6), rows)
    [(fired, resolved, _)] = alerts(s, start=ONSET)
    assert fired - ONSET <= 4 and resolved == ONSET + 30  # unstuck: normal again at once


def test_quantised_sensor_stepping_between_two_values_is_normal() -> None:
    """A sensor sitting on one printed value and rarely stepping to the next (like C-MAPSS
    P15) must not alarm on each step, nor hide a real jump on that sensor."""
    rows = noise(ONSET + 4_000, k=4, seed=7)
    rng = np.random.default_rng(7)
    steps = rng.random(len(rows)) < 0.005
    steps[5] = True
    quantised = np.where(steps, 21.60, 21.61)
    det = AnomalyDetector(seed=7)
    s = np.array(
        [
            det.score_learn({"q": float(q), **{f"s{j}": float(v) for j, v in enumerate(r)}})
            for q, r in zip(quantised, rows, strict=True)
        ]
    )
    assert np.mean(s[200:][steps[200:]] >= ALERT) < 0.05
    assert det.score_learn({"q": 21.70, **{f"s{j}": 0.0 for j in range(4)}}) >= ALERT


# --- parts ------------------------------------------------------------------------------------


def test_raw_score_and_transform_do_not_learn() -> None:
    det = AnomalyDetector()
    scores(det, noise(300))
    before = pickle.dumps(det)
    x = {"s0": 3.0, "s1": -1.0, "s4": 0.5}
    assert det.raw_score(x) == det.raw_score(x) > 0
    det.scaler.transform_one(x)
    assert pickle.dumps(det) == before


def test_baselines_expose_what_equipment_state_reads() -> None:
    b = SensorBaselines()
    for v in noise(500, k=2)[:, 0]:
        b.learn_one({"a": 100.0 + float(v), "b": 5.0})
    assert b.counts == {"a": 500, "b": 500}
    assert b.means["a"] == pytest.approx(100.0, abs=0.5) and b.means["b"] == 5.0
    assert b.vars["a"] == pytest.approx(1.0, rel=0.35)  # the noise around the short baseline
    assert b.vars["b"] == 0.0


def test_calibrator_is_uniform_on_exchangeable_data() -> None:
    cal = TailCalibrator(size=500, seed=3)
    rng = np.random.default_rng(3)
    p = np.array([cal.p_learn(float(v)) for v in rng.exponential(size=20_000)])[500:]
    for level in (0.5, 0.1, 0.01, 0.001):
        assert np.mean(p < level) == pytest.approx(level, rel=0.35)
    assert len(cal.sorted) <= 500 and cal.sorted == sorted(cal.sorted)


def test_calibrator_is_not_blunted_by_a_long_fault() -> None:
    """Sixty extreme raw scores in a row (a long fault) must not teach the calibrator that
    extremes are normal: a 1e-4 event afterwards is still rated near 1e-4."""
    cal = TailCalibrator(size=500, seed=0)
    rng = np.random.default_rng(0)
    for v in rng.exponential(size=600):
        cal.p_learn(float(v))
    for v in np.linspace(8.0, 30.0, 60):
        cal.p_learn(float(v))
    assert cal.p_value(math.log(1e4)) < 5e-4  # P(Exp(1) > ln 1e4) = 1e-4


def test_gauss_nats_is_the_two_sided_tail() -> None:
    for z in (0.5, 1.0, 3.0, 6.0, 12.0, 29.0, 31.0):
        exact = -math.log(math.erfc(z / math.sqrt(2.0))) if z < 37 else None
        if exact is not None:
            assert gauss_nats(z) == pytest.approx(exact, rel=1e-3)
    assert gauss_nats(100.0) == pytest.approx(5000 + math.log(100 * math.sqrt(math.pi / 2)))


def test_optional_trees_channel_stays_calibrated_and_uses_the_seed() -> None:
    rows = noise(3_000, k=6, seed=8)
    a = scores(AnomalyDetector(hst_weight=1.0, seed=1), rows)[200:]
    b = scores(AnomalyDetector(hst_weight=1.0, seed=2), rows)[200:]
    assert 0.08 < np.mean(a > 0.9) < 0.12
    assert not np.array_equal(a, b)
