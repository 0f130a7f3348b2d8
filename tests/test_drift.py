"""Tests of the feature-drift reference, monitor and alert rule (pure, no services)."""

from __future__ import annotations

import hashlib
import json
import pickle
from itertools import pairwise
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.drift import (
    EPS,
    RULE,
    DriftAlertState,
    DriftConfig,
    DriftMonitor,
    DriftReference,
    DriftTracker,
    drift_alerts,
)
from models.features import FeatureConfig, RingBuffer, history_features, window_features

F = 8
NAMES = [f"s{i}__mean_30" for i in range(F)]


def sample(rng: np.random.Generator, n: int, shift: dict[int, float] | None = None) -> np.ndarray:
    """Rows of a mixed feature vector: normal, skewed, offset, an integer code, a constant."""
    x = np.empty((n, F))
    x[:, 0] = rng.normal(size=n)
    x[:, 1] = rng.lognormal(0.0, 1.0, size=n)  # skewed
    x[:, 2] = 642.0 + 0.05 * rng.normal(size=n)  # large offset, small spread
    x[:, 3] = rng.normal(10.0, 2.0, size=n)
    x[:, 4] = rng.choice([0.0, 1.0, 2.0], p=[0.5, 0.3, 0.2], size=n)  # discrete
    x[:, 5] = 518.67  # a constant sensor
    x[:, 6] = rng.exponential(size=n) * (rng.random(n) < 0.45)  # 55% at 0
    x[:, 7] = rng.uniform(-1e-3, 1e-3, size=n)  # tiny values
    for j, s in (shift or {}).items():
        x[:, j] += s * x[:, j].std()
    return x


@pytest.fixture(scope="module")
def ref() -> DriftReference:
    return DriftReference.from_training(sample(np.random.default_rng(0), 5000), NAMES)


def psi_of(ref: DriftReference, x: np.ndarray, half_life: float = 2000) -> np.ndarray:
    mon = DriftMonitor(ref, half_life)
    mon.update(x)
    return mon.psi()


# -- the reference ---------------------------------------------------------------------


def test_reference_bins_follow_the_training_quantiles(ref: DriftReference) -> None:
    assert ref.n_bins.tolist() == [10, 10, 10, 10, 5, 3, 6, 10]
    e = ref.expected
    for j in (0, 1, 2, 3, 7):  # continuous: about 10% per bin
        assert np.allclose(e[j, :10], 0.1, atol=0.002), NAMES[j]
    assert ref.cuts_of(NAMES[4]).tolist() == [-0.5, 0.5, 1.5, 2.5]  # one bin per value
    assert e[4, :5] == pytest.approx([0.0, 0.5, 0.3, 0.2, 0.0], abs=0.02)
    assert e[5, :3].tolist() == [0.0, 1.0, 0.0]  # constant: its value plus two guards
    assert e[6, 0] == pytest.approx(0.55, abs=0.02)  # the point mass at 0 is one bin
    assert np.allclose(e.sum(axis=1), 1.0)


def test_reference_round_trips_through_compact_json(ref: DriftReference) -> None:
    text = ref.to_json()
    back = DriftReference.from_json(text)
    assert back == ref
    assert DriftReference.from_dict(json.loads(json.dumps(ref.to_dict()))) == ref
    assert back.names == tuple(NAMES) and back.n_rows == 5000 and back.bins == 10
    live = sample(np.random.default_rng(5), 1000, shift={0: 1.0})
    assert np.array_equal(psi_of(back, live), psi_of(ref, live))
    # Cut points are rounded to a few digits of their spread, not to a few digits of their
    # magnitude: the feature at 642 +- 0.05 keeps its 9 distinct cuts.
    cuts = ref.cuts_of(NAMES[2])
    assert len(cuts) == 9 and all(len(repr(float(c))) <= 12 for c in cuts)


def test_reference_for_400_features_stays_small() -> None:
    rng = np.random.default_rng(3)
    n, f = 3000, 400
    scale = 10.0 ** rng.uniform(-3, 3, size=f)
    offset = rng.normal(0, 1000, size=f)
    x = offset + scale * rng.normal(size=(n, f))
    ref = DriftReference.from_training(x, [f"sensor{j:02d}__stat_{j}" for j in range(f)])
    size = len(ref.to_json())
    assert size < 100_000, size  # well under 1 MB of ONNX metadata
    assert (ref.n_bins == 10).all()


