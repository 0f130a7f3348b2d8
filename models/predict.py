"""Turn scored readings into predictions: batched RUL inference, health and status."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np

from alerting.rules import Thresholds
from models.equipment_state import Scored
from models.rul import RulModel, health_score
from models.schemas import Prediction

NO_MODEL = ("none", "none")


def status_for(rul_hours: float | None, health: float, th: Thresholds) -> str:
    """``critical``, ``warning`` or ``ok`` from the same thresholds the alert rules use.

    >>> status_for(20.0, 0.9, Thresholds()), status_for(None, 0.6, Thresholds())
    ('critical', 'warning')
    >>> status_for(100.0, 0.95, Thresholds())
    'ok'
    """
    if (rul_hours is not None and rul_hours < th.rul_critical_hours) or (
        health < th.health_critical
    ):
        return "critical"
    if (rul_hours is not None and rul_hours < th.rul_warning_hours) or health < th.health_warning:
        return "warning"
    return "ok"


def predict_batch(
    items: Sequence[Scored],
    model_for: Callable[[str], RulModel | None],
    thresholds: Thresholds,
    anomaly_weight: float = 0.3,
) -> list[Prediction]:
    """Predictions for every item that has features, one ONNX call per equipment type.

    Equipment without a model still gets a prediction: RUL unknown, health from the anomaly
    score alone. So does equipment whose window still lacks a sensor the model needs (never
    reported), or whose features do not have the model's width: a RUL from made-up inputs
    would be a confident lie. ``imputed_sensors`` says how many of the model's sensors the
    reading lacked."""
    by_type: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(items):
        if s.features is not None:
            by_type[s.reading.equipment_type].append(i)
    out: dict[int, Prediction] = {}
    for etype, idx in by_type.items():
        model = model_for(etype)
        width = None if model is None else len(model.meta.feature_names)
        usable = [i for i in idx if model is not None and _usable(items[i], width)]
        for i in set(idx).difference(usable):
            out[i] = _build(items[i], None, None, None, None, anomaly_weight, thresholds)
        if model is None or not usable:
            continue
        idx = usable
        rows = [items[i].features for i in idx]
        rul, lower, upper = model.predict(np.stack(rows))  # type: ignore[arg-type]
        for j, i in enumerate(idx):
            out[i] = _build(
                items[i], model, float(rul[j]), float(lower[j]), float(upper[j]),
                anomaly_weight, thresholds,
            )  # fmt: skip
    return [out[i] for i in sorted(out)]


def _usable(s: Scored, width: int | None) -> bool:
    f = s.features
    return s.complete and f is not None and f.shape == (width,) and bool(np.isfinite(f).all())


def _build(
    s: Scored,
    model: RulModel | None,
    rul: float | None,
    lower: float | None,
    upper: float | None,
    anomaly_weight: float,
    th: Thresholds,
) -> Prediction:
    r = s.reading
    if model is None or rul is None:
        rul_hours, unit, fraction, name, version = None, "", 1.0, *NO_MODEL
    else:
        meta = model.meta
        to_hours = 1.0 if meta.rul_unit == "hours" else meta.hours_per_reading
        rul_hours, unit, fraction = rul * to_hours, meta.rul_unit, rul / meta.rul_cap
        name, version = meta.model_name, model.version
    health = health_score(fraction, s.anomaly_level, anomaly_weight)
    return Prediction(
        equipment_id=r.equipment_id,
        equipment_type=r.equipment_type,
        ts_ms=r.ts_ms,
        rul=rul,
        rul_unit=unit,
        rul_hours=rul_hours,
        rul_lower=lower,
        rul_upper=upper,
        health=health,
        anomaly_score=s.anomaly_score,
        status=status_for(rul_hours, health, th),
        model_name=name,
        model_version=version,
        top_sensors=s.top_sensors,
        imputed_sensors=s.imputed,
        sensor_evidence=s.sensor_evidence,
    )
