"""Alert delivery off the stream's hot path: one :class:`DeliveryWorker` per process.

The alert sink only calls :meth:`DeliveryWorker.submit`, which records a ledger entry per
(alert, target) and returns: a hanging endpoint never stalls readings. A scheduler thread
claims due entries (new ones at once, failed ones after a doubling back-off, and those
whose sender died once its lease ran out, including after a restart) and hands them to
``concurrency`` sender threads, each making one Apprise call bounded by ``timeout_s``.
Success is confirmed in the ledger; a failure is counted, logged (URLs masked) and stored
as ``last_error``. At close, sends get ``close_grace_s`` to finish; what is left stays
in the ledger for the next start.

With ``windows`` (a :class:`~connectors.maintenance.WindowCache`), an alert whose machine
is in a maintenance window at the alert's event time is recorded as usual (``alerts``
table) but its ledger entries are 'suppressed': never sent, counted as
``pm_alert_deliveries_total{result="suppressed"}``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Self

import psycopg

from alerting.notify import AppriseNotifier, render
from connectors import metrics
from connectors.delivery_ledger import Job, Ledger, LocalLedger, PostgresLedger
from connectors.maintenance import Window, WindowCache
from connectors.settings import AlertDeliverySettings
from models.logsafe import safe_for_log
from models.schemas import Alert

log = logging.getLogger(__name__)


class DeliveryWorker:
    """Deliver what the ledger says is due; see the module docstring."""

    def __init__(
        self,
        ledger: Ledger,
        notifier: AppriseNotifier,
        settings: AlertDeliverySettings | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        windows: WindowCache | None = None,
    ) -> None:
        self.ledger = ledger
        self.windows = windows
        self.notifier = notifier
        self.settings = settings or AlertDeliverySettings()
        self.targets = {fp: notifier.label(fp) for fp in notifier.fingerprints}
        self._sleep = sleep
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._busy = 0  # queued or being sent
        self._idle = threading.Condition(self._lock)
        self._idle_asked = 0  # wait_idle calls so far
        self._idle_seen = 0  # the latest call answered by a scheduler pass that found nothing
        self._stopping = False
        self._store_down = False
        self._threads: list[threading.Thread] = []

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> Self:
        self._threads = [threading.Thread(target=self._schedule, name="alert-delivery",
                                          daemon=True)]  # fmt: skip
        self._threads += [
            threading.Thread(target=self._send_loop, name=f"alert-send-{i}", daemon=True)
            for i in range(self.settings.concurrency)
        ]
        for t in self._threads:
            t.start()
        return self

    def close(self, grace_s: float | None = None) -> None:
        """Deliver what is due for up to ``grace_s`` (default ``close_grace_s``), then stop;
        unfinished entries stay in the ledger. Never raises."""
        grace = self.settings.close_grace_s if grace_s is None else grace_s
        deadline = time.monotonic() + grace
        try:
            self.wait_idle(grace)
            self._stopping = True
            self._wake.set()
            for _ in range(self.settings.concurrency):
                self._jobs.put(None)
            for t in self._threads:
                t.join(max(0.0, deadline - time.monotonic()) + 0.5)
            if self._busy:
                log.warning("alert delivery: %d send(s) unfinished at shutdown; they are "
                            "retried after their lease at the next start", self._busy)  # fmt: skip
            self.ledger.close()
        except Exception:
            log.exception("alert delivery: close failed")

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until a scheduler pass that began after this call found nothing due and
        nothing in flight (True), or ``timeout_s`` passed (False)."""
        with self._lock:
            self._idle_asked += 1
            asked = self._idle_asked
            self._wake.set()
            return self._idle.wait_for(lambda: self._idle_seen >= asked, timeout_s)

    # -- the sink's side ----------------------------------------------------------------
    def submit(self, alerts: Sequence[Alert]) -> int:
        """Record the alerts durably (retrying while the database is unreachable) and
        wake the scheduler; return how many (alert, target) entries were new."""
        if not alerts:
            return 0
        quiet = [a for a in alerts if self._window(a) is not None]
        if quiet:
            loud = [a for a in alerts if self._window(a) is None]
            new = self._record(quiet, suppressed=True)
            metrics.ALERT_DELIVERIES.labels("suppressed").inc(new)
            if new:
                log.info("alert delivery: %d alert(s) of machines in a maintenance window "
                         "recorded, not sent", len(quiet))  # fmt: skip
            return new + (self._record(loud) if loud else 0)
        return self._record(alerts)

    def _window(self, alert: Alert) -> Window | None:
        if self.windows is None:
            return None
        return self.windows.window_for(alert.equipment_id, alert.ts_ms)

    def _record(self, alerts: Sequence[Alert], suppressed: bool = False) -> int:
        messages = [render(a) for a in alerts]
        delay = 0.5
        while True:  # the flow waits for its database, as the PostgreSQL sink does
            try:
                new = self.ledger.record(messages, self.targets, alerts, suppressed)
                break
            except psycopg.OperationalError as exc:
                metrics.ALERT_DELIVERY_FAILURES.labels("store").inc()
                log.warning("alert delivery: cannot record %d alert(s): %s; retrying in %.1f s",
                            len(messages), _one_line(exc), delay)  # fmt: skip
                self._sleep(delay)
                delay = min(delay * 2, 10.0)
        duplicates = len(messages) * len(self.targets) - new
        if duplicates:
            metrics.ALERT_DELIVERIES.labels("duplicate").inc(duplicates)
        if new and not suppressed:
            self._wake.set()
        return new

    # -- threads ----------------------------------------------------------------------
    def _schedule(self) -> None:
        while not self._stopping:
            self._wake.wait(self.settings.poll_interval_s)
            self._wake.clear()
            if self._stopping:
                break
            with self._lock:
                free = self.settings.concurrency - self._busy
                asked = self._idle_asked
            claimed = 0
            if free > 0:
                claimed = self._claim(free)
            with self._lock:
                if claimed == 0 and self._busy == 0:
                    self._idle_seen = asked
                    self._idle.notify_all()

    def _claim(self, limit: int) -> int:
        try:
            jobs = self.ledger.claim(limit)
        except Exception as exc:  # the store is down: try again at the next tick
            metrics.ALERT_DELIVERY_FAILURES.labels("store").inc()
            if not self._store_down:
                log.warning("alert delivery: cannot read the ledger: %s", _one_line(exc))
            self._store_down = True
            return 0
        if self._store_down:
            log.warning("alert delivery: ledger reachable again")
            self._store_down = False
        with self._lock:
            self._busy += len(jobs)
        for job in jobs:
            self._jobs.put(job)
        return len(jobs)

    def _send_loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                if self._stopping:
                    self.ledger.release(job)
                else:
                    self._deliver(job)
            except Exception:
                log.exception("alert delivery: bookkeeping of alert %s failed", job.alert_id)
                metrics.ALERT_DELIVERY_FAILURES.labels("store").inc()
            finally:
                with self._lock:
                    self._busy -= 1
                self._wake.set()

    def _deliver(self, job: Job) -> None:
        label = self.notifier.label(job.target)
        metrics.ALERT_DELIVERY_INFLIGHT.inc()
        try:
            error = self.notifier.send(job.target, job.message)
        finally:
            metrics.ALERT_DELIVERY_INFLIGHT.dec()
        if error is None:
            self._confirm(job, label)
            metrics.ALERT_DELIVERIES.labels("sent").inc()
            return
        metrics.ALERT_DELIVERIES.labels("failed").inc()
        metrics.ALERT_DELIVERY_FAILURES.labels("target").inc()
        s = self.settings
        retry_in = min(s.retry_interval_s * 2 ** (job.attempts - 1), s.max_backoff_s)
        if self.ledger.fail(job, error, retry_in):
            metrics.ALERT_DELIVERY_FAILURES.labels("gave_up").inc()
            log.error("alert %s (%s) to %s abandoned after %d attempts: %s", job.alert_id,
                      safe_for_log(job.message.title), label, job.attempts, error)  # fmt: skip
        else:
            log.warning("alert %s to %s failed (attempt %d): %s; retry in %.1f s",
                        job.alert_id, label, job.attempts, error, retry_in)  # fmt: skip

    def _confirm(self, job: Job, label: str) -> None:
        delay = 0.2
        for attempt in range(6):
            try:
                self.ledger.confirm(job)
                return
            except Exception as exc:
                metrics.ALERT_DELIVERY_FAILURES.labels("store").inc()
                if attempt == 5:
                    log.error("alert %s was delivered to %s but not confirmed (%s): it may be "
                              "sent again after its lease", job.alert_id, label,
                              _one_line(exc))  # fmt: skip
                    return
                self._sleep(delay)
                delay *= 2


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def build_worker(
    urls: Sequence[str],
    database_url: str | None,
    redis_url: str | None,
    settings: AlertDeliverySettings,
) -> DeliveryWorker:
    """A started worker with the most durable ledger the configuration allows; one log
    line says which."""
    s = settings
    notifier = AppriseNotifier(urls, timeout_s=s.timeout_s, retries=0)
    ledger: Ledger
    windows = None
    if database_url:
        ledger = PostgresLedger(database_url, lease_s=s.lease_s, max_attempts=s.max_attempts,
                                targets=notifier.fingerprints)  # fmt: skip
        windows = WindowCache.from_dsn(database_url)
        mode = ("ledger in PostgreSQL (durable, once per target across processes), "
                "maintenance windows honoured")  # fmt: skip
    elif redis_url:
        from connectors.redis_state import RedisDeliveryMarks

        ledger = LocalLedger(marks=RedisDeliveryMarks(redis_url), lease_s=s.lease_s,
                             max_attempts=s.max_attempts)  # fmt: skip
        mode = ("no database: pending deliveries in memory (lost on a kill), Redis marks "
                "dedup across processes")  # fmt: skip
    else:
        ledger = LocalLedger(lease_s=s.lease_s, max_attempts=s.max_attempts)
        mode = "no database, no Redis: in memory only (lost on a kill), dedup in this process"
    log.warning("alert delivery: %s; %d target(s): %s", mode, len(notifier.targets),
                ", ".join(map(notifier.label, notifier.fingerprints)))  # fmt: skip
    return DeliveryWorker(ledger, notifier, s, windows=windows).start()


_shared: dict[Hashable, tuple[DeliveryWorker, int]] = {}
_shared_lock = threading.Lock()


def acquire(key: Hashable, factory: Callable[[], DeliveryWorker]) -> DeliveryWorker:
    """The process's worker for ``key`` (built by ``factory`` on first use), counted."""
    with _shared_lock:
        worker, users = _shared.get(key) or (factory(), 0)
        _shared[key] = (worker, users + 1)
        return worker


def release(key: Hashable) -> None:
    """Drop one use of the worker; the last one closes it (with its grace)."""
    with _shared_lock:
        worker, users = _shared[key]
        if users > 1:
            _shared[key] = (worker, users - 1)
            return
        del _shared[key]
    worker.close()
