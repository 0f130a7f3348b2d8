"""Online anomaly scoring per equipment with River: score first, then learn.

Inputs are standardised with River's running :class:`~river.preprocessing.StandardScaler`,
clipped to ±``z_clip`` and mapped to [0, 1] (Half-Space Trees assume that range), then scored
by :class:`~river.anomaly.HalfSpaceTrees`. The raw tree score is calibrated against the
equipment's own recent scores (its empirical CDF over the last ``calibration_size``), so a
threshold of 0.99 means "higher than 99 % of this machine's recent readings" on every machine.
Scores stay 0 during the first ``warmup`` readings while the detector learns what normal is.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Mapping

from river import anomaly, preprocessing


class AnomalyDetector:
    """One equipment's detector; picklable, bounded memory.

    >>> det = AnomalyDetector(window_size=20, warmup=20, seed=1)
    >>> normal = [det.score_learn({"x": 1.0 + 0.01 * (i % 7)}) for i in range(200)]
    >>> normal[:20] == [0.0] * 20
    True
    >>> det.score_learn({"x": 50.0}) > 0.9
    True
    """

    def __init__(
        self,
        n_trees: int = 10,
        height: int = 6,
        window_size: int = 50,
        warmup: int = 60,
        calibration_size: int = 500,
        z_clip: float = 4.0,
        seed: int = 0,
    ) -> None:
        if warmup < window_size:
            raise ValueError(f"warmup ({warmup}) must be >= window_size ({window_size})")
        self.warmup = warmup
        self.z_clip = z_clip
        self.calibration_size = calibration_size
        self.scaler = preprocessing.StandardScaler()
        self.trees = anomaly.HalfSpaceTrees(
            n_trees=n_trees, height=height, window_size=window_size, seed=seed
        )
        self.seen = 0
        self._recent: deque[float] = deque()
        self._sorted: list[float] = []

    def score_learn(self, x: Mapping[str, float]) -> float:
        """Score ``x`` against what was learnt so far, then learn it. Returns [0, 1]."""
        z = self.scaler.transform_one(x)  # scaled by what came before: prequential
        self.scaler.learn_one(x)
        c, span = self.z_clip, 2.0 * self.z_clip
        u = {k: (min(max(v, -c), c) + c) / span for k, v in z.items()}
        raw = self.trees.score_one(u)
        self.trees.learn_one(u)
        self.seen += 1
        if self.seen <= self.trees.window_size:
            return 0.0  # the trees hold no reference mass yet
        score = self._calibrate(raw)
        return score if self.seen > self.warmup else 0.0

    def _calibrate(self, raw: float) -> float:
        n = len(self._sorted)
        score = bisect.bisect_left(self._sorted, raw) / n if n else 0.0
        bisect.insort(self._sorted, raw)
        self._recent.append(raw)
        if len(self._recent) > self.calibration_size:
            old = self._recent.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, old)]
        return score
