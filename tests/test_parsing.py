"""parse_reading: every kind of bad input becomes a DeadLetter that names the problem; valid
variants parse; nothing ever raises."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.parsing import MAX_ID_LEN, MAX_PAYLOAD_ECHO, ParseLimits, parse_reading
from models.schemas import DeadLetter, Origin, Reading, iso_to_ms, ms_to_iso

ORIGIN = Origin("readings", partition="3", offset=42)
TS = "2026-11-27T09:00:00.000Z"
TS_MS = 1_795_770_000_000
NOW_MS = TS_MS + 3_600_000  # the wall clock the timestamp bounds are checked against
OPEN = ParseLimits(max_future_ms=None, max_abs_value=float("inf"))  # no range bounds


def valid_doc(**changes: Any) -> dict[str, Any]:
    """A valid reading document; ``changes`` set fields, a value of ``...`` removes one."""
    doc: dict[str, Any] = {
        "equipment_id": "turbofan-0007",
        "equipment_type": "turbofan_engine",
        "ts": TS,
        "settings": {"op_setting_1": 0.0, "op_setting_2": -0.0004},
        "sensors": {"T24": 642.1, "T30": 1589.7, "P30": 554},
        "schema_version": 1,
    }
    for key, value in changes.items():
        if value is ...:
            doc.pop(key, None)
        else:
            doc[key] = value
    return doc


def as_bytes(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def test_valid_reading_parses_from_bytes_str_and_dict() -> None:
    doc = valid_doc()
    for payload in (as_bytes(doc), json.dumps(doc), bytearray(as_bytes(doc)), doc):
        r = parse_reading(payload, ORIGIN)
        assert isinstance(r, Reading), r
        assert r.equipment_id == "turbofan-0007"
        assert r.equipment_type == "turbofan_engine"
        assert r.ts_ms == TS_MS
        assert r.sensors == {"T24": 642.1, "T30": 1589.7, "P30": 554.0}
        assert all(type(v) is float for v in r.sensors.values())
        assert r.settings == {"op_setting_1": 0.0, "op_setting_2": -0.0004}
    assert iso_to_ms(TS) == TS_MS
    assert ms_to_iso(TS_MS) == TS


@pytest.mark.parametrize(
    ("changes", "ts_ms"),
    [
        pytest.param({"ts": "2026-11-27T10:00:00+01:00"}, TS_MS, id="ts-with-offset"),
        pytest.param({"ts": "2026-11-27T04:30:00.000-04:30"}, TS_MS, id="ts-negative-offset"),
        pytest.param({"ts": "2026-11-27T09:00:00"}, TS_MS, id="naive-ts-is-utc"),
        pytest.param({"ts": "2026-11-27T09:00:00.250Z"}, TS_MS + 250, id="ts-millis"),
        pytest.param({"ts": ..., "ts_ms": TS_MS + 1}, TS_MS + 1, id="ts_ms"),
        pytest.param({"ts": "1970-01-01T00:00:00Z"}, 0, id="epoch"),
        pytest.param({"ts": "9999-12-31T23:59:59.999Z"}, 253_402_300_799_999, id="year-9999"),
        pytest.param({"settings": ...}, TS_MS, id="settings-missing"),
        pytest.param({"settings": None}, TS_MS, id="settings-null"),
        pytest.param({"settings": {}}, TS_MS, id="settings-empty"),
        pytest.param({"schema_version": ...}, TS_MS, id="schema_version-missing"),
        pytest.param({"extra_field": [1, 2]}, TS_MS, id="unknown-field-ignored"),
        pytest.param({"sensors": {"x": 10**300}}, TS_MS, id="big-but-finite-int"),
    ],
)
def test_valid_variants_parse(changes: dict[str, Any], ts_ms: int) -> None:
    doc = valid_doc(**changes)
    r = parse_reading(as_bytes(doc), ORIGIN, OPEN)
    assert isinstance(r, Reading), r
    assert r.ts_ms == ts_ms
    assert r.settings == ({} if not doc.get("settings") else doc["settings"])


def test_ts_wins_over_ts_ms() -> None:
    r = parse_reading(as_bytes(valid_doc(ts_ms=5)), ORIGIN)
    assert isinstance(r, Reading) and r.ts_ms == TS_MS


# (payload, words the reason must contain)
BAD: list[Any] = [
    pytest.param(b'{"equipment_id": "p-1"', ["invalid JSON"], id="truncated-json"),
    pytest.param(b"", ["invalid JSON"], id="empty"),
    pytest.param(b"{'single': 'quotes'}", ["invalid JSON"], id="not-json"),
    pytest.param(b"\xff\xfe{}", ["not UTF-8"], id="non-utf8"),
    pytest.param(json.dumps(valid_doc()).encode("utf-16"), ["not UTF-8"], id="utf16"),
    pytest.param(b"[1, 2]", ["JSON object", "list"], id="array"),
    pytest.param(b'"text"', ["JSON object", "str"], id="string"),
    pytest.param(b"42", ["JSON object", "int"], id="number"),
    pytest.param(b"null", ["JSON object", "NoneType"], id="null"),
    pytest.param(b"[" * 100_000, ["invalid JSON"], id="nested-too-deep"),
    pytest.param(b"1" * 5_000, ["invalid JSON"], id="integer-too-long"),
    *[
        pytest.param(as_bytes(valid_doc(**{field: ...})), ["missing", field], id=f"no-{field}")
        for field in ("equipment_id", "equipment_type", "sensors")
    ],
    pytest.param(as_bytes(valid_doc(ts=...)), ["missing", "'ts'"], id="no-ts"),
    pytest.param(
        as_bytes(valid_doc(equipment_id="")), ["equipment_id", "non-empty"], id="id-empty"
    ),
    pytest.param(
        as_bytes(valid_doc(equipment_id="   ")), ["equipment_id", "non-empty"], id="id-blank"
    ),
    pytest.param(as_bytes(valid_doc(equipment_id=7)), ["equipment_id", "string"], id="id-int"),
    pytest.param(as_bytes(valid_doc(equipment_id=None)), ["equipment_id", "None"], id="id-null"),
    pytest.param(
        as_bytes(valid_doc(equipment_id="x" * (MAX_ID_LEN + 1))),
        ["equipment_id", "longer than"],
        id="id-too-long",
    ),
    pytest.param(
        as_bytes(valid_doc(equipment_type="")), ["equipment_type", "non-empty"], id="type-empty"
    ),
    pytest.param(
        b'{"equipment_id": "a", "equipment_type": "b", "ts": "%s", "sensors": {"T24": NaN}}'
        % TS.encode(),
        ["sensors['T24']", "finite", "nan"],
        id="sensor-NaN-literal",
    ),
    pytest.param(
        b'{"equipment_id": "a", "equipment_type": "b", "ts": "%s", "sensors": {"T24": -Infinity}}'
        % TS.encode(),
        ["sensors['T24']", "finite", "inf"],
        id="sensor-Infinity-literal",
    ),
    pytest.param(
        as_bytes(valid_doc(sensors={"T24": 1e999})), ["sensors['T24']", "finite"], id="sensor-1e999"
    ),
    pytest.param(
        as_bytes(valid_doc(sensors={"T24": 10**400})),
        ["sensors['T24']", "finite", "too large"],
        id="sensor-int-beyond-float",
    ),
    pytest.param(
        as_bytes(valid_doc(sensors={"T24": True})), ["sensors['T24']", "not a number"], id="bool"
    ),
    pytest.param(
        as_bytes(valid_doc(sensors={"T24": "642.1"})),
        ["sensors['T24']", "not a number", "'642.1'"],
        id="sensor-string",
    ),
    pytest.param(
        as_bytes(valid_doc(sensors={"T24": None})), ["sensors['T24']", "not a number"], id="null"
    ),
    pytest.param(
        as_bytes(valid_doc(sensors={"T24": [1.0]})), ["sensors['T24']", "not a number"], id="list"
    ),
    pytest.param(
        as_bytes(valid_doc(settings={"op_setting_1": "x"})),
        ["settings['op_setting_1']", "not a number"],
        id="setting-string",
    ),
    pytest.param(
        as_bytes(valid_doc(settings=[0.0])), ["settings", "object", "list"], id="settings-list"
    ),
    pytest.param(as_bytes(valid_doc(ts="yesterday")), ["ts", "ISO-8601", "yesterday"], id="ts"),
    pytest.param(as_bytes(valid_doc(ts="2026-13-01T00:00:00Z")), ["ts", "ISO-8601"], id="month"),
    pytest.param(as_bytes(valid_doc(ts="")), ["ts", "ISO-8601"], id="ts-empty"),
    pytest.param(as_bytes(valid_doc(ts=1_795_770_000)), ["ts", "ISO-8601 string"], id="ts-num"),
    pytest.param(
        as_bytes(valid_doc(ts="0001-01-01T00:00:00+01:00")), ["ts", "range"], id="ts-year-0"
    ),
    pytest.param(
        as_bytes(valid_doc(ts="1969-12-31T23:59:59Z")), ["ts", "range"], id="ts-before-1970"
    ),
    pytest.param(
        as_bytes(valid_doc(ts=..., ts_ms=-1)), ["ts_ms", "non-negative integer"], id="ts_ms-neg"
    ),
    pytest.param(
        as_bytes(valid_doc(ts=..., ts_ms=1.5)), ["ts_ms", "non-negative integer"], id="ts_ms-float"
    ),
    pytest.param(
        as_bytes(valid_doc(ts=..., ts_ms=True)), ["ts_ms", "non-negative integer"], id="ts_ms-bool"
    ),
    pytest.param(
        as_bytes(valid_doc(ts=..., ts_ms=10**22)), ["ts_ms", "range"], id="ts_ms-after-9999"
    ),
    pytest.param(
        as_bytes(valid_doc(schema_version=2)), ["schema_version", "2", "expected 1"], id="v2"
    ),
    pytest.param(as_bytes(valid_doc(schema_version="1")), ["schema_version", "'1'"], id="v-str"),
    pytest.param(as_bytes(valid_doc(schema_version=None)), ["schema_version", "None"], id="v-null"),
    pytest.param(
        as_bytes(valid_doc(sensors=[642.1])), ["sensors", "object", "list"], id="sensors-list"
    ),
    pytest.param(
        as_bytes(valid_doc(sensors="T24=642.1")), ["sensors", "object", "str"], id="sensors-str"
    ),
    pytest.param(as_bytes(valid_doc(sensors=None)), ["missing", "sensors"], id="sensors-null"),
    pytest.param(as_bytes(valid_doc(sensors={})), ["sensors", "empty"], id="sensors-empty"),
]


@pytest.mark.parametrize(("payload", "words"), BAD)
def test_bad_input_becomes_a_dead_letter_that_names_the_problem(
    payload: bytes, words: list[str]
) -> None:
    out = parse_reading(payload, ORIGIN)
    assert isinstance(out, DeadLetter), out
    for word in words:
        assert word in out.reason, f"{word!r} not in reason {out.reason!r}"
    assert out.origin == ORIGIN
    assert out.payload == payload.decode("utf-8", errors="replace")[:MAX_PAYLOAD_ECHO]
    assert len(out.reason) <= 300
    json.dumps(out.to_json_dict())  # a dead letter is always serialisable


# --- hostile input: what would break a sink, a log line or event time -------------------

NUL, SURROGATE, ESC = "\u0000", "\ud800", "\u001b"


def escaped(doc: dict[str, Any]) -> bytes:
    """JSON as a hostile producer writes it: NUL and surrogates as \\u escapes (the bytes
    are valid UTF-8; the decoded text is not storable)."""
    return json.dumps(doc, ensure_ascii=True).encode()


HOSTILE: list[Any] = [
    *[
        pytest.param(escaped(valid_doc(**{f: f"pump{bad}1"})), [f, "control"], id=f"{f}-{n}")
        for f in ("equipment_id", "equipment_type")
        for n, bad in (("nul", NUL), ("surrogate", SURROGATE), ("esc", ESC), ("newline", "\n"))
    ],
    *[
        pytest.param(
            escaped(valid_doc(**{f: {f"x{bad}": 1.0}})), [f, "control"], id=f"{f}-name-{n}"
        )
        for f in ("sensors", "settings")
        for n, bad in (("nul", NUL), ("surrogate", SURROGATE), ("tab", "\t"))
    ],
    pytest.param(
        escaped(valid_doc(sensors={"": 1.0})), ["sensors", "empty or too long"], id="name-empty"
    ),
    pytest.param(
        escaped(valid_doc(ts="9999-12-31T23:59:59Z")), ["ahead of the wall clock"], id="ts-9999"
    ),
    pytest.param(
        escaped(valid_doc(ts=..., ts_ms=NOW_MS + 2 * 86_400_000)),
        ["ahead of the wall clock"],
        id="ts_ms-2-days-ahead",
    ),
    pytest.param(escaped(valid_doc(sensors={"T24": 1e308})), ["beyond the limit"], id="1e308"),
    pytest.param(escaped(valid_doc(sensors={"T24": -1e13})), ["beyond the limit"], id="-1e13"),
    pytest.param(
        escaped(valid_doc(sensors={f"s{i}": 1.0 for i in range(600)})),
        ["600 entries", "limit"],
        id="too-many-sensors",
    ),
    pytest.param(escaped(valid_doc(padding="x" * 300_000)), ["bytes", "limit"], id="padded-300KB"),
]


@pytest.mark.parametrize(("payload", "words"), HOSTILE)
def test_hostile_input_becomes_a_dead_letter(payload: bytes, words: list[str]) -> None:
    out = parse_reading(payload, ORIGIN, now_ms=NOW_MS)
    assert isinstance(out, DeadLetter), out
    for word in words:
        assert word in out.reason, f"{word!r} not in reason {out.reason!r}"
    assert len(out.reason) <= 300
    # what a sink writes of a dead letter is storable text: UTF-8, no NUL
    assert "\x00" not in out.reason and SURROGATE not in out.reason
    out.reason.encode("utf-8")
    out.payload.encode("utf-8")
    json.dumps(out.to_json_dict(), ensure_ascii=False).encode("utf-8")


def test_hostile_dict_does_not_leak_a_bad_id_into_the_dead_letter() -> None:
    out = parse_reading(valid_doc(equipment_id=f"a{SURROGATE}"), ORIGIN)
    assert isinstance(out, DeadLetter) and out.equipment_id is None


def test_clock_bounds_are_settings() -> None:
    doc = escaped(valid_doc(ts=..., ts_ms=NOW_MS - 10 * 86_400_000))
    assert isinstance(parse_reading(doc, ORIGIN, now_ms=NOW_MS), Reading)  # past: no bound
    past = ParseLimits(max_past_ms=86_400_000)
    out = parse_reading(doc, ORIGIN, past, now_ms=NOW_MS)
    assert isinstance(out, DeadLetter) and "behind the wall clock" in out.reason
    soon = escaped(valid_doc(ts=..., ts_ms=NOW_MS + 3_600_000))
    assert isinstance(parse_reading(soon, ORIGIN, now_ms=NOW_MS), Reading)  # 1 h ahead: ok


def test_unicode_names_that_are_printable_parse() -> None:
    r = parse_reading(escaped(valid_doc(equipment_id="pompe-é-1", sensors={"débit": 2.0})),
                      ORIGIN, now_ms=NOW_MS)  # fmt: skip
    assert isinstance(r, Reading) and r.equipment_id == "pompe-é-1"


def test_dead_letter_from_a_dict_keeps_the_equipment_id() -> None:
    out = parse_reading(valid_doc(sensors={"T24": float("nan")}), ORIGIN)
    assert isinstance(out, DeadLetter)
    assert out.equipment_id == "turbofan-0007"
    assert "T24" in out.reason
    assert json.loads(out.payload)["equipment_id"] == "turbofan-0007"


def test_dead_letter_echo_is_bounded() -> None:
    out = parse_reading(b"x" * (3 * MAX_PAYLOAD_ECHO), ORIGIN)
    assert isinstance(out, DeadLetter)
    assert len(out.payload) == MAX_PAYLOAD_ECHO


def test_input_dict_is_not_mutated() -> None:
    doc = valid_doc(sensors={"a": 1, "b": 2.5})
    before = json.dumps(doc)
    r = parse_reading(doc, ORIGIN)
    assert isinstance(r, Reading)
    assert json.dumps(doc) == before
    r.sensors["a"] = 99.0
    assert doc["sensors"]["a"] == 1


# --- never raises ------------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None)

JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(-(10**400), 10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
FIELDS = ("equipment_id", "equipment_type", "ts", "ts_ms", "sensors", "settings", "schema_version")


def check_outcome(out: object) -> None:
    assert isinstance(out, Reading | DeadLetter), out
    if isinstance(out, DeadLetter):
        assert out.reason
        json.dumps(out.to_json_dict())
    else:
        assert out.equipment_id.strip() and out.equipment_type.strip()
        assert out.sensors
        for values in (out.sensors, out.settings):
            assert all(type(v) is float and v - v == 0.0 for v in values.values())
        json.dumps(out.to_json_dict(), allow_nan=False)
        again = parse_reading(json.dumps(out.to_json_dict()).encode(), ORIGIN)
        assert again == out  # what we write, we read back


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(payload: bytes) -> None:
    check_outcome(parse_reading(payload, ORIGIN))


@FUZZ
@given(st.text(max_size=200))
def test_arbitrary_text_never_raises(payload: str) -> None:
    check_outcome(parse_reading(payload, ORIGIN))


@settings(max_examples=150, deadline=None)
@given(
    base=st.fixed_dictionaries({}, optional={f: JSON_VALUES for f in FIELDS}),
    valid_fields=st.sets(st.sampled_from(FIELDS)),
    as_json=st.booleans(),
)
def test_arbitrary_documents_never_raise(
    base: dict[str, Any], valid_fields: set[str], as_json: bool
) -> None:
    """Mix valid fields with arbitrary JSON values in the others, so the fuzzing gets past
    the first check; send them as a dict or as JSON bytes."""
    good = valid_doc(ts_ms=TS_MS)
    doc = {**base, **{f: good[f] for f in valid_fields}}
    payload: Any = doc
    if as_json:
        try:
            payload = json.dumps(doc).encode()
        except ValueError:  # an integer too long to print: json cannot write it either
            return
    check_outcome(parse_reading(payload, ORIGIN))
