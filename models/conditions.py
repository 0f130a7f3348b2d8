"""Operating-condition normalisation: the same sensor reads differently at different
operating points (altitude, Mach number, throttle), so multi-condition data (C-MAPSS FD002 and
FD004: six conditions in three settings) is z-scored per condition before it is windowed.

Learned once at training time (:func:`fit_normalizer`): the conditions are clusters of the
settings vectors (K-means on settings scaled by their standard deviation, with the smallest
K that explains at least 99.9% of their variance: well-separated operating points, not
noise), and each sensor's mean and standard deviation per condition. Applied identically
offline and in the stream (:meth:`ConditionNormalizer.normalise`): each reading goes to its
nearest condition centre and its sensors become ``(x - mean[c]) / std[c]``. The parameters
travel in the ONNX model's metadata as JSON (:meth:`ConditionNormalizer.to_json_dict`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

MIN_EXPLAINED = 0.999
"""Share of the (scaled) settings variance the condition centres must explain."""
MAX_CONDITIONS = 10
CLUSTER_SAMPLE = 5_000  # rows used to find the centres (all rows are used for the statistics)


@dataclass(frozen=True)
class ConditionNormalizer:
    """Per-condition sensor standardisation.

    ``centres`` and ``scale`` are in settings units (``settings`` order); ``means`` and
    ``stds`` are ``(conditions, sensors)`` in ``sensors`` order. Condition 0 is the most
    frequent one in training, and the one used until a unit has reported any setting.

    >>> cn = ConditionNormalizer(("alt",), ("t",), (1.0,), ((0.0,), (10.0,)),
    ...                          ((100.0,), (200.0,)), ((2.0,), (4.0,)))
    >>> cn.assign(np.array([[0.1], [9.7]])).tolist()
    [0, 1]
    >>> cn.normalise(np.array([[102.0], [180.0]]), np.array([0, 1])).tolist()
    [[1.0], [-5.0]]
    """

    settings: tuple[str, ...]
    sensors: tuple[str, ...]
    scale: tuple[float, ...]
    centres: tuple[tuple[float, ...], ...]
    means: tuple[tuple[float, ...], ...]
    stds: tuple[tuple[float, ...], ...]

    def __post_init__(self) -> None:
        k, ns, s = len(self.centres), len(self.settings), len(self.sensors)
        if k < 1:
            raise ValueError("a ConditionNormalizer needs at least one condition")
        if len(self.scale) != ns or any(len(c) != ns for c in self.centres):
            raise ValueError(f"centres and scale must have {ns} settings each")
        if len(self.means) != k or len(self.stds) != k:
            raise ValueError(f"means and stds must have one row per condition ({k})")
        if any(len(r) != s for r in (*self.means, *self.stds)):
            raise ValueError(f"means and stds rows must have {s} sensors each")
        if any(not v > 0 for r in self.stds for v in r) or any(not v > 0 for v in self.scale):
            raise ValueError("stds and scale must be positive")

    @property
    def n_conditions(self) -> int:
        return len(self.centres)

    @cached_property
    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        scale = np.asarray(self.scale, dtype=np.float64)
        centres = np.asarray(self.centres, dtype=np.float64) / scale
        return centres, scale, np.asarray(self.means), np.asarray(self.stds)

    @cached_property
    def _rows(self) -> tuple[list[list[float]], list[float], list[tuple[np.ndarray, np.ndarray]]]:
        centres, scale, means, stds = self._arrays
        per_condition = [(means[c], stds[c]) for c in range(len(centres))]
        return centres.tolist(), scale.tolist(), per_condition

    def assign(self, settings: np.ndarray) -> np.ndarray:
        """Nearest condition of settings shaped ``(..., Ns)``; NaN settings are ignored
        (a row of NaN goes to condition 0). Distances add up setting by setting, in the
        same order as :meth:`assign_one`, so both agree bit for bit."""
        centres, scale, _, _ = self._arrays
        z = np.asarray(settings, dtype=np.float64)
        dist = np.zeros((*z.shape[:-1], len(centres)))
        for j in range(len(scale)):
            d = z[..., j, None] / scale[j] - centres[:, j]
            dist += np.where(np.isnan(d), 0.0, d * d)
        return np.argmin(dist, axis=-1)

    def assign_one(self, settings: np.ndarray) -> int:
        """:meth:`assign` for one settings vector, in plain Python (the stream's path)."""
        centres, scale, _ = self._rows
        z = [v / sc for v, sc in zip(settings.tolist(), scale, strict=True)]
        best, best_d = 0, float("inf")
        for c, centre in enumerate(centres):
            dist = 0.0
            for zi, m in zip(z, centre, strict=True):
                d = zi - m
                if d == d:  # not NaN
                    dist += d * d
            if dist < best_d:
                best, best_d = c, dist
        return best

    def normalise(self, sensors: np.ndarray, condition: np.ndarray | int) -> np.ndarray:
        """Sensors ``(..., S)`` standardised by their rows' conditions ``(...)``."""
        _, _, means, stds = self._arrays
        return (np.asarray(sensors, dtype=np.float64) - means[condition]) / stds[condition]

    def normalise_one(self, sensors: np.ndarray, condition: int) -> np.ndarray:
        """:meth:`normalise` for one reading (same arithmetic, fewer numpy calls)."""
        mean, std = self._rows[2][condition]
        return (sensors - mean) / std

    def settings_vector(self, settings: dict[str, float], previous: np.ndarray) -> np.ndarray:
        """A reading's settings in ``settings`` order; a missing one keeps ``previous``."""
        out = previous.copy()
        for i, name in enumerate(self.settings):
            value = settings.get(name)
            if value is not None:
                out[i] = value
        return out

    def select(self, sensors: Sequence[str]) -> ConditionNormalizer:
        """The same conditions for a subset of the sensors (in the given order)."""
        idx = [self.sensors.index(s) for s in sensors]
        return ConditionNormalizer(
            self.settings,
            tuple(sensors),
            self.scale,
            self.centres,
            tuple(tuple(r[i] for i in idx) for r in self.means),
            tuple(tuple(r[i] for i in idx) for r in self.stds),
        )

    def to_json_dict(self) -> dict[str, Any]:
        """Plain JSON types; floats survive ``json`` round trips exactly."""
        return {
            "settings": list(self.settings),
            "sensors": list(self.sensors),
            "scale": list(self.scale),
            "centres": [list(c) for c in self.centres],
            "means": [list(r) for r in self.means],
            "stds": [list(r) for r in self.stds],
        }

    @classmethod
    def from_json_dict(cls, d: dict[str, Any]) -> ConditionNormalizer:
        def rows(key: str) -> tuple[tuple[float, ...], ...]:
            return tuple(tuple(float(v) for v in r) for r in d[key])

        return cls(
            settings=tuple(d["settings"]),
            sensors=tuple(d["sensors"]),
            scale=tuple(float(v) for v in d["scale"]),
            centres=rows("centres"),
            means=rows("means"),
            stds=rows("stds"),
        )


def find_conditions(
    settings: np.ndarray,
    max_conditions: int = MAX_CONDITIONS,
    min_explained: float = MIN_EXPLAINED,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Operating-condition centres ``(K, Ns)`` and the settings scale ``(Ns,)``.

    K is the smallest number of K-means clusters (of the settings divided by their
    standard deviations) that explains ``min_explained`` of the variance; 1 when none does
    (settings that are noise around one point, or spread continuously). Centres are the
    mean settings of their members, most frequent first, so the result is deterministic.

    >>> rng = np.random.default_rng(0)
    >>> points = np.array([[0.0, 100.0], [20.0, 60.0], [42.0, 100.0]])
    >>> s = points[rng.integers(0, 3, 3000)] + rng.normal(0, 0.002, (3000, 2))
    >>> centres, _ = find_conditions(s)
    >>> len(centres), sorted(np.round(centres[:, 0]).astype(int).tolist())
    (3, [0, 20, 42])
    >>> len(find_conditions(rng.normal(0, 0.002, (3000, 2)))[0])
    1
    """
    from sklearn.cluster import KMeans

    s = np.asarray(settings, dtype=np.float64)
    if s.ndim != 2 or len(s) == 0:
        raise ValueError(f"settings must be a non-empty (N, Ns) array, got shape {s.shape}")
    sd = s.std(axis=0)
    scale = np.where(sd > 0, sd, 1.0)
    z = s / scale
    rng = np.random.default_rng(seed)
    sample = z if len(z) <= CLUSTER_SAMPLE else z[rng.choice(len(z), CLUSTER_SAMPLE, False)]
    total = float(((sample - sample.mean(axis=0)) ** 2).sum())
    labels = np.zeros(len(z), dtype=np.intp)
    k_max = min(max_conditions, len(np.unique(sample, axis=0)))

    def clusters(k: int):  # None unless k clusters explain enough
        km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(sample)
        return km if km.inertia_ <= (1.0 - min_explained) * total else None

    if total > 0 and k_max >= 2 and clusters(k_max) is not None:  # else: no k would do
        for k in range(2, k_max + 1):
            km = clusters(k)
            if km is not None:
                d = z[:, None, :] - km.cluster_centers_[None]
                labels = np.argmin((d * d).sum(axis=-1), axis=-1)
                break
    counts = np.bincount(labels)
    centres = np.array([s[labels == c].mean(axis=0) for c in range(len(counts))])
    order = sorted(range(len(counts)), key=lambda c: (-counts[c], *centres[c].tolist()))
    return centres[order], scale


def fit_normalizer(
    settings: np.ndarray,
    sensors: np.ndarray,
    setting_names: Sequence[str],
    sensor_names: Sequence[str],
    mode: str = "auto",
    seed: int = 0,
) -> ConditionNormalizer | None:
    """Learn the normaliser from training rows ``settings (N, Ns)`` and ``sensors (N, S)``.

    ``mode``: ``off`` returns None; ``on`` always normalises (one condition: a global
    z-score); ``auto`` normalises only when more than one condition is found. A sensor that
    is constant within a condition gets std 1 there (it normalises to 0).
    """
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"condition-norm mode must be auto, on or off, got {mode!r}")
    if mode == "off":
        return None
    x = np.asarray(sensors, dtype=np.float64)
    s = np.asarray(settings, dtype=np.float64)
    if s.shape[1:] != (len(setting_names),) or x.shape[1:] != (len(sensor_names),):
        raise ValueError("settings/sensors columns do not match their names")
    if len(s) != len(x):
        raise ValueError("settings and sensors must have the same rows")
    if s.shape[1] == 0:
        centres, scale = np.zeros((1, 0)), np.zeros(0)
    else:
        centres, scale = find_conditions(s, seed=seed)
    if mode == "auto" and len(centres) < 2:
        return None
    k = len(centres)
    probe = ConditionNormalizer(
        tuple(setting_names),
        tuple(sensor_names),
        tuple(scale.tolist()),
        tuple(tuple(c) for c in centres.tolist()),
        ((0.0,) * x.shape[1],) * k,
        ((1.0,) * x.shape[1],) * k,
    )
    labels = probe.assign(s) if s.shape[1] else np.zeros(len(s), dtype=np.intp)
    means, stds = np.zeros((k, x.shape[1])), np.ones((k, x.shape[1]))
    for c in range(k):
        rows = x[labels == c]
        if len(rows):
            means[c] = rows.mean(axis=0)
            sd = rows.std(axis=0)
            stds[c] = np.where(sd > 1e-12 * (np.abs(means[c]) + 1.0), sd, 1.0)
    return ConditionNormalizer(
        probe.settings,
        probe.sensors,
        probe.scale,
        probe.centres,
        tuple(tuple(r) for r in means.tolist()),
        tuple(tuple(r) for r in stds.tolist()),
    )
