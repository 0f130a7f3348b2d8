"""Contract suite for the anomaly detector and the per-equipment state that wraps it.

Every test in the first part runs against both subjects: the bare :class:`AnomalyDetector`
(``score_learn(dict)``) and :class:`EquipmentState` (``ingest(Reading)``), since the flow
keeps, pickles and restores the latter.
"""

from __future__ import annotations

import copy
import math
import pickle
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.anomaly import AnomalyDetector
from models.equipment_state import EquipmentState, Scored
from models.features import FeatureConfig
from models.schemas import Reading

SENSORS = tuple(f"s{i}" for i in range(5))
WARMUP = 60  # the default


def normal_stream(n: int, seed: int = 0, start: int = 0) -> Iterator[dict[str, float]]:
    """Readings of a healthy machine: each sensor noisy around its own level."""
    rng = np.random.default_rng(seed)
    levels = np.array([640.0, 1590.0, 1.3, 47.5, 0.03])
    spread = np.array([0.5, 6.0, 0.01, 0.3, 0.002])
    for _ in range(start + n):
        row = levels + spread * rng.normal(size=len(SENSORS))
        yield {s: float(v) for s, v in zip(SENSORS, row, strict=True)}


def outlier() -> dict[str, float]:
    """Every sensor 30 of its standard deviations off its level."""
    x = next(normal_stream(1))
    spread = (0.5, 6.0, 0.01, 0.3, 0.002)
    return {s: v + 30 * d for (s, v), d in zip(x.items(), spread, strict=True)}


@dataclass
class Subject:
    """One implementation under the contract: how to make it and feed it a reading."""

    name: str
    make: Callable[..., Any]
    feed: Callable[[Any, int, dict[str, float]], float]


def _make_detector(seed: int = 0) -> AnomalyDetector:
    return AnomalyDetector(seed=seed)


def _feed_detector(det: AnomalyDetector, _i: int, x: dict[str, float]) -> float:
    return det.score_learn(x)


def _make_state(seed: int = 0) -> EquipmentState:
    cfg = FeatureConfig(SENSORS, windows=(3, 6), fft_sensors=("s4",), fft_bands=2)
    return EquipmentState(cfg, AnomalyDetector(seed=seed), lateness_ms=0)


def _feed_state(state: EquipmentState, i: int, x: dict[str, float]) -> float:
    out = state.ingest(Reading("pump-0001", "pump", 1_000 * (i + 1), x))
    assert isinstance(out, Scored), out
    assert 0.0 <= out.anomaly_level <= 1.0
    assert set(out.top_sensors) <= set(SENSORS)
    return out.anomaly_score


SUBJECTS = [
    pytest.param(Subject("detector", _make_detector, _feed_detector), id="AnomalyDetector"),
    pytest.param(Subject("state", _make_state, _feed_state), id="EquipmentState"),
]


def run(subject: Subject, obj: Any, xs: Iterator[dict[str, float]], start: int = 0) -> list:
    return [subject.feed(obj, start + i, x) for i, x in enumerate(xs)]


def skip(n: int, xs: Iterator[dict[str, float]]) -> Iterator[dict[str, float]]:
    for _ in range(n):
        next(xs)
    return xs


@pytest.mark.parametrize("subject", SUBJECTS)
def test_pickle_round_trip_continues_identically(subject: Subject) -> None:
    obj = subject.make()
    run(subject, obj, normal_stream(300))
    clone = pickle.loads(pickle.dumps(obj))
    rest = list(skip(300, normal_stream(300, start=300)))
    assert run(subject, clone, iter(rest), 300) == run(subject, obj, iter(rest), 300)


def test_pickled_state_continues_with_identical_outputs() -> None:
    """Beyond the score: features, anomaly level, top sensors and the dedup memory."""
    state = _make_state()
    stream = list(normal_stream(400))
    for i, x in enumerate(stream[:200]):
        _feed_state(state, i, x)
    clone = pickle.loads(pickle.dumps(state))
    for i, x in enumerate(stream[200:], 200):
        a = state.ingest(Reading("p", "pump", 1_000 * (i + 1), x))
        b = clone.ingest(Reading("p", "pump", 1_000 * (i + 1), x))
        assert isinstance(a, Scored) and isinstance(b, Scored)
        assert (a.anomaly_score, a.anomaly_level, a.top_sensors) == (
            b.anomaly_score,
            b.anomaly_level,
            b.top_sensors,
        )
        np.testing.assert_array_equal(a.features, b.features)
    assert clone.ingest(Reading("p", "pump", 1_000 * 400, stream[0])).kind == "duplicate"


@pytest.mark.parametrize("subject", SUBJECTS)
def test_deep_copy_continues_identically(subject: Subject) -> None:
    obj = subject.make()
    run(subject, obj, normal_stream(200))
    twin = copy.deepcopy(obj)
    rest = list(normal_stream(200, seed=1))
    assert run(subject, twin, iter(rest), 200) == run(subject, obj, iter(rest), 200)


