"""Alert rules: turn a stream of predictions for one equipment into alert transitions.

Pure and deterministic: no I/O, no wall clock (all times are the predictions' event
time), and the per-equipment :class:`AlertState` is a small picklable object that the
flow keeps next to its other per-equipment state.

Three rules, each tracked per (equipment, rule):

* ``rul_low``: predicted remaining useful life in hours (lower is worse); skipped when the
  prediction has no ``rul_hours``.
* ``health_low``: health in [0, 1] (lower is worse).
* ``anomaly_high``: anomaly score in [0, 1] (higher is worse); counts only after
  ``anomaly_min_consecutive`` consecutive scores above the warning threshold.

The state machine of one rule, and what each transition emits:

* idle → warning/critical: ``firing`` (starts an episode).
* warning → critical: ``escalated``.
* critical → warning band: nothing; the episode keeps its highest severity.
* active → clear (the value is past the *warning* threshold by the hysteresis margin,
  e.g. RUL ≥ 72 h × 1.1): ``resolved``, with the episode's severity.
* the same severity sustained: nothing.

Cooldown: an episode that starts within ``cooldown_s`` (event time) of the rule's last
emitted ``resolved`` at *warning* level is tracked but not announced. Cooldown delays the
announcement, it does not drop it: if the episode is still active when the cooldown ends,
its ``firing`` goes out then. Critical always goes out at once: an episode that starts at
critical, or a suppressed episode that reaches critical, emits ``firing`` at critical (not
``escalated``, since nobody heard of the episode yet). A suppressed episode that clears
before it was announced ends silently and does not restart the cooldown.

So every episode that consumers see reads ``firing [escalated] [resolved]``, with
``escalated`` only after a warning-level ``firing``, and ``resolved`` carrying the
highest severity announced.

Resolve dwell (against flapping): an active ``rul_low`` or ``health_low`` episode (judged on
model predictions that wobble) resolves only once its value has stayed
clear for ``resolve_dwell_s`` of event time (from the first clear prediction to the one
that resolves); a value back beyond the clear level restarts the dwell. So a noisy
prediction that wobbles around the threshold keeps one episode open instead of firing and
resolving again and again. Firing and escalation are never delayed: criticals go out at
once. ``anomaly_high`` has its own damping (``anomaly_min_consecutive`` and the cooldown)
and resolves at the first clear score.

A NaN value neither fires, escalates nor resolves a rule.

Every alert carries evidence (``Alert.evidence``): the prediction's RUL, band, health,
anomaly score and model, the sensors furthest from this machine's own baseline (value,
baseline, z) and the RUL trend over the last ``RUL_HISTORY`` predictions with its slope.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from models.schemas import Alert, Prediction, ms_to_iso

WARNING = "warning"
CRITICAL = "critical"

FIRING = "firing"
ESCALATED = "escalated"
RESOLVED = "resolved"

RUL_LOW = "rul_low"
HEALTH_LOW = "health_low"
ANOMALY_HIGH = "anomaly_high"
RULES = (RUL_LOW, HEALTH_LOW, ANOMALY_HIGH)

_RANK = {None: 0, WARNING: 1, CRITICAL: 2}
RUL_HISTORY = 5  # predictions of RUL kept per equipment for the evidence's trend


@dataclass(frozen=True)
class Thresholds:
    """Alert thresholds and damping settings (one frozen object, passed explicitly).

    ``hysteresis`` is a fraction of the warning threshold: an active rule clears only once
    the value is that much past it (RUL ≥ 72 h × 1.1, health ≥ 0.7 × 1.1, anomaly score
    ≤ 0.9 × 0.9). ``cooldown_s`` is in event-time seconds.

    >>> Thresholds().rul_critical_hours
    24.0
    >>> Thresholds(health_warning=0.3, health_critical=0.4)
    Traceback (most recent call last):
    ...
    ValueError: health_critical (0.4) must be below health_warning (0.3)
    """

    rul_warning_hours: float = 72.0
    rul_critical_hours: float = 24.0
    health_warning: float = 0.7
    health_critical: float = 0.4
    anomaly_warning: float = 0.9999
    anomaly_critical: float = 0.99999
    hysteresis: float = 0.1
    cooldown_s: float = 21600.0
    anomaly_min_consecutive: int = 1
    use_rul_lower_bound: bool = False
    resolve_dwell_s: float = 21600.0

    def __post_init__(self) -> None:
        pairs = (
            ("rul_critical_hours", "rul_warning_hours"),
            ("health_critical", "health_warning"),
            ("anomaly_warning", "anomaly_critical"),
        )
        for low, high in pairs:
            if not getattr(self, low) < getattr(self, high):
                raise ValueError(
                    f"{low} ({getattr(self, low)}) must be below {high} ({getattr(self, high)})"
                )
        if not 0.0 <= self.hysteresis < 1.0:
            raise ValueError(f"hysteresis must be in [0, 1), got {self.hysteresis}")
        if not self.cooldown_s >= 0.0:
            raise ValueError(f"cooldown_s must be >= 0, got {self.cooldown_s}")
        if self.anomaly_min_consecutive < 1:
            raise ValueError(
                f"anomaly_min_consecutive must be >= 1, got {self.anomaly_min_consecutive}"
            )
        if not self.resolve_dwell_s >= 0.0:
            raise ValueError(f"resolve_dwell_s must be >= 0, got {self.resolve_dwell_s}")


@dataclass(slots=True)
class RuleState:
    """State of one rule for one equipment.

    ``severity`` is the highest severity of the active episode (``None`` when idle);
    ``announced`` tells whether that episode's ``firing`` went out (False while held back
    by the cooldown); ``consecutive`` counts successive values beyond the warning
    threshold (used by ``anomaly_high``); ``clear_since_ts_ms`` is when the values of an
    active episode became clear (it resolves once they stayed so for ``resolve_dwell_s``).
    """

    severity: str | None = None
    episode_start_ts_ms: int | None = None
    announced: bool = False
    last_resolved_ts_ms: int | None = None
    consecutive: int = 0
    clear_since_ts_ms: int | None = None

    def __setstate__(self, state: Any) -> None:
        _set_slots(self, state, {"clear_since_ts_ms": None})


@dataclass(slots=True)
class AlertState:
    """Alert state of one equipment: one :class:`RuleState` per rule, made on first use.

    >>> s = AlertState()
    >>> s.active()
    {}
    >>> import pickle
    >>> pickle.loads(pickle.dumps(s)) == s
    True
    """

    rules: dict[str, RuleState] = field(default_factory=dict)
    # the last RUL_HISTORY (event time ms, RUL hours, lower h, upper h), oldest first
    rul_history: list[tuple[int, float, float | None, float | None]] = field(default_factory=list)

    def __setstate__(self, state: Any) -> None:
        _set_slots(self, state, {"rul_history": []})

    def remember_rul(self, p: Prediction) -> None:
        """Keep ``p``'s RUL (in hours, with its band) in the bounded history."""
        hours = p.rul_hours
        if hours is None or not math.isfinite(hours):
            return
        self.rul_history.append(
            (p.ts_ms, hours, _band_hours(p, p.rul_lower), _band_hours(p, p.rul_upper))
        )
        del self.rul_history[:-RUL_HISTORY]

    def rule(self, name: str) -> RuleState:
        """The state of rule ``name``, created idle if absent."""
        st = self.rules.get(name)
        if st is None:
            st = self.rules[name] = RuleState()
        return st

    def active(self) -> dict[str, str]:
        """Rules with an active episode, mapped to its severity (announced or not)."""
        return {k: v.severity for k, v in self.rules.items() if v.severity is not None}


