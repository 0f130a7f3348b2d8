"""The flow's Kafka edges: a source of raw records, a reliable producer sink, message
builders for predictions, alerts and dead letters, and topic set-up.

Input: :func:`kafka_input` wraps ``bytewax.connectors.kafka.operators.input`` (one consumer
per Kafka partition, offsets kept in Bytewax recovery state, no consumer group). Good
messages become :class:`RawRecord`; consumer errors become :class:`DeadLetter` instead of
being dropped. :func:`parse_record` turns a record into a ``Reading`` or a dead letter that
keeps the original bytes and key.

Output: :class:`KafkaProducerSink` takes ``(key, value, headers)`` tuples (see
:data:`OutMessage`; the ``*_message`` builders make them). Unlike Bytewax's ``KafkaSink``
it registers a delivery callback, survives a full local queue (``BufferError``) by
waiting, and raises when a message could not be delivered, so a broker fault stops the
flow and recovery replays the epoch instead of losing output. Each ``write_batch`` ends
with a bounded ``flush``: no epoch completes with output still in flight, which makes
the output at-least-once under recovery (consumers dedupe on the ``message_id`` header).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaError, KafkaSourceMessage
from bytewax.connectors.kafka import operators as kop
from bytewax.dataflow import Dataflow, Stream, operator
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import OFFSET_BEGINNING, KafkaException, Message, Producer
from confluent_kafka import KafkaError as ConfluentKafkaError
from confluent_kafka.admin import AdminClient, NewTopic

from models.parsing import MAX_PAYLOAD_ECHO, parse_reading
from models.schemas import Alert, DeadLetter, Origin, Prediction, Reading
from models.schemas import finite as _finite
from models.schemas import json_default as _json_default

logger = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]
"""Kafka headers as confluent-kafka wants them (a list, not a tuple)."""

OutMessage = tuple[bytes | None, bytes | None, Headers]
"""``(key, value, headers)``: what :class:`KafkaProducerSink` writes."""

MetricsHook = Callable[[str, int, float], None]
"""``hook(sink_name, batch_size, seconds)``, called after each delivered batch."""


# --- input -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RawRecord:
    """One Kafka message as the parse step sees it."""

    payload: bytes
    origin: Origin
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True)
class KafkaInputOut:
    """Streams from :func:`kafka_input`: ``oks`` (records) and ``errs`` (consumer errors as
    dead letters), named as in Bytewax's ``KafkaOpOut``; also unpacks like a tuple."""

    oks: Stream[RawRecord]
    errs: Stream[DeadLetter]

    def __iter__(self) -> Iterator[Stream[Any]]:
        return iter((self.oks, self.errs))


def origin_of(topic: str | None, partition: int | None, offset: int | None) -> Origin:
    """Where a Kafka message came from (missing parts stay at Origin's defaults).

    >>> origin_of("raw_sensor_data", 3, 42)
    Origin(source='kafka:raw_sensor_data', partition='3', offset=42)
    >>> origin_of(None, None, None)
    Origin(source='kafka:?', partition='', offset=-1)
    """
    return Origin(
        source=f"kafka:{topic or '?'}",
        partition="" if partition is None or partition < 0 else str(partition),
        offset=-1 if offset is None else offset,
    )


def to_raw_record(msg: KafkaSourceMessage[Any, Any]) -> RawRecord:
    """A consumed message as a :class:`RawRecord` (a null value becomes ``b""``)."""
    return RawRecord(
        payload=msg.value if msg.value is not None else b"",
        origin=origin_of(msg.topic, msg.partition, msg.offset),
        key=msg.key,
        headers=tuple(msg.headers or ()),
    )


def consumer_error_to_dead_letter(error: KafkaError[Any, Any], topic: str) -> DeadLetter:
    """A consumer error as a dead letter: the error's name and text as the reason, plus
    whatever topic, partition, offset, key and bytes the error message carries (for a
    librdkafka error the value is usually the error text itself)."""
    msg = error.msg
    err = error.err
    raw = msg.value if isinstance(msg.value, bytes) else None
    return DeadLetter(
        reason=f"kafka consumer error {err.name()} ({err.code()}): {err.str()}",
        payload=raw.decode("utf-8", errors="replace")[:MAX_PAYLOAD_ECHO] if raw else "",
        origin=origin_of(msg.topic or topic, msg.partition, msg.offset),
        raw=raw,
        key=msg.key if isinstance(msg.key, bytes) else None,
    )