def test_reference_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"want x shaped \(N, 2\)"):
        DriftReference.from_training(np.zeros((10, 3)), ["a", "b"])
    with pytest.raises(ValueError, match="not unique"):
        DriftReference.from_training(np.zeros((10, 2)), ["a", "a"])
    with pytest.raises(ValueError, match="format"):
        DriftReference.from_dict({"format": "something else"})
    with pytest.raises(ValueError, match="strictly ascending"):
        DriftReference(["a"], [[1.0, 0.5]], [[1, 1, 1]], 3, 10)


def test_a_feature_without_finite_training_values_never_drifts() -> None:
    x = np.c_[np.arange(100.0), np.full(100, np.nan)]
    ref = DriftReference.from_training(x, ["a", "b"])
    assert ref.n_bins.tolist() == [10, 1]
    mon = DriftMonitor(ref)
    mon.update(np.c_[np.arange(100.0), np.arange(100.0)])
    assert mon.psi()[1] == 0.0


# -- the monitor -----------------------------------------------------------------------


def test_psi_is_near_zero_on_the_training_distribution(ref: DriftReference) -> None:
    psi = psi_of(ref, sample(np.random.default_rng(1), 5000))
    assert psi.max() < 0.02, dict(zip(NAMES, psi.round(4), strict=True))


def test_a_one_std_mean_shift_is_flagged_on_that_feature_only(ref: DriftReference) -> None:
    for j in (0, 1, 2, 3, 7):
        mon = DriftMonitor(ref)
        mon.update(sample(np.random.default_rng(10 + j), 5000, shift={j: 1.0}))
        psi = mon.psi()
        assert psi[j] > 0.25, (j, psi[j])
        others = np.delete(psi, j)
        assert others.max() < 0.02, (j, others)
        assert mon.top(1)[0][0] == NAMES[j]
        ks = mon.ks()
        assert ks[j] > 0.2 and np.delete(ks, j).max() < 0.05, (j, ks)


def test_discrete_features_flag_new_values_and_changed_proportions(
    ref: DriftReference,
) -> None:
    rng = np.random.default_rng(2)
    same = sample(rng, 5000)
    assert psi_of(ref, same)[4] < 0.01

    unseen = same.copy()
    unseen[rng.random(len(unseen)) < 0.1, 4] = 7.0  # 10% unseen: lands in a guard bin
    assert psi_of(ref, unseen)[4] > 0.25

    mix = same.copy()
    mix[:, 4] = rng.choice([0.0, 1.0, 2.0], p=[0.2, 0.3, 0.5], size=len(mix))
    assert psi_of(ref, mix)[4] > 0.25


def test_a_constant_feature_ignores_rounding_noise_but_not_a_new_value(
    ref: DriftReference,
) -> None:
    x = sample(np.random.default_rng(4), 2000)
    x[:, 5] = 518.67 * (1 + 1e-12 * np.random.default_rng(5).normal(size=len(x)))
    assert psi_of(ref, x)[5] == 0.0
    x[:, 5] = 518.7
    assert psi_of(ref, x)[5] > 5.0  # everything in an empty guard bin


def test_psi_falls_back_when_the_drift_stops(ref: DriftReference) -> None:
    rng = np.random.default_rng(6)
    mon = DriftMonitor(ref, half_life=1000)
    mon.update(sample(rng, 5000, shift={3: 1.0}))
    drifted = mon.psi()[3]
    assert drifted > 0.25
    history = []
    for _ in range(8):  # 8000 normal rows: 8 half-lives
        mon.update(sample(rng, 1000))
        history.append(mon.psi()[3])
    assert history[0] < drifted and history[-1] < 0.02
    assert all(b < a for a, b in pairwise(history[:5]))  # decays while drift dominates