def alert_id(
    equipment_id: str, rule: str, episode_start_ts_ms: int, state: str, severity: str
) -> str:
    """Deterministic id of one transition: replaying the same predictions gives the same ids.

    >>> alert_id("turbofan-0007", "rul_low", 1_700_000_000_000, "firing", "critical")
    '02c694c36acedb9c'
    """
    key = f"{equipment_id}|{rule}|{episode_start_ts_ms}|{state}|{severity}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def rul_value_hours(prediction: Prediction, use_lower_bound: bool = False) -> float | None:
    """The RUL in hours the ``rul_low`` rule judges; ``None`` when there is no RUL.

    With ``use_lower_bound``, the lower end of the uncertainty band is used when present.
    ``rul_lower`` is in the prediction's ``rul_unit`` and is converted to hours with the
    same factor as ``rul`` → ``rul_hours``.

    >>> p = _example(rul=40.0, rul_unit="cycles", rul_hours=80.0, rul_lower=30.0)
    >>> rul_value_hours(p), rul_value_hours(p, use_lower_bound=True)
    (80.0, 60.0)
    """
    hours = prediction.rul_hours
    if hours is None or not use_lower_bound or prediction.rul_lower is None:
        return hours
    if prediction.rul_unit == "hours":
        return prediction.rul_lower
    if prediction.rul:
        return prediction.rul_lower * (hours / prediction.rul)
    return hours


