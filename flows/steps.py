"""Bytewax glue for the flow's stateful steps: per-equipment logic objects that hold the
pure state from ``models``/``alerting`` and snapshot it as pickled bytes (cheap, unlike
Bytewax's deep copy), and the per-process runtime (settings, model holder)."""

from __future__ import annotations

import json
import logging
import pickle
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from bytewax.operators import StatefulBatchLogic

from alerting.rules import AlertState, Thresholds, evaluate
from connectors import metrics
from connectors.maintenance import RepairCache
from connectors.model_holder import ModelHolder
from connectors.settings import Settings
from models.anomaly import AnomalyDetector
from models.equipment import EQUIPMENT_TYPES
from models.equipment_state import EquipmentState, Rejected, Scored
from models.features import FeatureConfig
from models.logsafe import safe_for_log
from models.predict import predict_batch
from models.rul import RulModel, check_features
from models.schemas import Alert, DeadLetter, Origin, Prediction, Reading, ms_to_iso

NO_MODEL = "none"
log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """What the steps of one process share: settings, thresholds and the model holder."""

    settings: Settings
    thresholds: Thresholds
    holder: ModelHolder | None
    _drift_refs: dict[tuple[str, str], Any] = field(default_factory=dict)
    active_equipment: int = 0  # machines with state in this process (all workers)
    _rewarmed: dict[str, int] = field(default_factory=dict)
    repairs: RepairCache | None = None  # maintenance_events, when there is a database

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        a = settings.alerts
        thresholds = Thresholds(**a.model_dump())
        holder = None
        if settings.model.lower() != NO_MODEL:
            f = settings.features
            configs_in_use: dict[str, Any] = {}

            def check(bundle: Any) -> None:
                for etype, model in bundle.models.items():
                    check_features(
                        model.meta, f.windows, f.fft_enabled, f.fft_bands, f.operating_history
                    )
                    known = configs_in_use.get(etype)
                    if known is not None and known != model.meta.feature_config:
                        raise ValueError(
                            f"new model for {etype} needs another feature layout (sensors, "
                            "windows or condition normaliser) than the running flow keeps in "
                            "its per-equipment state; restart the flow to switch to it"
                        )

            def on_swap(bundle: Any) -> None:
                metrics.MODEL_INFO.clear()
                for etype, model in bundle.models.items():
                    configs_in_use.setdefault(etype, model.meta.feature_config)
                    metrics.MODEL_INFO.labels(etype, model.meta.model_name, bundle.version).set(1)

            holder = ModelHolder(
                settings.model,
                settings.mlflow_tracking_uri,
                settings.update_interval_seconds,
                check=check,
                on_swap=on_swap,
                on_reload=lambda result: metrics.MODEL_RELOADS.labels(result).inc(),
            )
        repairs = None
        if settings.database_url is not None:
            dsn = settings.database_url.get_secret_value()
            repairs = RepairCache.from_dsn(dsn, settings.maintenance_refresh_s)
        return cls(settings, thresholds, holder, repairs=repairs)

    def drift_reference(self, equipment_type: str) -> tuple[str, Any] | None:
        """(model version, DriftReference) of this type's model, parsed once per version."""
        model = self.model_for(equipment_type)
        text = getattr(model.meta, "drift_reference", "") if model is not None else ""
        if not text or model is None:
            return None
        key = (equipment_type, model.version)
        if key not in self._drift_refs:
            from models.drift import DriftReference

            self._drift_refs[key] = DriftReference.from_json(text)
        return model.version, self._drift_refs[key]

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
            hst_weight=a.hst_weight,
            seed=a.seed,
        )
        return EquipmentState(
            self.feature_config(reading),
            detector,
            lateness_ms=round(self.settings.allowed_lateness_s * 1000),
            predict_every=self.settings.predict_every,
        )

    def rewarm_reason(self, state: EquipmentState, reading: Reading) -> str | None:
        """Why a state resumed from recovery cannot go on with the running model and
        settings (another feature layout), or None when it can."""
        want = self.feature_config(reading)
        if state.config == want:
            return None
        old, new = state.config, want
        return (
            f"stored state has {len(old.sensors)} sensors, windows {old.windows}, "
            f"normaliser {'yes' if old.conditions else 'no'}; the model/settings now need "
            f"{len(new.sensors)} sensors, windows {new.windows}, "
            f"normaliser {'yes' if new.conditions else 'no'}"
        )

    def note_rewarm(self, equipment_type: str, reason: str) -> None:
        """Log a re-warm: the first per type with the reason, then every 1,000th."""
        n = self._rewarmed.get(equipment_type, 0) + 1
        self._rewarmed[equipment_type] = n
        metrics.STATE_REWARMS.labels(metrics.type_label(equipment_type)).inc()
        if n == 1 or n % 1000 == 0:
            log.warning(
                "re-warming %d %s machine(s) resumed from recovery: %s; their windows and "
                "detectors start afresh", n, safe_for_log(equipment_type), reason,
            )  # fmt: skip