def test_decayed_count_and_batches_equal_row_by_row(ref: DriftReference) -> None:
    x = sample(np.random.default_rng(7), 1300)
    x[::7, 1] = np.nan  # NaN values are skipped, per feature
    batched, single = DriftMonitor(ref, half_life=500), DriftMonitor(ref, half_life=500)
    batched.update(x)
    for row in x:
        single.update(row)
    assert np.allclose(batched.counts, single.counts, rtol=1e-12)
    assert batched.count == pytest.approx(single.count, rel=1e-12)
    decay = 0.5 ** (1 / 500)
    assert batched.count == pytest.approx((1 - decay**1300) / (1 - decay))
    assert batched.seen == 1300
    # feature 1 counts only its non-NaN rows, with their decayed weights
    w = decay ** np.arange(1299, -1, -1)
    assert batched.counts[0].sum() == pytest.approx(w.sum(), rel=1e-12)
    assert batched.counts[1].sum() == pytest.approx(w[~np.isnan(x[:, 1])].sum(), rel=1e-12)
    assert not np.isnan(batched.psi()).any()


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    sizes=st.lists(st.integers(1, 700), min_size=1, max_size=5),
)
def test_splitting_the_stream_into_batches_changes_nothing(
    ref: DriftReference, seed: int, sizes: list[int]
) -> None:
    x = sample(np.random.default_rng(seed), sum(sizes))
    whole, parts = DriftMonitor(ref, 300), DriftMonitor(ref, 300)
    whole.update(x)
    for chunk in np.split(x, np.cumsum(sizes)[:-1]):
        parts.update(chunk)
    assert np.allclose(whole.counts, parts.counts, rtol=1e-9, atol=1e-12)
    assert np.allclose(whole.psi(), parts.psi(), atol=1e-9)


def test_monitor_pickles_and_memory_stays_bounded(ref: DriftReference) -> None:
    rng = np.random.default_rng(8)
    mon = DriftMonitor(ref)
    mon.update(sample(rng, 100))
    size_small = len(pickle.dumps(mon))
    mon.update(sample(rng, 10_000, shift={0: 0.5}))
    blob = pickle.dumps(mon)
    assert len(blob) <= size_small + 8  # O(features x bins), whatever the rows seen
    back = pickle.loads(blob)
    assert np.array_equal(back.psi(), mon.psi()) and back.count == mon.count
    more = sample(rng, 300)
    back.update(more)
    mon.update(more)
    assert np.array_equal(back.counts, mon.counts)
    assert pickle.loads(pickle.dumps(ref)) == ref


def test_monitor_rejects_rows_of_the_wrong_width_and_leaves_input_alone(
    ref: DriftReference,
) -> None:
    mon = DriftMonitor(ref)
    with pytest.raises(ValueError, match="want rows of 8 features"):
        mon.update(np.zeros((3, 7)))
    x = sample(np.random.default_rng(9), 50)
    before = x.copy()
    mon.update(x)
    assert np.array_equal(x, before)
    with pytest.raises(ValueError, match="half_life"):
        DriftMonitor(ref, half_life=0)


def test_empty_monitor_reports_no_drift(ref: DriftReference) -> None:
    mon = DriftMonitor(ref)
    assert mon.psi().tolist() == [0.0] * F and mon.ks().tolist() == [0.0] * F
    assert mon.count == 0.0
    mon.update(np.empty((0, F)))
    assert mon.seen == 0


def test_psi_matches_the_textbook_formula(ref: DriftReference) -> None:
    mon = DriftMonitor(ref)
    mon.update(sample(np.random.default_rng(11), 800, shift={1: 0.3}))
    j = 1
    a = mon.counts[j] / mon.counts[j].sum()
    e = ref.counts[j] / ref.counts[j].sum()
    a, e = np.maximum(a, EPS), np.maximum(e, EPS)
    assert mon.psi()[j] == pytest.approx(float(np.sum((a - e) * np.log(a / e))))


def test_drift_on_real_window_features_points_at_the_shifted_sensor() -> None:
    """Reference from training histories (history_features), live vectors computed one
    window at a time as the flow does (RingBuffer + window_features)."""
    cfg = FeatureConfig(sensors=("a", "b", "k"), windows=(5, 20))
    rng = np.random.default_rng(12)

    def history(n: int, b_shift: float = 0.0) -> np.ndarray:
        h = np.c_[rng.normal(size=n), rng.normal(size=n) + b_shift, np.full(n, 518.67)]
        return h

    train = history_features(history(6000), cfg)[cfg.max_window :]
    ref = DriftReference.from_training(train, cfg.names)

    def live(b_shift: float) -> DriftMonitor:
        mon = DriftMonitor(ref, half_life=2000)
        rb = RingBuffer(cfg.max_window, 3)
        rows = []
        for i, row in enumerate(history(4000, b_shift)):
            rb.append(row)
            if i >= cfg.max_window:
                rows.append(window_features(rb.window(), cfg))
        mon.update(np.array(rows))
        return mon

    calm = live(0.0).psi()
    assert calm.max() < 0.1, live(0.0).top(3)
    k_feats = [j for j, n in enumerate(cfg.names) if n.startswith("k__")]
    assert (calm[k_feats] == 0.0).all()  # a constant sensor: no drift from rounding

    mon = live(1.0)
    psi = dict(zip(cfg.names, mon.psi(), strict=True))
    for stat in ("mean_5", "mean_20", "min_20", "max_20", "last_5"):
        assert psi[f"b__{stat}"] > 0.25, (stat, psi[f"b__{stat}"])
    assert max(v for n, v in psi.items() if not n.startswith("b__")) < 0.1
    assert psi["b__std_20"] < 0.1  # a mean shift leaves the spread alone
    assert all(name.startswith("b__") for name, _ in mon.top(5))