def parse_record(record: RawRecord) -> Reading | DeadLetter:
    """Validate a record's payload; a dead letter keeps the original bytes and key.

    >>> r = RawRecord(b'{"equipment_id": "p-1"', origin_of("raw", 0, 7), key=b"p-1")
    >>> d = parse_record(r)
    >>> d.reason[:12], d.raw, d.key, d.origin.offset
    ('invalid JSON', b'{"equipment_id": "p-1"', b'p-1', 7)
    """
    out = parse_reading(record.payload, record.origin)
    if isinstance(out, DeadLetter):
        return dataclasses.replace(out, raw=record.payload, key=record.key)
    return out


@operator
def kafka_input(
    step_id: str,
    flow: Dataflow,
    *,
    brokers: list[str],
    topic: str,
    client_config: dict[str, str],
    batch_size: int = 1000,
    tail: bool = True,
    starting_offset: int = OFFSET_BEGINNING,
) -> KafkaInputOut:
    """Read one topic: ``records, errors = kafka_input("kafka_in", flow, ...)``.

    Every Kafka partition is a Bytewax source partition whose next offset is recovery
    state (step ``<flow>.<step_id>.kafka.kafka_input``, key ``"<partition>-<topic>"``);
    without recovery every start reads from ``starting_offset``. ``client_config``
    goes to librdkafka as is (SASL/SSL, fetch sizes, ...). ``tail=False`` ends at the end
    of every partition. Consumer errors come out on ``errors`` as dead letters.
    """
    if isinstance(brokers, str):
        raise TypeError(f"{step_id}: brokers must be a list of host:port strings, not a str")
    kin = kop.input(
        "kafka",
        flow,
        brokers=brokers,
        topics=[topic],
        tail=tail,
        starting_offset=starting_offset,
        add_config=dict(client_config),
        batch_size=batch_size,
    )
    records = op.map("to_record", kin.oks, to_raw_record)
    errors = op.map(
        "error_to_dead_letter", kin.errs, lambda e: consumer_error_to_dead_letter(e, topic)
    )
    return KafkaInputOut(records, errors)


# --- message builders --------------------------------------------------------------------


_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False, default=_json_default)


def dumps_compact(obj: Any) -> bytes:
    """Compact UTF-8 JSON; NaN and infinities become null (strict JSON for consumers).

    >>> dumps_compact({"a": 1.5, "b": float("nan"), "c": [1, 2]})
    b'{"a":1.5,"b":null,"c":[1,2]}'
    """
    try:
        text = _ENCODER.encode(obj)
    except ValueError:
        text = _ENCODER.encode(_finite(obj))
    return text.encode("utf-8")


def prediction_id(p: Prediction) -> str:
    """Deterministic message id: the same prediction replayed gets the same id.

    >>> len(prediction_id(_example_prediction()))
    16
    """
    text = f"{p.equipment_id}|{p.ts_ms}|{p.model_version}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def prediction_message(p: Prediction) -> OutMessage:
    """``(key, value, headers)`` for the predictions topic.

    >>> key, value, headers = prediction_message(_example_prediction())
    >>> key, value[:31], headers[0][0]
    (b'turbofan-0007', b'{"equipment_id":"turbofan-0007"', 'message_id')
    """
    return (
        p.equipment_id.encode("utf-8"),
        dumps_compact(p.to_json_dict()),
        [("message_id", prediction_id(p).encode("ascii"))],
    )


def reading_message(r: Reading) -> OutMessage:
    """``(key, value, headers)`` for a reading (raw topic, replays and tests)."""
    text = f"{r.equipment_id}|{r.ts_ms}"
    message_id = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    return (
        r.equipment_id.encode("utf-8"),
        dumps_compact(r.to_json_dict()),
        [("message_id", message_id.encode("ascii"))],
    )


def alert_message(a: Alert) -> OutMessage:
    """``(key, value, headers)`` for the alerts topic; ``message_id`` is the alert id."""
    return (
        a.equipment_id.encode("utf-8"),
        dumps_compact(a.to_json_dict()),
        [("message_id", a.alert_id.encode("utf-8"))],
    )


