"""Prometheus metrics of the flow (prometheus_client default registry).

They are served on ``/metrics`` (with ``/healthz`` and ``/readyz``) by
:mod:`connectors.health` when ``PM_METRICS_PORT`` is set, on ``PM_METRICS_ADDRESS``
(127.0.0.1 by default). Names and labels are part of the interface: dashboards and alert
rules under ``infra/`` use them.
"""

from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge, Histogram

from models.equipment import EQUIPMENT_TYPES

READINGS = Counter("pm_readings_total", "Valid readings taken in", ["equipment_type"])
DEAD_LETTERS = Counter(
    "pm_dead_letters_total", "Readings not used, by reason", ["reason"]
)  # parse | late | duplicate | consumer
PREDICTIONS = Counter("pm_predictions_total", "Predictions emitted", ["equipment_type", "status"])
ALERTS = Counter("pm_alerts_total", "Alert transitions emitted", ["rule", "severity", "state"])
ALERT_DELIVERIES = Counter(
    "pm_alert_deliveries_total", "Alert notifications", ["result"]
)  # sent | failed | duplicate
ALERT_DELIVERY_FAILURES = Counter(
    "pm_alert_delivery_failures_total", "Alert delivery problems, by reason", ["reason"]
)  # target (rejected, timeout, unreachable) | gave_up | store | redis | overflow
ALERT_DELIVERY_INFLIGHT = Gauge("pm_alert_delivery_inflight", "Alert sends in progress")
REDIS_UP = Gauge("pm_redis_up", "1 while the Redis client works, 0 during an outage", ["client"])
REDIS_ERRORS = Counter("pm_redis_errors_total", "Failed Redis calls", ["client"])
EVENT_LAG = Histogram(
    "pm_event_lag_seconds",
    "Wall clock minus event time when a prediction is emitted",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, float("inf")),
)
SINK_BATCH = Histogram(
    "pm_sink_batch_size", "Items per sink write", ["sink"],
    buckets=(1, 10, 50, 100, 500, 1000, 5000, 10000, float("inf")),
)  # fmt: skip
SINK_SECONDS = Histogram("pm_sink_write_seconds", "Sink write latency", ["sink"])
SINK_ERRORS = Counter("pm_sink_errors_total", "Sink write errors (retried)", ["sink"])
SINK_UP = Gauge("pm_sink_up", "1 while a sink's writes succeed, 0 during an outage", ["sink"])
SINK_RETRIES = Counter("pm_sink_retries_total", "Sink writes retried after a failure", ["sink"])
SINK_BACKLOG = Gauge(
    "pm_sink_backlog_rows", "Rows a sink holds while it cannot write them", ["sink"]
)
MODEL_INFO = Gauge("pm_model_info", "Model in use (value 1)", ["equipment_type", "name", "version"])
MODEL_RELOADS = Counter("pm_model_reloads_total", "Model reload attempts", ["result"])
ANOMALY_SCORE = Histogram(
    "pm_anomaly_score", "Anomaly scores", ["equipment_type"],
    buckets=(0.1, 0.5, 0.9, 0.95, 0.99, 1.0),
)  # fmt: skip
EQUIPMENT_ACTIVE = Gauge("pm_equipment_active", "Equipment with state in this process")
IMPUTED_SENSORS = Counter(
    "pm_imputed_sensors_total",
    "Model sensors missing from a reading (last value carried forward)", ["equipment_type"],
)  # fmt: skip
STATE_REWARMS = Counter(
    "pm_state_rewarms_total",
    "Per-equipment states rebuilt (feature layout changed on resume; a recorded repair)",
    ["equipment_type"],
)  # fmt: skip
FEATURE_DRIFT_MAX = Gauge(
    "pm_feature_drift_max", "Largest feature PSI against the training reference",
    ["equipment_type"],
)  # fmt: skip
FEATURE_DRIFT_PSI = Gauge(
    "pm_feature_drift_psi", "PSI of the most drifted features (top 10 only)",
    ["equipment_type", "feature"],
)  # fmt: skip
FEATURE_DRIFT_ROWS = Gauge(
    "pm_feature_drift_rows", "Decayed rows behind the drift estimate", ["equipment_type"]
)
_top_features: dict[str, set[str]] = {}


def record_drift(equipment_type: str, max_psi: float, top: list, rows: float) -> None:
    """Export one drift evaluation, keeping only the current top features as series."""
    FEATURE_DRIFT_MAX.labels(equipment_type).set(max_psi)
    FEATURE_DRIFT_ROWS.labels(equipment_type).set(rows)
    names = {name for name, _ in top}
    for stale in _top_features.get(equipment_type, set()) - names:
        FEATURE_DRIFT_PSI.remove(equipment_type, stale)
    for name, psi in top:
        FEATURE_DRIFT_PSI.labels(equipment_type, name).set(psi)
    _top_features[equipment_type] = names


def type_label(equipment_type: str) -> str:
    """The metric label of an equipment type: catalog types by name, every other one as
    ``other`` (a flood of invented types must not create a flood of series)."""
    return equipment_type if equipment_type in EQUIPMENT_TYPES else "other"


_sink_parts: dict[str, dict[str, tuple[bool, int]]] = {}
_sink_lock = threading.Lock()


def sink_state(sink: str, part: str, up: bool, backlog: int) -> None:
    """Record whether one partition of a sink can write, and how many rows it holds.
    ``pm_sink_up`` is 0 while any partition of the sink is down; the backlog is their sum."""
    with _sink_lock:
        parts = _sink_parts.setdefault(sink, {})
        parts[part] = (up, backlog)
        SINK_UP.labels(sink).set(int(all(u for u, _ in parts.values())))
        SINK_BACKLOG.labels(sink).set(sum(n for _, n in parts.values()))


def sinks_down() -> list[str]:
    """The sinks with a partition whose last write attempt failed."""
    with _sink_lock:
        return sorted(s for s, p in _sink_parts.items() if not all(u for u, _ in p.values()))


def sink_observer(sink: str, n: int, seconds: float) -> None:
    """Record one sink write (for sinks that take a metrics hook)."""
    SINK_BATCH.labels(sink).observe(n)
    SINK_SECONDS.labels(sink).observe(seconds)