def evaluate(state: AlertState, prediction: Prediction, thresholds: Thresholds) -> list[Alert]:
    """Update ``state`` with one prediction and return the alerts to emit (often none).

    >>> th = Thresholds()
    >>> st = AlertState()
    >>> [(a.rule, a.state, a.severity) for a in evaluate(st, _example(health=0.3), th)]
    [('health_low', 'firing', 'critical')]
    >>> evaluate(st, _example(health=0.35, ts_ms=60_000), th)  # sustained: nothing new
    []
    >>> evaluate(st, _example(health=0.9, ts_ms=120_000), th)  # clear: the dwell begins
    []
    >>> a = evaluate(st, _example(health=0.9, ts_ms=120_000 + 6 * 3_600_000), th)[0]
    >>> a.state, a.severity, a.threshold
    ('resolved', 'critical', 0.77)
    >>> a.message
    'turbofan-0007: health 0.900 is back above 0.77 (warning threshold 0.7 + 10% hysteresis)'
    """
    alerts: list[Alert] = []
    state.remember_rul(prediction)
    for spec in _SPECS:
        value = spec.value(prediction, thresholds)
        if value is None:
            continue
        alert = _step(state.rule(spec.name), spec, value, prediction, thresholds)
        if alert is not None:
            alerts.append(replace(alert, evidence={**alert.evidence, **_trend(state)}))
    return alerts


def _set_slots(obj: Any, state: Any, defaults: dict[str, Any]) -> None:
    """Unpickle a slotted object, giving slots added since it was pickled their default."""
    values = dict(defaults)
    if isinstance(state, tuple):  # (dict or None, slots dict): the default for slots
        for part in state:
            values.update(part or {})
    else:
        values.update(state or {})
    for name, value in values.items():
        object.__setattr__(obj, name, copy.copy(value))


def _band_hours(p: Prediction, x: float | None) -> float | None:
    """A RUL band end, from the prediction's unit to hours (the factor of rul → rul_hours)."""
    if x is None or p.rul_hours is None or not math.isfinite(x):
        return None
    if p.rul_unit == "hours":
        return x
    return x * (p.rul_hours / p.rul) if p.rul else None


def _trend(state: AlertState) -> dict[str, Any]:
    """The RUL trend of the evidence: the last predictions and the least-squares slope of
    RUL hours against event time (h per h; about -1 for a machine wearing as predicted)."""
    hist = state.rul_history
    if not hist:
        return {}
    t0 = hist[0][0]
    xs = [(ts - t0) / 3_600_000.0 for ts, *_ in hist]
    ys = [h for _, h, _, _ in hist]
    slope = None
    if len(hist) > 1:
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        sxx = sum((x - mx) ** 2 for x in xs)
        if sxx > 0:
            slope = _r(sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx)
    trend = [
        {"ts": ms_to_iso(ts), "rul_hours": _r(h), "lower_hours": _r(lo), "upper_hours": _r(hi)}
        for ts, h, lo, hi in hist
    ]
    return {"rul_trend": trend, "rul_slope_h_per_h": slope}


