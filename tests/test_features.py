"""Property tests for the window features, and the offline == online identity.

Training builds features with :func:`history_features` over a whole history; the flow builds
them one reading at a time in an :class:`EquipmentState`. The model is only valid if both
give the same vector at every step, so that identity is tested here to 1e-12.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from models.anomaly import AnomalyDetector
from models.equipment_state import EquipmentState, Scored
from models.features import (
    FeatureConfig,
    RingBuffer,
    history_features,
    trailing_windows,
    window_features,
)
from models.schemas import Reading

PROPS = settings(max_examples=60, deadline=None)
VALUES = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=64)


@st.composite
def configs(draw, max_window: int = 24, fft: bool | None = None, min_window: int = 2):
    """A random valid FeatureConfig; ``fft`` forces vibration sensors on (True) or off."""
    n = draw(st.integers(1, 4))
    sensors = tuple(f"s{i}" for i in range(n))
    windows = tuple(
        sorted(draw(st.sets(st.integers(min_window, max_window), min_size=1, max_size=3)))
    )
    if fft is False:
        fft_sensors: tuple[str, ...] = ()
    else:
        fft_sensors = tuple(s for s in sensors if draw(st.booleans()))
        if fft and not fft_sensors:
            fft_sensors = (sensors[draw(st.integers(0, n - 1))],)
    bands = draw(st.integers(1, windows[-1] // 2)) if fft_sensors else 4
    return FeatureConfig(sensors, windows, fft_sensors, bands)


def named(cfg: FeatureConfig, vector: np.ndarray) -> dict[str, float]:
    assert vector.shape == (len(cfg.names),)
    return dict(zip(cfg.names, vector.tolist(), strict=True))


def windows_for(cfg: FeatureConfig, leading: tuple[int, ...] = ()):
    return arrays(np.float64, (*leading, cfg.max_window, len(cfg.sensors)), elements=VALUES)


# --- window_features ---------------------------------------------------------------------


@PROPS
@given(cfg=configs(), c=st.floats(-1e6, 1e6, allow_nan=False))
def test_constant_window_has_no_spread_and_no_trend(cfg: FeatureConfig, c: float) -> None:
    x = np.full((cfg.max_window, len(cfg.sensors)), c)
    f = named(cfg, window_features(x, cfg))
    tol = 1e-12 * max(1.0, abs(c))
    for w in cfg.windows:
        for s in cfg.sensors:
            assert f[f"{s}__min_{w}"] == f[f"{s}__max_{w}"] == f[f"{s}__last_{w}"] == c
            assert f[f"{s}__mean_{w}"] == pytest.approx(c, rel=1e-12, abs=1e-300)
            assert abs(f[f"{s}__std_{w}"]) <= tol
            assert abs(f[f"{s}__slope_{w}"]) <= tol
    for s in cfg.fft_sensors:
        for b in range(cfg.fft_bands):
            assert abs(f[f"{s}__fft_band{b}_{cfg.max_window}"]) <= tol * tol


@PROPS
@given(data=st.data(), cfg=configs(), n=st.integers(1, 5))
def test_batched_equals_row_by_row(data: st.DataObject, cfg: FeatureConfig, n: int) -> None:
    x = data.draw(windows_for(cfg, (n,)))
    batched = window_features(x, cfg)
    assert batched.shape == (n, len(cfg.names))
    rows = np.stack([window_features(x[i], cfg) for i in range(n)])
    np.testing.assert_allclose(batched, rows, rtol=1e-12, atol=1e-9)
    # and a second batch dimension changes nothing either
    np.testing.assert_allclose(window_features(x[None], cfg)[0], batched, rtol=1e-12, atol=1e-9)


@PROPS
@given(data=st.data(), cfg=configs(fft=True))
def test_fft_bands_are_nonnegative_and_sum_to_variance(
    data: st.DataObject, cfg: FeatureConfig
) -> None:
    x = data.draw(windows_for(cfg))
    f = named(cfg, window_features(x, cfg))
    n = cfg.max_window
    scale = max(1.0, float(np.abs(x).max()))
    for s in cfg.fft_sensors:
        bands = np.array([f[f"{s}__fft_band{b}_{n}"] for b in range(cfg.fft_bands)])
        assert (bands >= 0).all()
        variance = float(np.var(x[:, cfg.sensors.index(s)]))  # population variance
        np.testing.assert_allclose(bands.sum(), variance, rtol=1e-9, atol=1e-12 * scale * scale)
        # and the std feature over the longest window is the square root of the same thing
        np.testing.assert_allclose(f[f"{s}__std_{n}"] ** 2, variance, rtol=1e-9, atol=1e-9)


@PROPS
@given(
    data=st.data(),
    cfg=configs(fft=True, min_window=3, max_window=40),
    amplitude=st.floats(0.1, 100.0),
    offset=st.floats(-100.0, 100.0),
)
def test_dominant_frequency_of_a_pure_sinusoid(
    data: st.DataObject, cfg: FeatureConfig, amplitude: float, offset: float
) -> None:
    n = cfg.max_window
    t = np.arange(n)
    x = data.draw(windows_for(cfg))
    ks = {}
    for s in cfg.fft_sensors:
        k = data.draw(st.integers(1, (n - 1) // 2), label=f"k[{s}]")
        phase = data.draw(st.floats(0.0, 2 * np.pi), label=f"phase[{s}]")
        x[:, cfg.sensors.index(s)] = offset + amplitude * np.cos(2 * np.pi * k * t / n + phase)
        ks[s] = k
    f = named(cfg, window_features(x, cfg))
    for s, k in ks.items():
        assert f[f"{s}__fft_peak_freq_{n}"] == k / n
        # all of the variance (A²/2) sits in exactly one band
        bands = np.array([f[f"{s}__fft_band{b}_{n}"] for b in range(cfg.fft_bands)])
        power = amplitude**2 / 2
        assert bands.max() == pytest.approx(power, rel=1e-9)
        assert bands.sum() - bands.max() == pytest.approx(0.0, abs=1e-9 * power)


@pytest.mark.parametrize("n", [2, 4, 10, 60])
def test_dominant_frequency_at_nyquist(n: int) -> None:
    cfg = FeatureConfig(("v",), (n,), fft_sensors=("v",), fft_bands=1)
    x = 5.0 + 2.0 * (-1.0) ** np.arange(n)
    f = named(cfg, window_features(x[:, None], cfg))
    assert f[f"v__fft_peak_freq_{n}"] == 0.5
    assert f[f"v__fft_band0_{n}"] == pytest.approx(4.0, rel=1e-12)


@PROPS
@given(
    cfg=configs(),
    start=st.lists(st.floats(-1e3, 1e3), min_size=4, max_size=4),
    step=st.lists(st.floats(-1e2, 1e2), min_size=4, max_size=4),
)
def test_slope_of_a_linear_ramp_is_its_step(
    cfg: FeatureConfig, start: list[float], step: list[float]
) -> None:
    s_n = len(cfg.sensors)
    a, d = np.array(start[:s_n]), np.array(step[:s_n])
    x = a + d * np.arange(cfg.max_window)[:, None]
    f = named(cfg, window_features(x, cfg))
    for w in cfg.windows:
        for i, s in enumerate(cfg.sensors):
            tol = 1e-9 * (abs(a[i]) + abs(d[i]) * cfg.max_window + 1.0)
            assert f[f"{s}__slope_{w}"] == pytest.approx(d[i], abs=tol)
            assert f[f"{s}__last_{w}"] == x[-1, i]
            assert f[f"{s}__mean_{w}"] == pytest.approx(x[-w:, i].mean(), abs=tol)


def test_window_shape_is_checked() -> None:
    cfg = FeatureConfig(("a", "b"), (2, 4))
    with pytest.raises(ValueError, match="max_window=4"):
        window_features(np.zeros((3, 2)), cfg)
    with pytest.raises(ValueError, match="sensors=2"):
        window_features(np.zeros((4, 3)), cfg)


# --- trailing windows and the offline/online identity -------------------------------------


@PROPS
@given(
    history=arrays(np.float64, st.tuples(st.integers(1, 20), st.integers(1, 3)), elements=VALUES),
    window=st.integers(1, 8),
)
def test_trailing_windows_pad_with_the_first_row(history: np.ndarray, window: int) -> None:
    wins = trailing_windows(history, window)
    assert wins.shape == (len(history), window, history.shape[1])
    for t in range(len(history)):
        expected = [history[max(0, t - window + 1 + j)] for j in range(window)]
        np.testing.assert_array_equal(wins[t], np.array(expected))


def stream_features(history: np.ndarray, cfg: FeatureConfig, predict_every: int = 1) -> list:
    """Feed ``history`` to an EquipmentState reading by reading; its feature vectors."""
    state = EquipmentState(
        cfg,
        AnomalyDetector(n_trees=2, height=2, window_size=5, warmup=5),
        lateness_ms=0,
        predict_every=predict_every,
    )
    out = []
    for t, row in enumerate(history):
        sensors = {s: float(v) for s, v in zip(cfg.sensors, row, strict=True)}
        scored = state.ingest(Reading("unit-1", "pump", 1_000 * (t + 1), sensors))
        assert isinstance(scored, Scored)
        out.append(scored.features)
    return out


def assert_offline_equals_online(history: np.ndarray, cfg: FeatureConfig) -> None:
    offline = history_features(history, cfg)
    online = stream_features(history, cfg)
    assert offline.shape == (len(history), len(cfg.names))
    for t, vec in enumerate(online):
        np.testing.assert_allclose(vec, offline[t], rtol=1e-12, err_msg=f"step {t}")


@settings(max_examples=40, deadline=None)
@given(data=st.data(), cfg=configs(max_window=16))
def test_history_features_equal_streamed_features(data: st.DataObject, cfg: FeatureConfig) -> None:
    t_len = data.draw(st.integers(1, 2 * cfg.max_window + 3), label="T")
    history = data.draw(arrays(np.float64, (t_len, len(cfg.sensors)), elements=VALUES))
    assert_offline_equals_online(history, cfg)


@pytest.mark.parametrize(
    ("t_len", "cfg"),
    [
        pytest.param(7, FeatureConfig(("a", "b"), (3, 5, 12)), id="T<max_window"),
        pytest.param(1, FeatureConfig(("a", "vib"), (4, 8), ("vib",), 3), id="T=1-fft"),
        pytest.param(
            9, FeatureConfig(("a", "vib", "c"), (10, 30, 60), ("vib", "c"), 4), id="T<max-fft"
        ),
        pytest.param(
            150, FeatureConfig(("a", "vib", "c"), (10, 30, 60), ("vib", "c"), 4), id="T>max-fft"
        ),
    ],
)
def test_history_features_equal_streamed_features_cases(t_len: int, cfg: FeatureConfig) -> None:
    rng = np.random.default_rng(t_len)
    history = 100.0 + np.cumsum(rng.normal(size=(t_len, len(cfg.sensors))), axis=0)
    assert_offline_equals_online(history, cfg)


def test_history_features_chunking_changes_nothing() -> None:
    cfg = FeatureConfig(("a", "vib"), (3, 8), ("vib",), 2)
    history = np.random.default_rng(3).normal(size=(50, 2))
    np.testing.assert_array_equal(
        history_features(history, cfg, chunk=7), history_features(history, cfg)
    )


def test_streamed_features_every_nth_reading_match_history() -> None:
    cfg = FeatureConfig(("a", "b"), (2, 6), ("b",), 2)
    history = np.random.default_rng(5).normal(size=(23, 2))
    online = stream_features(history, cfg, predict_every=4)
    offline = history_features(history, cfg)
    assert [t for t, v in enumerate(online) if v is not None] == list(range(0, 23, 4))
    for t in range(0, 23, 4):
        np.testing.assert_allclose(online[t], offline[t], rtol=1e-12)


def test_missing_sensors_are_carried_forward_like_a_filled_history() -> None:
    cfg = FeatureConfig(("a", "b", "c"), (2, 5))
    rng = np.random.default_rng(9)
    history = rng.normal(size=(30, 3))
    dropped = rng.random((30, 3)) < 0.3
    dropped[0] = False  # the first reading has every sensor
    filled = history.copy()
    for t in range(1, 30):
        filled[t, dropped[t]] = filled[t - 1, dropped[t]]
    state = EquipmentState(cfg, AnomalyDetector(window_size=5, warmup=5), lateness_ms=0)
    offline = history_features(filled, cfg)
    for t in range(30):
        sensors = {s: float(history[t, i]) for i, s in enumerate(cfg.sensors) if not dropped[t, i]}
        sensors["not_configured"] = 1e9  # ignored
        scored = state.ingest(Reading("u", "pump", 1000 * (t + 1), sensors))
        assert isinstance(scored, Scored)
        np.testing.assert_allclose(scored.features, offline[t], rtol=1e-12, err_msg=f"step {t}")


def test_rejected_readings_do_not_enter_the_window() -> None:
    cfg = FeatureConfig(("a",), (2, 4))
    history = np.arange(1.0, 11.0)[:, None]
    offline = history_features(history, cfg)
    state = EquipmentState(cfg, AnomalyDetector(window_size=5, warmup=5), lateness_ms=0)
    for t in range(10):
        ts = 1000 * (t + 1)
        scored = state.ingest(Reading("u", "pump", ts, {"a": float(history[t, 0])}))
        assert isinstance(scored, Scored)
        np.testing.assert_allclose(scored.features, offline[t], rtol=1e-12)
        assert state.ingest(Reading("u", "pump", ts, {"a": 1e6})).kind == "duplicate"
        if t:
            assert state.ingest(Reading("u", "pump", ts - 1500, {"a": -1e6})).kind == "late"


# --- RingBuffer --------------------------------------------------------------------------


class NaiveRing:
    """The obvious implementation: a deque of the last ``size`` rows, front-padded."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.rows: deque[np.ndarray] = deque(maxlen=size)
        self.first: np.ndarray | None = None

    def append(self, row: np.ndarray) -> None:
        if self.first is None:
            self.first = row.copy()
        self.rows.append(row.copy())

    def window(self) -> np.ndarray:
        assert self.first is not None
        pad = [self.first] * (self.size - len(self.rows))
        return np.array(pad + list(self.rows))


@PROPS
@given(
    size=st.integers(1, 9),
    rows=arrays(np.float64, st.tuples(st.integers(1, 40), st.integers(1, 3)), elements=VALUES),
)
def test_ring_buffer_matches_naive_deque(size: int, rows: np.ndarray) -> None:
    ring, naive = RingBuffer(size, rows.shape[1]), NaiveRing(size)
    for i, row in enumerate(rows):
        scratch = row.copy()
        ring.append(scratch)
        naive.append(row)
        scratch[:] = np.nan  # the buffer must have copied the row
        assert ring.count == i + 1
        np.testing.assert_array_equal(ring.window(), naive.window())
        np.testing.assert_array_equal(ring.last(), row)
        assert ring.window().shape == (size, rows.shape[1])
