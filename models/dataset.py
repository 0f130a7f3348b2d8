"""Training sets and the RUL validation protocol (pure: arrays in, arrays out).

Validation mimics how RUL models are judged in practice (the C-MAPSS test protocol): each
held-out unit is truncated at a random cycle and the model predicts its RUL there, from the
history up to that cycle only. Errors are scored as RMSE against the true RUL capped at
``rul_cap`` and with the NASA asymmetric score (late predictions cost more than early ones).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.features import FeatureConfig, history_features


@dataclass(frozen=True)
class UnitHistory:
    """One unit's run to failure (or to the end of its record)."""

    unit_id: str
    sensors: np.ndarray  # (T, S) in FeatureConfig.sensors order
    rul: np.ndarray  # (T,) true RUL in the equipment type's unit
    settings: np.ndarray | None = None  # (T, Ns) operating settings, when known

    def select(self, columns: Sequence[int]) -> UnitHistory:
        """The same unit with only the given sensor columns."""
        return UnitHistory(self.unit_id, self.sensors[:, list(columns)], self.rul, self.settings)


@dataclass(frozen=True)
class UnitFeatures:
    unit_id: str
    features: np.ndarray  # (T, F)
    rul: np.ndarray  # (T,)


def featurize(units: Sequence[UnitHistory], config: FeatureConfig) -> list[UnitFeatures]:
    """Stream-identical features at every step of every unit (sensors in ``config.sensors``
    order; settings in the normaliser's order when ``config`` has one)."""
    return [
        UnitFeatures(u.unit_id, history_features(u.sensors, config, settings=u.settings), u.rul)
        for u in units
    ]


def capped(rul: np.ndarray, cap: float) -> np.ndarray:
    """Piecewise-linear target: flat at ``cap`` early in life, then falling to 0.

    >>> capped(np.array([300.0, 125.0, 10.0]), 125).tolist()
    [125.0, 125.0, 10.0]
    """
    return np.minimum(rul, cap)


def training_rows(
    units: Sequence[UnitFeatures], rul_cap: float, stride: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """All (features, capped RUL) rows, keeping every ``stride``-th step of each unit."""
    xs = [u.features[::-1][::stride][::-1] for u in units]  # always keep the last step
    ys = [capped(u.rul[::-1][::stride][::-1], rul_cap) for u in units]
    return np.concatenate(xs), np.concatenate(ys)


def truncation_rows(
    units: Sequence[UnitFeatures],
    rul_cap: float,
    rng: np.random.Generator,
    draws: int = 1,
    min_steps: int = 31,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Truncate each unit at ``draws`` random steps (at least ``min_steps`` of history, or
    the whole unit when shorter). Returns features, capped true RUL, and unit index."""
    xs, ys, idx = [], [], []
    for i, u in enumerate(units):
        n = len(u.rul)
        cut = rng.integers(min(min_steps, n), n + 1, size=draws)  # steps kept
        xs.append(u.features[cut - 1])
        ys.append(capped(u.rul[cut - 1], rul_cap))
        idx.append(np.full(draws, i))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(idx)


def unit_folds(n_units: int, k: int, seed: int) -> list[np.ndarray]:
    """Shuffle unit indices and split them into ``k`` folds.

    >>> [len(f) for f in unit_folds(10, 3, seed=0)]
    [4, 3, 3]
    """
    order = np.random.default_rng(seed).permutation(n_units)
    return [np.sort(f) for f in np.array_split(order, k)]


def rmse(pred: np.ndarray, true: np.ndarray) -> float:
    """Root mean squared error.

    >>> rmse(np.array([1.0, 3.0]), np.array([1.0, 1.0]))
    1.4142135623730951
    """
    d = np.asarray(pred, dtype=float) - np.asarray(true, dtype=float)
    return float(np.sqrt(np.mean(d * d)))


def nasa_score(pred: np.ndarray, true: np.ndarray) -> float:
    """Sum of exp(-d/13)-1 for early (d<0) and exp(d/10)-1 for late predictions, d=pred-true.

    >>> round(nasa_score(np.array([10.0, 0.0]), np.array([0.0, 13.0])), 4)
    3.4366
    """
    d = np.asarray(pred, dtype=float) - np.asarray(true, dtype=float)
    return float(np.sum(np.where(d < 0, np.expm1(-d / 13.0), np.expm1(d / 10.0))))


def conformal_offsets(
    lower: np.ndarray,
    upper: np.ndarray,
    true: np.ndarray,
    level: float,
    point: np.ndarray | None = None,
) -> tuple[float, float]:
    """Conformalised quantile regression: how far to move the lower and the upper bound
    (positive widens) so that each misses at most ``(1 - level) / 2`` of held-out cases
    (and a side that misses less, through ties, leaves the rest to the other).

    Each offset is the finite-sample corrected quantile of its conformity score
    (``lower - true`` and ``true - upper``) over the held-out predictions. Given the
    ``point`` predictions, the scores follow the band the model ships
    (:func:`models.rul.calibrated_band` stretches it to contain the point): a true value
    between the point and a bound is covered whatever the offset, so it does not count.

    >>> t = np.arange(100.0)
    >>> conformal_offsets(t - 1.0, t + 1.0, t, 0.8)  # a band that always covers shrinks
    (-1.0, -1.0)
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"band level must be in (0, 1), got {level}")
    true = np.asarray(true, dtype=np.float64)
    n = len(true)
    if n == 0:
        return 0.0, 0.0
    e_lo = np.asarray(lower, dtype=np.float64) - true
    e_hi = true - np.asarray(upper, dtype=np.float64)
    if point is not None:
        e_lo = np.where(true < point, e_lo, -np.inf)
        e_hi = np.where(true > point, e_hi, -np.inf)
    alpha = 1.0 - level

    def offset(e: np.ndarray, miss: float) -> float:
        q = min(1.0, np.ceil((n + 1) * (1.0 - miss)) / n)
        v = float(np.quantile(e, q, method="higher"))
        if not np.isfinite(v):  # covered whatever the offset: shrink as far as seen
            finite = e[np.isfinite(e)]
            v = float(finite.min()) if finite.size else 0.0
        return v

    lo, hi = offset(e_lo, alpha / 2), offset(e_hi, alpha / 2)
    # ties (many true values exactly at a bound, e.g. at the RUL cap) can leave one side
    # missing less than its share; the other side may then miss the rest
    miss_lo, miss_hi = float(np.mean(e_lo > lo)), float(np.mean(e_hi > hi))
    if miss_hi < miss_lo:
        lo = offset(e_lo, alpha - miss_hi)
    elif miss_lo < miss_hi:
        hi = offset(e_hi, alpha - miss_lo)
    return lo, hi
