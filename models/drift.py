"""Feature drift: how far the live feature distribution has moved from the training one.

A :class:`DriftReference` is built once from the training rows of an equipment type: per
feature, cut points at the training deciles (a discrete feature with at most ``bins``
distinct values gets one bin per value, plus two empty guard bins that catch values never
seen in training) and the number of training rows per bin. A value ``v`` falls in bin
``b`` when ``cuts[b-1] < v <= cuts[b]``.

A :class:`DriftMonitor` bins live feature vectors with the same cuts into exponentially
decayed counts (``half_life`` in rows), so it follows the recent fleet in
O(features × bins) memory, and scores each feature with the Population Stability Index

    PSI = Σ_b (a_b − e_b) · ln(a_b / e_b)

(``a``: live proportions, ``e``: training proportions, both floored at :data:`EPS`), or a
binned Kolmogorov–Smirnov distance. Rule of thumb: PSI < 0.1 stable, 0.1–0.25 moderate,
> 0.25 significant. Sampling noise adds about ``(bins − 1) / n`` to the PSI of ``n``
independent live rows, more when rows are correlated (overlapping windows).

:func:`drift_alerts` turns the largest PSI of an equipment type into one fleet-level
alert (``equipment_id = "fleet:<type>"``, rule ``feature_drift``) with hysteresis.
:class:`DriftTracker` bundles a monitor, that alert state and an event-time cadence: the
one picklable object the flow keeps per equipment type.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from alerting.rules import CRITICAL, ESCALATED, FIRING, RESOLVED, WARNING, alert_id
from models.schemas import Alert

EPS = 1e-4  # floor of a bin proportion in the PSI (an empty bin would make it infinite)
RULE = "feature_drift"
FORMAT = "pm-drift-reference/1"
_CHUNK_ROWS = 512  # rows binned at once: bounds the (rows, features, cuts) temporary


class DriftReference:
    """Per-feature bin cuts and training counts of one model's feature vector.

    ``cuts`` is ``(F, K-1)``, ascending per row and padded with ``+inf``; ``counts`` is
    ``(F, K)``, zero in padded bins. Feature ``j`` uses ``n_bins[j]`` bins.

    >>> rng = np.random.default_rng(0)
    >>> x = np.c_[rng.normal(size=1000), rng.integers(0, 3, size=1000)]
    >>> ref = DriftReference.from_training(x, ["temp", "mode"], bins=4)
    >>> ref.n_bins.tolist()  # 4 quantile bins; 3 values + 2 guard bins
    [4, 5]
    >>> ref.cuts_of("mode").tolist()
    [-0.5, 0.5, 1.5, 2.5]
    >>> ref.expected[0, :4].round(2).tolist()
    [0.25, 0.25, 0.25, 0.25]
    >>> DriftReference.from_json(ref.to_json()) == ref
    True
    """

    __slots__ = ("_index", "bins", "counts", "cuts", "n_bins", "n_rows", "names")

    def __init__(
        self,
        names: Sequence[str],
        cuts: Sequence[Sequence[float] | np.ndarray],
        counts: Sequence[Sequence[float] | np.ndarray],
        n_rows: int,
        bins: int,
    ) -> None:
        names = tuple(names)
        if not (len(names) == len(cuts) == len(counts)):
            raise ValueError(
                f"drift reference: {len(names)} names, {len(cuts)} cut lists and "
                f"{len(counts)} count lists"
            )
        if len(set(names)) != len(names):
            raise ValueError("drift reference: feature names are not unique")
        width = max((len(c) for c in cuts), default=0)
        self.names = names
        self.cuts = np.full((len(names), width), np.inf)
        self.counts = np.zeros((len(names), width + 1))
        self.n_bins = np.zeros(len(names), dtype=np.int64)
        for j, (c, n) in enumerate(zip(cuts, counts, strict=True)):
            cj = np.asarray(c, dtype=np.float64)
            if cj.ndim != 1 or len(n) != len(cj) + 1:
                raise ValueError(f"drift reference: {names[j]!r} has {len(cj)} cuts but "
                                 f"{len(n)} counts (want {len(cj) + 1})")  # fmt: skip
            if not np.all(np.isfinite(cj)) or np.any(np.diff(cj) <= 0):
                raise ValueError(f"drift reference: cuts of {names[j]!r} are not finite and "
                                 "strictly ascending")  # fmt: skip
            self.cuts[j, : len(cj)] = cj
            self.counts[j, : len(n)] = n
            self.n_bins[j] = len(n)
        self.n_rows = int(n_rows)
        self.bins = int(bins)
        self._index = {n: j for j, n in enumerate(names)}

    # -- building ------------------------------------------------------------------------

    @classmethod
    def from_training(cls, x: np.ndarray, names: Sequence[str], bins: int = 10) -> DriftReference:
        """Cuts at the ``bins``-quantiles of each column of ``x`` (N, F), rounded to about
        five significant digits of the column's spread; NaN values are ignored."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(names):
            raise ValueError(f"want x shaped (N, {len(names)}), got {x.shape}")
        if bins < 2:
            raise ValueError(f"bins must be >= 2, got {bins}")
        cuts = [_cuts(x[:, j], bins) for j in range(x.shape[1])]
        ref = cls(names, cuts, [np.zeros(len(c) + 1) for c in cuts], len(x), bins)
        counts = np.zeros_like(ref.counts)
        for lo in range(0, len(x), _CHUNK_ROWS):
            chunk = x[lo : lo + _CHUNK_ROWS]
            counts += _bin_counts(chunk, ref.cuts, np.ones(len(chunk)))
        ref.counts = counts
        return ref

    # -- views ---------------------------------------------------------------------------

    @property
    def expected(self) -> np.ndarray:
        """Training proportions per bin, ``(F, K)``; a feature never seen finite in
        training puts everything in its single bin."""
        tot = self.counts.sum(axis=1, keepdims=True)
        p = np.divide(self.counts, tot, out=np.zeros_like(self.counts), where=tot > 0)
        p[tot[:, 0] == 0, 0] = 1.0
        return p

    def cuts_of(self, name: str) -> np.ndarray:
        j = self._index[name]
        return self.cuts[j, : self.n_bins[j] - 1].copy()

    def index(self, name: str) -> int:
        return self._index[name]

    # -- serialisation -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: names, cuts and integer training counts per feature."""
        k = self.n_bins
        return {
            "format": FORMAT,
            "bins": self.bins,
            "n_rows": self.n_rows,
            "names": list(self.names),
            "cuts": [self.cuts[j, : k[j] - 1].tolist() for j in range(len(k))],
            "counts": [[round(v) for v in self.counts[j, : k[j]]] for j in range(len(k))],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DriftReference:
        if d.get("format") != FORMAT:
            raise ValueError(f"not a drift reference (format {d.get('format')!r}, want {FORMAT})")
        return cls(d["names"], d["cuts"], d["counts"], d["n_rows"], d["bins"])

    def to_json(self) -> str:
        """Compact JSON (for ONNX ``metadata_props``)."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> DriftReference:
        return cls.from_dict(json.loads(text))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DriftReference):
            return NotImplemented
        return (
            self.names == other.names
            and self.n_rows == other.n_rows
            and self.bins == other.bins
            and np.array_equal(self.cuts, other.cuts)
            and np.array_equal(self.counts, other.counts)
        )

    __hash__ = None  # type: ignore[assignment]

    def __getstate__(self) -> dict[str, Any]:
        return {s: getattr(self, s) for s in self.__slots__}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)

    def __repr__(self) -> str:
        return f"DriftReference({len(self.names)} features, {self.n_rows} rows, bins={self.bins})"


class DriftMonitor:
    """Exponentially decayed live bin counts against a :class:`DriftReference`.

    Each row's weight halves every ``half_life`` rows that come after it; ``count`` is the
    decayed number of rows (it levels off near ``1.44 × half_life``); ``seen`` counts all
    rows. NaN values are not counted (per feature).

    >>> rng = np.random.default_rng(1)
    >>> ref = DriftReference.from_training(rng.normal(size=(5000, 2)), ["a", "b"])
    >>> mon = DriftMonitor(ref, half_life=2000)
    >>> mon.update(rng.normal(size=(3000, 2)) + [0.0, 1.0])  # b moved by one std
    >>> [(name, round(v, 1)) for name, v in mon.top(2)]
    [('b', 0.9), ('a', 0.0)]
    >>> round(mon.count)  # (1 - 0.5 ** 1.5) / (1 - 0.5 ** (1 / 2000))
    1866
    """

    def __init__(self, reference: DriftReference, half_life: float = 2000) -> None:
        if not half_life > 0:
            raise ValueError(f"half_life must be > 0 rows, got {half_life}")
        self.reference = reference
        self.half_life = half_life
        self.decay = 0.5 ** (1.0 / half_life)
        self.counts = np.zeros_like(reference.counts)
        self.count = 0.0
        self.seen = 0

    @property
    def names(self) -> tuple[str, ...]:
        return self.reference.names

    def update(self, x: np.ndarray) -> None:
        """Add rows ``x`` (B, F) or one row (F,), oldest first."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 1:
            x = x[None, :]
        f = len(self.reference.names)
        if x.ndim != 2 or x.shape[1] != f:
            raise ValueError(f"drift monitor: want rows of {f} features, got shape {x.shape}")
        for lo in range(0, len(x), _CHUNK_ROWS):
            chunk = x[lo : lo + _CHUNK_ROWS]
            b = len(chunk)
            w = self.decay ** np.arange(b - 1, -1, -1, dtype=np.float64)  # newest weighs 1
            fade = self.decay**b
            self.counts *= fade
            self.counts += _bin_counts(chunk, self.reference.cuts, w)
            self.count = self.count * fade + float(w.sum())
            self.seen += b

    def reset(self) -> None:
        self.counts[:] = 0.0
        self.count, self.seen = 0.0, 0

    def proportions(self) -> np.ndarray:
        """Live proportions per bin, ``(F, K)`` (zeros for a feature with no data)."""
        tot = self.counts.sum(axis=1, keepdims=True)
        return np.divide(self.counts, tot, out=np.zeros_like(self.counts), where=tot > 0)

    def psi(self) -> np.ndarray:
        """Population Stability Index per feature, ``(F,)``; 0 for a feature with no data."""
        a = np.maximum(self.proportions(), EPS)
        e = np.maximum(self.reference.expected, EPS)
        out = ((a - e) * np.log(a / e)).sum(axis=1)
        out[self.counts.sum(axis=1) <= 0] = 0.0
        return out

    def ks(self) -> np.ndarray:
        """Kolmogorov–Smirnov distance per feature on the binned CDFs, ``(F,)``, in [0, 1]
        (a lower bound of the exact KS statistic)."""
        a = np.cumsum(self.proportions(), axis=1)
        e = np.cumsum(self.reference.expected, axis=1)
        out = np.abs(a - e).max(axis=1)
        out[self.counts.sum(axis=1) <= 0] = 0.0
        return out

    def top(self, k: int = 5, psi: np.ndarray | None = None) -> list[tuple[str, float]]:
        """The ``k`` most drifted features as ``(name, psi)``, largest first."""
        return top_features(self.psi() if psi is None else psi, self.reference.names, k)


def top_features(psi: np.ndarray, names: Sequence[str], k: int) -> list[tuple[str, float]]:
    """``k`` (name, value) pairs with the largest values, largest first (NaN last).

    >>> top_features(np.array([0.1, 0.5, 0.3]), ["a", "b", "c"], 2)
    [('b', 0.5), ('c', 0.3)]
    """
    v = np.nan_to_num(np.asarray(psi, dtype=np.float64), nan=-np.inf)
    order = np.argsort(-v, kind="stable")[:k]
    return [(names[int(i)], float(psi[i])) for i in order]


# -- alerts ----------------------------------------------------------------------------


@dataclass(slots=True)
class DriftAlertState:
    """Alert state of one equipment type's drift rule (``None`` severity: idle).

    >>> import pickle
    >>> pickle.loads(pickle.dumps(DriftAlertState())) == DriftAlertState()
    True
    """

    severity: str | None = None
    episode_start_ts_ms: int | None = None


def drift_alerts(
    state: DriftAlertState,
    equipment_type: str,
    psi: np.ndarray,
    names: Sequence[str],
    ts_ms: int,
    *,
    count: float,
    warning: float = 0.25,
    critical: float | None = None,
    min_count: float = 1000.0,
    hysteresis: float = 0.2,
    top_k: int = 5,
    model_version: str = "",
) -> list[Alert]:
    """Update ``state`` with the PSI of one evaluation and return the alerts to emit.

    ``firing`` when the largest PSI goes above ``warning`` (or straight to ``critical``
    when given and passed), ``escalated`` when a warning episode passes ``critical``,
    ``resolved`` once it is at most ``warning × (1 − hysteresis)``. Nothing happens while
    ``count`` (the monitor's decayed row count) is below ``min_count``. Ids come from
    :func:`alerting.rules.alert_id` (sha256 of ``equipment_id|rule|episode start|state|
    severity``, 16 hex), so a replay of the same evaluations emits the same ids.

    >>> st, names = DriftAlertState(), ["T24__mean_30", "T30__std_10"]
    >>> drift_alerts(st, "turbofan_engine", np.array([0.4, 0.1]), names, 0, count=10)
    []
    >>> a = drift_alerts(st, "turbofan_engine", np.array([0.4, 0.1]), names, 1, count=5000)
    >>> a[0].equipment_id, a[0].state, a[0].severity, a[0].value, a[0].alert_id
    ('fleet:turbofan_engine', 'firing', 'warning', 0.4, '262828551bfb889b')
    >>> drift_alerts(st, "turbofan_engine", np.array([0.21, 0.1]), names, 2, count=5000)
    []
    >>> [x.state for x in drift_alerts(st, "turbofan_engine", np.array([0.19, 0.1]), names,
    ...                                 3, count=5000)]
    ['resolved']
    """
    if count < min_count:
        return []
    psi = np.asarray(psi, dtype=np.float64)
    if psi.size == 0 or not np.isfinite(psi).any():
        return []
    value = float(np.nanmax(psi))
    level: str | None = None
    if value > warning:
        level = CRITICAL if critical is not None and value > critical else WARNING
    eq = f"fleet:{equipment_type}"

    def alert(kind: str, threshold: float, message: str) -> Alert:
        assert state.severity is not None and state.episode_start_ts_ms is not None
        top = top_features(psi, names, top_k)
        return Alert(
            alert_id=alert_id(eq, RULE, state.episode_start_ts_ms, kind, state.severity),
            equipment_id=eq,
            ts_ms=ts_ms,
            rule=RULE,
            severity=state.severity,
            state=kind,
            value=value,
            threshold=threshold,
            message=message,
            evidence={
                "equipment_type": equipment_type,
                "model_version": model_version,
                "top_features": [{"feature": n, "psi": round(v, 4)} for n, v in top],
                "drifted_features": int(np.sum(psi > warning)),
                "features": int(psi.size),
                "count": round(count, 1),
                "episode_start_ts_ms": state.episode_start_ts_ms,
            },
        )

    def describe() -> str:
        tops = ", ".join(f"{n} {v:.3f}" for n, v in top_features(psi, names, top_k))
        return f"{eq}: feature drift PSI {value:.3f} (top: {tops})"

    if state.severity is None:
        if level is None:
            return []
        state.severity, state.episode_start_ts_ms = level, ts_ms
        th = critical if level == CRITICAL and critical is not None else warning
        return [alert(FIRING, th, f"{describe()} is above the {level} threshold {th:g}")]

    clear = round(warning * (1.0 - hysteresis), 10)
    if value <= clear:
        out = alert(
            RESOLVED,
            clear,
            f"{eq}: feature drift PSI {value:.3f} is back below {clear:g} (warning "
            f"threshold {warning:g} - {hysteresis:.0%} hysteresis)",
        )
        state.severity, state.episode_start_ts_ms = None, None
        return [out]

    if level == CRITICAL and state.severity == WARNING and critical is not None:
        state.severity = CRITICAL
        return [alert(ESCALATED, critical, f"{describe()} is above the critical threshold "
                      f"{critical:g}")]  # fmt: skip
    return []


# -- the per-type tracker the flow keeps -------------------------------------------------


@dataclass(frozen=True, slots=True)
class DriftConfig:
    """How one equipment type's drift is tracked and judged (see :class:`DriftTracker`)."""

    half_life: float = 2000.0  # rows
    every_ms: int = 60_000  # evaluation cadence, event time, aligned to the epoch
    warning: float = 0.25
    critical: float | None = None
    min_count: float = 1000.0  # decayed rows before the first evaluation
    hysteresis: float = 0.2
    top_k: int = 5

    def __post_init__(self) -> None:
        if self.every_ms <= 0:
            raise ValueError(f"every_ms must be > 0, got {self.every_ms}")
        if self.critical is not None and not self.critical > self.warning:
            raise ValueError(f"critical ({self.critical}) must be above warning ({self.warning})")
        if not 0.0 <= self.hysteresis < 1.0:
            raise ValueError(f"hysteresis must be in [0, 1), got {self.hysteresis}")


@dataclass(frozen=True, slots=True, eq=False)
class DriftEvaluation:
    """One evaluation of an equipment type: what the flow exports, stores and alerts on."""

    ts_ms: int
    equipment_type: str
    model_version: str
    names: tuple[str, ...]
    psi: np.ndarray
    count: float
    alerts: tuple[Alert, ...] = ()

    @property
    def max_psi(self) -> float:
        return float(self.psi.max()) if self.psi.size else 0.0

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        return top_features(self.psi, self.names, k)


class DriftTracker:
    """Drift of one equipment type: a :class:`DriftMonitor`, the alert state and an
    event-time cadence. Small and picklable: keep one per type in keyed state.

    Rows go in with their event times, in arrival order. When the running maximum event
    time enters a new ``every_ms`` bucket, the rows before it are evaluated once, stamped
    with the bucket's start; so the evaluation instants do not depend on how the stream
    was cut into batches, and a replay rewrites the same keys. Nothing is evaluated while
    the monitor's decayed count is below ``min_count``.

    >>> rng = np.random.default_rng(0)
    >>> ref = DriftReference.from_training(rng.normal(size=(4000, 2)), ["a", "b"])
    >>> tr = DriftTracker("pump", "3", ref, DriftConfig(every_ms=1000, min_count=500))
    >>> ts = np.arange(3000) * 10  # a row every 10 ms: 100 rows per bucket
    >>> x = rng.normal(size=(3000, 2)) + [0.0, 2.0]
    >>> evs = tr.ingest(ts, x)
    >>> [e.ts_ms for e in evs][:3], len(evs)  # once the decayed count passes 500 (600 rows)
    ([6000, 7000, 8000], 24)
    >>> [(a.state, a.ts_ms) for e in evs for a in e.alerts]
    [('firing', 6000)]
    """

    def __init__(
        self,
        equipment_type: str,
        model_version: str,
        reference: DriftReference,
        config: DriftConfig | None = None,
    ) -> None:
        self.equipment_type = equipment_type
        self.config = config or DriftConfig()
        self.model_version = model_version
        self.monitor = DriftMonitor(reference, self.config.half_life)
        self.alert_state = DriftAlertState()
        self.bucket: int | None = None

    def set_model(self, model_version: str, reference: DriftReference) -> bool:
        """Track against another model's reference (a fresh monitor, the alert episode
        kept); returns whether anything changed."""
        if model_version == self.model_version:
            return False
        self.model_version = model_version
        self.monitor = DriftMonitor(reference, self.config.half_life)
        return True

    def ingest(self, ts_ms: Sequence[int] | np.ndarray, x: np.ndarray) -> list[DriftEvaluation]:
        """Add rows ``x`` (B, F) with event times ``ts_ms`` (B,); return the evaluations
        that became due (usually none or one)."""
        ts = np.asarray(ts_ms, dtype=np.int64)
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or len(ts) != len(x):
            raise ValueError(f"want ts_ms (B,) and x (B, F), got {ts.shape} and {x.shape}")
        if len(ts) == 0:
            return []
        run = np.maximum.accumulate(ts // self.config.every_ms)
        first = run[0] if self.bucket is None else self.bucket
        run = np.maximum(run, first)
        due = np.flatnonzero(run > np.r_[first, run[:-1]])
        out: list[DriftEvaluation] = []
        start = 0
        for i in due:
            self.monitor.update(x[start:i])
            start = int(i)
            ev = self._evaluate(int(run[i]) * self.config.every_ms)
            if ev is not None:
                out.append(ev)
        self.monitor.update(x[start:])
        self.bucket = int(run[-1])
        return out

    def _evaluate(self, ts_ms: int) -> DriftEvaluation | None:
        c, mon = self.config, self.monitor
        if mon.count < c.min_count:
            return None
        psi = mon.psi()
        alerts = drift_alerts(
            self.alert_state, self.equipment_type, psi, mon.names, ts_ms,
            count=mon.count, warning=c.warning, critical=c.critical, min_count=c.min_count,
            hysteresis=c.hysteresis, top_k=c.top_k, model_version=self.model_version,
        )  # fmt: skip
        return DriftEvaluation(
            ts_ms, self.equipment_type, self.model_version, mon.names, psi, mon.count,
            tuple(alerts),
        )  # fmt: skip


# -- binning ---------------------------------------------------------------------------


def _bin_counts(x: np.ndarray, cuts: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted counts ``(F, K)`` of rows ``x`` (B, F), row ``i`` weighing ``w[i]``;
    NaN values are skipped. Bin = number of cuts strictly below the value."""
    f, width = cuts.shape
    k = width + 1
    # One comparison pass per cut over (B, F) in a small int type: about 3x faster than a
    # (B, F, K-1) broadcast or a searchsorted per feature.
    idx = np.zeros(x.shape, dtype=np.int8 if width < 127 else np.int32)
    for c in range(width):
        idx += x > cuts[:, c]
    flat = idx + np.arange(0, f * k, k)
    weights = np.where(np.isnan(x), 0.0, w[:, None])
    return np.bincount(flat.ravel(), weights.ravel(), minlength=f * k).reshape(f, k)


def _cuts(col: np.ndarray, bins: int) -> np.ndarray:
    """Cut points of one training column: deciles (``bins``-quantiles), or, for at most
    ``bins`` distinct values, midpoints between them plus a guard cut on each side.

    >>> _cuts(np.array([0.0, 1.0, 1.0, 3.0]), 10).tolist()
    [-0.5, 0.5, 2.0, 3.5]
    >>> _cuts(np.arange(100.0), 4).tolist()
    [24.75, 49.5, 74.25]
    >>> _cuts(np.array([642.0] * 5), 10).tolist()  # one value: guards at ±1e-6 relative
    [641.999358, 642.000642]
    """
    col = col[np.isfinite(col)]
    if col.size == 0:
        return np.empty(0)
    values = np.unique(col)
    if values.size <= bins:
        if values.size == 1:
            h = max(abs(values[0]) * 1e-6, 1e-9)
        else:
            h = float(np.diff(values).min()) / 2.0
        cuts = np.r_[values[0] - h, (values[:-1] + values[1:]) / 2.0, values[-1] + h]
    else:
        cuts = np.quantile(col, np.arange(1, bins) / bins)
    return np.unique(_round_cuts(cuts))


def _round_cuts(c: np.ndarray) -> np.ndarray:
    """Round to five or six significant digits of the spread of ``c`` (at least six
    of the magnitude), which keeps the JSON short without merging distinct cuts.

    >>> _round_cuts(np.array([642.123456789, 642.55555555])).tolist()
    [642.123457, 642.555556]
    """
    scale = float(np.abs(c).max()) if c.size else 0.0
    if scale == 0.0 or not math.isfinite(scale):
        return c
    spread = float(c[-1] - c[0]) if c.size > 1 else scale
    spread = spread if spread > 0 else scale
    sig = int(np.clip(math.ceil(math.log10(scale / spread)) + 5, 6, 17))
    return np.array([float(f"{v:.{sig}g}") for v in c])
