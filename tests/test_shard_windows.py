"""ShardWindows (the columnar engine's window store) gives, for every reading of an
interleaved multi-machine batch stream, exactly the window a per-machine RingBuffer gives,
so window_features over a whole batch equals the per-reading path."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from models.features import FeatureConfig, RingBuffer, window_features
from models.shard_windows import ShardWindows, occurrence_rank


@settings(max_examples=60, deadline=None)
@given(
    machines=st.integers(1, 6),
    n=st.integers(1, 120),
    window=st.integers(1, 9),
    batch=st.integers(1, 40),
    seed=st.integers(0, 10_000),
)
def test_windows_equal_per_machine_ring_buffers(machines, n, window, batch, seed):
    rng = np.random.default_rng(seed)
    who = rng.integers(0, machines, n)
    rows = rng.normal(size=(n, 3))
    sw = ShardWindows(window, 3, capacity=1)  # grows on demand
    slots = [sw.add() for _ in range(machines)]
    rings = [RingBuffer(window, 3) for _ in range(machines)]
    for i in range(0, n, batch):
        j = slice(i, i + batch)
        got = sw.append(np.array(slots)[who[j]], rows[j])
        for k, (m, row) in enumerate(zip(who[j], rows[j], strict=True)):
            rings[m].append(row)
            np.testing.assert_array_equal(got[k], rings[m].window())
    for m in range(machines):
        assert sw.counts[slots[m]] == rings[m].count


def test_batched_features_equal_the_per_reading_path():
    cfg = FeatureConfig(
        sensors=("a", "b", "vib"), windows=(3, 5, 8), fft_sensors=("vib",), fft_bands=2
    )
    rng = np.random.default_rng(1)
    who = rng.integers(0, 4, 200)
    rows = rng.normal(size=(200, 3)) * [1.0, 100.0, 0.01]
    sw = ShardWindows(cfg.max_window, 3)
    slots = np.array([sw.add() for _ in range(4)])
    rings = [RingBuffer(cfg.max_window, 3) for _ in range(4)]
    batched = np.concatenate(
        [
            window_features(sw.append(slots[who[i : i + 50]], rows[i : i + 50]), cfg)
            for i in range(0, 200, 50)
        ]
    )
    single = []
    for m, row in zip(who, rows, strict=True):
        rings[m].append(row)
        single.append(window_features(rings[m].window(), cfg))
    np.testing.assert_allclose(batched, np.array(single), rtol=0, atol=1e-12)


def test_freed_slots_are_reused_empty():
    sw = ShardWindows(2, 1)
    a = sw.add()
    sw.append(np.array([a, a]), np.array([[1.0], [2.0]]))
    sw.free(a)
    b = sw.add()
    assert b == a and sw.counts[b] == 0
    w = sw.append(np.array([b]), np.array([[7.0]]))
    assert w[0, :, 0].tolist() == [7.0, 7.0]


def test_occurrence_rank_of_an_empty_and_a_single_batch():
    assert occurrence_rank(np.array([5])).tolist() == [0]
    assert occurrence_rank(np.array([2, 2, 2])).tolist() == [0, 1, 2]


def test_float32_halves_the_bytes_per_machine():
    f64, f32 = ShardWindows(60, 21, capacity=100), ShardWindows(60, 21, 100, np.float32)
    assert f64.nbytes / 100 <= 21 * 120 * 8 + 8
    assert f32.nbytes < 0.6 * f64.nbytes
