"""Online anomaly scoring per equipment: multi-scale robust residuals, calibrated tail scores.

Each sensor keeps two baselines (a short and a long EWMA) and robust running scales. Every
reading is scored *before* it is learnt, with three kinds of evidence per sensor:

* ``fast``: the value minus its short baseline, in robust sigmas (spikes, jumps);
* ``slow``: the short baseline minus the long one, in its own robust sigmas: drifts and small
  shifts that hide inside the single-reading noise band (averaging shrinks the noise);
* ``stuck``: the surprise, in nats, of the current run of identical values given how often
  this sensor repeats itself (a stuck sensor looks perfectly normal value by value).

Robustness: outliers are winsorised and learnt slowly, so a fault does not teach the detector
that faults are normal; a lone outlier (a spike) barely moves the short baseline, a second
one in the same direction is followed quickly (a jump). A deviation of the short baseline
that persists for ``shift_persist`` readings and has stopped moving is a level shift (after
maintenance or recalibration): the long baseline is realigned and the evidence fades, while
one still moving (a drift) stays anomalous. Outliers that become common *on both sides* mean
the noise itself has grown, and the scale then follows quickly. A quantised sensor's smallest
step is never worth more than 2 sigma, however rarely it moves.

The raw statistic is the largest surprise over all sensors, in nats (-ln P(|Z| >= z) for the
residuals), optionally raised by Half-Space Trees on the top order statistics of the
residuals (``hst_weight`` > 0, for joint multi-sensor deviations; off by default: it added
nothing on the labelled faults of :mod:`models.detector_eval` and doubles the cost). It is
calibrated against the equipment's own raw scores of the last ``calibration_size`` readings
by :class:`TailCalibrator`: ``score = 1 - p`` is uniform on normal data, so a threshold means
the same on every machine, and it still resolves p = 1e-4 or 1e-6 beyond the window.
Scores stay 0 during the first ``warmup`` readings.
"""

from __future__ import annotations

import bisect
import math
import random
from collections import deque
from collections.abc import Mapping

from river import anomaly

_INF = math.inf
_SQRT_HALF = math.sqrt(0.5)
_LOG_SQRT_HALF_PI = 0.5 * math.log(0.5 * math.pi)
# calibration
_CEILING_NATS = 20.0  # no normal reading is this surprising (2e-9): never calibrate on it
_SHAPE_RATE = 0.01  # per refit: the tail shape has a memory of about 100 refits
# per-sensor baselines
_MIN_N = 20  # readings of a sensor before outliers are treated as such
_SLOW_DOWN = 0.1  # an outlier updates a scale this much more slowly (after winsorising)
_OUTLIER_RATE = 0.02  # memory (1/readings) of how common outliers have been
_COMMON = 0.1  # two-sided outliers this common mean the noise has grown: scales follow
_FOLLOW = 0.1  # ... at this rate per outlier
_CATCH_UP = 0.5  # short-baseline rate while following a confirmed jump
# a shifted level is settled once, over the last half of ``shift_persist`` readings, it moved
# less than _STABLE_Z sigmas or less than _STABLE_SHARE of its distance from the old level
_STABLE_Z = 0.6
_STABLE_SHARE = 0.25


def gauss_nats(z: float) -> float:
    """Surprise of a Gaussian deviation of ``|z|`` sigmas: -ln P(|Z| >= z), in nats.

    >>> round(gauss_nats(0.0), 6), round(gauss_nats(1.959964), 3), round(gauss_nats(50.0), 1)
    (0.0, 2.996, 1254.1)
    """
    z = abs(z)
    if z < 30.0:
        return 0.0 - math.log(math.erfc(z * _SQRT_HALF))
    return 0.5 * z * z + math.log(z) + _LOG_SQRT_HALF_PI  # asymptotic, exact to 1e-3


def printed_step(v: float, max_decimals: int = 9) -> float:
    """The resolution ``v`` is printed at: 10**-decimals of its shortest exact rounding.

    >>> printed_step(21.61), printed_step(2388.0), printed_step(0.1 + 0.2)
    (0.01, 1.0, inf)
    """
    for d in range(max_decimals + 1):
        if round(v, d) == v:
            return 10.0**-d
    return _INF