# --- rule specifications -------------------------------------------------------------------


@dataclass(frozen=True)
class _RuleSpec:
    name: str
    lower_is_worse: bool
    value: Callable[[Prediction, Thresholds], float | None]
    warning: Callable[[Thresholds], float]
    critical: Callable[[Thresholds], float]
    min_consecutive: Callable[[Thresholds], int]
    describe: Callable[[Prediction, Thresholds, float], str]
    dwells: bool = False  # resolves only after resolve_dwell_s clear (rul_low, health_low)

    def beyond(self, value: float, threshold: float) -> bool:
        """True when ``value`` is on the bad side of ``threshold`` (strictly)."""
        return value < threshold if self.lower_is_worse else value > threshold

    def clear_level(self, th: Thresholds) -> float:
        w = self.warning(th)
        level = w * (1.0 + th.hysteresis) if self.lower_is_worse else w * (1.0 - th.hysteresis)
        return round(level, 10)

    def is_clear(self, value: float, th: Thresholds) -> bool:
        level = self.clear_level(th)
        return value >= level if self.lower_is_worse else value <= level


def _rul_describe(p: Prediction, th: Thresholds, value: float) -> str:
    bound = th.use_rul_lower_bound and p.rul_lower is not None
    return f"predicted RUL{' lower bound' if bound else ''} {value:.1f} h"


_SPECS = (
    _RuleSpec(
        name=RUL_LOW,
        lower_is_worse=True,
        value=lambda p, th: rul_value_hours(p, th.use_rul_lower_bound),
        warning=lambda th: th.rul_warning_hours,
        critical=lambda th: th.rul_critical_hours,
        min_consecutive=lambda th: 1,
        describe=_rul_describe,
        dwells=True,
    ),
    _RuleSpec(
        name=HEALTH_LOW,
        lower_is_worse=True,
        value=lambda p, th: p.health,
        warning=lambda th: th.health_warning,
        critical=lambda th: th.health_critical,
        min_consecutive=lambda th: 1,
        describe=lambda p, th, v: f"health {v:.3f}",
        dwells=True,
    ),
    _RuleSpec(
        name=ANOMALY_HIGH,
        lower_is_worse=False,
        value=lambda p, th: p.anomaly_score,
        warning=lambda th: th.anomaly_warning,
        critical=lambda th: th.anomaly_critical,
        min_consecutive=lambda th: th.anomaly_min_consecutive,
        describe=lambda p, th, v: f"anomaly score {v:.3f}",
    ),
)
_UNITS = {RUL_LOW: " h"}


# --- the state machine ---------------------------------------------------------------------


def _step(
    st: RuleState, spec: _RuleSpec, value: float, p: Prediction, th: Thresholds
) -> Alert | None:
    if math.isnan(value):
        st.consecutive = 0
        return None
    warning, critical = spec.warning(th), spec.critical(th)
    st.consecutive = st.consecutive + 1 if spec.beyond(value, warning) else 0
    level: str | None = None
    if st.consecutive >= spec.min_consecutive(th):
        level = CRITICAL if spec.beyond(value, critical) else WARNING

    if st.severity is None:  # idle
        if level is None:
            return None
        st.severity, st.episode_start_ts_ms = level, p.ts_ms
        st.announced = level == CRITICAL or not _in_cooldown(st, p.ts_ms, th)
        return _alert(st, spec, FIRING, value, p, th) if st.announced else None

    if not spec.is_clear(value, th):
        st.clear_since_ts_ms = None
    else:
        if st.clear_since_ts_ms is None:
            st.clear_since_ts_ms = p.ts_ms
        if spec.dwells and p.ts_ms - st.clear_since_ts_ms < th.resolve_dwell_s * 1000.0:
            return None  # clear, but not for long enough yet (dwell against flapping)
        st.clear_since_ts_ms = None
        alert = _alert(st, spec, RESOLVED, value, p, th) if st.announced else None
        if st.announced:
            st.last_resolved_ts_ms = p.ts_ms
        st.severity, st.episode_start_ts_ms, st.announced = None, None, False
        return alert

    if _RANK[level] > _RANK[st.severity]:  # warning -> critical
        st.severity = CRITICAL
        kind = ESCALATED if st.announced else FIRING
        st.announced = True
        return _alert(st, spec, kind, value, p, th)

    if not st.announced and level is not None and not _in_cooldown(st, p.ts_ms, th):
        # held back by the cooldown until now, and still beyond the warning threshold
        st.announced = True
        return _alert(st, spec, FIRING, value, p, th)
    return None