DLQ_MAX_VALUE_BYTES = 512 * 1024  # a dead letter's copy of the input, well under 1 MB
DLQ_MAX_KEY_BYTES = 1024
DLQ_MAX_REASON_CHARS = 1000


def dead_letter_message(
    d: DeadLetter, source_topic: str | None = None, *, now_ms: int | None = None
) -> OutMessage:
    """``(key, value, headers)`` for a dead-letter topic.

    The value is the original bytes when known (``d.raw``), else the payload text; the
    key is the original key. Headers: ``dlq.reason``, ``dlq.source.topic`` (default: from
    ``d.origin.source``), ``dlq.source.partition``, ``dlq.source.offset``, ``dlq.ts``
    (epoch ms, decimal, when the letter was written: ``now_ms`` or the wall clock) and
    ``dlq.equipment_id`` when known. A value over :data:`DLQ_MAX_VALUE_BYTES` (or a key
    over :data:`DLQ_MAX_KEY_BYTES`) is cut to that size, with ``dlq.truncated`` (or
    ``dlq.key_truncated``) holding the original size: the letter must be producible.

    >>> d = DeadLetter("invalid JSON", "{", origin_of("raw", 2, 9), raw=b"{", key=b"k")
    >>> key, value, headers = dead_letter_message(d, now_ms=5)
    >>> key, value, dict(headers)["dlq.source.topic"], dict(headers)["dlq.source.offset"]
    (b'k', b'{', b'raw', b'9')
    >>> big = DeadLetter("too big", "", origin_of("raw", 0, 1), raw=b"x" * 2_000_000)
    >>> _, value, headers = dead_letter_message(big, now_ms=5)
    >>> len(value), dict(headers)["dlq.truncated"]
    (524288, b'2000000')
    """
    if source_topic is None:
        source_topic = d.origin.source.removeprefix("kafka:")
    ts = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    headers: Headers = [
        ("dlq.reason", d.reason[:DLQ_MAX_REASON_CHARS].encode("utf-8", "backslashreplace")),
        ("dlq.source.topic", source_topic.encode("utf-8")),
        ("dlq.source.partition", d.origin.partition.encode("utf-8")),
        ("dlq.source.offset", str(d.origin.offset).encode("ascii")),
        ("dlq.ts", str(ts).encode("ascii")),
    ]
    if d.equipment_id is not None:
        headers.append(("dlq.equipment_id", d.equipment_id.encode("utf-8", "backslashreplace")))
    value = d.raw if d.raw is not None else d.payload.encode("utf-8", "backslashreplace")
    if len(value) > DLQ_MAX_VALUE_BYTES:
        headers.append(("dlq.truncated", str(len(value)).encode("ascii")))
        value = value[:DLQ_MAX_VALUE_BYTES]
    key = d.key
    if key is not None and len(key) > DLQ_MAX_KEY_BYTES:
        headers.append(("dlq.key_truncated", str(len(key)).encode("ascii")))
        key = key[:DLQ_MAX_KEY_BYTES]
    return (key, value, headers)


def _example_prediction() -> Prediction:
    return Prediction(
        "turbofan-0007", "turbofan_engine", 1_795_000_000_000, 120.0, "cycles", None,
        None, None, 0.8, 0.1, "ok", "rul-gbr", "3",
    )  # fmt: skip


# --- output ------------------------------------------------------------------------------


