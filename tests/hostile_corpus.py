"""A corpus of hostile inputs, interleaved with a valid simulated fleet, each with the one
place it must end: ``processed`` (stored), ``dead`` (a dead letter from parsing, found by
its source offset), ``state_dead`` (a dead letter from the state step: late, type changed),
or ``duplicate`` (dropped and counted; its first copy is stored once).

Inputs tied to a machine are keyed by its id, so they land in its partition after the
readings they must follow."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from models.schemas import ms_to_iso

NUL, SURROGATE = "\u0000", "\ud800"


@dataclass
class Entry:
    name: str
    key: bytes | None
    value: bytes | None
    outcome: str  # processed | dead | state_dead | duplicate
    words: tuple[str, ...] = ()  # what the dead letter's reason must say
    equipment_id: str | None = None  # for processed / state_dead / duplicate
    ts_ms: int | None = None
    # facts about its prediction: "sent" = the sensors it had (the model's other sensors
    # count as imputed), "rul": None = no RUL may be given
    expect: dict[str, Any] = field(default_factory=dict)


def _raw(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=True).encode()


def _like(reading: dict[str, Any], **changes: Any) -> dict[str, Any]:
    doc = json.loads(json.dumps(reading))
    for k, v in changes.items():
        if v is ...:
            doc.pop(k, None)
        else:
            doc[k] = v
    return doc


def _dead(name: str, doc_or_bytes: Any, *words: str, key: bytes | None = b"hostile") -> Entry:
    value = doc_or_bytes if isinstance(doc_or_bytes, bytes | None) else _raw(doc_or_bytes)
    return Entry(name, key, value, "dead", words)


def generic_entries(template: dict[str, Any]) -> list[Entry]:
    """Inputs that must become dead letters wherever they arrive."""
    t = template
    s = dict(t["sensors"])
    out = [
        _dead("invalid-json", b'{"equipment_id": "x",', "invalid JSON"),
        _dead("not-utf8", b"\xff\xfe\x00", "not UTF-8"),
        _dead("empty", b"", "invalid JSON"),
        _dead("tombstone", None, "invalid JSON"),
        _dead("array", b"[1, 2, 3]", "JSON object"),
        _dead("too-deep", b"[" * 50_000, "invalid JSON"),
        _dead("string-number", _like(t, sensors={**s, "T24": "642.1"}), "not a number"),
        _dead("nan", _raw(t).replace(b'"T24": ', b'"T24": NaN, "x": '), "finite"),
        _dead("1e308", _like(t, sensors={**s, "T24": 1e308}), "beyond the limit"),
        _dead("-1e300", _like(t, sensors={**s, "T24": -1e300}), "beyond the limit"),
        _dead(
            "int-10^400",
            _raw(t).replace(b'"T24": ', b'"T24": 1' + b"0" * 400 + b', "y": '),
            "too large",
        ),
        _dead("schema-v2", _like(t, schema_version=2), "schema_version"),
        _dead("ts-garbage", _like(t, ts="2026-13-45T99:00:00Z"), "ISO-8601"),
        _dead("ts-9999", _like(t, ts="9999-12-31T23:59:59Z"), "ahead of the wall clock"),
        _dead("ts_ms-negative", _like(t, ts=..., ts_ms=-5), "non-negative"),
        _dead("ts_ms-bool", _like(t, ts=..., ts_ms=True), "non-negative"),
        _dead("too-many-sensors", _like(t, sensors={f"s{i}": 1.0 for i in range(600)}), "limit"),
        _dead("padded-300KB", _like(t, padding="x" * 300_000), "bytes", "limit"),
        _dead("over-1MB", _like(t, padding="x" * 1_100_000), "bytes", "limit"),
        _dead("huge-key", b"{", "invalid JSON", key=b"k" * 5000),
        _dead("sensor-name-too-long", _like(t, sensors={**s, "x" * 200: 1.0}), "too long"),
        _dead("bidi-override-id", _like(t, equipment_id="pump\u202e1"), "control"),
    ]
    for where in ("equipment_id", "equipment_type"):
        for bad_name, bad in (
            ("nul", NUL),
            ("surrogate", SURROGATE),
            ("esc", "\x1b[31m"),
            ("newline", "\nFAKE LOG LINE"),
            ("cr", "\r"),
        ):
            out.append(_dead(f"{where}-{bad_name}", _like(t, **{where: f"x{bad}1"}), "control"))
    for where in ("sensors", "settings"):
        for bad_name, bad in (("nul", NUL), ("surrogate", SURROGATE), ("newline", "\n")):
            doc = _like(t, **{where: {**t.get(where, {}), f"T{bad}": 1.0}})
            out.append(_dead(f"{where}-name-{bad_name}", doc, "control"))
    return out


def corpus(valid: list[dict[str, Any]]) -> list[Entry]:
    """``valid`` (a simulated fleet in event-time order) with the hostile inputs woven in.

    Machine-specific cases use the fleet's first machines: the 9999 timestamp, a type
    switch, a duplicate, a late reading, readings lacking sensors, a huge finite value;
    plus a flood of invented ids and types, and a machine whose sensors never match."""
    ids = sorted({r["equipment_id"] for r in valid})
    m = ids[:6]
    per: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
    generic = generic_entries(valid[0])
    out: list[Entry] = []
    g = 0
    for n, r in enumerate(valid):
        eq, k = r["equipment_id"], len(per[r["equipment_id"]])
        per[eq].append(r)
        ts = _ms(r["ts"])
        out.append(Entry(f"valid-{eq}-{k}", eq.encode(), _raw(r), "processed", (), eq, ts))
        key = eq.encode()
        if eq == m[0] and k == 10:
            out.append(
                Entry(
                    "future-9999-for-a-machine",
                    key,
                    _raw(_like(r, ts="9999-12-31T00:00:00Z")),
                    "dead",
                    ("ahead of the wall clock",),
                )
            )
        if eq == m[1] and k == 20:
            pump = {
                "equipment_id": eq,
                "equipment_type": "pump",
                "ts": ms_to_iso(ts + 1),
                "sensors": {"flow": 10.0, "vibration": 0.5},
            }
            out.append(
                Entry("type-switch", key, _raw(pump), "state_dead", ("equipment type",), eq, ts + 1)
            )
        if eq == m[2] and k == 16:
            first = per[eq][15]
            out.append(Entry("duplicate", key, _raw(first), "duplicate", (), eq, _ms(first["ts"])))
        if eq == m[3] and k == 30:
            late_ts = _ms(per[eq][0]["ts"]) - 5 * 3600_000
            out.append(
                Entry(
                    "late",
                    key,
                    _raw(_like(r, ts=ms_to_iso(late_ts))),
                    "state_dead",
                    ("late by",),
                    eq,
                    late_ts,
                )
            )
        if eq == m[4] and k == 25:
            few = dict(list(r["sensors"].items())[:5])
            out.append(
                Entry(
                    "missing-sensors",
                    key,
                    _raw(_like(r, ts=ms_to_iso(ts + 1), sensors=few)),
                    "processed",
                    (),
                    eq,
                    ts + 1,
                    {"sent": sorted(few)},
                )
            )
        if eq == m[5] and k == 12:
            big = {**r["sensors"], next(iter(r["sensors"])): 1e11}
            out.append(
                Entry(
                    "huge-but-allowed",
                    key,
                    _raw(_like(r, ts=ms_to_iso(ts + 1), sensors=big)),
                    "processed",
                    (),
                    eq,
                    ts + 1,
                )
            )
        if n % 15 == 7 and g < len(generic):
            out.append(generic[g])
            g += 1
    out.extend(generic[g:])
    t0 = _ms(valid[0]["ts"])
    for i in range(100):  # a flood of invented ids, with 40 invented types
        eq = f"flood-{i:03d}"
        doc = {
            "equipment_id": eq,
            "equipment_type": f"made-up-type-{i % 40}",
            "ts": ms_to_iso(t0 + i),
            "sensors": {"a": float(i), "b": 1.0},
        }
        out.append(Entry(f"flood-{i}", eq.encode(), _raw(doc), "processed", (), eq, t0 + i))
    sparse = valid[0]["sensors"]
    lacking = {k: v for k, v in list(sparse.items())[3:]}
    for i in range(5):  # a turbofan that never reports 3 of the model's sensors
        ts = t0 + i * 3600_000
        doc = {
            "equipment_id": "turbofan-sparse",
            "equipment_type": valid[0]["equipment_type"],
            "ts": ms_to_iso(ts),
            "sensors": lacking,
        }
        out.append(
            Entry(
                f"sparse-{i}",
                b"turbofan-sparse",
                _raw(doc),
                "processed",
                (),
                "turbofan-sparse",
                ts,
                {"sent": sorted(lacking), "rul": None},
            )
        )
    names = "\u00e9quipement-\u00fc-\U0001f680"  # printable non-ASCII: a valid id
    doc = _like(valid[0], equipment_id=names, ts=ms_to_iso(t0))
    out.append(Entry("unicode-id", names.encode(), _raw(doc), "processed", (), names, t0))
    doc = _like(valid[0], equipment_id="small-padding", ts=ms_to_iso(t0), note="x" * 100_000)
    out.append(
        Entry(
            "padded-100KB-valid", b"small-padding", _raw(doc), "processed", (), "small-padding", t0
        )
    )
    return out


def _ms(iso: str) -> int:
    from models.schemas import iso_to_ms

    return iso_to_ms(iso)
