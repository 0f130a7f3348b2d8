"""Bytewax sinks for the real services: PostgreSQL/TimescaleDB, Redis and alert delivery.

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

from alerting.notify import FAILED, AlertDispatcher, AppriseNotifier, Deduper, MemoryDeduper
from connectors import metrics
from connectors.postgres_sink import PostgresWriter
from models.schemas import Alert, Prediction, Reading

log = logging.getLogger(__name__)

Stored = Reading | Prediction | Alert


class _PostgresPartition(StatefulSinkPartition[Stored, None]):
    def __init__(self, writer: PostgresWriter) -> None:
        self.writer = writer

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
    ) -> None:
        self.dsn = dsn
        self.buffer_size = buffer_size
        self.write_interval_s = write_interval_s
        self.partitions = partitions

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
        )
        return _PostgresPartition(writer)


class _StatusPartition(StatelessSinkPartition[Prediction]):
    def __init__(self, url: str) -> None:
        from connectors.redis_state import RedisStatusStore

        self.store = RedisStatusStore(url)

    def write_batch(self, items: list[Prediction]) -> None:
        t0 = time.perf_counter()
        self.store.write(items)
        metrics.sink_observer("redis_status", len(items), time.perf_counter() - t0)

    def close(self) -> None:
        try:
            self.store.close()
        except Exception:
            log.exception("redis status sink: close failed")


class RedisStatusSink(DynamicSink[Prediction]):
    """The latest status per equipment in Redis hashes, for dashboards and other readers."""

    def __init__(self, url: str) -> None:
        self.url = url

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _StatusPartition:
        return _StatusPartition(self.url)


class _NotifyPartition(StatelessSinkPartition[Alert]):
    """Sends each alert id once; a failed delivery is released, logged, counted and tried
    again with the next batches (up to ``MAX_RETRY_QUEUE`` alerts held)."""

    MAX_RETRY_QUEUE = 1000

    def __init__(self, dispatcher: AlertDispatcher) -> None:
        self.dispatcher = dispatcher
        self.retry: list[Alert] = []

    def write_batch(self, items: list[Alert]) -> None:
        queue, self.retry = [*self.retry, *items], []
        for alert, result in self.dispatcher.dispatch_each(queue):
            metrics.ALERT_DELIVERIES.labels(result).inc()
            if result == FAILED:
                self.retry.append(alert)
        if len(self.retry) > self.MAX_RETRY_QUEUE:
            dropped = self.retry[: -self.MAX_RETRY_QUEUE]
            self.retry = self.retry[-self.MAX_RETRY_QUEUE :]
            log.error("alert delivery: gave up on %d alerts, e.g. %s", len(dropped), dropped[0])

    def close(self) -> None:
        if self.retry:
            log.error("alert delivery: %d alerts undelivered at shutdown", len(self.retry))


class AlertNotifySink(DynamicSink[Alert]):
    """Deliver alerts through Apprise, each alert id once across workers and restarts when
    a Redis URL is given (else once per process)."""

    def __init__(self, urls: list[str], redis_url: str | None, timeout_s: float = 10.0) -> None:
        AppriseNotifier(urls, timeout_s=timeout_s)  # fail at start-up on a bad URL
        self.urls = urls
        self.redis_url = redis_url
        self.timeout_s = timeout_s

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _NotifyPartition:
        deduper: Deduper
        if self.redis_url:
            from connectors.redis_state import RedisDeduper

            deduper = RedisDeduper(self.redis_url)
        else:
            deduper = MemoryDeduper()
        notifier = AppriseNotifier(self.urls, timeout_s=self.timeout_s)
        return _NotifyPartition(AlertDispatcher(notifier, deduper))


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
