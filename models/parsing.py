"""Turn raw input (bytes, text or an already-decoded dict) into a :class:`Reading` or a
:class:`DeadLetter` that says what was wrong. Never raises for bad input."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from models.schemas import SCHEMA_VERSION, DeadLetter, Origin, Reading, iso_to_ms

MAX_ID_LEN = 128
MAX_PAYLOAD_ECHO = 10_000  # dead letters keep at most this many characters of the payload
MAX_TS_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last instant ms_to_iso can print


class _Invalid(ValueError):
    pass


def parse_reading(payload: bytes | str | Mapping[str, Any], origin: Origin) -> Reading | DeadLetter:
    """Validate one reading.

    >>> from models.schemas import Origin
    >>> o = Origin("test")
    >>> r = parse_reading(b'{"equipment_id": "p-1", "equipment_type": "pump",'
    ...                   b' "ts": "2026-01-01T00:00:00Z", "sensors": {"x": 1}}', o)
    >>> r.equipment_id, r.sensors
    ('p-1', {'x': 1.0})
    >>> parse_reading(b'{"equipment_id": "p-1"', o).reason[:12]
    'invalid JSON'
    >>> parse_reading({"equipment_id": "p-1", "equipment_type": "pump",
    ...                "ts": "2026-01-01T00:00:00Z", "sensors": {"x": float("nan")}}, o).reason
    "sensors['x'] is not a finite number: nan"
    """
    try:
        doc = _decode(payload)
        return _validate(doc)
    except _Invalid as exc:
        doc_id = None
        if isinstance(payload, Mapping):
            doc_id = payload.get("equipment_id")
        return DeadLetter(
            reason=str(exc),
            payload=_echo(payload),
            origin=origin,
            equipment_id=doc_id if isinstance(doc_id, str) else None,
        )


def _decode(payload: bytes | str | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(payload, Mapping):
        return payload
    if isinstance(payload, bytes | bytearray | memoryview):
        try:
            payload = bytes(payload).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Invalid(f"payload is not UTF-8: {exc}") from None
    if not isinstance(payload, str):
        raise _Invalid(f"payload has unsupported type {type(payload).__name__}")
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError) as exc:  # also too deep, or an integer too long
        raise _Invalid(f"invalid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise _Invalid(f"reading must be a JSON object, got {type(doc).__name__}")
    return doc


def _validate(doc: Mapping[str, Any]) -> Reading:
    version = doc.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise _Invalid(f"unsupported schema_version {version!r} (expected {SCHEMA_VERSION})")
    equipment_id = _text(doc, "equipment_id")
    equipment_type = _text(doc, "equipment_type")
    ts_ms = _timestamp(doc)
    sensors = _numbers(doc, "sensors", required=True)
    if not sensors:
        raise _Invalid("sensors is empty")
    settings = _numbers(doc, "settings", required=False)
    return Reading(equipment_id, equipment_type, ts_ms, sensors, settings)


def _text(doc: Mapping[str, Any], key: str) -> str:
    if key not in doc:
        raise _Invalid(f"missing field {key!r}")
    value = doc[key]
    if not isinstance(value, str) or not value.strip():
        raise _Invalid(f"{key} must be a non-empty string, got {value!r}"[:200])
    if len(value) > MAX_ID_LEN:
        raise _Invalid(f"{key} longer than {MAX_ID_LEN} characters")
    return value


def _timestamp(doc: Mapping[str, Any]) -> int:
    if "ts" in doc:
        value = doc["ts"]
        if not isinstance(value, str):
            raise _Invalid(f"ts must be an ISO-8601 string, got {value!r}"[:200])
        try:
            ts_ms = iso_to_ms(value)
        except (ValueError, OverflowError):
            raise _Invalid(f"ts is not an ISO-8601 timestamp: {value!r}"[:200]) from None
        if not 0 <= ts_ms <= MAX_TS_MS:
            raise _Invalid(f"ts {value!r} is out of range (1970 to 9999)"[:200])
        return ts_ms
    if "ts_ms" in doc:
        value = doc["ts_ms"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise _Invalid(f"ts_ms must be a non-negative integer, got {value!r}"[:200])
        if value > MAX_TS_MS:
            raise _Invalid(f"ts_ms is out of range (after year 9999, max {MAX_TS_MS})")
        return value
    raise _Invalid("missing field 'ts'")


def _numbers(doc: Mapping[str, Any], key: str, *, required: bool) -> dict[str, float]:
    if key not in doc or doc[key] is None:
        if required:
            raise _Invalid(f"missing field {key!r}")
        return {}
    raw = doc[key]
    if not isinstance(raw, dict):
        raise _Invalid(f"{key} must be an object of name -> number, got {type(raw).__name__}")
    out: dict[str, float] = {}
    for name, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Invalid(f"{key}[{name!r}] is not a number: {value!r}"[:200])
        try:
            f = float(value)
        except OverflowError:  # an integer beyond float range
            raise _Invalid(f"{key}[{name!r}] is not a finite number: too large") from None
        if not math.isfinite(f):
            raise _Invalid(f"{key}[{name!r}] is not a finite number: {value!r}")
        out[name] = f
    return out


def _echo(payload: bytes | str | Mapping[str, Any]) -> str:
    if isinstance(payload, Mapping):
        try:
            text = json.dumps(payload, default=str)
        except (TypeError, ValueError):
            text = repr(payload)
    elif isinstance(payload, bytes | bytearray | memoryview):
        text = bytes(payload).decode("utf-8", errors="replace")
    else:
        text = str(payload)
    return text[:MAX_PAYLOAD_ECHO]
