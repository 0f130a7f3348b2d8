"""Window features: the one function that builds model inputs offline and in the stream.

A window is an array shaped ``(..., W, S)``: ``W`` readings (oldest first) of ``S`` sensors.
:func:`window_features` turns it into ``(..., F)``. Training calls it on every trailing window
of a unit's history at once (:func:`history_features`); the flow calls it on one window kept
in a :class:`RingBuffer`. Both pad a history shorter than ``W`` by repeating its first
reading, so a unit's 5th reading gets the same vector offline and online.

Statistics per sensor and window length ``w`` (the last ``w`` readings): mean, std, min,
max, last, slope (least-squares change per reading). For vibration sensors (``fft_sensors``)
over the longest window: the variance in ``fft_bands`` equal frequency bands (they sum to
the window's variance, by Parseval) and the dominant frequency in cycles per reading.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from itertools import pairwise

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

STATS = ("mean", "std", "min", "max", "last", "slope")


@dataclass(frozen=True)
class FeatureConfig:
    """Which sensors and windows make the feature vector, and in which order.

    >>> cfg = FeatureConfig(sensors=("a", "vib"), windows=(3, 5), fft_sensors=("vib",), fft_bands=2)
    >>> cfg.names[:3]
    ('a__mean_3', 'a__std_3', 'a__min_3')
    >>> cfg.names[-3:]
    ('vib__fft_band0_5', 'vib__fft_band1_5', 'vib__fft_peak_freq_5')
    >>> len(cfg.names) == 2 * 2 * 6 + 3
    True
    """

    sensors: tuple[str, ...]
    windows: tuple[int, ...] = (10, 30, 60)
    fft_sensors: tuple[str, ...] = ()
    fft_bands: int = 4

    def __post_init__(self) -> None:
        if not self.sensors:
            raise ValueError("FeatureConfig needs at least one sensor")
        if not self.windows or any(w < 2 for w in self.windows):
            raise ValueError(f"windows must be >= 2 readings, got {self.windows}")
        if tuple(sorted(self.windows)) != self.windows:
            raise ValueError(f"windows must be ascending, got {self.windows}")
        unknown = set(self.fft_sensors) - set(self.sensors)
        if unknown:
            raise ValueError(f"fft_sensors not among sensors: {sorted(unknown)}")
        if self.fft_sensors and not 1 <= self.fft_bands <= self.max_window // 2:
            raise ValueError(f"fft_bands must be in 1..{self.max_window // 2}")

    @property
    def max_window(self) -> int:
        return self.windows[-1]

    @cached_property
    def names(self) -> tuple[str, ...]:
        out = [f"{s}__{stat}_{w}" for w in self.windows for s in self.sensors for stat in STATS]
        n = self.max_window
        for s in self.fft_sensors:
            out += [f"{s}__fft_band{b}_{n}" for b in range(self.fft_bands)]
            out.append(f"{s}__fft_peak_freq_{n}")
        return tuple(out)

    @cached_property
    def _fft_idx(self) -> np.ndarray:
        return np.array([self.sensors.index(s) for s in self.fft_sensors], dtype=np.intp)


def _slope_weights(w: int) -> np.ndarray:
    t = np.arange(w, dtype=np.float64)
    t -= t.mean()
    return t / float(t @ t)


def window_features(windows: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """Features of windows shaped ``(..., W, S)`` with ``W == config.max_window``.

    >>> cfg = FeatureConfig(sensors=("x",), windows=(2, 4))
    >>> window_features(np.array([[1.0], [2.0], [3.0], [4.0]]), cfg).round(3).tolist()
    [3.5, 0.5, 3.0, 4.0, 4.0, 1.0, 2.5, 1.118, 1.0, 4.0, 4.0, 1.0]
    """
    x = np.asarray(windows, dtype=np.float64)
    if x.shape[-2:] != (config.max_window, len(config.sensors)):
        raise ValueError(
            f"window shape {x.shape[-2:]} != (max_window={config.max_window}, "
            f"sensors={len(config.sensors)})"
        )
    parts = []
    for w in config.windows:
        xw = x[..., -w:, :]
        mean = xw.mean(axis=-2)
        d = xw - mean[..., None, :]
        std = np.sqrt((d * d).mean(axis=-2))
        slope = np.einsum("...ws,w->...s", xw, _slope_weights(w))
        stats = (mean, std, xw.min(axis=-2), xw.max(axis=-2), xw[..., -1, :], slope)
        parts.append(np.stack(stats, axis=-1).reshape(*x.shape[:-2], -1))
    if config.fft_sensors:
        parts.append(_fft_features(x[..., config._fft_idx], config.fft_bands))
    return np.concatenate(parts, axis=-1)


def _fft_features(x: np.ndarray, bands: int) -> np.ndarray:
    """Band variances and peak frequency of ``(..., W, V)`` windows -> ``(..., V*(bands+1))``."""
    n = x.shape[-2]
    d = x - x.mean(axis=-2, keepdims=True)
    spec = np.fft.rfft(d, axis=-2)
    power = spec.real * spec.real + spec.imag * spec.imag
    weight = np.full(power.shape[-2], 2.0)
    weight[0] = 1.0
    if n % 2 == 0:
        weight[-1] = 1.0
    power = power * (weight / (n * n))[:, None]  # per-bin share of the variance (Parseval)
    edges = np.linspace(1, power.shape[-2], bands + 1).round().astype(int)
    band = np.stack([power[..., a:b, :].sum(axis=-2) for a, b in pairwise(edges)], -1)
    peak = (np.argmax(power[..., 1:, :], axis=-2) + 1) / n
    out = np.concatenate([band, peak[..., None]], axis=-1)  # (..., V, bands+1)
    return out.reshape(*x.shape[:-2], -1)


def trailing_windows(history: np.ndarray, window: int) -> np.ndarray:
    """Every trailing window of a ``(T, S)`` history, front-padded with its first row.

    Returns a read-only ``(T, window, S)`` view on a padded copy.

    >>> trailing_windows(np.array([[1.0], [2.0], [3.0]]), 2)[:, :, 0].tolist()
    [[1.0, 1.0], [1.0, 2.0], [2.0, 3.0]]
    """
    h = np.asarray(history, dtype=np.float64)
    padded = np.concatenate([np.repeat(h[:1], window - 1, axis=0), h], axis=0)
    return sliding_window_view(padded, window, axis=0).swapaxes(-1, -2)


def history_features(history: np.ndarray, config: FeatureConfig, chunk: int = 4096) -> np.ndarray:
    """Features at every step of a ``(T, S)`` history, as the stream would compute them."""
    wins = trailing_windows(history, config.max_window)
    out = np.empty((len(wins), len(config.names)))
    for i in range(0, len(wins), chunk):
        out[i : i + chunk] = window_features(wins[i : i + chunk], config)
    return out


class RingBuffer:
    """The last ``size`` rows of a stream, readable as one contiguous ``(size, S)`` view.

    Each row is written twice (at ``i`` and ``i + size``), so a window is a slice, never a
    copy or ``np.roll``. Until ``size`` rows arrived, the window is padded with the first.

    >>> rb = RingBuffer(3, 1)
    >>> for v in (1.0, 2.0):
    ...     rb.append(np.array([v]))
    >>> rb.window()[:, 0].tolist()
    [1.0, 1.0, 2.0]
    """

    __slots__ = ("_buf", "count", "size")

    def __init__(self, size: int, n_sensors: int) -> None:
        self.size = size
        self.count = 0
        self._buf = np.zeros((2 * size, n_sensors))

    def append(self, row: np.ndarray) -> None:
        if self.count == 0:
            self._buf[:] = row
        pos = self.count % self.size
        self._buf[pos] = row
        self._buf[pos + self.size] = row
        self.count += 1

    def last(self) -> np.ndarray:
        return self._buf[(self.count - 1) % self.size]

    def window(self) -> np.ndarray:
        pos = (self.count - 1) % self.size
        return self._buf[pos + 1 : pos + 1 + self.size]