@pytest.mark.parametrize("subject", SUBJECTS)
def test_input_dict_is_not_mutated(subject: Subject) -> None:
    obj = subject.make()
    rng = np.random.default_rng(1)
    for i, x in enumerate(normal_stream(300)):
        if rng.random() < 0.2:
            x.pop(SENSORS[int(rng.integers(len(SENSORS)))])
        if rng.random() < 0.2:
            x["extra"] = 1e6
        before = dict(x)
        subject.feed(obj, i, x)
        assert x == before
        assert all(type(v) is float for v in x.values())


@pytest.mark.parametrize("subject", SUBJECTS)
def test_bounded_memory(subject: Subject) -> None:
    obj = subject.make()
    xs = normal_stream(10_000)
    run(subject, obj, (next(xs) for _ in range(1_000)))
    size_1k = len(pickle.dumps(obj))
    run(subject, obj, xs, 1_000)
    size_10k = len(pickle.dumps(obj))
    assert size_10k <= 1.5 * size_1k, (size_1k, size_10k)


@pytest.mark.parametrize("subject", SUBJECTS)
def test_missing_and_extra_sensors_are_tolerated(subject: Subject) -> None:
    obj = subject.make()
    rng = np.random.default_rng(2)
    scores = []
    for i, x in enumerate(normal_stream(400)):
        keep = rng.random(len(SENSORS)) < 0.7
        y = {s: v for (s, v), k in zip(x.items(), keep, strict=True) if k}
        if rng.random() < 0.3:
            y[f"new_{i % 7}"] = float(rng.normal())
        if i % 50 == 0:
            y = {"only_unknown": 1.0}  # no configured sensor at all, even the very first
        scores.append(subject.feed(obj, i, y))
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert any(s > 0.0 for s in scores[WARMUP + 1 :])


def test_vibration_sensor_missing_at_first_does_not_poison_the_detector() -> None:
    """Regression: the RMS of a vibration sensor not yet seen was NaN, and one NaN left a
    running-moments scaler NaN for that sensor for good."""
    state = _make_state()
    first = next(normal_stream(1))
    del first["s4"]  # the vibration sensor
    _feed_state(state, 0, first)
    scores = [_feed_state(state, i, x) for i, x in enumerate(normal_stream(300, seed=5), 1)]
    assert max(scores[WARMUP:]) > 0.5
    x = next(normal_stream(1, seed=6))
    x["s4"] = 10.0  # a vibration spike
    out = state.ingest(Reading("pump-0001", "pump", 1_000 * 302, x))
    assert isinstance(out, Scored) and out.top_sensors[0] == "s4"


def test_state_never_hands_the_detector_a_nan() -> None:
    """Sensors not yet seen (vibration ones included) are left out, not sent as NaN."""
    state = _make_state()
    inputs: list[dict[str, float]] = []
    score_learn = state.detector.score_learn

    def spy(x: Mapping[str, float]) -> float:
        inputs.append(dict(x))
        return score_learn(x)

    state.detector.score_learn = spy  # type: ignore[method-assign]
    rng = np.random.default_rng(8)
    for i, x in enumerate(normal_stream(40)):
        _feed_state(state, i, {k: v for k, v in x.items() if i > 20 or rng.random() < 0.2})
    assert len(inputs) == 40
    assert all(v == v for x in inputs for v in x.values()), inputs[:3]
    assert set(inputs[-1]) == set(SENSORS)


def test_state_with_only_unknown_sensors_first_still_learns() -> None:
    state = _make_state()
    assert _feed_state(state, 0, {"not_configured": 1.0}) == 0.0
    scores = [_feed_state(state, i, x) for i, x in enumerate(normal_stream(1_000), 1)]
    assert max(scores[WARMUP:]) > 0.5
    assert _feed_state(state, 1_001, outlier()) >= 0.99


def test_detector_tolerates_an_empty_reading() -> None:
    det = AnomalyDetector(window_size=5, warmup=5)
    assert det.score_learn({}) == 0.0  # used to raise IndexError inside HalfSpaceTrees
    for x in normal_stream(50):
        assert 0.0 <= det.score_learn(x) <= 1.0
    assert det.score_learn({}) == 0.0


@pytest.mark.parametrize("subject", SUBJECTS)
def test_deterministic_with_a_seed(subject: Subject) -> None:
    a, b, c = subject.make(seed=7), subject.make(seed=7), subject.make(seed=8)
    stream = list(normal_stream(400))
    sa, sb, sc = (run(subject, o, iter(stream)) for o in (a, b, c))
    assert sa == sb
    assert sa != sc  # the seed is actually used


@pytest.mark.parametrize("subject", SUBJECTS)
def test_scores_zero_during_warmup_then_in_unit_interval(subject: Subject) -> None:
    obj = subject.make()
    scores = run(subject, obj, normal_stream(1_000))
    assert scores[:WARMUP] == [0.0] * WARMUP
    assert all(0.0 <= s <= 1.0 for s in scores)
    after = np.array(scores[WARMUP:])
    assert after.max() > 0.5
    # calibrated against its own history: normal data scores spread over [0, 1], mean ~ 0.5
    assert 0.3 < after[-500:].mean() < 0.7