class _Sensor:
    """Running state of one sensor (slots: fast attribute access, small pickles)."""

    __slots__ = (
        "half_way",  # short baseline half-way through a persistent deviation
        "inv_fast",  # 1 / sigma of value - short (floored)
        "inv_slow",  # 1 / sigma of short - long (floored)
        "jump",  # sign of the last reading if it was a fast outlier, else 0
        "last",  # last value
        "long",  # long baseline (EWMA, realigned after a level shift)
        "n",  # readings learnt
        "out_fast",  # recent share of fast outliers
        "out_slow",  # recent share of slow outliers
        "persist",  # readings the short baseline has been far from the long one
        "repeat_rate",  # how often the value repeats, normally
        "run",  # repeats of ``last`` so far
        "short",  # short baseline (EWMA)
        "signed_fast",  # recent share of fast outliers, signed (one-sided: a shift)
        "signed_slow",  # recent share of slow outliers, signed
        "step",  # smallest change seen: the sensor's resolution
        "var_fast",  # robust variance of value - short
        "var_slow",  # robust variance of short - long
    )

    def __init__(self, v: float) -> None:
        self.n = 1.0
        self.short = self.long = self.last = self.half_way = v
        self.var_fast = self.var_slow = self.inv_fast = self.inv_slow = 0.0
        self.run = self.repeat_rate = self.jump = self.persist = 0.0
        self.out_fast = self.signed_fast = self.out_slow = self.signed_slow = 0.0
        self.step = _INF

    def __getstate__(self) -> tuple[float, ...]:
        return tuple(getattr(self, k) for k in self.__slots__)

    def __setstate__(self, state: tuple[float, ...]) -> None:
        for k, v in zip(self.__slots__, state, strict=True):
            setattr(self, k, v)