class KafkaProducerSink(DynamicSink[OutMessage]):
    """Reliable at-least-once producer to one topic; items are :data:`OutMessage` tuples.

    One idempotent ``confluent_kafka.Producer`` per worker (``enable.idempotence=true``,
    ``compression.type=lz4``, ``linger.ms=linger_ms``; ``client_config`` is merged on top).
    ``write_batch`` raises ``RuntimeError`` naming the topic if any message of the batch
    was not delivered or the flush did not finish within ``flush_timeout_s``.
    ``delivered`` and ``failed`` sum the counters of every partition built in this process.
    """

    def __init__(
        self,
        brokers: Sequence[str],
        topic: str,
        client_config: Mapping[str, str] | None = None,
        *,
        linger_ms: int = 5,
        flush_timeout_s: float = 30.0,
        name: str | None = None,
        metrics: MetricsHook | None = None,
    ) -> None:
        if isinstance(brokers, str):
            raise TypeError("brokers must be a list of host:port strings, not a str")
        self.brokers = list(brokers)
        self.topic = topic
        self.client_config = dict(client_config or {})
        self.linger_ms = linger_ms
        self.flush_timeout_s = flush_timeout_s
        self.name = name or topic
        self.metrics = metrics
        self.partitions: list[KafkaProducerPartition] = []

    def producer_config(self) -> dict[str, Any]:
        """The librdkafka configuration each partition's producer gets."""
        config: dict[str, Any] = {
            "bootstrap.servers": ",".join(self.brokers),
            "enable.idempotence": "true",
            "acks": "all",
            "linger.ms": str(self.linger_ms),
            "compression.type": "lz4",
        }
        config.update(self.client_config)
        return config

    def build(self, step_id: str, worker_index: int, worker_count: int) -> KafkaProducerPartition:
        part = KafkaProducerPartition(
            self.producer_config(),
            self.topic,
            flush_timeout_s=self.flush_timeout_s,
            name=self.name,
            metrics=self.metrics,
            label=f"{step_id} (worker {worker_index}/{worker_count})",
        )
        self.partitions.append(part)
        return part

    @property
    def delivered(self) -> int:
        return sum(p.delivered for p in self.partitions)

    @property
    def failed(self) -> int:
        return sum(p.failed for p in self.partitions)


class KafkaProducerPartition(StatelessSinkPartition[OutMessage]):
    """One worker's producer (built from ``config``, a librdkafka configuration). Not
    thread-safe: Bytewax calls it from one worker thread."""

    def __init__(
        self,
        config: Mapping[str, Any],
        topic: str,
        *,
        flush_timeout_s: float = 30.0,
        name: str | None = None,
        metrics: MetricsHook | None = None,
        label: str = "",
    ) -> None:
        self.topic = topic
        self.flush_timeout_s = flush_timeout_s
        self.name = name or topic
        self.metrics = metrics
        self.label = label or topic
        self.delivered = 0
        self.failed = 0
        self.buffer_full_waits = 0  # how often produce() met a full queue and waited
        self.truncated = 0  # messages over the size limit, sent cut to fit
        self.max_message_bytes = int(config.get("message.max.bytes", 1_000_000))
        # The first delivery failure (partition, key and librdkafka's error).
        self.first_error: str | None = None
        self.broken = False  # a write_batch raised: every later call raises too
        self._producer = Producer({**config, "error_cb": self._on_error})

    def _on_delivery(self, err: ConfluentKafkaError | None, msg: Message) -> None:
        if err is None:
            self.delivered += 1
            return
        self.failed += 1
        if self.first_error is None:
            self.first_error = (
                f"{err.name()}: {err.str()} (partition {msg.partition()}, key {msg.key()!r})"
            )

    def _on_error(self, err: ConfluentKafkaError) -> None:
        # Non-fatal client errors (a broker down, ...) are retried by librdkafka and end
        # in a delivery report; a fatal one (idempotence broken) ends the producer.
        if err.fatal():
            if self.first_error is None:
                self.first_error = f"fatal producer error {err.name()}: {err.str()}"
        else:
            logger.warning("kafka producer %s: %s", self.label, err.str())

    def _fail(self, what: str) -> RuntimeError:
        self.broken = True
        return RuntimeError(f"Kafka sink {self.label}, topic {self.topic!r}: {what}")

    def write_batch(self, items: list[OutMessage]) -> None:
        if self.broken:
            raise self._fail(f"an earlier batch failed: {self.first_error or 'flush timed out'}")
        t0 = time.perf_counter()
        producer = self._producer
        for key, value, headers in items:
            while True:
                try:
                    producer.produce(
                        self.topic,
                        value=value,
                        key=key,
                        headers=cast(Any, headers) or None,
                        on_delivery=self._on_delivery,
                    )
                    break
                except BufferError:
                    # The local queue is full: serve delivery reports until there is room.
                    self.buffer_full_waits += 1
                    producer.poll(0.1)
                    if self.first_error is not None:
                        break
                except KafkaException as exc:
                    cut = self._truncated(exc, key, value, headers)
                    if cut is None:
                        raise self._fail(f"produce() refused a message ({exc})") from exc
                    key, value, headers = cut
            if self.first_error is not None:
                break  # the batch has failed: stop producing, raise below
            producer.poll(0)
        if self.first_error is None:
            remaining = producer.flush(self.flush_timeout_s)
            if remaining and self.first_error is None:
                raise self._fail(
                    f"{remaining} message(s) still undelivered after a "
                    f"{self.flush_timeout_s:g} s flush"
                )
        if self.first_error is not None:
            raise self._fail(f"delivery failed ({self.failed} failed so far): {self.first_error}")
        if self.metrics is not None:
            self.metrics(self.name, len(items), time.perf_counter() - t0)

    def _truncated(
        self, exc: KafkaException, key: bytes | None, value: bytes | None, headers: Headers
    ) -> OutMessage | None:
        """A message too large for the producer, cut to fit with a ``pm.truncated`` header
        (its original size) and a log line; None for any other error. One poison message
        must not stop the flow (its replay after a restart would stop it again)."""
        err = exc.args[0] if exc.args else None
        if not isinstance(err, ConfluentKafkaError) or value is None:
            return None
        if err.code() != ConfluentKafkaError.MSG_SIZE_TOO_LARGE or any(
            name == "pm.truncated" for name, _ in headers
        ):
            return None
        overhead = len(key or b"") + sum(len(n) + len(v or b"") for n, v in headers) + 1024
        room = max(0, self.max_message_bytes - overhead)
        self.truncated += 1
        logger.warning("kafka sink %s: a %d-byte message is over the %d-byte limit; "
                       "sent truncated to %d bytes", self.label, len(value),
                       self.max_message_bytes, room)  # fmt: skip
        return key, value[:room], [*headers, ("pm.truncated", str(len(value)).encode("ascii"))]

    def close(self) -> None:
        """Flush what is left; log, never raise. Bytewax calls ``close`` from a destructor,
        also while unwinding from an error, where a second exception aborts the process."""
        try:
            if self.broken:
                # The failed epoch is replayed after recovery: do not wait on a broken link.
                self._producer.purge()
                return
            remaining = self._producer.flush(self.flush_timeout_s)
            if remaining or self.first_error is not None:
                logger.error(
                    "kafka sink %s, topic %r: %d message(s) undelivered at close (%s)",
                    self.label, self.topic, remaining, self.first_error,
                )  # fmt: skip
        except Exception:
            logger.exception("kafka sink %s, topic %r: close failed", self.label, self.topic)