def _in_cooldown(st: RuleState, ts_ms: int, th: Thresholds) -> bool:
    last = st.last_resolved_ts_ms
    return last is not None and ts_ms - last < th.cooldown_s * 1000.0


def _alert(
    st: RuleState,
    spec: _RuleSpec,
    kind: str,
    value: float,
    p: Prediction,
    th: Thresholds,
) -> Alert:
    severity = st.severity
    assert severity is not None and st.episode_start_ts_ms is not None
    unit = _UNITS.get(spec.name, "")
    what = f"{p.equipment_id}: {spec.describe(p, th, value)}"
    if kind == RESOLVED:
        threshold = spec.clear_level(th)
        side = "above" if spec.lower_is_worse else "below"
        message = (
            f"{what} is back {side} {threshold:g}{unit} (warning threshold "
            f"{spec.warning(th):g}{unit} + {th.hysteresis:.0%} hysteresis)"
        )
    else:
        threshold = spec.critical(th) if severity == CRITICAL else spec.warning(th)
        side = "below" if spec.lower_is_worse else "above"
        message = f"{what} is {side} the {severity} threshold {threshold:g}{unit}"
        if spec.min_consecutive(th) > 1:
            message += f" ({st.consecutive} consecutive predictions)"
    return Alert(
        alert_id=alert_id(p.equipment_id, spec.name, st.episode_start_ts_ms, kind, severity),
        equipment_id=p.equipment_id,
        ts_ms=p.ts_ms,
        rule=spec.name,
        severity=severity,
        state=kind,
        value=value,
        threshold=threshold,
        message=message,
        evidence=_evidence(p, st),
    )


def _evidence(p: Prediction, st: RuleState) -> dict[str, Any]:
    return {
        "rul": _r(p.rul),
        "rul_unit": p.rul_unit,
        "rul_hours": _r(p.rul_hours),
        "rul_lower": _r(p.rul_lower),
        "rul_upper": _r(p.rul_upper),
        "health": _r(p.health, 4),
        "anomaly_score": _r(p.anomaly_score, 4),
        "model_name": p.model_name,
        "model_version": p.model_version,
        "top_sensors": list(p.top_sensors),
        "sensors": p.sensor_evidence_dicts(),
        "episode_start_ts_ms": st.episode_start_ts_ms,
    }


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None or math.isnan(x) else round(x, nd)


def _example(**kw: Any) -> Prediction:
    """A healthy prediction with some fields replaced (for the doctests)."""
    base: dict[str, Any] = {
        "equipment_id": "turbofan-0007",
        "equipment_type": "turbofan_engine",
        "ts_ms": 0,
        "rul": 200.0,
        "rul_unit": "cycles",
        "rul_hours": 400.0,
        "rul_lower": None,
        "rul_upper": None,
        "health": 0.95,
        "anomaly_score": 0.1,
        "status": "ok",
        "model_name": "rul_gbr",
        "model_version": "3",
        "top_sensors": ("T24", "T50"),
    }
    base.update(kw)
    return Prediction(**base)