class EquipmentLogic(StatefulBatchLogic[Reading, Scored | DeadLetter, bytes]):
    """Window, dedup and anomaly-score one equipment's readings; forget it when idle.

    A state resumed from recovery whose feature layout no longer matches the running model
    (a new model, other windows) is rebuilt, with a log line, rather than fed wrong
    features. Past ``max_equipment_per_process`` machines, a new id's readings are
    dead-lettered (state stays bounded under a flood of invented ids).

    Re-baselining: with a database, the recorded repairs (``maintenance_events``, re-read
    every ``maintenance_refresh_s``) are checked per reading; the first reading at or after
    a repair of a machine whose state holds readings from before it rebuilds the state (a
    log line): the window, the detector's warm-up and baselines, the anomaly level and the
    operating history (the model's age feature) start afresh, as for a new machine."""

    def __init__(self, runtime: Runtime, state: EquipmentState | None) -> None:
        self.runtime = runtime
        self.state = state
        self.idle_s = runtime.settings.idle_expiry_s
        self.last_active = time.time()
        self._resumed = state is not None
        self._admitted = False

    def on_batch(self, values: list[Reading]) -> tuple[list[Scored | DeadLetter], bool]:
        rt = self.runtime
        if not self._admitted:
            limit = rt.settings.limits.max_equipment_per_process
            if self.state is None and rt.active_equipment >= limit:
                reason = (
                    f"equipment limit reached: {rt.active_equipment} machines have state in "
                    f"this process (limits.max_equipment_per_process = {limit})"
                )
                metrics.DEAD_LETTERS.labels("equipment_limit").inc(len(values))
                return [_state_letter(r, reason) for r in values], StatefulBatchLogic.DISCARD
            self._admitted = True
            rt.active_equipment += 1
            metrics.EQUIPMENT_ACTIVE.inc()
        if self.state is not None and self._resumed:
            self._resumed = False
            why = rt.rewarm_reason(self.state, values[0])
            if why is not None:
                rt.note_rewarm(values[0].equipment_type, why)
                self.state = None
        if self.state is None:
            self.state = rt.new_equipment_state(values[0])
        out: list[Scored | DeadLetter] = []
        repairs = rt.repairs
        if repairs is not None:
            repairs.refresh()
        for reading in values:
            if repairs is not None:
                self._rebaseline(reading, repairs)
            result = self.state.ingest(reading)
            if isinstance(result, Rejected):
                metrics.DEAD_LETTERS.labels(result.kind).inc()
                if result.kind != "duplicate":
                    out.append(_state_letter(reading, result.reason))
                continue
            if result.imputed:
                metrics.IMPUTED_SENSORS.labels(metrics.type_label(reading.equipment_type)).inc(
                    result.imputed
                )
            out.append(result)
        self.last_active = time.time()
        return out, StatefulBatchLogic.RETAIN

    def _rebaseline(self, reading: Reading, repairs: RepairCache) -> None:
        last = repairs.last_repair(reading.equipment_id, reading.ts_ms)
        st = self.state
        if last is None or st is None or st.since_ms is None or st.since_ms >= last:
            return
        log.info("re-baselining %s after its repair recorded at %s: window, detector "
                 "warm-up and operating history start afresh", safe_for_log(reading.equipment_id),
                 ms_to_iso(last))  # fmt: skip
        metrics.STATE_REWARMS.labels(metrics.type_label(reading.equipment_type)).inc()
        self.state = self.runtime.new_equipment_state(reading)

    def notify_at(self) -> datetime:
        return datetime.fromtimestamp(self.last_active + self.idle_s, tz=UTC)

    def on_notify(self) -> tuple[list[Any], bool]:
        if self._admitted:
            self.runtime.active_equipment -= 1
            metrics.EQUIPMENT_ACTIVE.dec()
        return [], StatefulBatchLogic.DISCARD

    def snapshot(self) -> bytes:
        return pickle.dumps(self.state, protocol=pickle.HIGHEST_PROTOCOL)


