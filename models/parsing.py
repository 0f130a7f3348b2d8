"""Turn raw input (bytes, text or an already-decoded dict) into a :class:`Reading` or a
:class:`DeadLetter` that says what was wrong. Never raises for bad input.

Beyond JSON and types, a reading is refused when it could harm what comes after it:
text that PostgreSQL cannot store (NUL) or UTF-8 cannot encode (lone surrogates), control
characters in names (terminal escapes, newlines), oversized messages, huge values, and
timestamps too far ahead of the wall clock (one reading dated 9999 would otherwise make
every later reading of that machine "late"). :class:`ParseLimits` holds the bounds."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from models.schemas import SCHEMA_VERSION, DeadLetter, Origin, Reading, iso_to_ms, ms_to_iso

MAX_ID_LEN = 128
MAX_PAYLOAD_ECHO = 10_000  # dead letters keep at most this many characters of the payload
MAX_TS_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last instant ms_to_iso can print


@dataclass(frozen=True, slots=True)
class ParseLimits:
    """Bounds on one reading; beyond them it is a dead letter.

    ``max_future_ms`` / ``max_past_ms`` bound the timestamp against the wall clock
    (``None``: no bound). The past is unbounded by default so history can be replayed."""

    max_bytes: int = 256 * 1024
    max_sensors: int = 512
    max_name_len: int = MAX_ID_LEN
    max_abs_value: float = 1e12
    max_future_ms: int | None = 24 * 3600 * 1000
    max_past_ms: int | None = None


DEFAULT_LIMITS = ParseLimits()


class _Invalid(ValueError):
    pass


def parse_reading(
    payload: bytes | str | Mapping[str, Any],
    origin: Origin,
    limits: ParseLimits = DEFAULT_LIMITS,
    now_ms: int | None = None,
) -> Reading | DeadLetter:
    """Validate one reading (``now_ms``: the wall clock for the timestamp bounds).

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
        doc = _decode(payload, limits)
        return _validate(doc, limits, now_ms)
    except _Invalid as exc:
        doc_id = None
        if isinstance(payload, Mapping):
            doc_id = payload.get("equipment_id")
        return DeadLetter(
            reason=str(exc),
            payload=_echo(payload),
            origin=origin,
            equipment_id=doc_id if isinstance(doc_id, str) and _is_clean(doc_id) else None,
        )


def _is_clean(text: str) -> bool:
    """Printable and encodable: no NUL or other control characters, no lone surrogates."""
    return text.isprintable()  # Cc (NUL, ESC, newline) and Cs (surrogates) are not


def _decode(payload: bytes | str | Mapping[str, Any], limits: ParseLimits) -> Mapping[str, Any]:
    if isinstance(payload, Mapping):
        return payload
    size = len(payload)
    if size > limits.max_bytes:
        raise _Invalid(f"message of {size} bytes is over the {limits.max_bytes}-byte limit")
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


def _validate(doc: Mapping[str, Any], limits: ParseLimits, now_ms: int | None) -> Reading:
    version = doc.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise _Invalid(f"unsupported schema_version {version!r} (expected {SCHEMA_VERSION})"[:200])
    equipment_id = _text(doc, "equipment_id", limits)
    equipment_type = _text(doc, "equipment_type", limits)
    ts_ms = _timestamp(doc)
    _check_clock(ts_ms, limits, now_ms)
    sensors = _numbers(doc, "sensors", limits, required=True)
    if not sensors:
        raise _Invalid("sensors is empty")
    settings = _numbers(doc, "settings", limits, required=False)
    return Reading(equipment_id, equipment_type, ts_ms, sensors, settings)


def _text(doc: Mapping[str, Any], key: str, limits: ParseLimits) -> str:
    if key not in doc:
        raise _Invalid(f"missing field {key!r}")
    value = doc[key]
    if not isinstance(value, str) or not value.strip():
        raise _Invalid(f"{key} must be a non-empty string, got {value!r}"[:200])
    if len(value) > limits.max_name_len:
        raise _Invalid(f"{key} longer than {limits.max_name_len} characters")
    if not _is_clean(value):
        raise _Invalid(f"{key} has control characters or invalid Unicode: {value!r}"[:200])
    return value


def _check_clock(ts_ms: int, limits: ParseLimits, now_ms: int | None) -> None:
    """Refuse a timestamp too far from the wall clock (it would poison event time)."""
    if limits.max_future_ms is None and limits.max_past_ms is None:
        return
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    if limits.max_future_ms is not None and ts_ms > now + limits.max_future_ms:
        raise _Invalid(
            f"ts {ms_to_iso(ts_ms)} is more than {limits.max_future_ms / 1000:.0f} s ahead "
            f"of the wall clock ({ms_to_iso(now)})"
        )
    if limits.max_past_ms is not None and ts_ms < now - limits.max_past_ms:
        raise _Invalid(
            f"ts {ms_to_iso(ts_ms)} is more than {limits.max_past_ms / 1000:.0f} s behind "
            f"the wall clock ({ms_to_iso(now)})"
        )


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


def _numbers(
    doc: Mapping[str, Any], key: str, limits: ParseLimits, *, required: bool
) -> dict[str, float]:
    if key not in doc or doc[key] is None:
        if required:
            raise _Invalid(f"missing field {key!r}")
        return {}
    raw = doc[key]
    if not isinstance(raw, dict):
        raise _Invalid(f"{key} must be an object of name -> number, got {type(raw).__name__}")
    if len(raw) > limits.max_sensors:
        raise _Invalid(f"{key} has {len(raw)} entries, over the limit of {limits.max_sensors}")
    out: dict[str, float] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not name or len(name) > limits.max_name_len:
            raise _Invalid(f"{key} has a name that is empty or too long: {name!r}"[:200])
        if not _is_clean(name):
            raise _Invalid(
                f"{key} has a name with control characters or invalid Unicode: {name!r}"[:200]
            )
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Invalid(f"{key}[{name!r}] is not a number: {value!r}"[:200])
        try:
            f = float(value)
        except OverflowError:  # an integer beyond float range
            raise _Invalid(f"{key}[{name!r}] is not a finite number: too large") from None
        if not math.isfinite(f):
            raise _Invalid(f"{key}[{name!r}] is not a finite number: {value!r}"[:200])
        if abs(f) > limits.max_abs_value:
            raise _Invalid(
                f"{key}[{name!r}] = {f:g} is beyond the limit of ±{limits.max_abs_value:g}"[:200]
            )
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