# --- topics ------------------------------------------------------------------------------


def ensure_topics(
    brokers: Sequence[str],
    topics: Mapping[str, int],
    client_config: Mapping[str, str] | None = None,
    *,
    timeout_s: float = 30.0,
) -> None:
    """Create the missing ``topics`` (name -> partition count) with the broker's default
    replication factor, then wait until their metadata is visible. Existing topics are
    kept as they are (a warning is logged when their partition count differs).
    """
    config: dict[str, Any] = {"bootstrap.servers": ",".join(brokers)}
    config.update(client_config or {})
    admin = AdminClient(config)
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=n) for name, n in topics.items()],
        request_timeout=timeout_s,
    )
    for name, future in futures.items():
        try:
            future.result(timeout=timeout_s)
        except KafkaException as exc:
            err = exc.args[0]
            if err.code() != ConfluentKafkaError.TOPIC_ALREADY_EXISTS:
                raise RuntimeError(f"could not create Kafka topic {name!r}: {err.str()}") from exc
    deadline = time.monotonic() + timeout_s
    while True:
        meta = admin.list_topics(timeout=max(1.0, deadline - time.monotonic()))
        missing = [
            name
            for name in topics
            if name not in meta.topics
            or meta.topics[name].error is not None
            or not meta.topics[name].partitions
        ]
        if not missing:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"Kafka topics not visible after {timeout_s:g} s: {missing}")
        time.sleep(0.1)
    for name, want in topics.items():
        have = len(meta.topics[name].partitions)
        if have != want:
            logger.warning("Kafka topic %r has %d partitions, not %d", name, have, want)
