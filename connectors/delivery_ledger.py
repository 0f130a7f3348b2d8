"""Who got which alert: the delivery ledger, one entry per (alert id, target).

``record`` adds entries (idempotent: a replayed alert is a no-op), ``claim`` hands out the
due ones (new, failed and due for a retry, or claimed by a sender whose lease ran out),
``confirm`` marks one delivered, ``fail`` schedules a retry (or abandons it after
``max_attempts``), ``release`` gives an unstarted claim back.

* :class:`PostgresLedger` keeps them in ``alert_deliveries`` (migration 006): durable,
  shared by every worker and process, so nothing is lost by a kill and a target that got
  the alert is never sent it again (short of a kill between the send and its confirm).
* :class:`LocalLedger` keeps them in memory, optionally with :class:`RedisDeliveryMarks`
  across processes, for a flow without a database. A Redis outage degrades it to
  in-process dedup (counted, logged once); marks made meanwhile are written on recovery.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import psycopg
import redis

from alerting.notify import Message
from connectors import metrics
from models.schemas import Alert

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """One claimed delivery: send ``message`` to ``target``; ``attempts`` counts this one."""

    alert_id: str
    target: str
    message: Message
    attempts: int
    token: str = ""


class Ledger(Protocol):
    def record(
        self,
        messages: Sequence[Message],
        targets: dict[str, str],
        alerts: Sequence[Alert] = (),
        suppressed: bool = False,
    ) -> int: ...

    def claim(self, limit: int) -> list[Job]: ...

    def confirm(self, job: Job) -> None: ...

    def fail(self, job: Job, error: str, retry_in_s: float) -> bool: ...

    def release(self, job: Job) -> None: ...

    def close(self) -> None: ...


_CLAIM_SQL = """
WITH due AS (
    SELECT alert_id, target FROM alert_deliveries
    WHERE state IN ('pending', 'failed', 'sending') AND due_at <= now()
      AND target = ANY(%(targets)s)
    ORDER BY due_at LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED)
UPDATE alert_deliveries d
SET state = 'sending', attempts = d.attempts + 1, claimed_at = now(), claimed_by = %(me)s,
    due_at = now() + make_interval(secs => %(lease)s)
FROM due WHERE d.alert_id = due.alert_id AND d.target = due.target
RETURNING d.alert_id, d.target, d.attempts, d.payload
"""

_RECORD_SQL = """
INSERT INTO alert_deliveries (alert_id, target, target_label, payload)
SELECT a, t, l, p::jsonb
FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[]) AS x(a, t, l, p)
ON CONFLICT (alert_id, target) DO NOTHING
RETURNING 1
"""


# a maintenance window's alerts: recorded for every target as 'suppressed', never claimed
_RECORD_SUPPRESSED_SQL = _RECORD_SQL.replace(
    "target_label, payload)\nSELECT a, t, l, p::jsonb",
    "target_label, payload, state, due_at)\nSELECT a, t, l, p::jsonb, 'suppressed', NULL",
)
assert _RECORD_SUPPRESSED_SQL != _RECORD_SQL

_RECORD_WITH_ALERTS_SQL = (
    """
