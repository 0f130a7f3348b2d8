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

Two options serve multi-condition equipment (see :mod:`models.conditions`): ``conditions``
normalises each reading's sensors by its operating condition before it enters the window,
and ``operating_history`` appends the unit's age in readings and the share of them spent in
each condition (:func:`operating_features`), counted from the first reading the stream saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from itertools import pairwise

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from models.conditions import ConditionNormalizer

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
    >>> FeatureConfig(sensors=("a",), windows=(2,), operating_history=True).names[-1]
    'history__age_all'
    """

    sensors: tuple[str, ...]
    windows: tuple[int, ...] = (10, 30, 60)
    fft_sensors: tuple[str, ...] = ()
    fft_bands: int = 4
    conditions: ConditionNormalizer | None = None
    operating_history: bool = False

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
        if self.conditions is not None and self.conditions.sensors != self.sensors:
            raise ValueError("the condition normaliser's sensors differ from the feature sensors")

    @property
    def n_conditions(self) -> int:
        """Operating conditions told apart (1 without a normaliser)."""
        return 1 if self.conditions is None else self.conditions.n_conditions

    @property
    def max_window(self) -> int:
        return self.windows[-1]

    @cached_property
    def names(self) -> tuple[str, ...]:
        """Window features (:func:`window_features`), then operating history."""
        return self.window_names + self.history_names

    @cached_property
    def window_names(self) -> tuple[str, ...]:
        out = [f"{s}__{stat}_{w}" for w in self.windows for s in self.sensors for stat in STATS]
        n = self.max_window
        for s in self.fft_sensors:
            out += [f"{s}__fft_band{b}_{n}" for b in range(self.fft_bands)]
            out.append(f"{s}__fft_peak_freq_{n}")
        return tuple(out)

    @cached_property
    def history_names(self) -> tuple[str, ...]:
        if not self.operating_history:
            return ()
        shares = [f"history__share_c{c}_all" for c in range(self.n_conditions)]
        return ("history__age_all", *(shares if self.n_conditions > 1 else ()))

    @cached_property
    def _plan(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Weights ``(2 nw, W)`` of each window's mean then slope, mean weights ``(nw, W)``,
        and the index of each window's first reading counted from the newest."""
        n, nw = self.max_window, len(self.windows)
        lin = np.zeros((2 * nw, n))
        for i, w in enumerate(self.windows):
            lin[i, n - w :] = 1.0 / w
            lin[nw + i, n - w :] = _slope_weights(w)
        return lin, np.ascontiguousarray(lin[:nw]), np.array(self.windows) - 1

    @cached_property
    def _fft_idx(self) -> np.ndarray:
        return np.array([self.sensors.index(s) for s in self.fft_sensors], dtype=np.intp)


def _slope_weights(w: int) -> np.ndarray:
    t = np.arange(w, dtype=np.float64)
    t -= t.mean()
    return t / float(t @ t)


def window_features(windows: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """Features of windows shaped ``(..., W, S)`` with ``W == config.max_window``.

    Lean on purpose (about twenty numpy calls, whatever the number of windows), as the stream
    calls it once per reading: means and slopes of every window are one matrix product,
    variances use values relative to the last reading (exact zero for a constant window),
    and minima and maxima of all trailing windows come from one cumulative pass.

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
    lin_w, mean_w, ends = config._plan
    nw = len(config.windows)
    last = x[..., -1:, :]
    y = x - last
    lin = lin_w @ y  # (..., 2 nw, S): mean of y per window, then slope per window
    my = lin[..., :nw, :]
    var = mean_w @ (y * y) - my * my
    rev = x[..., ::-1, :]
    out = np.empty((*x.shape[:-2], nw, x.shape[-1], len(STATS)))  # names' order: w, s, stat
    out[..., 0] = my + last
    np.sqrt(np.maximum(var, 0.0), out=out[..., 1])
    out[..., 2] = np.minimum.accumulate(rev, axis=-2)[..., ends, :]
    out[..., 3] = np.maximum.accumulate(rev, axis=-2)[..., ends, :]
    out[..., 4] = last
    out[..., 5] = lin[..., nw:, :]
    out = out.reshape(*x.shape[:-2], -1)
    if config.fft_sensors:
        out = np.concatenate([out, _fft_features(x[..., config._fft_idx], config.fft_bands)], -1)
    return out


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


def operating_features(counts: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """Operating-history features from readings counted per condition ``(..., K)``: the age
    in readings, then (with more than one condition) the share of readings in each.

    >>> cfg = FeatureConfig(sensors=("a",), windows=(2,), operating_history=True)
    >>> operating_features(np.array([[1.0], [7.0]]), cfg).tolist()
    [[1.0], [7.0]]
    """
    c = np.asarray(counts, dtype=np.float64)
    if not config.operating_history:
        return c[..., :0]
    age = c.sum(axis=-1, keepdims=True)
    if config.n_conditions == 1:
        return age
    return np.concatenate([age, c / np.maximum(age, 1.0)], axis=-1)


def history_features(
    history: np.ndarray,
    config: FeatureConfig,
    chunk: int = 4096,
    settings: np.ndarray | None = None,
) -> np.ndarray:
    """Features at every step of a ``(T, S)`` history, as the stream would compute them.

    With a condition normaliser, ``settings`` ``(T, Ns)`` (in the normaliser's settings
    order, filled forward like the sensors) is required."""
    h = np.asarray(history, dtype=np.float64)
    counts = None
    if config.conditions is not None or config.operating_history:
        cond = np.zeros(len(h), dtype=np.intp)
        if config.conditions is not None:
            if settings is None:
                raise ValueError("history_features needs settings to normalise by condition")
            cond = config.conditions.assign(settings)
            h = config.conditions.normalise(h, cond)
        counts = np.cumsum(np.eye(config.n_conditions)[cond], axis=0)
    wins = trailing_windows(h, config.max_window)
    out = np.empty((len(wins), len(config.names)))
    n_win = len(config.window_names)
    for i in range(0, len(wins), chunk):
        out[i : i + chunk, :n_win] = window_features(wins[i : i + chunk], config)
    if counts is not None:
        out[:, n_win:] = operating_features(counts, config)
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
