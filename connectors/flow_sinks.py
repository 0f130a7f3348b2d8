"""Bytewax sinks for the real services: PostgreSQL/TimescaleDB, Redis and alert delivery.

Redis status and alert delivery never make the stream wait on Redis or on an endpoint:
status writes degrade while Redis is down, and alerts are only recorded here and sent by
a background worker (``connectors.alert_delivery``).

PostgreSQL is a ``FixedPartitionedSink``: Bytewax calls a stateful sink partition's
``snapshot()`` at the end of every epoch, and ours flushes there. So nothing an epoch
produced is still buffered when that epoch's snapshot (with the source offsets) commits:
buffering by size or time never turns into loss after a crash, only into replays, which
the idempotent writes absorb. ``close()`` never raises (Bytewax aborts the process if it
does while handling another error).
"""

from __future__ import annotations

import logging
import time
import zlib
from typing import Any

from bytewax.outputs import (
    DynamicSink,
    FixedPartitionedSink,
    StatefulSinkPartition,
    StatelessSinkPartition,
)

from alerting.notify import AppriseNotifier
from connectors import alert_delivery, metrics
from connectors.alert_delivery import DeliveryWorker
from connectors.postgres_sink import PostgresWriter
from connectors.settings import AlertDeliverySettings
from models.schemas import Alert, Prediction, Reading

log = logging.getLogger(__name__)

Stored = Reading | Prediction | Alert


class _PostgresPartition(StatefulSinkPartition[Stored, None]):
    """One writer; its outages show in ``pm_sink_up``, ``pm_sink_retries_total`` and
    ``pm_sink_backlog_rows`` while they last (the worker is blocked, the metrics server is
    not)."""

    def __init__(self, writer: PostgresWriter, part: str = "pg-0") -> None:
        self.writer = writer
        self.part = part
        writer.on_state = self._on_state
        metrics.sink_state("postgres", part, True, 0)

    def _on_state(self, up: bool, held: int, retried: bool) -> None:
        metrics.sink_state("postgres", self.part, up, held)
        if retried:
            metrics.SINK_RETRIES.labels("postgres").inc()

    def write_batch(self, values: list[Stored]) -> None:
        readings = [v for v in values if isinstance(v, Reading)]
        predictions = [v for v in values if isinstance(v, Prediction)]
        alerts = [v for v in values if isinstance(v, Alert)]
        if readings:
            self.writer.add_readings(readings)
        if predictions:
            self.writer.add_predictions(predictions)
        if alerts:
            self.writer.add_alerts(alerts)
        self._flush(lambda: self.writer.maybe_flush(time.monotonic()))

    def _flush(self, fn: Any) -> None:
        before = self.writer.pending
        t0 = time.perf_counter()
        retries = self.writer.retries
        if fn() and before:
            metrics.sink_observer("postgres", before, time.perf_counter() - t0)
        if self.writer.retries > retries:
            metrics.SINK_ERRORS.labels("postgres").inc(self.writer.retries - retries)

    def snapshot(self) -> None:
        # End of epoch: make everything durable before the epoch's offsets are committed.
        self._flush(lambda: self.writer.flush() >= 0)

    def close(self) -> None:
        try:
            self.writer.close()
        except Exception:  # never raise from close()
            log.exception("postgres sink: final flush failed")


class PostgresSink(FixedPartitionedSink[Stored, None]):
    """Readings, predictions and alerts into PostgreSQL, spread over ``partitions``
    writers by equipment id (each with its own connection)."""

    def __init__(
        self,
        dsn: str,
        buffer_size: int = 1000,
        write_interval_s: float = 10.0,
        partitions: int = 2,
        statement_timeout_s: float = 60.0,
        lock_timeout_s: float = 10.0,
    ) -> None:
        self.dsn = dsn
        self.buffer_size = buffer_size
        self.write_interval_s = write_interval_s
        self.partitions = partitions
        self.statement_timeout_s = statement_timeout_s
        self.lock_timeout_s = lock_timeout_s

    def list_parts(self) -> list[str]:
        return [f"pg-{i}" for i in range(self.partitions)]

    def part_fn(self, item_key: str) -> int:
        return zlib.crc32(item_key.encode())

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _PostgresPartition:
        writer = PostgresWriter(
            self.dsn,
            buffer_size=self.buffer_size,
            write_interval_s=self.write_interval_s,
            application_name=f"pm-flow-{for_part}",
            statement_timeout_s=self.statement_timeout_s,
            lock_timeout_s=self.lock_timeout_s,
        )
        return _PostgresPartition(writer, for_part)