WITH stored AS (
    INSERT INTO alerts (alert_id, equipment_id, ts, rule, severity, state, value, threshold,
                        message, evidence)
    SELECT a, e, t, r, s, st, v, th, m, ev::jsonb
    FROM unnest(%s::text[], %s::text[], %s::timestamptz[], %s::text[], %s::text[],
                %s::text[], %s::float8[], %s::float8[], %s::text[], %s::text[])
         AS x(a, e, t, r, s, st, v, th, m, ev)
    ON CONFLICT DO NOTHING
)"""
    + _RECORD_SQL
)


class PostgresLedger:
    """The ledger in PostgreSQL. Thread-safe (one connection behind a lock, reopened
    after an error); statements time out after ``statement_timeout_s``."""

    def __init__(
        self,
        dsn: str,
        *,
        lease_s: float = 60.0,
        max_attempts: int = 20,
        targets: Sequence[str] = (),
        worker_id: str | None = None,
        statement_timeout_s: float = 10.0,
    ) -> None:
        self.dsn = dsn
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.targets = list(targets)
        self.worker_id = worker_id or f"pm-{uuid.uuid4().hex[:12]}"
        self.statement_timeout_s = statement_timeout_s
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()

    def _run(self, sql: str, params: Any) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg.connect(
                        self.dsn,
                        autocommit=True,
                        connect_timeout=5,
                        application_name="pm-alert-delivery",
                        options=f"-c statement_timeout={int(self.statement_timeout_s * 1000)}",
                    )
                cur = self._conn.execute(sql, params)
                return cur.fetchall() if cur.description else []
            except psycopg.Error:
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                raise

    def record(
        self,
        messages: Sequence[Message],
        targets: dict[str, str],
        alerts: Sequence[Alert] = (),
        suppressed: bool = False,
    ) -> int:
        """Add a pending entry per message and target (fingerprint → masked label);
        return how many were new (the others were recorded before: replays). With
        ``suppressed`` (a maintenance window) the entries are 'suppressed': never sent.

        ``alerts`` (the alerts behind ``messages``) are written to the ``alerts`` table in
        the same statement, so nothing is ever delivered that the table does not hold,
        even when the PostgreSQL sink's buffer dies with a crash and the replay computes
        another alert (e.g. a fleet-level one, whose timing depends on arrival order)."""
        rows = [(m, fp, label) for m in messages for fp, label in targets.items()]
        if not rows:
            return 0
        params = (
            [m.alert_id for m, _, _ in rows],
            [fp for _, fp, _ in rows],
            [label for _, _, label in rows],
            [json.dumps(m.to_json()) for m, _, _ in rows],
        )
        record_sql = _RECORD_SUPPRESSED_SQL if suppressed else _RECORD_SQL
        if not alerts:
            return len(self._run(record_sql, params))
        from connectors.postgres_sink import dumps_json, ms_to_datetime

        columns = list(zip(*[
            (a.alert_id, a.equipment_id, ms_to_datetime(a.ts_ms), a.rule, a.severity,
             a.state, a.value, a.threshold, a.message, dumps_json(a.evidence))
            for a in alerts
        ], strict=True))  # fmt: skip
        sql = _RECORD_WITH_ALERTS_SQL.replace(_RECORD_SQL, record_sql)
        return len(self._run(sql, (*map(list, columns), *params)))

    def claim(self, limit: int) -> list[Job]:
        rows = self._run(
            _CLAIM_SQL,
            {"targets": self.targets, "limit": limit, "me": self.worker_id,
             "lease": self.lease_s},
        )  # fmt: skip
        return [Job(a, t, Message.from_json(p), n, self.worker_id) for a, t, n, p in rows]

    def confirm(self, job: Job) -> None:
        # Whoever holds the claim now: the target got it, so nobody must send it again.
        self._run(
            "UPDATE alert_deliveries SET state = 'delivered', delivered_at = now(), due_at = NULL"
            " WHERE alert_id = %s AND target = %s AND state <> 'delivered'",
            (job.alert_id, job.target),
        )

    def fail(self, job: Job, error: str, retry_in_s: float) -> bool:
        """Record the failure; due again in ``retry_in_s``, or abandoned (True) when
        this was attempt ``max_attempts``."""
        give_up = job.attempts >= self.max_attempts
        self._run(
            "UPDATE alert_deliveries SET state = %s, last_error = %s,"
            " due_at = CASE WHEN %s THEN NULL ELSE now() + make_interval(secs => %s) END"
            " WHERE alert_id = %s AND target = %s AND state = 'sending' AND claimed_by = %s",
            ("abandoned" if give_up else "failed", error[:500], give_up, retry_in_s,
             job.alert_id, job.target, job.token),
        )  # fmt: skip
        return give_up

    def release(self, job: Job) -> None:
        self._run(
            "UPDATE alert_deliveries SET state = 'pending', attempts = attempts - 1,"
            " due_at = now() WHERE alert_id = %s AND target = %s AND state = 'sending'"
            " AND claimed_by = %s",
            (job.alert_id, job.target, job.token),
        )

    def counts(self) -> dict[str, int]:
        """Entries per state (for tests and operators)."""
        rows = self._run("SELECT state, count(*) FROM alert_deliveries GROUP BY state", None)
        return {str(s): int(n) for s, n in rows}

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


@dataclass
class _Entry:
    job: Job
    due: float
    claimed: bool = False


class LocalLedger:
    """The ledger in this process's memory (bounded), with Redis marks across processes
    when ``marks`` is given. Lost on a kill: say so at start-up."""

    def __init__(
        self,
        *,
        marks: Any = None,  # connectors.redis_state.RedisDeliveryMarks
        lease_s: float = 60.0,
        max_attempts: int = 20,
        max_pending: int = 10_000,
        max_remembered: int = 100_000,
        clock: Any = time.monotonic,
    ) -> None:
        from connectors.redis_state import RedisHealth

        self.marks = marks
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.max_pending = max_pending
        self.max_remembered = max_remembered
        self.health = RedisHealth("alerts")
        self._clock = clock
        self._pending: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._delivered: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._unmarked: list[tuple[str, str]] = []  # confirmed while Redis was down
        self._lock = threading.Lock()

    def record(
        self,
        messages: Sequence[Message],
        targets: dict[str, str],
        alerts: Sequence[Alert] = (),
        suppressed: bool = False,
    ) -> int:
        new = 0
        now = self._clock()
        with self._lock:
            for m in messages:
                for fp in targets:
                    key = (m.alert_id, fp)
                    if key in self._delivered or key in self._pending:
                        continue
                    new += 1
                    if suppressed:  # a maintenance window: remembered, never sent
                        self._remember(key)
                        continue
                    self._pending[key] = _Entry(Job(m.alert_id, fp, m, 0), now)
            while len(self._pending) > self.max_pending:
                (alert_id, fp), _ = self._pending.popitem(last=False)
                metrics.ALERT_DELIVERY_FAILURES.labels("overflow").inc()
                log.error("alert delivery: more than %d pending, dropped alert %s for %s",
                          self.max_pending, alert_id, fp)  # fmt: skip
        return new

    def claim(self, limit: int) -> list[Job]:
        now = self._clock()
        with self._lock:
            due = [e for e in self._pending.values() if not e.claimed and e.due <= now]
            due = due[:limit]
            for e in due:
                e.claimed = True
        self._write_unmarked()
        jobs: list[Job] = []
        for e in due:
            job = replace(e.job, attempts=e.job.attempts + 1, token=uuid.uuid4().hex)
            verdict = self._redis_claim(job)
            with self._lock:
                if verdict == "done":
                    self._pending.pop((job.alert_id, job.target), None)
                    self._remember((job.alert_id, job.target))
                    metrics.ALERT_DELIVERIES.labels("duplicate").inc()
                elif verdict == "taken":  # another process is sending it: look again later
                    e.claimed, e.due = False, now + self.lease_s
                else:
                    e.job = job
                    jobs.append(job)
        return jobs

    def _redis_claim(self, job: Job) -> str:
        if self.marks is None:
            return "claimed"
        if self.health.should_try():
            try:
                verdict = str(self.marks.claim(job.alert_id, job.target, job.token, self.lease_s))
                self.health.ok()
                return verdict
            except redis.RedisError as exc:
                self.health.failed(exc)
        metrics.ALERT_DELIVERY_FAILURES.labels("redis").inc()  # sent with in-process dedup only
        return "claimed"

    def confirm(self, job: Job) -> None:
        key = (job.alert_id, job.target)
        with self._lock:
            self._pending.pop(key, None)
            self._remember(key)
            if self.marks is not None:
                self._unmarked.append(key)
        self._write_unmarked()

    def _write_unmarked(self) -> None:
        if self.marks is None or not self.health.should_try():
            return
        with self._lock:
            todo, self._unmarked = self._unmarked, []
        try:
            while todo:
                self.marks.confirm(*todo[-1])
                todo.pop()
            self.health.ok()
        except redis.RedisError as exc:
            self.health.failed(exc)
        finally:
            with self._lock:
                self._unmarked[:0] = todo

    def fail(self, job: Job, error: str, retry_in_s: float) -> bool:
        key = (job.alert_id, job.target)
        give_up = job.attempts >= self.max_attempts
        with self._lock:
            e = self._pending.get(key)
            if e is not None:
                if give_up:
                    del self._pending[key]
                else:
                    e.claimed, e.due = False, self._clock() + retry_in_s
        self._redis_release(job)
        return give_up

    def release(self, job: Job) -> None:
        with self._lock:
            e = self._pending.get((job.alert_id, job.target))
            if e is not None:
                e.claimed, e.due = False, self._clock()
                e.job = replace(job, attempts=job.attempts - 1)
        self._redis_release(job)

    def _redis_release(self, job: Job) -> None:
        if self.marks is None or not self.health.up:
            return
        try:
            self.marks.release(job.alert_id, job.target, job.token)
        except redis.RedisError as exc:
            self.health.failed(exc)

    def _remember(self, key: tuple[str, str]) -> None:
        self._delivered[key] = None
        while len(self._delivered) > self.max_remembered:
            self._delivered.popitem(last=False)

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def close(self) -> None:
        with self._lock:
            left = len(self._pending)
        if left:
            log.error("alert delivery: %d deliveries pending at shutdown are lost (no database "
                      "configured)", left)  # fmt: skip
        if self.marks is not None:
            self.marks.close()
