"""The likelihood of the score: how unusual the recent scores are for this series.

HTM's anomaly-likelihood step (Ahmad et al., 2017), online and per series, without labels.
Each score in [0, 1] (a calibrated ``1 - p``) is first turned into its surprise
``-log10(1 - score)`` (capped at ``max_surprise``), which is about exponential on normal
data and large on rare readings. The mean surprise of the last ``short`` readings is then
compared with a normal distribution fitted to the same short means over the last ``long``
readings, and the output is ``1 - tail``, the probability that a mean that high is *not*
chance. One high score among ordinary ones moves
the short mean a little; a run of high scores moves it far, once; a series that is always
noisy widens its own distribution and stops paging. Pure, O(1) per reading, picklable.
"""

from __future__ import annotations

import math
from collections import deque

MIN_VARIANCE = 0.0003  # HTM's lower bound on the fitted variance
MIN_MEAN = 0.03  # ... and on the fitted mean


class ScoreLikelihood:
    """Turn a stream of scores in [0, 1] into likelihoods in [0, 1] (0 while learning).

    ``short`` = 10 is HTM's averaging window; ``long`` is the history the distribution is
    fitted to (a shorter one than HTM's, so a series adapts within days of readings).

    >>> lk = ScoreLikelihood(short=2, long=50, learn=10)
    >>> out = [lk.update(0.5 if i % 2 else 0.4) for i in range(30)]
    >>> out[:10] == [0.0] * 10, max(out[10:]) < 0.99
    (True, True)
    >>> lk.update(1.0) > 0.9999
    True
    """

    def __init__(
        self, short: int = 10, long: int = 2000, learn: int = 300, max_surprise: float = 6.0
    ) -> None:
        if not 1 <= short <= learn <= long:
            raise ValueError(f"need 1 <= short <= learn <= long, got {short}, {learn}, {long}")
        if not max_surprise > 0:
            raise ValueError(f"max_surprise must be > 0, got {max_surprise}")
        self.short, self.long, self.learn = short, long, learn
        self._floor = 10.0**-max_surprise
        self._recent: deque[float] = deque()
        self._recent_sum = 0.0
        self._means: deque[float] = deque()
        self._sum = 0.0
        self._sum_sq = 0.0
        self.seen = 0

    def update(self, score: float) -> float:
        """Likelihood of the current short mean under the fitted distribution, then learn."""
        if math.isnan(score):
            return 0.0
        score = -math.log10(max(1.0 - score, self._floor))  # the surprise
        self.seen += 1
        self._recent.append(score)
        self._recent_sum += score
        if len(self._recent) > self.short:
            self._recent_sum -= self._recent.popleft()
        mean_now = self._recent_sum / len(self._recent)
        out = 0.0
        n = len(self._means)
        if self.seen > self.learn and n >= 2:
            mu = max(self._sum / n, MIN_MEAN)
            var = max((self._sum_sq - self._sum * self._sum / n) / (n - 1), MIN_VARIANCE)
            z = (mean_now - mu) / math.sqrt(var)
            out = 1.0 - 0.5 * math.erfc(z / math.sqrt(2.0))  # 1 - upper tail
        self._means.append(mean_now)
        self._sum += mean_now
        self._sum_sq += mean_now * mean_now
        if len(self._means) > self.long:
            old = self._means.popleft()
            self._sum -= old
            self._sum_sq -= old * old
        return out