def _state_letter(r: Reading, reason: str) -> DeadLetter:
    """A reading the state step refused (late, type changed, over the limit)."""
    return DeadLetter(
        reason=reason,
        payload=json.dumps(r.to_json_dict()),  # the reading as it arrived, re-encoded
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
        label = metrics.type_label(p.equipment_type)
        metrics.PREDICTIONS.labels(label, p.status).inc()
        metrics.ANOMALY_SCORE.labels(label).observe(p.anomaly_score)
        metrics.EVENT_LAG.observe(max(0.0, now - p.ts_ms / 1000.0))
    return [(p.equipment_id, p) for p in preds]


class DriftLogic(StatefulBatchLogic[tuple[str, int, Any], Any, bytes]):
    """Feature drift of one equipment type against its model's training reference."""

    def __init__(self, runtime: Runtime, tracker: Any) -> None:
        self.runtime = runtime
        self.tracker = tracker

    def on_batch(self, values: list[tuple[str, int, Any]]) -> tuple[list[Any], bool]:
        from models.drift import DriftConfig, DriftTracker

        self.equipment_type = values[0][0]
        ref = self.runtime.drift_reference(self.equipment_type)
        if ref is None:
            return [], StatefulBatchLogic.RETAIN
        version, reference = ref
        if self.tracker is None:
            d = self.runtime.settings.drift
            config = DriftConfig(
                half_life=d.half_life,
                every_ms=round(d.every_s * 1000),
                warning=d.warning,
                min_count=d.min_count,
            )
            self.tracker = DriftTracker(self.equipment_type, version, reference, config)
        else:
            self.tracker.set_model(version, reference)
        ts = np.array([t for _, t, _ in values], dtype=np.int64)
        evaluations = self.tracker.ingest(ts, np.stack([f for _, _, f in values]))
        out: list[Any] = []
        for ev in evaluations:
            metrics.record_drift(ev.equipment_type, ev.max_psi, ev.top(10), ev.count)
            out.append(ev)
            out.extend(ev.alerts)
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        return pickle.dumps(self.tracker, protocol=pickle.HIGHEST_PROTOCOL)


def drift_sample(runtime: Runtime, kv: tuple[str, Scored]) -> tuple[str, tuple] | None:
    """The drift step's input, keyed by equipment type, for 1 reading in N."""
    s = kv[1]
    if s.features is None or runtime.model_for(s.reading.equipment_type) is None:
        return None
    n = runtime.settings.drift.sample_every
    if n > 1 and (s.reading.ts_ms // 1000) % n:
        return None
    etype = s.reading.equipment_type
    return etype, (etype, s.reading.ts_ms, s.features)