class _StatusPartition(StatelessSinkPartition[Prediction]):
    """Writes the newest status per equipment. While Redis is down it keeps the newest
    per equipment in memory (one per machine of this worker) and writes them when Redis
    returns, probing every ``probe_s``: the stream never waits for Redis."""

    def __init__(self, url: str, probe_s: float = 2.0) -> None:
        from connectors.redis_state import RedisHealth, RedisStatusStore

        self.store = RedisStatusStore(url, retry_attempts=1, socket_timeout_s=2.0)
        self.health = RedisHealth("status", probe_s)
        self.pending: dict[str, Prediction] = {}

    def write_batch(self, items: list[Prediction]) -> None:
        import redis

        for p in items:
            cur = self.pending.get(p.equipment_id)
            if cur is None or p.ts_ms >= cur.ts_ms:
                self.pending[p.equipment_id] = p
        if not self.health.should_try():
            return
        t0 = time.perf_counter()
        try:
            self.store.write(list(self.pending.values()))
        except redis.RedisError as exc:
            self.health.failed(exc)
            metrics.SINK_ERRORS.labels("redis_status").inc()
            return
        self.health.ok()
        metrics.sink_observer("redis_status", len(self.pending), time.perf_counter() - t0)
        self.pending.clear()

    def close(self) -> None:
        try:
            if self.pending and self.health.up:
                self.store.write(list(self.pending.values()))
        except Exception as exc:
            log.warning("redis status sink: %d statuses not written at close: %s",
                        len(self.pending), type(exc).__name__)  # fmt: skip
        try:
            self.store.close()
        except Exception:
            log.exception("redis status sink: close failed")


class RedisStatusSink(DynamicSink[Prediction]):
    """The latest status per equipment in Redis hashes, for dashboards and other readers;
    degrades (logged once, ``pm_redis_up{client="status"}``) while Redis is down."""

    def __init__(self, url: str) -> None:
        self.url = url

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _StatusPartition:
        return _StatusPartition(self.url)


class _NotifyPartition(StatelessSinkPartition[Alert]):
    """Hands alerts to the process's delivery worker (records them, never sends here)."""

    def __init__(self, worker: DeliveryWorker, key: Any) -> None:
        self.worker = worker
        self.key = key

    def write_batch(self, items: list[Alert]) -> None:
        self.worker.submit(items)

    def close(self) -> None:
        alert_delivery.release(self.key)


class AlertNotifySink(DynamicSink[Alert]):
    """Deliver alerts through Apprise, once per alert id and target: durable with a
    database, else in memory (with Redis marks across processes when given). Sends run
    on a background worker per process with bounded timeouts."""

    def __init__(
        self,
        urls: list[str],
        database_url: str | None = None,
        redis_url: str | None = None,
        delivery: AlertDeliverySettings | None = None,
    ) -> None:
        delivery = delivery or AlertDeliverySettings()
        AppriseNotifier(urls, timeout_s=delivery.timeout_s)  # fail at start-up on a bad URL
        self.urls = urls
        self.database_url = database_url
        self.redis_url = redis_url
        self.delivery = delivery

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _NotifyPartition:
        key = (step_id, tuple(self.urls), self.database_url, self.redis_url, self.delivery)
        worker = alert_delivery.acquire(
            key,
            lambda: alert_delivery.build_worker(
                self.urls, self.database_url, self.redis_url, self.delivery
            ),
        )
        return _NotifyPartition(worker, key)


class _DriftStorePartition(StatelessSinkPartition[Any]):
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def write_batch(self, items: list[Any]) -> None:
        import psycopg

        from connectors.drift_store import write_drift

        delay = 0.5
        while True:  # a few rows a minute: retry until stored, like the main sink
            try:
                with psycopg.connect(self.dsn) as conn:
                    for ev in items:
                        write_drift(conn, ev.ts_ms, ev.equipment_type, ev.model_version,
                                    ev.names, ev.psi)  # fmt: skip
                return
            except psycopg.OperationalError as exc:
                metrics.SINK_ERRORS.labels("drift").inc()
                log.warning("drift store: %s; retrying in %.1f s", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)


class DriftStoreSink(DynamicSink[Any]):
    """Drift evaluations into the ``feature_drift`` table (idempotent on its key)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _DriftStorePartition:
        return _DriftStorePartition(self.dsn)