# -- alerts ----------------------------------------------------------------------------


def run_alerts(values: list[float], counts: list[float] | None = None, **kw: Any):
    """Feed max-PSI values (one feature carries it) and return (step, alert) pairs."""
    st_ = DriftAlertState()
    out = []
    for i, v in enumerate(values):
        psi = np.array([0.01, v, 0.02])
        count = counts[i] if counts else 5000.0
        for a in drift_alerts(st_, "pump", psi, ["x", "y", "z"], 1000 * i, count=count, **kw):
            out.append((i, a))
    return out, st_


def test_alert_fires_once_and_resolves_once_with_hysteresis() -> None:
    values = [0.1, 0.3, 0.5, 0.22, 0.21, 0.4, 0.19, 0.15, 0.3]
    out, state = run_alerts(values, min_count=1000)
    assert [(i, a.state, a.severity) for i, a in out] == [
        (1, "firing", "warning"),
        (6, "resolved", "warning"),  # 0.22 and 0.21 are above 0.8 x 0.25 = 0.2
        (8, "firing", "warning"),  # a new episode
    ]
    fire, resolve, again = (a for _, a in out)
    assert fire.equipment_id == "fleet:pump" and fire.rule == RULE
    assert fire.value == 0.3 and fire.threshold == 0.25 and resolve.threshold == 0.2
    assert fire.evidence["top_features"][0] == {"feature": "y", "psi": 0.3}
    assert [t["feature"] for t in fire.evidence["top_features"]] == ["y", "z", "x"]
    assert fire.evidence["episode_start_ts_ms"] == 1000
    assert "y 0.300" in fire.message and "warning threshold 0.25" in fire.message
    json.dumps(fire.to_json_dict())  # evidence is plain JSON
    assert len({fire.alert_id, resolve.alert_id, again.alert_id}) == 3
    assert state.severity == "warning" and state.episode_start_ts_ms == 8000


def test_alert_ids_are_deterministic() -> None:
    values = [0.3, 0.1, 0.3, 0.1]
    first, _ = run_alerts(values)
    replay, _ = run_alerts(values)
    assert [a for _, a in first] == [a for _, a in replay]
    for _, a in first:
        key = f"fleet:pump|feature_drift|{a.evidence['episode_start_ts_ms']}|{a.state}|warning"
        assert a.alert_id == hashlib.sha256(key.encode()).hexdigest()[:16]


def test_no_alert_before_the_monitor_has_seen_min_count_rows() -> None:
    out, state = run_alerts([0.9, 0.9, 0.9], counts=[10.0, 500.0, 999.0], min_count=1000)
    assert out == [] and state.severity is None
    out, _ = run_alerts([0.9, 0.9], counts=[999.0, 1000.0], min_count=1000)
    assert [(i, a.state) for i, a in out] == [(1, "firing")]


def test_critical_escalates_and_resolves_with_the_episode_severity() -> None:
    out, _ = run_alerts([0.3, 0.6, 0.7, 0.3, 0.1], critical=0.5)
    assert [(i, a.state, a.severity, a.threshold) for i, a in out] == [
        (0, "firing", "warning", 0.25),
        (1, "escalated", "critical", 0.5),
        (4, "resolved", "critical", 0.2),
    ]
    out, _ = run_alerts([0.6, 0.1], critical=0.5)
    assert [(a.state, a.severity) for _, a in out] == [
        ("firing", "critical"),
        ("resolved", "critical"),
    ]


def test_alerts_ignore_nan_and_empty_psi() -> None:
    st_ = DriftAlertState()
    assert drift_alerts(st_, "pump", np.array([np.nan]), ["x"], 0, count=5000) == []
    assert drift_alerts(st_, "pump", np.array([]), [], 0, count=5000) == []
    assert st_ == DriftAlertState()


