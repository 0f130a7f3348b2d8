"""Batched, idempotent writes of readings, features, predictions and alerts to PostgreSQL.

Each flush is one transaction: the buffered items are streamed with binary ``COPY`` into
session-local TEMP staging tables (``ON COMMIT DELETE ROWS``), then moved with
``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` on each table's natural key, so replaying
items (Bytewax recovery is at-least-once) writes no duplicates. Equipment rows are
upserted in the same transaction (first_seen / last_seen widened, type filled in).

Faults: a lost or unreachable database (``OperationalError``, ``InterfaceError``, a
serialization failure or deadlock) makes ``flush()`` roll back, reconnect and retry with
exponential back-off, blocking the caller meanwhile and keeping every buffered item: the
stream stops consuming instead of dropping data. The first failure is logged at once (a
WARNING naming the error and the rows held), the outage again every 30 s, and the recovery
with its duration and the rows written; ``on_state`` reports each change for metrics.
Every connection sets ``statement_timeout`` and ``lock_timeout``, so a locked table or a
stuck statement becomes a retried ``QueryCanceled``/``LockNotAvailable`` instead of a hang.
Any other database error (bad data, a missing table) is raised at once, the buffers kept.
``max_buffer`` bounds memory: an add_* call that fills it flushes synchronously before
returning. Messages never carry the DSN's password.

Not thread-safe: one writer per worker.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Self

import numpy as np
import psycopg
from psycopg import sql
from psycopg.types.json import set_json_dumps

from models.logsafe import redact, secret_parts
from models.schemas import Alert, Prediction, Reading
from models.schemas import finite as _finite
from models.schemas import json_default as _json_default

FeatureRow = tuple[str, int, str, np.ndarray]
"""(equipment_id, ts_ms, feature_set, features) as given to ``add_features``."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
log = logging.getLogger(__name__)

OUTAGE_LOG_EVERY_S = 30.0
StateHook = Callable[[bool, int, bool], None]
"""``on_state(up, rows_held, retried)``: after a failed attempt (False, held, True) and
after each successful flush (True, 0, False)."""

RETRYABLE_ERRORS: tuple[type[Exception], ...] = (
    psycopg.OperationalError,  # includes AdminShutdown, connection failures, disk full
    psycopg.InterfaceError,  # connection already closed
    psycopg.errors.SerializationFailure,
    psycopg.errors.DeadlockDetected,
)


def ms_to_datetime(ts_ms: int) -> datetime:
    """Epoch milliseconds as an aware UTC datetime, exactly (no float rounding).

    >>> ms_to_datetime(1_500).isoformat()
    '1970-01-01T00:00:01.500000+00:00'
    """
    return _EPOCH + timedelta(milliseconds=ts_ms)


def feature_set_id(names: Sequence[str]) -> str:
    """A stable id for an ordered list of feature names (same names, same order, same id).

    >>> names = ["T24__mean_30", "T24__std_30"]
    >>> feature_set_id(names) == feature_set_id(list(names))
    True
    >>> feature_set_id(["a", "b"]) == feature_set_id(["b", "a"])
    False
    """
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()
    return f"fs-{len(names)}-{digest[:16]}"


def dumps_json(obj: Any) -> str:
    """JSON for jsonb: NaN and infinities (which jsonb rejects) become null; numpy values
    become plain numbers.

    >>> dumps_json({"T24": float("nan"), "T30": np.float32(1.5)})
    '{"T24": null, "T30": 1.5}'
    """
    try:
        return _ENCODER.encode(obj)
    except ValueError:
        return _ENCODER.encode(_finite(obj))


# One encoder for all calls (json.dumps with options builds a new one per call: ~20% slower).
_ENCODER = json.JSONEncoder(allow_nan=False, default=_json_default)


