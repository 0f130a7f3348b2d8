"""Per-equipment streaming state: the window of recent readings, event-time bookkeeping
(late and duplicate readings) and the anomaly detector. Pure and picklable; the flow keeps
one per equipment id and snapshots it as pickled bytes.

When the feature configuration carries a condition normaliser, each accepted reading's
sensors are normalised by its operating condition (from ``Reading.settings``, a missing
setting keeping its last value) before they enter the window and the anomaly detector;
with ``operating_history`` the state also counts readings per condition. Both are exactly
what :func:`models.features.history_features` computes offline."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from models.anomaly import AnomalyDetector
from models.features import FeatureConfig, RingBuffer, window_features
from models.schemas import Reading, ms_to_iso

RMS_WINDOW = 10  # readings; what the detector sees of a vibration signal
TOP_SENSORS = 3
SensorEvidence = tuple[str, float, float, float]  # name, value, baseline mean, z
ANOMALY_EWMA_ALPHA = 0.1  # smoothing of the anomaly level that health uses


@dataclass(frozen=True, slots=True)
class Scored:
    """A reading after the state step: its features (if due) and anomaly evidence."""

    reading: Reading
    features: np.ndarray | None
    anomaly_score: float
    anomaly_level: float  # EWMA of anomaly_score: what health uses
    top_sensors: tuple[str, ...]
    imputed: int = 0  # model sensors this reading lacked (their last value was carried)
    complete: bool = True  # False while some model sensor has never been seen
    # the top sensors against this machine's baseline: (name, value, baseline mean, z)
    sensor_evidence: tuple[tuple[str, float, float, float], ...] = ()


@dataclass(frozen=True, slots=True)
class Rejected:
    """A reading the state step would not use: ``kind`` is ``late``, ``duplicate`` or
    ``type_changed`` (the id was first seen as another equipment type)."""

    reading: Reading
    kind: str
    reason: str


class EquipmentState:
    """Everything the flow remembers about one equipment.

    >>> from models.features import FeatureConfig
    >>> cfg = FeatureConfig(sensors=("a",), windows=(2, 3))
    >>> st = EquipmentState(cfg, AnomalyDetector(window_size=5, warmup=5), lateness_ms=0)
    >>> out = st.ingest(Reading("e1", "t", 1000, {"a": 1.0}))
    >>> out.features.shape
    (12,)
    >>> st.ingest(Reading("e1", "t", 1000, {"a": 1.0})).kind
    'duplicate'
    >>> st.ingest(Reading("e1", "t", 500, {"a": 1.0})).kind
    'late'
    """

    # class-level defaults keep states pickled before these existed loadable
    _settings: np.ndarray | None = None
    _counts: list[float] | None = None
    equipment_type: str | None = None
    since_ms: int | None = None  # the first accepted reading's event time (re-baselining)

    def __init__(
        self,
        config: FeatureConfig,
        detector: AnomalyDetector,
        *,
        lateness_ms: int,
        predict_every: int = 1,
        dedup_memory: int = 256,
    ) -> None:
        self.config = config
        self.detector = detector
        self.lateness_ms = lateness_ms
        self.predict_every = predict_every
        self.buffer = RingBuffer(config.max_window, len(config.sensors))
        self.max_ts_ms: int | None = None
        self._recent_ts: deque[int] = deque(maxlen=dedup_memory)
        self._recent_set: set[int] = set()
        self._last_row = np.full(len(config.sensors), np.nan)
        self._vib = {s: config.sensors.index(s) for s in config.fft_sensors}
        self.anomaly_level = 0.5
        if config.conditions is not None:
            self._settings = np.full(len(config.conditions.settings), np.nan)
        if config.operating_history:
            self._counts = [0.0] * config.n_conditions

    def ingest(self, reading: Reading) -> Scored | Rejected:
        """Take one reading: reject it if late or a duplicate, else window and score it."""
        ts = reading.ts_ms
        if self.equipment_type is None:
            self.equipment_type = reading.equipment_type
        elif reading.equipment_type != self.equipment_type:
            return Rejected(
                reading,
                "type_changed",
                f"equipment type {reading.equipment_type!r} differs from {self.equipment_type!r}"
                " that this id was first seen as",
            )
        if ts in self._recent_set:
            return Rejected(reading, "duplicate", f"duplicate reading at {ms_to_iso(ts)}")
        if self.max_ts_ms is not None and ts < self.max_ts_ms - self.lateness_ms:
            return Rejected(
                reading,
                "late",
                f"late by {(self.max_ts_ms - ts) / 1000:.0f} s (allowed "
                f"{self.lateness_ms / 1000:.0f} s) behind {ms_to_iso(self.max_ts_ms)}",
            )
        self._remember(ts)
        if self.since_ms is None:
            self.since_ms = ts
        row, imputed = self._window_row(reading)
        self.buffer.append(row)
        score, evidence = self._score(row)
        if self.detector.seen > self.detector.warmup:
            self.anomaly_level += ANOMALY_EWMA_ALPHA * (score - self.anomaly_level)
        due = (self.buffer.count - 1) % self.predict_every == 0
        return Scored(
            reading,
            self.features() if due else None,
            score,
            self.anomaly_level,
            tuple(e[0] for e in evidence),
            imputed=imputed,
            complete=bool(np.all(row == row)),  # NaN: a sensor never seen yet
            sensor_evidence=evidence,
        )

    def window_row(self, reading: Reading) -> np.ndarray:
        """The reading as it enters the window: sensors in feature order (a missing one
        keeps its last value), normalised by its operating condition when the model has a
        normaliser; counts the reading towards its condition's share."""
        return self._window_row(reading)[0]

    def _window_row(self, reading: Reading) -> tuple[np.ndarray, int]:
        """:meth:`window_row`, and how many of the model's sensors the reading lacked."""
        row, missing = self._row(reading.sensors)
        norm = self.config.conditions
        condition = 0
        if norm is not None and self._settings is not None:
            self._settings = norm.settings_vector(reading.settings, self._settings)
            condition = norm.assign_one(self._settings)
            row = norm.normalise_one(row, condition)
        if self._counts is not None:
            self._counts[condition] += 1.0
        return row, missing

    def features(self) -> np.ndarray:
        """The model's input for the current window (plus the operating history:
        :func:`~models.features.operating_features` of the counts, in plain Python)."""
        features = window_features(self.buffer.window(), self.config)
        counts = self._counts
        if counts is None:
            return features
        age = sum(counts)
        history = [age]
        if len(counts) > 1:
            history += [c / max(age, 1.0) for c in counts]
        return np.concatenate([features, history])

    def _remember(self, ts: int) -> None:
        if len(self._recent_ts) == self._recent_ts.maxlen:
            self._recent_set.discard(self._recent_ts[0])
        self._recent_ts.append(ts)
        self._recent_set.add(ts)
        if self.max_ts_ms is None or ts > self.max_ts_ms:
            self.max_ts_ms = ts

    def _row(self, sensors: dict[str, float]) -> tuple[np.ndarray, int]:
        """The reading as a vector in feature order, and how many sensors it lacked; a
        missing sensor keeps its last value (NaN until first seen); extras are ignored."""
        row = self._last_row.copy()
        missing = 0
        for i, name in enumerate(self.config.sensors):
            value = sensors.get(name)
            if value is not None:
                row[i] = value
            else:
                missing += 1
        self._last_row = row
        return row, missing

    def _score(self, row: np.ndarray) -> tuple[float, tuple[SensorEvidence, ...]]:
        x: dict[str, float] = {}
        for i, name in enumerate(self.config.sensors):
            if name in self._vib:
                recent = self.buffer.window()[-RMS_WINDOW:, i]
                recent = recent[recent == recent]  # NaN until the sensor was first seen
                if recent.size:
                    x[name] = float(np.sqrt(np.mean(recent * recent)))
            elif row[i] == row[i]:  # not NaN
                x[name] = float(row[i])
        top = self._top_sensors(x)
        return self.detector.score_learn(x), top

    def _top_sensors(self, x: dict[str, float]) -> tuple[SensorEvidence, ...]:
        """Sensors furthest from their running mean (this machine's baseline, before this
        reading is learnt), in standard deviations: ``(name, value, mean, signed z)``."""
        scaler = self.detector.scaler
        if not scaler.counts:
            return ()
        z = {}
        for name, value in x.items():
            var = scaler.vars.get(name, 0.0)
            if var > 0:
                z[name] = (value - scaler.means[name]) / var**0.5
        top = sorted(z, key=lambda n: abs(z[n]), reverse=True)[:TOP_SENSORS]
        return tuple((n, x[n], float(scaler.means[n]), z[n]) for n in top)
