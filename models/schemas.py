"""Message types that cross the flow's boundaries: readings in; predictions, alerts and
dead letters out. Each carries a ``schema_version`` when serialised.

Timestamps are integer milliseconds since the Unix epoch (``ts_ms``) inside the flow and
ISO-8601 UTC strings (``"2026-11-27T09:00:00.000Z"``) on the wire.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

SCHEMA_VERSION = 1


def ms_to_iso(ts_ms: int) -> str:
    """Format epoch milliseconds as ISO-8601 UTC with a ``Z`` suffix.

    >>> ms_to_iso(0)
    '1970-01-01T00:00:00.000Z'
    """
    dt = datetime.fromtimestamp(ts_ms / 1000.0, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts_ms % 1000:03d}Z"


def iso_to_ms(text: str) -> int:
    """Parse an ISO-8601 timestamp (``Z`` or offset; naive means UTC) to epoch ms.

    >>> iso_to_ms("1970-01-01T00:00:01.5Z")
    1500
    """
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return round(dt.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a record came from, so a dead letter can point back at it."""

    source: str
    partition: str = ""
    offset: int = -1


@dataclass(frozen=True, slots=True)
class Reading:
    """One validated sensor reading of one piece of equipment."""

    equipment_id: str
    equipment_type: str
    ts_ms: int
    sensors: dict[str, float]
    settings: dict[str, float] = field(default_factory=dict)

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "equipment_id": self.equipment_id,
            "equipment_type": self.equipment_type,
            "ts": ms_to_iso(self.ts_ms),
            "settings": self.settings,
            "sensors": self.sensors,
            "schema_version": SCHEMA_VERSION,
        }


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Input the flow could not use, with the reason and where it came from."""

    reason: str
    payload: str
    origin: Origin
    equipment_id: str | None = None
    ts_ms: int | None = None
    raw: bytes | None = None  # the original bytes, when the input had bytes (Kafka DLQ)
    key: bytes | None = None  # the original Kafka message key, when there was one

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "payload": self.payload,
            "source": self.origin.source,
            "partition": self.origin.partition,
            "offset": self.origin.offset,
            "equipment_id": self.equipment_id,
            "ts": ms_to_iso(self.ts_ms) if self.ts_ms is not None else None,
            "schema_version": SCHEMA_VERSION,
        }


@dataclass(frozen=True, slots=True)
class Prediction:
    """The flow's verdict on one equipment at one reading."""

    equipment_id: str
    equipment_type: str
    ts_ms: int
    rul: float | None
    rul_unit: str
    rul_hours: float | None
    rul_lower: float | None
    rul_upper: float | None
    health: float
    anomaly_score: float
    status: str
    model_name: str
    model_version: str
    top_sensors: tuple[str, ...] = ()
    imputed_sensors: int = 0  # model sensors missing from the reading (last value carried)
    # the top sensors against this machine's own baseline: (name, value, baseline mean, z)
    sensor_evidence: tuple[tuple[str, float, float, float], ...] = ()

    def sensor_evidence_dicts(self) -> list[dict[str, Any]]:
        """``sensor_evidence`` as JSON objects (rounded; NaN/inf as None).

        >>> p = Prediction("e", "t", 0, None, "", None, None, None, 0.9, 0.1, "ok", "m", "1",
        ...                sensor_evidence=(("T24", 643.91234, 642.5, 3.14159),))
        >>> p.sensor_evidence_dicts()
        [{'sensor': 'T24', 'value': 643.9123, 'baseline': 642.5, 'z': 3.142}]
        """
        return [
            finite({"sensor": n, "value": round(v, 4), "baseline": round(b, 4), "z": round(z, 3)})
            for n, v, b, z in self.sensor_evidence
        ]

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "equipment_id": self.equipment_id,
            "equipment_type": self.equipment_type,
            "ts": ms_to_iso(self.ts_ms),
            "rul": _round(self.rul),
            "rul_unit": self.rul_unit,
            "rul_hours": _round(self.rul_hours),
            "rul_lower": _round(self.rul_lower),
            "rul_upper": _round(self.rul_upper),
            "health": round(self.health, 4),
            "anomaly_score": round(self.anomaly_score, 4),
            "status": self.status,
            "model": {"name": self.model_name, "version": self.model_version},
            "top_sensors": list(self.top_sensors),
            "imputed_sensors": self.imputed_sensors,
            "sensor_evidence": self.sensor_evidence_dicts(),
            "schema_version": SCHEMA_VERSION,
        }


@dataclass(frozen=True, slots=True)
class Alert:
    """A change in an equipment's alert state for one rule."""

    alert_id: str
    equipment_id: str
    ts_ms: int
    rule: str
    severity: str
    state: str
    value: float
    threshold: float
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "equipment_id": self.equipment_id,
            "ts": ms_to_iso(self.ts_ms),
            "rule": self.rule,
            "severity": self.severity,
            "state": self.state,
            "value": round(self.value, 4),
            "threshold": self.threshold,
            "message": self.message,
            "evidence": self.evidence,
            "schema_version": SCHEMA_VERSION,
        }


def finite(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None (valid JSON everywhere).

    >>> finite({"a": float("nan"), "b": [1.0, float("inf")]})
    {'a': None, 'b': [1.0, None]}
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


def json_default(obj: Any) -> Any:
    """``json`` fallback for numpy scalars and arrays."""
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return finite(tolist())
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _round(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)