# One staging table per target: (DDL of the TEMP table, COPY types, INSERT ... SELECT).
_STAGES: dict[str, tuple[str, list[str], str]] = {
    "equipment": (
        "equipment_id text, equipment_type text, first_seen timestamptz, last_seen timestamptz",
        ["text", "text", "timestamptz", "timestamptz"],
        # ORDER BY: concurrent writers lock equipment rows in the same order (no deadlock).
        """INSERT INTO equipment AS e (equipment_id, equipment_type, first_seen, last_seen)
        SELECT equipment_id, equipment_type, first_seen, last_seen
        FROM pm_stage_equipment ORDER BY equipment_id
        ON CONFLICT (equipment_id) DO UPDATE SET
            equipment_type = COALESCE(e.equipment_type, EXCLUDED.equipment_type),
            first_seen = LEAST(e.first_seen, EXCLUDED.first_seen),
            last_seen = GREATEST(e.last_seen, EXCLUDED.last_seen)
        WHERE EXCLUDED.last_seen > e.last_seen OR EXCLUDED.first_seen < e.first_seen
           OR (e.equipment_type IS NULL AND EXCLUDED.equipment_type IS NOT NULL)""",
    ),
    "sensor_readings": (
        "equipment_id text, ts timestamptz, settings jsonb, sensors jsonb",
        ["text", "timestamptz", "jsonb", "jsonb"],
        """INSERT INTO sensor_readings (equipment_id, ts, settings, sensors)
        SELECT equipment_id, ts, settings, sensors FROM pm_stage_sensor_readings
        ON CONFLICT DO NOTHING""",
    ),
    "sensor_features": (
        "equipment_id text, ts timestamptz, feature_set text, features real[]",
        ["text", "timestamptz", "text", "real[]"],
        """INSERT INTO sensor_features (equipment_id, ts, feature_set, features)
        SELECT equipment_id, ts, feature_set, features FROM pm_stage_sensor_features
        ON CONFLICT DO NOTHING""",
    ),
    "predictions": (
        (
            "equipment_id text, ts timestamptz, model_name text, model_version text,"
            " rul float8, rul_unit text, rul_hours float8, rul_lower float8, rul_upper float8,"
            " health float8, anomaly_score float8, status text, top_sensors text[],"
            " imputed_sensors int2"
        ),
        [
            "text",
            "timestamptz",
            "text",
            "text",
            "float8",
            "text",
            "float8",
            "float8",
            "float8",
        ]
        + ["float8", "float8", "text", "text[]", "int2"],
        """INSERT INTO predictions (equipment_id, ts, model_name, model_version, rul, rul_unit,
            rul_hours, rul_lower, rul_upper, health, anomaly_score, status, top_sensors,
            imputed_sensors)
        SELECT equipment_id, ts, model_name, model_version, rul, rul_unit, rul_hours,
            rul_lower, rul_upper, health, anomaly_score, status, top_sensors, imputed_sensors
        FROM pm_stage_predictions
        ON CONFLICT DO NOTHING""",
    ),
    "alerts": (
        (
            "alert_id text, equipment_id text, ts timestamptz, rule text, severity text,"
            " state text, value float8, threshold float8, message text, evidence jsonb"
        ),
        [
            "text",
            "text",
            "timestamptz",
            "text",
            "text",
            "text",
            "float8",
            "float8",
            "text",
        ]
        + ["jsonb"],
        """INSERT INTO alerts (alert_id, equipment_id, ts, rule, severity, state, value,
            threshold, message, evidence)
        SELECT alert_id, equipment_id, ts, rule, severity, state, value, threshold, message,
            evidence
        FROM pm_stage_alerts
        ON CONFLICT DO NOTHING""",
    ),
}

TABLES = ("equipment", "sensor_readings", "sensor_features", "predictions", "alerts")


