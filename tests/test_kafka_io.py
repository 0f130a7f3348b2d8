"""Tests of connectors/kafka_io.py: pure message builders and mapping without a broker;
the source, the sink and a whole parse-and-route flow against a real Kafka broker.

The broker comes from PM_TEST_KAFKA_BROKERS (``host:port[,host:port]``); every integration
test creates its own uniquely named topics and deletes them afterwards.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, TypeGuard

import bytewax.operators as op
import pytest
from bytewax.connectors.kafka import KafkaError, KafkaSourceMessage
from bytewax.dataflow import Dataflow
from bytewax.errors import BytewaxRuntimeError
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka import KafkaError as ConfluentKafkaError
from confluent_kafka.admin import AdminClient, NewTopic

from connectors.kafka_io import (
    KafkaProducerSink,
    OutMessage,
    RawRecord,
    alert_message,
    consumer_error_to_dead_letter,
    dead_letter_message,
    ensure_topics,
    kafka_input,
    parse_record,
    prediction_message,
    reading_message,
    to_raw_record,
)
from models.schemas import Alert, DeadLetter, Origin, Prediction, Reading

integration = pytest.mark.integration

T0 = 1_795_000_000_000  # 2026-11-18T11:06:40Z


def _prediction(**kw: Any) -> Prediction:
    fields: dict[str, Any] = dict(
        equipment_id="turbofan-0007",
        equipment_type="turbofan_engine",
        ts_ms=T0,
        rul=87.5,
        rul_unit="cycles",
        rul_hours=None,
        rul_lower=70.0,
        rul_upper=101.25,
        health=0.61,
        anomaly_score=float("nan"),
        status="warning",
        model_name="rul-gbr",
        model_version="4",
        top_sensors=("T24", "P30"),
    )
    fields.update(kw)
    return Prediction(**fields)


# --- pure: builders and mapping ----------------------------------------------------------


def test_prediction_message_key_value_and_deterministic_id() -> None:
    key, value, headers = prediction_message(_prediction())
    assert key == b"turbofan-0007" and value is not None
    assert b" " not in value.split(b'"status"')[0]  # compact separators
    doc = json.loads(value)  # strict JSON: NaN became null
    assert doc["anomaly_score"] is None and doc["model"] == {"name": "rul-gbr", "version": "4"}
    assert doc["top_sensors"] == ["T24", "P30"]
    ids = dict(headers)
    assert len(ids["message_id"]) == 16
    # Same equipment, time and model version -> same id, whatever the scores.
    assert prediction_message(_prediction(health=0.1))[2] == headers
    assert prediction_message(_prediction(ts_ms=T0 + 1))[2] != headers
    assert prediction_message(_prediction(model_version="5"))[2] != headers


def test_alert_message_uses_alert_id() -> None:
    alert = Alert(
        "al-123",
        "pump-01",
        T0,
        "rul_low",
        "critical",
        "firing",
        9.5,
        10.0,
        "RUL low",
        {"rul": 9.5},
    )
    key, value, headers = alert_message(alert)
    assert key == b"pump-01" and value is not None
    assert headers == [("message_id", b"al-123")]
    assert json.loads(value)["alert_id"] == "al-123"


def test_dead_letter_message_keeps_original_bytes_and_key() -> None:
    raw = b"\xff\xfe not utf-8"
    dl = DeadLetter(
        "payload is not UTF-8",
        "?? not utf-8",
        Origin("kafka:raw", "3", 41),
        raw=raw,
        key=b"k1",
        equipment_id="p-9",
    )
    key, value, headers = dead_letter_message(dl, "raw", now_ms=T0)
    h = dict(headers)
    assert (key, value) == (b"k1", raw)
    assert h["dlq.reason"] == b"payload is not UTF-8"
    assert (h["dlq.source.topic"], h["dlq.source.partition"], h["dlq.source.offset"]) == (
        b"raw",
        b"3",
        b"41",
    )
    assert h["dlq.ts"] == str(T0).encode() and h["dlq.equipment_id"] == b"p-9"


def test_dead_letter_message_without_raw_sends_payload_text() -> None:
    dl = DeadLetter("late", '{"a": "é"}', Origin("jsonl:x"))
    key, value, headers = dead_letter_message(dl)
    assert key is None and value == '{"a": "é"}'.encode()
    assert dict(headers)["dlq.source.topic"] == b"jsonl:x"
    assert abs(int(dict(headers)["dlq.ts"]) - time.time() * 1000) < 60_000


def test_parse_record_good_and_bad() -> None:
    reading = Reading("pump-01", "pump", T0, {"a": 1.0}, {"s": 0.5})
    _, value, _ = reading_message(reading)
    assert value is not None
    assert parse_record(RawRecord(value, Origin("kafka:t", "0", 5))) == reading
    bad = RawRecord(b'{"equipment_id": "pump-01"}', Origin("kafka:t", "2", 6), key=b"pump-01")
    dl = parse_record(bad)
    assert isinstance(dl, DeadLetter)
    assert dl.reason == "missing field 'equipment_type'"
    assert (dl.raw, dl.key, dl.origin) == (bad.payload, b"pump-01", bad.origin)


def test_source_message_and_consumer_error_mapping() -> None:
    msg = KafkaSourceMessage(b"k", None, topic="raw", headers=[("h", b"1")], offset=7, partition=1)
    rec = to_raw_record(msg)
    assert rec == RawRecord(b"", Origin("kafka:raw", "1", 7), b"k", (("h", b"1"),))
    err = ConfluentKafkaError(ConfluentKafkaError._VALUE_DESERIALIZATION, "boom")
    dl = consumer_error_to_dead_letter(KafkaError(err, msg._with_value(b"\x00\x01")), "raw")
    assert "_VALUE_DESERIALIZATION" in dl.reason and "boom" in dl.reason
    assert (dl.raw, dl.key, dl.origin) == (b"\x00\x01", b"k", Origin("kafka:raw", "1", 7))
    # An error without topic, partition or offset still becomes a dead letter.
    bare = KafkaSourceMessage(None, None)
    dl = consumer_error_to_dead_letter(KafkaError(err, bare), "raw")
    assert dl.origin == Origin("kafka:raw", "", -1) and dl.raw is None


def test_kafka_input_streams_by_name_and_by_unpacking() -> None:
    flow = Dataflow("shape")  # building a flow does not contact the broker
    out = kafka_input("kafka_in", flow, brokers=["127.0.0.1:1"], topic="t", client_config={})
    records, errors = out
    assert (records.stream_id, errors.stream_id) == (out.oks.stream_id, out.errs.stream_id)
    assert records.stream_id.startswith("shape.kafka_in.to_record")
    with pytest.raises(TypeError, match="not a str"):
        kafka_input("k2", flow, brokers="127.0.0.1:1", topic="t", client_config={})  # type: ignore[arg-type]


# --- helpers for the broker tests --------------------------------------------------------


@pytest.fixture(scope="module")
def brokers() -> list[str]:
    value = os.environ.get("PM_TEST_KAFKA_BROKERS")
    if not value:
        pytest.skip("PM_TEST_KAFKA_BROKERS is not set: no Kafka broker to test against")
    return [b.strip() for b in value.split(",") if b.strip()]


@pytest.fixture
def make_topics(brokers: list[str]) -> Iterator[Callable[..., list[str]]]:
    """``make_topics(4, 2)`` -> two fresh topic names with 4 and 2 partitions."""
    created: list[str] = []

    def make(*partitions: int, config: dict[str, str] | None = None) -> list[str]:
        names = [f"pm-test-{uuid.uuid4().hex[:10]}" for _ in partitions]
        if config:
            admin = AdminClient({"bootstrap.servers": ",".join(brokers)})
            futures = admin.create_topics(
                [
                    NewTopic(n, num_partitions=p, config=config)
                    for n, p in zip(names, partitions, strict=True)
                ]
            )
            for f in futures.values():
                f.result(timeout=30)
        ensure_topics(brokers, dict(zip(names, partitions, strict=True)), {})
        created.extend(names)
        return names

    yield make
    if created:
        admin = AdminClient({"bootstrap.servers": ",".join(brokers)})
        for f in admin.delete_topics(created, operation_timeout=30).values():
            f.result(timeout=30)


def produce(
    brokers: list[str], topic: str, items: list[tuple[int, bytes | None, bytes]]
) -> list[tuple[int, int]]:
    """Produce ``(partition, key, value)`` items in order; their (partition, offset)."""
    producer = Producer({"bootstrap.servers": ",".join(brokers), "linger.ms": "5"})
    where: list[tuple[int, int] | None] = [None] * len(items)

    def report(i: int) -> Callable[[Any, Any], None]:
        def cb(err: Any, msg: Any) -> None:
            assert err is None, err
            where[i] = (msg.partition(), msg.offset())

        return cb

    for i, (partition, key, value) in enumerate(items):
        producer.produce(topic, value=value, key=key, partition=partition, on_delivery=report(i))
        producer.poll(0)
    assert producer.flush(30) == 0
    assert all(w is not None for w in where)
    return [w for w in where if w is not None]


def consume_all(brokers: list[str], topic: str, timeout_s: float = 30.0) -> list[Any]:
    """Every message of ``topic``, read up to the end of each partition."""
    admin = AdminClient({"bootstrap.servers": ",".join(brokers)})
    parts = list(admin.list_topics(topic, timeout=10).topics[topic].partitions)
    consumer = Consumer(
        {
            "bootstrap.servers": ",".join(brokers),
            "group.id": "pm-test-reader",
            "enable.auto.commit": "false",
            "enable.partition.eof": "true",
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    out: list[Any] = []
    at_end: set[int] = set()
    deadline = time.monotonic() + timeout_s
    try:
        while len(at_end) < len(parts):
            assert time.monotonic() < deadline, f"{topic}: no EOF on {set(parts) - at_end}"
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is not None and err.code() == ConfluentKafkaError._PARTITION_EOF:
                at_end.add(msg.partition() or 0)
            elif err is not None:
                raise KafkaException(err)
            else:
                out.append(msg)
    finally:
        consumer.close()
    return out


def good_readings(n: int) -> list[Reading]:
    return [
        Reading(
            f"turbofan-{i % 7:04d}",
            "turbofan_engine",
            T0 + 1000 * i,
            {"T24": 642.1 + i / 8, "T30": 1589.7, "P30": 554.36 - i / 16},
            {"op_setting_1": 0.0023, "op_setting_2": -0.0004},
        )
        for i in range(n)
    ]


# (value, expected part of the reason)
BAD_PAYLOADS: list[tuple[bytes, str]] = [
    (b'{"equipment_id": "turbofan-0001", "sensors": ', "invalid JSON"),
    (
        b'{"equipment_id": "turbofan-0001", "ts": "2026-11-27T09:00:00Z", "sensors": {"T24": 1}}',
        "missing field 'equipment_type'",
    ),
    (
        b'{"equipment_id": "turbofan-0002", "equipment_type": "turbofan_engine", '
        b'"ts": "2026-11-27T09:00:00Z", "sensors": {"T24": NaN}}',
        "not a finite number",
    ),
    (b"\xff\xfe\x00\x81 not utf-8", "not UTF-8"),
    (b"[1, 2, 3]", "must be a JSON object"),
    (b"", "invalid JSON"),
    (
        b'{"equipment_id": "turbofan-0003", "equipment_type": "turbofan_engine", '
        b'"ts": "yesterday", "sensors": {"T24": 1}}',
        "not an ISO-8601 timestamp",
    ),
]


def fill_source(
    brokers: list[str], topic: str, n_good: int, partitions: int
) -> tuple[list[bytes], dict[bytes, tuple[bytes, str, tuple[int, int]]]]:
    """Good readings round-robin over the partitions, then every bad payload on each
    partition (key ``bad-<partition>-<i>``). Returns the good values and, per bad key,
    (value, reason part, (partition, offset))."""
    good = [bytes(reading_message(r)[1] or b"") for r in good_readings(n_good)]
    items: list[tuple[int, bytes | None, bytes]] = [
        (i % partitions, f"turbofan-{i % 7:04d}".encode(), v) for i, v in enumerate(good)
    ]
    bad_keys: list[tuple[bytes, bytes, str]] = []
    for p in range(partitions):
        for i, (value, reason) in enumerate(BAD_PAYLOADS):
            key = f"bad-{p}-{i}".encode()
            items.append((p, key, value))
            bad_keys.append((key, value, reason))
    where = produce(brokers, topic, items)
    bad = {
        key: (value, reason, where[len(good) + j])
        for j, (key, value, reason) in enumerate(bad_keys)
    }
    return good, bad


def _is_reading(x: Reading | DeadLetter) -> TypeGuard[Reading]:
    return isinstance(x, Reading)


def _as_dead_letter(x: Reading | DeadLetter) -> DeadLetter:
    assert isinstance(x, DeadLetter)
    return x


def parse_and_route_flow(
    brokers: list[str], src: str, out_sink: KafkaProducerSink, dlq_sink: KafkaProducerSink
) -> Dataflow:
    flow = Dataflow("kafka_io_test")
    records, errors = kafka_input(
        "kafka_in", flow, brokers=brokers, topic=src, client_config={}, tail=False, batch_size=50
    )
    parsed = op.map("parse", records, parse_record)
    split = op.branch("is_reading", parsed, _is_reading)
    op.output("out", op.map("reading_msg", split.trues, reading_message), out_sink)
    bad = op.map("as_dead_letter", split.falses, _as_dead_letter)
    dead = op.merge("dead", bad, errors)
    op.output("dlq", op.map("dlq_msg", dead, lambda d: dead_letter_message(d, src)), dlq_sink)
    return flow


def check_routed(
    brokers: list[str],
    src: str,
    out: str,
    dlq: str,
    good: list[bytes],
    bad: dict[bytes, tuple[bytes, str, tuple[int, int]]],
) -> None:
    got = consume_all(brokers, out)
    # Exactly once: the multiset of output values is the multiset of good inputs.
    assert Counter(m.value() for m in got) == Counter(good)
    assert all(dict(m.headers() or [])["message_id"] for m in got)
    dead = consume_all(brokers, dlq)
    assert len(dead) == len(bad)
    seen: set[bytes] = set()
    for m in dead:
        key = m.key()
        assert key in bad and key not in seen, key
        seen.add(key)
        value, reason, (partition, offset) = bad[key]
        h = dict(m.headers())
        assert m.value() == value  # the original bytes, even when not UTF-8 or empty
        assert reason in h["dlq.reason"].decode()
        assert h["dlq.source.topic"] == src.encode()
        assert (int(h["dlq.source.partition"]), int(h["dlq.source.offset"])) == (partition, offset)


# --- broker: source + sinks in a flow ----------------------------------------------------


@integration
def test_flow_routes_good_readings_and_dead_letters(
    brokers: list[str], make_topics: Callable[..., list[str]]
) -> None:
    src, out, dlq = make_topics(4, 2, 1)
    good, bad = fill_source(brokers, src, n_good=400, partitions=4)
    out_sink = KafkaProducerSink(brokers, out, {})
    dlq_sink = KafkaProducerSink(brokers, dlq, {})
    run_main(parse_and_route_flow(brokers, src, out_sink, dlq_sink))
    assert (out_sink.delivered, out_sink.failed) == (400, 0)
    assert (dlq_sink.delivered, dlq_sink.failed) == (len(bad), 0)
    check_routed(brokers, src, out, dlq, good, bad)


@integration
def test_flow_with_two_workers(brokers: list[str], make_topics: Callable[..., list[str]]) -> None:
    src, out, dlq = make_topics(4, 2, 1)
    good, bad = fill_source(brokers, src, n_good=400, partitions=4)
    out_sink = KafkaProducerSink(brokers, out, {})
    dlq_sink = KafkaProducerSink(brokers, dlq, {})
    flow = parse_and_route_flow(brokers, src, out_sink, dlq_sink)
    cluster_main(flow, addresses=[], proc_id=0, worker_count_per_proc=2)
    assert len(out_sink.partitions) == 2  # one producer per worker
    assert out_sink.delivered == 400 and dlq_sink.delivered == len(bad)
    check_routed(brokers, src, out, dlq, good, bad)


@integration
def test_consumer_errors_become_dead_letters(
    brokers: list[str], make_topics: Callable[..., list[str]]
) -> None:
    """Start beyond the end with auto.offset.reset=error: librdkafka reports an error per
    partition; each must come out as a dead letter (then the flow is stopped on purpose,
    since an errored partition never reaches EOF)."""
    (src,) = make_topics(2)
    produce(brokers, src, [(0, None, b"{}"), (1, None, b"{}")])
    seen: list[DeadLetter] = []

    class Enough(Exception):
        pass

    def collect(_step: str, d: DeadLetter) -> None:
        seen.append(d)
        if len(seen) == 2:
            raise Enough

    def too_late(_x: object) -> str:
        raise TimeoutError("no consumer error reached the errors stream within 30 s")

    flow = Dataflow("kafka_errs_test")
    records, errors = kafka_input(
        "kafka_in",
        flow,
        brokers=brokers,
        topic=src,
        tail=False,
        starting_offset=1000,
        client_config={"auto.offset.reset": "error"},
    )
    op.output("records", records, TestingSink([]))
    op.inspect("collect", errors, collect)
    guard = op.input(
        "guard", flow, TestingSource([TestingSource.PAUSE(timedelta(seconds=30)), "x"])
    )
    op.inspect("guard_out", op.map("too_late", guard, too_late))
    with pytest.raises(BytewaxRuntimeError) as info:
        run_main(flow)
    assert _chain_has(info.value, Enough), info.value
    assert sorted(d.origin.partition for d in seen) == ["0", "1"]
    for d in seen:
        assert d.origin.source == f"kafka:{src}" and d.origin.offset == 1000
        assert "_AUTO_OFFSET_RESET" in d.reason and "out of range" in d.reason.lower()


def _chain_has(exc: BaseException | None, kind: type[BaseException]) -> bool:
    while exc is not None:
        if isinstance(exc, kind):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _chain_messages(exc: BaseException | None) -> list[str]:
    out = []
    while exc is not None:
        out.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return out


# --- broker: sink failure modes ----------------------------------------------------------


def _msgs(n: int, size: int = 20) -> list[OutMessage]:
    return [(f"k{i}".encode(), os.urandom(size), [("i", str(i).encode())]) for i in range(n)]


@integration
def test_sink_full_queue_waits_instead_of_failing(
    brokers: list[str], make_topics: Callable[..., list[str]]
) -> None:
    (topic,) = make_topics(3)
    sink = KafkaProducerSink(brokers, topic, {"queue.buffering.max.messages": "10"})
    part = sink.build("out", 0, 1)
    batch = _msgs(1000)
    part.write_batch(batch)
    assert part.buffer_full_waits > 0  # the BufferError path really ran
    assert (sink.delivered, sink.failed) == (1000, 0)
    part.close()
    got = consume_all(brokers, topic)
    assert Counter(m.value() for m in got) == Counter(v for _, v, _ in batch)


@integration
def test_sink_raises_when_the_broker_rejects_a_message(
    brokers: list[str], make_topics: Callable[..., list[str]]
) -> None:
    (topic,) = make_topics(1, config={"max.message.bytes": "2000"})
    part = KafkaProducerSink(brokers, topic, {}).build("out", 0, 1)
    part.write_batch(_msgs(5))
    assert part.delivered == 5
    big: list[OutMessage] = [
        (b"big", os.urandom(20_000), [])
    ]  # random bytes: lz4 cannot shrink them
    with pytest.raises(RuntimeError, match=rf"{topic}.*MSG_SIZE_TOO_LARGE"):
        part.write_batch(_msgs(3) + big)
    # The broker rejects the whole record batch the big message travelled in.
    assert part.failed >= 1 and part.delivered + part.failed == 5 + 4
    with pytest.raises(RuntimeError, match="an earlier batch failed: MSG_SIZE_TOO_LARGE"):
        part.write_batch(_msgs(1))  # a failed sink stays failed


def test_sink_raises_when_delivery_times_out() -> None:
    """Nothing listens on 127.0.0.1:1: each message times out after 300 ms."""
    sink = KafkaProducerSink(["127.0.0.1:1"], "nowhere", {"message.timeout.ms": "300"})
    part = sink.build("out", 0, 1)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=r"topic 'nowhere': delivery failed.*_MSG_TIMED_OUT"):
        part.write_batch(_msgs(5))
    assert time.monotonic() - t0 < 10
    assert (part.delivered, part.failed) == (0, 5)


def test_sink_raises_when_flush_times_out() -> None:
    sink = KafkaProducerSink(
        ["127.0.0.1:1"], "nowhere", {"message.timeout.ms": "5000"}, flush_timeout_s=0.3
    )
    part = sink.build("out", 0, 1)
    with pytest.raises(RuntimeError, match=r"'nowhere': 3 message\(s\) still undelivered"):
        part.write_batch(_msgs(3))


def test_sink_failure_stops_the_flow() -> None:
    sink = KafkaProducerSink(["127.0.0.1:1"], "nowhere", {"message.timeout.ms": "300"})
    flow = Dataflow("kafka_sink_fail")
    items = op.input("inp", flow, TestingSource(_msgs(3)))
    op.output("out", items, sink)
    with pytest.raises(BytewaxRuntimeError) as info:
        run_main(flow)
    assert any("topic 'nowhere': delivery failed" in m for m in _chain_messages(info.value))
    assert sink.delivered == 0 and sink.failed >= 1


def test_sink_producer_config() -> None:
    sink = KafkaProducerSink(
        ["b1:9092", "b2:9092"], "t", {"linger.ms": "50", "security.protocol": "SASL_SSL"}
    )
    cfg = sink.producer_config()
    assert cfg["bootstrap.servers"] == "b1:9092,b2:9092"
    assert cfg["enable.idempotence"] == "true" and cfg["compression.type"] == "lz4"
    assert cfg["linger.ms"] == "50" and cfg["security.protocol"] == "SASL_SSL"
    with pytest.raises(TypeError):
        KafkaProducerSink("b1:9092", "t")


@integration
def test_sink_metrics_hook_is_called(
    brokers: list[str], make_topics: Callable[..., list[str]]
) -> None:
    (topic,) = make_topics(1)
    calls: list[tuple[str, int, float]] = []
    sink = KafkaProducerSink(brokers, topic, {}, name="preds", metrics=lambda *a: calls.append(a))
    part = sink.build("out", 0, 1)
    part.write_batch(_msgs(7))
    part.write_batch(_msgs(2))
    assert [(n, k) for n, k, _ in calls] == [("preds", 7), ("preds", 2)]
    assert all(s >= 0 for _, _, s in calls)


@integration
def test_ensure_topics_is_idempotent(
    brokers: list[str], make_topics: Callable[..., list[str]]
) -> None:
    (name,) = make_topics(3)
    ensure_topics(brokers, {name: 3}, {})  # exists already: no error
    admin = AdminClient({"bootstrap.servers": ",".join(brokers)})
    assert len(admin.list_topics(name, timeout=10).topics[name].partitions) == 3


def test_sink_truncates_a_message_over_the_producer_limit_instead_of_failing(
    brokers: list[str], make_topics: Callable[..., list[str]]
) -> None:
    """One oversized message (e.g. a dead letter's copy of a huge input) must not stop the
    flow: it goes out cut to fit, with a ``pm.truncated`` header giving its size."""
    (topic,) = make_topics(1)
    part = KafkaProducerSink(brokers, topic, {"message.max.bytes": "200000"}).build("out", 0, 1)
    big: list[OutMessage] = [(b"big", os.urandom(300_000), [("h", b"1")])]
    part.write_batch(_msgs(2) + big + _msgs(2))
    assert part.delivered == 5 and part.truncated == 1
    c = Consumer(
        {
            "bootstrap.servers": ",".join(brokers),
            "group.id": uuid.uuid4().hex,
            "auto.offset.reset": "earliest",
        }
    )
    c.subscribe([topic])
    got: list[Any] = []
    for _ in range(40):
        got += [m for m in c.consume(10, timeout=0.5) if not m.error()]
        if len(got) >= 5:
            break
    c.close()
    cut = [m for m in got if m.key() == b"big"]
    assert len(got) == 5 and len(cut) == 1
    headers = dict(cut[0].headers())
    assert headers["pm.truncated"] == b"300000" and headers["h"] == b"1"
    assert len(cut[0].value()) < 200_000