class SensorBaselines:
    """Per-sensor baselines, robust scales and repeat statistics; transform before learning.

    ``counts``, ``means`` and ``vars`` mirror River's StandardScaler (readings learnt, long
    baseline, robust variance of a reading around its short baseline), so callers can rank
    sensors by how far they are from normal.

    >>> b = SensorBaselines()
    >>> for i in range(200):
    ...     b.learn_one({"a": 10.0 + (i % 5) * 0.1})
    >>> round(b.means["a"], 1), b.counts["a"]
    (10.2, 200)
    >>> fast, slow, stuck = b.transform_one({"a": 15.0})
    >>> fast[0] > 20, stuck
    (True, 0.0)
    """

    def __init__(
        self,
        short_alpha: float = 0.2,
        long_alpha: float = 0.01,
        scale_alpha: float = 0.01,
        slow_scale_alpha: float = 0.0025,
        clip: float = 3.0,
        shift_z: float = 4.0,
        shift_persist: int = 20,
        repeat_window: float = 200.0,
    ) -> None:
        self.short_alpha = short_alpha
        self.long_alpha = long_alpha
        self.scale_alpha = scale_alpha
        self.slow_scale_alpha = slow_scale_alpha
        self.clip = clip
        self.shift_z = shift_z
        self.shift_persist = shift_persist
        self.repeat_window = repeat_window
        # until a sensor has this many readings, every rate is at least 1/n (plain averages)
        self._settle = max(
            1.0 / short_alpha, 1.0 / long_alpha, 1.0 / scale_alpha, 1.0 / slow_scale_alpha
        )
        self.state: dict[str, _Sensor] = {}
        self.counts: dict[str, int] = {}
        self.means: dict[str, float] = {}
        self.vars: dict[str, float] = {}

    def transform_one(self, x: Mapping[str, float]) -> tuple[list[float], list[float], float]:
        """Evidence for ``x`` from what was learnt so far: |fast z| and |slow z| of every known
        sensor, and the largest surprise (nats) of a run of repeated values."""
        a, clip = self.short_alpha, self.clip
        floor = 0.5 / self.repeat_window
        fast: list[float] = []
        slow: list[float] = []
        stuck = 0.0
        get = self.state.get
        for k, v in x.items():
            st = get(k)
            if st is None or st.n < 2.0 or not -_INF < v < _INF:
                continue
            d = v - st.short
            z = abs(d) * st.inv_fast
            fast.append(z)
            if z > clip and st.n >= _MIN_N and st.jump != (d > 0) - (d < 0):
                d *= clip / z  # a lone outlier moves the short baseline only so far
            slow.append(abs(d * a + st.short - st.long) * st.inv_slow)
            if v == st.last:
                nats = -(st.run + 1.0) * math.log(max(st.repeat_rate, floor))
                if nats > stuck:
                    stuck = nats
        return fast, slow, stuck

    def learn_one(self, x: Mapping[str, float]) -> None:
        """Update the baselines, scales and repeat statistics of every sensor in ``x``."""
        a, la, fa, sa = self.short_alpha, self.long_alpha, self.scale_alpha, self.slow_scale_alpha
        clip = self.clip
        c2 = clip * clip
        pz2 = self.shift_z * self.shift_z
        persist = self.shift_persist
        half = float(persist // 2)
        ra = 1.0 / self.repeat_window
        floor = 0.5 / self.repeat_window
        settle = self._settle
        inf, sqrt, log = _INF, math.sqrt, math.log
        orate, keep, common, slow_down = _OUTLIER_RATE, 1.0 - _OUTLIER_RATE, _COMMON, _SLOW_DOWN
        state, counts, means, vars_ = self.state, self.counts, self.means, self.vars
        for k, v in x.items():
            if not -inf < v < inf:
                continue
            st = state.get(k)
            if st is None:
                st = state[k] = _Sensor(v)
                st.step = printed_step(v)
                counts[k], means[k], vars_[k] = 1, v, 0.0
                continue
            n = st.n = st.n + 1.0
            if n <= _MIN_N:  # the printed resolution, before the sensor has moved much
                step = printed_step(v)
                if step < st.step:
                    st.step = step
            if n < settle:
                w = 1.0 / n
                ra_s, ra_l, ra_f, ra_v = max(a, w), max(la, w), max(fa, w), max(sa, w)
                ra_r = max(ra, w)
            else:
                ra_s, ra_l, ra_f, ra_v, ra_r = a, la, fa, sa, ra
            robust = n > _MIN_N

            # fast: value - short. Outliers are winsorised and learnt slowly, unless they have
            # become common on both sides: then the noise itself has grown (a new sensor, a new
            # vibration pattern) and the scale follows. One-sided ones are a shift or a drift.
            d = v - st.short
            r2 = d * d
            vf = st.var_fast
            rate = ra_s
            if robust and r2 > c2 * vf:
                sign = 1.0 if d > 0 else -1.0
                out = st.out_fast = st.out_fast * keep + orate
                signed = st.signed_fast = st.signed_fast * keep + orate * sign
                if out < common or abs(signed) > 0.5 * out:
                    vf += ra_f * slow_down * (c2 * vf - vf)
                else:
                    vf += _FOLLOW * (r2 - vf)
                # a lone outlier (a spike) moves the short baseline by at most clip sigmas;
                # a second one on the same side confirms a jump, which is followed quickly
                z = abs(d) * st.inv_fast
                if z > clip:
                    if st.jump != sign:
                        d *= clip / z
                    else:
                        rate = max(rate, _CATCH_UP)
                    st.jump = sign
                else:
                    st.jump = 0.0
            else:
                st.out_fast *= keep
                st.signed_fast *= keep
                vf += ra_f * (r2 - vf)
                st.jump = 0.0
            short = st.short + rate * d

            # slow: short - long, the same way
            s = short - st.long
            r2 = s * s
            vs = st.var_slow
            if robust and r2 > c2 * vs:
                out = st.out_slow = st.out_slow * keep + orate
                signed = st.signed_slow = st.signed_slow * keep + (orate if s > 0 else -orate)
                if out < common or abs(signed) > 0.5 * out:
                    vs += ra_v * slow_down * (c2 * vs - vs)
                else:
                    vs += _FOLLOW * (r2 - vs)
            else:
                st.out_slow *= keep
                st.signed_slow *= keep
                vs += ra_v * (r2 - vs)
            long = st.long + ra_l * (v - st.long)
            # a persistent deviation that has stopped moving is a level shift: the new level
            # becomes normal. One still moving is a drift, and stays anomalous.
            if robust and r2 > pz2 * vs:
                p = st.persist = st.persist + 1.0
                if p == half:
                    st.half_way = short
                elif p >= persist:
                    moved = abs(short - st.half_way)
                    if moved * st.inv_fast < _STABLE_Z or moved < _STABLE_SHARE * abs(s):
                        long, st.persist = short, 0.0
                    else:
                        st.persist, st.half_way = half, short
            elif st.persist:
                st.persist = 0.0
            st.short, st.long, st.var_fast, st.var_slow = short, long, vf, vs

            # stuck: how often does the value repeat? (a stuck run must not teach that)
            if v == st.last:
                run = st.run = st.run + 1.0
                if -run * log(max(st.repeat_rate, floor)) <= 0.5 * pz2:
                    st.repeat_rate += ra_r * (1.0 - st.repeat_rate)
            else:
                st.repeat_rate -= ra_r * st.repeat_rate
                step = abs(v - st.last)
                if step < st.step:
                    st.step = step
                st.last, st.run = v, 0.0
            # one resolution step is never more than 2 sigma, however rarely the sensor moves
            lvl = 1e-12 + 1e-9 * abs(long)
            if 0.5 * st.step > lvl and st.step < inf:
                lvl = 0.5 * st.step
            sd = sqrt(vf)
            st.inv_fast = 1.0 / (sd if sd > lvl else lvl)
            sd = sqrt(vs)
            st.inv_slow = 1.0 / (sd if sd > lvl else lvl)
            counts[k], means[k], vars_[k] = int(n), long, vf


class TailCalibrator:
    """Turns raw scores into p-values against the raw scores of the last ``size`` readings.

    Below the window's ``tail_quantiles[0]`` quantile: a randomised conformal p-value (exactly
    uniform on exchangeable data). Above it: a generalised Pareto tail (peaks over threshold)
    fitted to three quantiles of the window rather than to its top values, so a few
    contaminating values cannot blunt it, and p keeps falling past the largest value seen.
    The shape is kept in [0, 1]: exponential for light tails (on the nats scale a Gaussian
    tail is very nearly exponential: accurate to a factor of about 1.2 down to p = 1e-5),
    heavier when the data say so. The fit is refreshed every ``refit_every`` readings.

    Raw scores with ``p < exclude_p`` or above ``ceiling`` are kept out of the window (faults
    must not look normal, even when they come while the window is still short and its tail
    unsure), but up to twice the expected share of them still count as values above every
    kept one, so excluding them does not bias the quantiles.

    >>> cal = TailCalibrator(size=200, seed=0)
    >>> for i in range(200):
    ...     _ = cal.p_learn(float(i % 20))
    >>> 0.4 < cal.p_value(10.0) < 0.55, cal.p_value(60.0) < 1e-6
    (True, True)
    """

    def __init__(
        self,
        size: int = 500,
        tail_quantiles: tuple[float, float, float] = (0.75, 0.9, 0.975),
        exclude_p: float = 0.01,
        seed: int = 0,
        refit_every: int = 10,
        ceiling: float = math.inf,
    ) -> None:
        lo, mid, hi = tail_quantiles
        if not 0.0 < lo < mid < hi < 1.0:
            raise ValueError(f"tail_quantiles must be increasing in (0, 1), got {tail_quantiles}")
        self.size = size
        self.tail_quantiles = tail_quantiles
        self.exclude_p = exclude_p
        self.refit_every = refit_every
        self.ceiling = ceiling
        self._ghost_cap = max(1, math.ceil(2.0 * exclude_p * size))
        self.rng = random.Random(seed)
        self.count = 0
        self.recent: deque[tuple[int, float]] = deque()  # (reading number, raw) kept
        self.excluded: deque[int] = deque()  # reading numbers left out
        self.sorted: list[float] = []
        self.tail: tuple[float, float, float] | None = None  # threshold, scale, shape
        self.shape = 0.0
        self._u = 0.5

    def p_value(self, raw: float) -> float:
        """P(a normal raw score >= ``raw``), from the window (1.0 when it is empty)."""
        srt = self.sorted
        n = len(srt)
        if n == 0:
            return 1.0
        tail = self.tail
        if tail is not None and raw > tail[0]:
            top, scale, shape = tail
            excess = (raw - top) / scale
            p_top = 1.0 - self.tail_quantiles[0]
            if shape < 1e-6:
                return p_top * math.exp(max(-excess, -700.0))
            return p_top * math.exp(max(-math.log1p(shape * excess) / shape, -700.0))
        ghosts = min(len(self.excluded), self._ghost_cap)
        above = bisect.bisect_right(srt, raw)
        ties = above - bisect.bisect_left(srt, raw, 0, above)
        return (n - above + ghosts + self._u * (ties + 1)) / (n + ghosts + 1)

    def p_learn(self, raw: float) -> float:
        """The p-value of ``raw``, then add it to the window unless it is extreme."""
        p = self.p_value(raw)
        self._u = self.rng.random()
        i = self.count
        self.count += 1
        if p >= self.exclude_p and raw <= self.ceiling:
            bisect.insort(self.sorted, raw)
            self.recent.append((i, raw))
        else:
            self.excluded.append(i)
        old = i - self.size
        while self.recent and self.recent[0][0] <= old:
            del self.sorted[bisect.bisect_left(self.sorted, self.recent.popleft()[1])]
        while self.excluded and self.excluded[0] <= old:
            self.excluded.popleft()
        if self.tail is None or self.count % self.refit_every == 0:
            self.tail = self._fit()
        return p

    def _fit(self) -> tuple[float, float, float] | None:
        """Generalised Pareto tail through the three quantiles (None below 20 values)."""
        srt = self.sorted
        n = len(srt)
        if n < 20:
            return None
        last = n + min(len(self.excluded), self._ghost_cap) - 1
        x1, x2, x3 = (srt[min(int(q * last), n - 1)] for q in self.tail_quantiles)
        lo, mid, hi = self.tail_quantiles
        a, b = (1.0 - lo) / (1.0 - mid), (1.0 - lo) / (1.0 - hi)
        if x2 - x1 <= 0.0:
            return x1, 1e-12, self.shape
        if len(self.excluded) <= self._ghost_cap:  # not in the middle of a fault
            # one window's shape is noisy: average many (unclamped, so the average of an
            # exponential tail stays at 0), and only from clean windows, since raised values
            # that slip in during a fault would fatten the tail and blunt it
            shape = _gpd_shape((x3 - x1) / (x2 - x1), a, b)
            self.shape += _SHAPE_RATE * (shape - self.shape)
        # and never lighter than the predictive tail of an exponential whose rate is known
        # only from the window's values above the threshold (a Lomax: shape 1 / their count),
        # so a short window, just after warm-up, is not overconfident
        shape = max(self.shape, 1.0 / ((last + 1) * (1.0 - lo)))
        scale = (x2 - x1) * (shape / (a**shape - 1.0) if shape > 1e-6 else 1.0 / math.log(a))
        return x1, scale, shape


def _gpd_shape(ratio: float, a: float, b: float) -> float:
    """The shape (in [-0.5, 1]) of a generalised Pareto tail whose quantiles at exceedance
    ratios ``a`` and ``b`` (relative to the threshold's) are ``1 : ratio`` above it.

    >>> round(_gpd_shape(math.log(10) / math.log(2.5), 2.5, 10.0), 3)  # exponential
    0.0
    >>> round(_gpd_shape((10**0.5 - 1) / (2.5**0.5 - 1), 2.5, 10.0), 3)
    0.5
    """
    lo, hi = -0.5, 1.0

    def ratio_at(s: float) -> float:  # grows with s; the exponential's at s = 0
        return math.log(b) / math.log(a) if abs(s) < 1e-9 else (b**s - 1.0) / (a**s - 1.0)

    if ratio <= ratio_at(lo):
        return lo
    if ratio >= ratio_at(hi):
        return hi
    for _ in range(30):
        s = 0.5 * (lo + hi)
        if ratio_at(s) < ratio:
            lo = s
        else:
            hi = s
    return 0.5 * (lo + hi)


_HST_KEYS = ("f1", "f2", "f3", "s1", "s2", "s3")


class AnomalyDetector:
    """One equipment's detector; picklable, bounded memory, scores before it learns.

    ``warmup``: readings scored 0 (the first half only settle the baselines, the second half
    also fills the calibration window). ``calibration_size``: readings the calibration looks
    back over. ``short_alpha`` / ``long_alpha``: EWMA rates of the two baselines (about 5 and
    100 readings); ``scale_alpha`` / ``slow_scale_alpha``: of their robust scales;
    ``shift_persist``: readings a settled deviation is flagged before it becomes the new
    normal; ``tail_quantiles`` and ``exclude_p``: see :class:`TailCalibrator`.
    ``n_trees``, ``height``, ``window_size``, ``z_clip``: River's Half-Space Trees, learning
    online from the top residuals of every reading (multi-sensor patterns the per-sensor
    maximum can miss), weighted by ``hst_weight`` (0: off, about half the cost). ``seed``
    seeds the trees and the randomised tie-breaking of the calibration.

    >>> det = AnomalyDetector(window_size=20, warmup=20, seed=1)
    >>> normal = [det.score_learn({"x": 1.0 + 0.01 * (i % 7)}) for i in range(200)]
    >>> normal[:20] == [0.0] * 20
    True
    >>> det.score_learn({"x": 50.0}) > 0.999
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
        short_alpha: float = 0.2,
        long_alpha: float = 0.01,
        scale_alpha: float = 0.01,
        slow_scale_alpha: float = 0.0025,
        shift_persist: int = 20,
        tail_quantiles: tuple[float, float, float] = (0.75, 0.9, 0.975),
        exclude_p: float = 0.01,
        hst_weight: float = 0.7,
    ) -> None:
        if warmup < window_size:
            raise ValueError(f"warmup ({warmup}) must be >= window_size ({window_size})")
        self.warmup = warmup
        self.z_clip = z_clip
        self.calibration_size = calibration_size
        self.hst_weight = hst_weight
        self.scaler = SensorBaselines(
            short_alpha, long_alpha, scale_alpha, slow_scale_alpha, shift_persist=shift_persist
        )
        self.trees = anomaly.HalfSpaceTrees(
            n_trees=n_trees, height=height, window_size=window_size, seed=seed
        )
        self.calibrator = TailCalibrator(
            calibration_size, tail_quantiles, exclude_p, seed, ceiling=_CEILING_NATS
        )
        self._hst = [0.0, 0.0, 0.0]  # n, mean, var of the trees' raw score
        self.burn_in = max(2, warmup // 2)
        self.seen = 0

    @property
    def _sorted(self) -> list[float]:
        """The calibration window, sorted (kept for introspection and tests)."""
        return self.calibrator.sorted

    def score_learn(self, x: Mapping[str, float]) -> float:
        """Score ``x`` against what was learnt so far, then learn it. Returns [0, 1].

        An empty ``x`` carries no evidence: it scores 0 and is not learnt."""
        if not x:
            return 0.0
        raw, u, h = self._evidence(x)
        self.scaler.learn_one(x)
        if u is not None and self.hst_weight > 0.0:
            self.trees.learn_one(u)
            if not self.trees._first_window:
                self._learn_hst(h)
        self.seen += 1
        if self.seen <= self.burn_in:
            return 0.0  # baselines and scales are still settling
        p = self.calibrator.p_learn(raw)
        return 1.0 - p if self.seen > self.warmup else 0.0

    def raw_score(self, x: Mapping[str, float]) -> float:
        """The uncalibrated statistic for ``x`` (nats of surprise), without learning it."""
        return self._evidence(x)[0]

    def _evidence(self, x: Mapping[str, float]) -> tuple[float, dict[str, float] | None, float]:
        fast, slow, stuck = self.scaler.transform_one(x)
        if not fast:
            return stuck, None, 0.0
        raw = max(gauss_nats(max(max(fast), max(slow))), stuck)  # one scale: nats of surprise
        if self.hst_weight <= 0.0:
            return raw, None, 0.0
        fast.sort(reverse=True)
        slow.sort(reverse=True)
        c = self.z_clip
        top = [*fast[:3], 0.0, 0.0, 0.0][:3] + [*slow[:3], 0.0, 0.0, 0.0][:3]
        u = {k: min(v, c) / c for k, v in zip(_HST_KEYS, top, strict=True)}
        h = self.trees.score_one(u)
        n, mean, var = self._hst
        if n > 20 and var > 0.0 and h > mean:
            raw = max(raw, gauss_nats(self.hst_weight * (h - mean) / math.sqrt(var)))
        return raw, u, h

    def _learn_hst(self, h: float) -> None:
        """Robust running mean and variance of the trees' raw score."""
        st = self._hst
        st[0] += 1.0
        rate = max(0.02, 1.0 / st[0])
        d = h - st[1]
        st[1] += rate * d
        r2 = d * d
        if st[0] > 10 and r2 > 9.0 * st[2]:
            r2, rate = 9.0 * st[2], rate * _SLOW_DOWN
        st[2] += rate * (r2 - st[2])