def test_monitor_and_alerts_together(ref: DriftReference) -> None:
    rng = np.random.default_rng(13)
    mon, state = DriftMonitor(ref, half_life=1000), DriftAlertState()
    seen: list[tuple[str, str]] = []
    phases = [(0.0, 3), (1.5, 4), (0.0, 8)]  # calm, drift on feature 3, calm again
    ts = 0
    for shift, batches in phases:
        for _ in range(batches):
            mon.update(sample(rng, 1000, shift={3: shift}))
            ts += 60_000
            for a in drift_alerts(state, "turbofan_engine", mon.psi(), NAMES, ts,
                                  count=mon.count, min_count=1000):  # fmt: skip
                seen.append((a.state, a.evidence["top_features"][0]["feature"]))
    assert seen == [("firing", NAMES[3]), ("resolved", NAMES[3])]


# -- the tracker -----------------------------------------------------------------------


def test_tracker_evaluates_at_bucket_starts_whatever_the_batching(ref: DriftReference) -> None:
    rng = np.random.default_rng(14)
    n = 6000
    ts = np.sort(rng.integers(0, 600_000, size=n))  # 10 minutes of event time
    ts[100:110] = ts[99] - 30_000  # a few late rows: they count, they do not move time back
    x = sample(rng, n, shift={3: 1.0})
    cfg = DriftConfig(every_ms=60_000, min_count=1000, half_life=1000)
    whole = DriftTracker("turbofan_engine", "4", ref, cfg)
    evs = whole.ingest(ts, x)
    instants = [e.ts_ms for e in evs]
    # Expected: each minute boundary m the running max event time crosses, if the rows
    # before it weigh at least min_count once decayed.
    running = np.maximum.accumulate(ts // 60_000)
    decay = 0.5 ** (1 / 1000)
    expected = []
    for m in range(1, int(running[-1]) + 1):
        k = int(np.searchsorted(running, m))  # rows before the first one in minute >= m
        if (1 - decay**k) / (1 - decay) >= 1000:
            expected.append(m * 60_000)
    assert instants == expected and len(expected) >= 7
    assert [a.state for e in evs for a in e.alerts] == ["firing"]
    assert all(e.top(1)[0][0] == NAMES[3] and e.max_psi > 0.25 for e in evs)
    assert all(e.count >= 1000 and e.model_version == "4" for e in evs)

    pieces = DriftTracker("turbofan_engine", "4", ref, cfg)
    got = []
    for lo, hi in pairwise([0, 1, 7, 500, 501, 2222, 4000, 5999, n]):
        got += pieces.ingest(ts[lo:hi], x[lo:hi])
    assert [e.ts_ms for e in got] == instants
    for a, b in zip(got, evs, strict=True):
        assert np.allclose(a.psi, b.psi, atol=1e-9) and a.alerts == b.alerts


def test_tracker_model_swap_restarts_the_monitor_and_keeps_the_episode(
    ref: DriftReference,
) -> None:
    rng = np.random.default_rng(15)
    cfg = DriftConfig(every_ms=1000, min_count=500)
    tr = DriftTracker("pump", "1", ref, cfg)
    ts = np.arange(3000) * 10
    evs = tr.ingest(ts, sample(rng, 3000, shift={0: 1.0}))
    assert [a.state for e in evs for a in e.alerts] == ["firing"]
    assert not tr.set_model("1", ref)
    assert tr.set_model("2", ref)
    assert tr.monitor.count == 0.0 and tr.alert_state.severity == "warning"
    # warming up again: no evaluation; then calm data resolves the old episode
    evs = tr.ingest(ts + 30_000, sample(rng, 3000))
    assert evs[0].ts_ms == 36_000 and evs[0].model_version == "2"  # 600 rows weigh 541
    alerts = [a for e in evs for a in e.alerts]
    assert [(a.state, a.evidence["model_version"]) for a in alerts] == [("resolved", "2")]
    back = pickle.loads(pickle.dumps(tr))
    more = sample(rng, 2000)
    a, b = tr.ingest(ts[:2000] + 70_000, more), back.ingest(ts[:2000] + 70_000, more)
    assert [e.ts_ms for e in a] == [e.ts_ms for e in b] and len(a) == 20
    assert all(np.array_equal(e.psi, f.psi) for e, f in zip(a, b, strict=True))


def test_tracker_validates_its_input(ref: DriftReference) -> None:
    tr = DriftTracker("pump", "1", ref)
    with pytest.raises(ValueError, match="want ts_ms"):
        tr.ingest(np.arange(3), np.zeros((2, F)))
    assert tr.ingest(np.arange(0), np.zeros((0, F))) == []
    with pytest.raises(ValueError, match="critical"):
        DriftConfig(warning=0.3, critical=0.2)