@pytest.mark.parametrize("subject", SUBJECTS)
def test_clear_outlier_after_warmup_scores_high(subject: Subject) -> None:
    obj = subject.make()
    run(subject, obj, normal_stream(1_000))
    assert subject.feed(obj, 1_000, outlier()) >= 0.99


def test_state_anomaly_level_ignores_warmup() -> None:
    state = _make_state()
    for i, x in enumerate(normal_stream(WARMUP)):
        out = state.ingest(Reading("p", "pump", 1_000 * (i + 1), x))
        assert isinstance(out, Scored) and out.anomaly_level == 0.5
    state.ingest(Reading("p", "pump", 1_000 * (WARMUP + 1), outlier()))
    assert state.anomaly_level > 0.5


def test_state_names_the_deviating_sensor_first() -> None:
    state = _make_state()
    for i, x in enumerate(normal_stream(300)):
        _feed_state(state, i, x)
    x = next(skip(300, normal_stream(1, start=300)))
    x["s2"] += 40 * 0.01
    out = state.ingest(Reading("p", "pump", 1_000 * 301, x))
    assert isinstance(out, Scored) and out.top_sensors[0] == "s2"


# --- score before learn -------------------------------------------------------------------


class _Frozen:
    """A River component whose ``learn_one`` does nothing: a copy that can only score."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def learn_one(self, x: Any) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def frozen_copy(det: AnomalyDetector) -> AnomalyDetector:
    """A copy of ``det`` as it is now, whose scaler and trees cannot learn."""
    twin = pickle.loads(pickle.dumps(det))
    twin.scaler = _Frozen(twin.scaler)
    twin.trees = _Frozen(twin.trees)
    return twin


@pytest.mark.parametrize("window_size", [5, 20])
def test_score_does_not_depend_on_learning_the_scored_reading(window_size: int) -> None:
    """Prequential: the score returned for ``x`` equals the score of a copy taken before the
    call whose scaler and trees cannot learn ``x``. An implementation that learnt ``x``
    before scoring it (in the scaler, or in the trees at a window pivot) fails this."""
    det = AnomalyDetector(n_trees=4, height=4, window_size=window_size, warmup=window_size)
    rng = np.random.default_rng(3)
    for i, x in enumerate(normal_stream(250)):
        if i > 200:
            x = {k: v * (1 + 0.5 * rng.random()) for k, v in x.items()}
        expected = frozen_copy(det).score_learn(x)
        assert det.score_learn(x) == expected, f"reading {i}"


class _LearnFirst(AnomalyDetector):
    """A broken detector that lets its scaler learn ``x`` before scoring it."""

    def score_learn(self, x: Mapping[str, float]) -> float:
        self.scaler.learn_one(x)
        return super().score_learn(x)


def test_the_copy_check_would_catch_learning_first() -> None:
    """The check above has teeth: learning the reading before scoring it changes scores."""
    det = _LearnFirst(n_trees=4, height=4, window_size=5, warmup=5)
    differ = sum(frozen_copy(det).score_learn(x) != det.score_learn(x) for x in normal_stream(200))
    assert differ >= 5


# --- properties ---------------------------------------------------------------------------

READINGS = st.lists(
    st.dictionaries(
        st.sampled_from(("a", "b", "c", "d")),
        st.floats(-1e6, 1e6, allow_nan=False),
        max_size=4,
    ),
    min_size=1,
    max_size=80,
)


@settings(max_examples=60, deadline=None)
@given(xs=READINGS, seed=st.integers(0, 2**16))
def test_scores_always_in_unit_interval(xs: list[dict[str, float]], seed: int) -> None:
    det = AnomalyDetector(n_trees=3, height=3, window_size=5, warmup=8, calibration_size=20)
    for i, x in enumerate(xs):
        s = det.score_learn(x)
        assert 0.0 <= s <= 1.0 and not math.isnan(s)
        if i < 8:
            assert s == 0.0
    assert len(det._sorted) <= 20 and det._sorted == sorted(det._sorted)


def test_warmup_shorter_than_window_is_rejected() -> None:
    with pytest.raises(ValueError, match="warmup"):
        AnomalyDetector(window_size=50, warmup=10)


def test_sensor_missing_from_the_first_reading_still_counts() -> None:
    """Regression: River's HalfSpaceTrees build their trees from the keys of the first input,
    so a detector fed sensor names directly ignored any sensor absent at first."""
    first, *_ = normal_stream(1)
    partial = {"s0": first["s0"]}
    state = _make_state()
    _feed_state(state, 0, partial)
    for i, x in enumerate(normal_stream(1_000, seed=4), 1):
        _feed_state(state, i, x)
    x = outlier()
    x["s0"] = first["s0"]  # s0 normal; every other sensor far off
    assert _feed_state(state, 1_001, x) >= 0.99