class PostgresWriter:
    """Buffers items and writes them in batches; see the module docstring.

    Counters (plain attributes, for Prometheus): ``rows_received`` and ``rows_written`` per
    table (their difference for a time-series table is duplicates skipped; for
    ``equipment``: distinct equipment per flush, and inserts plus updates), ``flushes``,
    ``flush_seconds_last`` / ``flush_seconds_total`` (including retries),
    ``retries``, ``reconnects``, ``last_error``; ``pending`` is the number of buffered items.
    """

    def __init__(
        self,
        dsn: str,
        buffer_size: int = 1000,
        write_interval_s: float = 10.0,
        max_buffer: int = 100_000,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 30.0,
        *,
        max_retry_total_s: float | None = None,
        connect_timeout_s: int = 5,
        application_name: str = "pm-writer",
        statement_timeout_s: float = 60.0,
        lock_timeout_s: float = 10.0,
        on_state: StateHook | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if buffer_size < 1 or max_buffer < buffer_size:
            raise ValueError(
                f"need 1 <= buffer_size <= max_buffer, got {buffer_size}, {max_buffer}"
            )
        self.dsn = dsn
        self.buffer_size = buffer_size
        self.write_interval_s = write_interval_s
        self.max_buffer = max_buffer
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.max_retry_total_s = max_retry_total_s
        self.connect_timeout_s = connect_timeout_s
        self.application_name = application_name
        self.statement_timeout_s = statement_timeout_s
        self.lock_timeout_s = lock_timeout_s
        self.on_state = on_state
        self._sleep = sleep
        self._rng = random.Random()

        self._readings: list[Reading] = []
        self._features: list[FeatureRow] = []
        self._predictions: list[Prediction] = []
        self._alerts: list[Alert] = []
        self._feature_sets: dict[str, list[str]] = {}
        self._known_feature_sets: set[str] = set()
        self._conn: psycopg.Connection[Any] | None = None
        self._connected_once = False
        self._last_flush_s: float | None = None
        self._equipment_staged = 0

        self.rows_received: dict[str, int] = dict.fromkeys(TABLES, 0)
        self.rows_written: dict[str, int] = dict.fromkeys(TABLES, 0)
        self.flushes = 0
        self.flush_seconds_last = 0.0
        self.flush_seconds_total = 0.0
        self.retries = 0
        self.reconnects = 0
        self.last_error = ""

    # -- buffering ---------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Buffered items not yet written."""
        return (
            len(self._readings) + len(self._features) + len(self._predictions) + len(self._alerts)
        )

    def add_readings(self, readings: Iterable[Reading]) -> None:
        self._readings.extend(readings)
        self._bound_memory()

    def add_predictions(self, predictions: Iterable[Prediction]) -> None:
        self._predictions.extend(predictions)
        self._bound_memory()

    def add_features(self, rows: Iterable[FeatureRow]) -> None:
        """Buffer feature vectors; each array is copied (as float32), so the caller may
        reuse it."""
        self._features.extend(
            (eq, ts_ms, fs, np.array(x, dtype=np.float32, copy=True).ravel())
            for eq, ts_ms, fs, x in rows
        )
        self._bound_memory()

    def add_alerts(self, alerts: Iterable[Alert]) -> None:
        self._alerts.extend(alerts)
        self._bound_memory()

    def add_feature_set(self, feature_set: str, names: Sequence[str]) -> None:
        """Record the ordered feature names of a feature set (written with the next
        flush; an id already stored keeps its names)."""
        if feature_set not in self._known_feature_sets:
            self._feature_sets[feature_set] = list(names)

    def _bound_memory(self) -> None:
        if self.pending >= self.max_buffer:
            self.flush()

    # -- flushing ----------------------------------------------------------------------

    def maybe_flush(self, now_s: float) -> bool:
        """Flush if a buffer holds ``buffer_size`` items, or if items are pending and
        ``write_interval_s`` has passed since the last flush made here (``now_s`` from
        any monotonic clock the caller uses consistently). Returns whether it flushed."""
        if self._last_flush_s is None:
            self._last_flush_s = now_s
        full = max(
            len(self._readings),
            len(self._features),
            len(self._predictions),
            len(self._alerts),
        )
        due = now_s - self._last_flush_s >= self.write_interval_s
        if full >= self.buffer_size or (due and self.pending > 0):
            self.flush()
            self._last_flush_s = now_s
            return True
        return False

    def flush(self) -> int:
        """Write everything buffered in one transaction; retry (blocking) until it commits.
        Returns the number of rows newly written to the time-series tables."""
        if self.pending == 0 and not self._feature_sets:
            return 0
        started = time.perf_counter()
        delay = self.retry_initial_s
        attempts, last_log = 0, 0.0
        while True:
            try:
                written = self._write_once(self._connection())
                break
            except RETRYABLE_ERRORS as exc:
                attempts += 1
                self.retries += 1
                self.last_error = redact(
                    f"{type(exc).__name__}: {exc}", secret_parts(self.dsn)
                ).strip()
                self._drop_connection()
                now = time.perf_counter()
                if attempts == 1 or now - last_log >= OUTAGE_LOG_EVERY_S:
                    last_log = now
                    log.warning(
                        "postgres sink %s: write failed%s (%s); holding %d rows, retrying with "
                        "back-off while the stream waits",
                        self.application_name,
                        f" for {now - started:.0f} s" if attempts > 1 else "",
                        self.last_error.splitlines()[0][:300],
                        self.pending,
                    )
                if self.on_state is not None:
                    self.on_state(False, self.pending, True)
                if self.max_retry_total_s is not None and now - started > self.max_retry_total_s:
                    raise
                self._sleep(delay * self._rng.uniform(0.8, 1.2))
                delay = min(delay * 2.0, self.retry_max_s)
        if attempts:
            log.warning(
                "postgres sink %s: writing again after %.1f s and %d failed attempts; "
                "wrote the %d held rows",
                self.application_name, time.perf_counter() - started, attempts, self.pending,
            )  # fmt: skip
        for table, n in written.items():
            self.rows_written[table] += n
        self.rows_received["equipment"] += self._equipment_staged
        self.rows_received["sensor_readings"] += len(self._readings)
        self.rows_received["sensor_features"] += len(self._features)
        self.rows_received["predictions"] += len(self._predictions)
        self.rows_received["alerts"] += len(self._alerts)
        self._known_feature_sets.update(self._feature_sets)
        self._readings, self._features, self._predictions, self._alerts = [], [], [], []
        self._feature_sets = {}
        self.flushes += 1
        self.flush_seconds_last = time.perf_counter() - started
        self.flush_seconds_total += self.flush_seconds_last
        if self.on_state is not None:
            self.on_state(True, 0, False)
        return sum(n for table, n in written.items() if table != "equipment")

    def close(self) -> None:
        """Flush what is buffered, then close the connection."""
        try:
            self.flush()
        finally:
            self._drop_connection()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- database ------------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        try:
            conn = psycopg.connect(
                self.dsn,
                autocommit=True,
                connect_timeout=self.connect_timeout_s,
                application_name=self.application_name,
            )
        except psycopg.ProgrammingError as exc:  # a malformed DSN: its message echoes it
            raise psycopg.ProgrammingError(redact(str(exc), secret_parts(self.dsn))) from None
        try:
            for name, seconds in (
                ("statement_timeout", self.statement_timeout_s),
                ("lock_timeout", self.lock_timeout_s),
            ):
                conn.execute("SELECT set_config(%s, %s, false)", (name, f"{seconds * 1000:.0f}"))
            set_json_dumps(dumps_json, context=conn)
            for name, (columns, _, _) in _STAGES.items():
                conn.execute(
                    sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DELETE ROWS").format(
                        sql.Identifier(f"pm_stage_{name}"),
                        sql.SQL(columns),
                    )
                )
        except BaseException:
            conn.close()
            raise
        if self._connected_once:
            self.reconnects += 1
        self._connected_once = True
        self._conn = conn
        return conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):  # closing a broken connection may fail
                conn.close()

    def _write_once(self, conn: psycopg.Connection[Any]) -> dict[str, int]:
        written: dict[str, int] = {}
        with conn.transaction(), conn.cursor() as cur:
            if self._feature_sets:
                cur.executemany(
                    "INSERT INTO feature_sets (feature_set, names) VALUES (%s, %s)"
                    " ON CONFLICT DO NOTHING",
                    list(self._feature_sets.items()),
                )
            batches: dict[str, list[tuple[Any, ...]]] = {
                "equipment": self._equipment_rows(),
                "sensor_readings": [
                    (r.equipment_id, ms_to_datetime(r.ts_ms), r.settings, r.sensors)
                    for r in self._readings
                ],
                "sensor_features": [
                    (eq, ms_to_datetime(ts_ms), fs, x.tolist())
                    for eq, ts_ms, fs, x in self._features
                ],
                "predictions": [
                    (
                        p.equipment_id,
                        ms_to_datetime(p.ts_ms),
                        p.model_name,
                        p.model_version,
                        p.rul,
                        p.rul_unit,
                        p.rul_hours,
                        p.rul_lower,
                        p.rul_upper,
                        p.health,
                        p.anomaly_score,
                        p.status,
                        list(p.top_sensors),
                        p.imputed_sensors,
                    )
                    for p in self._predictions
                ],
                "alerts": [
                    (
                        a.alert_id,
                        a.equipment_id,
                        ms_to_datetime(a.ts_ms),
                        a.rule,
                        a.severity,
                        a.state,
                        a.value,
                        a.threshold,
                        a.message,
                        a.evidence,
                    )
                    for a in self._alerts
                ],
            }
            for table in TABLES:
                rows = batches[table]
                if table == "equipment":
                    self._equipment_staged = len(rows)
                if not rows:
                    written[table] = 0
                    continue
                _, types, insert = _STAGES[table]
                copy_sql = sql.SQL("COPY {} FROM STDIN (FORMAT BINARY)").format(
                    sql.Identifier(f"pm_stage_{table}")
                )
                with cur.copy(copy_sql) as copy:
                    copy.set_types(types)
                    for row in rows:
                        copy.write_row(row)
                cur.execute(insert)
                written[table] = max(cur.rowcount, 0)
        return written

    def _equipment_rows(self) -> list[tuple[str, str | None, datetime, datetime]]:
        """One row per equipment in the buffers: (id, type, first ts, last ts)."""
        seen: dict[str, list[Any]] = {}

        def see(equipment_id: str, equipment_type: str | None, ts_ms: int) -> None:
            row = seen.get(equipment_id)
            if row is None:
                seen[equipment_id] = [equipment_type, ts_ms, ts_ms]
                return
            if row[0] is None:
                row[0] = equipment_type
            if ts_ms < row[1]:
                row[1] = ts_ms
            elif ts_ms > row[2]:
                row[2] = ts_ms

        for r in self._readings:
            see(r.equipment_id, r.equipment_type, r.ts_ms)
        for p in self._predictions:
            see(p.equipment_id, p.equipment_type, p.ts_ms)
        for eq, ts_ms, _, _ in self._features:
            see(eq, None, ts_ms)
        for a in self._alerts:
            see(a.equipment_id, None, a.ts_ms)
        return [
            (eq, typ, ms_to_datetime(lo), ms_to_datetime(hi))
            for eq, (typ, lo, hi) in sorted(seen.items())
        ]
