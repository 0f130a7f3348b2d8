"""Bytewax glue for the flow's stateful steps: per-equipment logic objects that hold the
pure state from ``models``/``alerting`` and snapshot it as pickled bytes (cheap, unlike
Bytewax's deep copy), and the per-process runtime (settings, model holder)."""

from __future__ import annotations

import pickle
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bytewax.operators import StatefulBatchLogic

from alerting.rules import AlertState, Thresholds, evaluate
from connectors import metrics
from connectors.model_holder import ModelHolder
from connectors.settings import Settings
from models.anomaly import AnomalyDetector
from models.equipment import EQUIPMENT_TYPES
from models.equipment_state import EquipmentState, Rejected, Scored
from models.features import FeatureConfig
from models.predict import predict_batch
from models.rul import RulModel, check_features
from models.schemas import Alert, DeadLetter, Origin, Prediction, Reading

NO_MODEL = "none"


@dataclass
class Runtime:
    """What the steps of one process share: settings, thresholds and the model holder."""

    settings: Settings
    thresholds: Thresholds
    holder: ModelHolder | None

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        a = settings.alerts
        thresholds = Thresholds(**a.model_dump())
        holder = None
        if settings.model.lower() != NO_MODEL:
            f = settings.features
            sensors_in_use: dict[str, tuple[str, ...]] = {}

            def check(bundle: Any) -> None:
                for etype, model in bundle.models.items():
                    check_features(model.meta, f.windows, f.fft_enabled, f.fft_bands)
                    known = sensors_in_use.get(etype)
                    if known is not None and known != model.meta.sensors:
                        raise ValueError(
                            f"new model for {etype} uses sensors {model.meta.sensors}, the "
                            f"running flow windows {known}; restart the flow to change sensors"
                        )

            def on_swap(bundle: Any) -> None:
                metrics.MODEL_INFO.clear()
                for etype, model in bundle.models.items():
                    sensors_in_use.setdefault(etype, model.meta.sensors)
                    metrics.MODEL_INFO.labels(etype, model.meta.model_name, bundle.version).set(1)

            holder = ModelHolder(
                settings.model,
                settings.mlflow_tracking_uri,
                settings.update_interval_seconds,
                check=check,
                on_swap=on_swap,
                on_reload=lambda result: metrics.MODEL_RELOADS.labels(result).inc(),
            )
        return cls(settings, thresholds, holder)

    def model_for(self, equipment_type: str) -> RulModel | None:
        return None if self.holder is None else self.holder.current().for_type(equipment_type)

    def feature_config(self, reading: Reading) -> FeatureConfig:
        """The model's feature layout for this type, else the catalog's, else the sensors
        of the first reading seen."""
        f = self.settings.features
        model = self.model_for(reading.equipment_type)
        if model is not None:
            return model.meta.feature_config
        known = EQUIPMENT_TYPES.get(reading.equipment_type)
        sensors = known.sensors if known else tuple(sorted(reading.sensors))
        vib = tuple(s for s in sensors if known and s in known.vibration_sensors)
        return FeatureConfig(sensors, f.windows, vib if f.fft_enabled else (), f.fft_bands)

    def new_equipment_state(self, reading: Reading) -> EquipmentState:
        a = self.settings.anomaly
        detector = AnomalyDetector(
            n_trees=a.n_trees,
            height=a.height,
            window_size=a.window_size,
            warmup=a.warmup,
            calibration_size=a.calibration_size,
            seed=a.seed,
        )
        return EquipmentState(
            self.feature_config(reading),
            detector,
            lateness_ms=round(self.settings.allowed_lateness_s * 1000),
            predict_every=self.settings.predict_every,
        )


class EquipmentLogic(StatefulBatchLogic[Reading, Scored | DeadLetter, bytes]):
    """Window, dedup and anomaly-score one equipment's readings; forget it when idle."""

    def __init__(self, runtime: Runtime, state: EquipmentState | None) -> None:
        self.runtime = runtime
        self.state = state
        self.idle_s = runtime.settings.idle_expiry_s
        self.last_active = time.time()
        if state is None:
            metrics.EQUIPMENT_ACTIVE.inc()

    def on_batch(self, values: list[Reading]) -> tuple[list[Scored | DeadLetter], bool]:
        if self.state is None:
            self.state = self.runtime.new_equipment_state(values[0])
        out: list[Scored | DeadLetter] = []
        for reading in values:
            result = self.state.ingest(reading)
            if isinstance(result, Rejected):
                metrics.DEAD_LETTERS.labels(result.kind).inc()
                if result.kind == "late":
                    out.append(_late_letter(result))
                continue
            out.append(result)
        self.last_active = time.time()
        return out, StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime:
        return datetime.fromtimestamp(self.last_active + self.idle_s, tz=UTC)

    def on_notify(self) -> tuple[list[Any], bool]:
        metrics.EQUIPMENT_ACTIVE.dec()
        return [], StatefulBatchLogic.DISCARD

    def snapshot(self) -> bytes:
        return pickle.dumps(self.state, protocol=pickle.HIGHEST_PROTOCOL)


def _late_letter(rejected: Rejected) -> DeadLetter:
    r = rejected.reading
    return DeadLetter(
        reason=rejected.reason,
        payload=str(r.to_json_dict()),
        origin=Origin("equipment_state"),
        equipment_id=r.equipment_id,
        ts_ms=r.ts_ms,
    )


class AlertLogic(StatefulBatchLogic[Prediction, Alert, bytes]):
    """Run the alert rules over one equipment's predictions."""

    def __init__(self, thresholds: Thresholds, state: AlertState | None) -> None:
        self.thresholds = thresholds
        self.state = state or AlertState()

    def on_batch(self, values: list[Prediction]) -> tuple[list[Alert], bool]:
        out: list[Alert] = []
        for p in values:
            out.extend(evaluate(self.state, p, self.thresholds))
        for a in out:
            metrics.ALERTS.labels(a.rule, a.severity, a.state).inc()
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        return pickle.dumps(self.state, protocol=pickle.HIGHEST_PROTOCOL)


def predict_items(
    runtime: Runtime, items: list[tuple[str, Scored]]
) -> list[tuple[str, Prediction]]:
    """The batched inference step: one model version and one ONNX call per type per batch."""
    bundle = None if runtime.holder is None else runtime.holder.current()  # one version per batch
    preds = predict_batch(
        [s for _, s in items],
        (lambda etype: None) if bundle is None else bundle.for_type,
        runtime.thresholds,
        runtime.settings.health_anomaly_weight,
    )
    now = time.time()
    for p in preds:
        metrics.PREDICTIONS.labels(p.equipment_type, p.status).inc()
        metrics.ANOMALY_SCORE.labels(p.equipment_type).observe(p.anomaly_score)
        metrics.EVENT_LAG.observe(max(0.0, now - p.ts_ms / 1000.0))
    return [(p.equipment_id, p) for p in preds]
