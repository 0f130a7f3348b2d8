"""Alert delivery: once per (alert, target), never lost, never on the stream's hot path.

Everything real: PostgreSQL (a fresh database per test, migrations applied), Redis (a
private instance started by infra/scripts/redis.sh when a test stops it), Apprise's json://
plugin and the HTTP receiver in tests/http_receiver.py. A delivery is counted by what the
receiver answered with 200; ``alert id: ...`` in the body names the alert.

``PM_TEST_REDIS_OUTAGE_S`` sets how long Redis is down in the outage test (default 60 s, as in
the issue's scenario).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import psycopg
import pytest
from bytewax.testing import TestingSink, TestingSource, run_main

from alerting.notify import fingerprint, render
from connectors import metrics
from connectors.alert_delivery import build_worker
from connectors.delivery_ledger import LocalLedger, PostgresLedger
from connectors.migrate import apply_migrations
from connectors.redis_state import RedisDeliveryMarks, RedisStatusStore
from connectors.settings import AlertDeliverySettings, load_settings
from connectors.simulator import SimConfig, simulate
from flows.pipeline import build_flow
from models.schemas import Alert, Prediction
from tests.flow_helpers import records_from_dicts
from tests.http_receiver import HttpReceiver, ReceivedRequest
from tests.test_notify import free_port, make_alert

pytestmark = pytest.mark.integration

FAST = AlertDeliverySettings(
    timeout_s=0.5,
    lease_s=2.0,
    retry_interval_s=0.2,
    max_backoff_s=0.5,
    poll_interval_s=0.1,
    close_grace_s=3.0,
    max_attempts=1000,
)


@pytest.fixture
def db(fresh_db: str) -> str:
    apply_migrations(fresh_db)
    return fresh_db


def wait_until(check: Callable[[], bool], timeout_s: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not reached in {timeout_s} s: {what}")
        time.sleep(0.05)


def delivered_ids(requests: list[ReceivedRequest]) -> Counter[str]:
    """Alert ids of the requests answered with 200, with how often each arrived."""
    return Counter(
        line.split(": ", 1)[1]
        for r in requests
        if r.status == 200
        for line in r.json["message"].splitlines()
        if line.startswith("alert id: ")
    )


def rows(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT alert_id, target, state, attempts, last_error, delivered_at IS NOT NULL"
            " FROM alert_deliveries ORDER BY alert_id, target"
        ).fetchall()


# -- retries, restarts, partial failures -----------------------------------------------------


@pytest.mark.parametrize("fault", ["http_500", "receiver_down"])
def test_failed_delivery_is_retried_on_the_timer_and_delivered_once(
    db: str, fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    port = free_port()
    url = f"json://user:hunter2@127.0.0.1:{port}/hook"
    failures = metrics.ALERT_DELIVERY_FAILURES.labels("target")
    failures_before = failures._value.get()
    rx = HttpReceiver(port=port, status=500).start() if fault == "http_500" else None
    worker = build_worker([url], db, None, FAST)
    try:
        assert worker.submit([make_alert()]) == 1
        wait_until(lambda: rows(db)[0][3] >= 3, what="three failed attempts")
        (alert_id, _target, state, _attempts, error, delivered) = rows(db)[0]
        assert state in ("failed", "sending") and not delivered
        assert ("500" in error) if fault == "http_500" else ("onnection" in error)
        assert failures._value.get() - failures_before >= 2
        if rx is None:
            rx = HttpReceiver(port=port).start()
        else:
            rx.status = 200
        # No new alert arrives: the timer alone retries it.
        wait_until(lambda: delivered_ids(rx.requests) != Counter(), what="delivered")
        assert worker.wait_idle(10)
        assert rows(db)[0][2] == "delivered"
        time.sleep(3 * FAST.max_backoff_s)  # a few more ticks: nothing is sent again
        assert delivered_ids(rx.requests) == {alert_id: 1}
    finally:
        worker.close()
        if rx is not None:
            rx.stop()
    # Every failure was logged, and no log line or stored column holds the password.
    assert sum("failed (attempt" in r.getMessage() for r in caplog.records) >= 2
    assert not [r.getMessage() for r in caplog.records if "hunter2" in r.getMessage()]
    with psycopg.connect(db) as conn:
        (dump,) = conn.execute("SELECT string_agg(t::text, ' ') FROM alert_deliveries t").fetchone()
    assert "hunter2" not in dump and "user:****@" in dump


def test_partial_failure_does_not_resend_to_the_target_that_got_it(db: str) -> None:
    with HttpReceiver() as ok, HttpReceiver() as flaky:
        flaky.queue_statuses([500, 503])
        worker = build_worker([ok.apprise_url("/ok"), flaky.apprise_url("/flaky")], db, None, FAST)
        try:
            alerts = [make_alert(), make_alert(alert_id="fedcba9876543210", state="escalated")]
            assert worker.submit(alerts) == 4
            wait_until(lambda: len(delivered_ids(flaky.requests)) == 2, what="flaky delivered")
            assert worker.wait_idle(10)
            # Replays of the same alerts change nothing either.
            assert worker.submit(alerts) == 0
            assert worker.wait_idle(10)
        finally:
            worker.close()
        assert delivered_ids(ok.requests) == {a.alert_id: 1 for a in alerts}
        assert len(ok.requests) == 2
        assert delivered_ids(flaky.requests) == {a.alert_id: 1 for a in alerts}
        assert [r.status for r in flaky.requests].count(200) == 2
    assert {r[2] for r in rows(db)} == {"delivered"}


def test_an_abandoned_claim_is_sent_once_by_the_next_worker(db: str) -> None:
    """A process that claimed a delivery and died (its lease runs out) and one that died
    before claiming: a new worker on the same database sends both, once."""
    with HttpReceiver() as rx:
        url = rx.apprise_url("/h")
        dead = PostgresLedger(db, lease_s=FAST.lease_s, targets=[fingerprint(url)])
        first, second = make_alert(), make_alert(alert_id="fedcba9876543210")
        assert dead.record([render(first), render(second)], {fingerprint(url): "label"}) == 2
        (claimed,) = dead.claim(1)  # ... and the process dies here, mid-send
        dead.close()
        worker = build_worker([url], db, None, FAST)
        try:
            wait_until(lambda: len(delivered_ids(rx.requests)) == 2, what="both delivered")
            assert worker.wait_idle(10)
            time.sleep(FAST.lease_s)
        finally:
            worker.close()
        assert delivered_ids(rx.requests) == {first.alert_id: 1, second.alert_id: 1}
    by_id = {r[0]: r for r in rows(db)}
    assert by_id[claimed.alert_id][2:4] == ("delivered", 2)  # the lost attempt counts


def _child(dsn: str, url: str) -> None:
    """Run in a subprocess: a worker that submits two alerts and then waits to be killed."""
    settings = AlertDeliverySettings(timeout_s=30.0, lease_s=61.0, concurrency=1,
                                     poll_interval_s=0.1)  # fmt: skip
    worker = build_worker([url], dsn, None, settings)
    worker.submit([make_alert(), make_alert(alert_id="fedcba9876543210")])
    time.sleep(120)


def test_sigkill_mid_send_then_restart_delivers_each_alert_once(db: str) -> None:
    with HttpReceiver() as rx:
        url = rx.apprise_url("/h")
        rx.hang()  # the first send never gets an answer
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.test_alert_delivery", db, url],
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        try:
            wait_until(lambda: rx.hung == 1, timeout_s=60, what="the child's send in flight")
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(10)
        rx.unhang()
        states = sorted(r[2] for r in rows(db))
        assert states == ["pending", "sending"], states  # one in flight, one waiting
        with psycopg.connect(db) as conn:  # the dead claim's lease: as if 61 s had passed
            conn.execute("UPDATE alert_deliveries SET due_at = now() WHERE state = 'sending'")
        worker = build_worker([url], db, None, FAST)
        try:
            wait_until(lambda: len(delivered_ids(rx.requests)) == 2, what="both delivered")
            assert worker.wait_idle(10)
        finally:
            worker.close()
        assert delivered_ids(rx.requests) == {make_alert().alert_id: 1, "fedcba9876543210": 1}
    assert {r[2] for r in rows(db)} == {"delivered"}


# -- off the hot path ---------------------------------------------------------------------


def _degrading_records(n_equipment: int = 4, n_readings: int = 150) -> list[Any]:
    config = SimConfig(num_equipment=n_equipment, equipment_types=("turbofan_engine",),
                       readings=n_readings, seed=21)  # fmt: skip
    return records_from_dicts([r for r, _ in simulate(config)])


def _run_flow(settings: Any, records: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    flow = build_flow(settings, source=TestingSource(records, batch_size=50),
                      output=TestingSink(out))  # fmt: skip
    run_main(flow)
    return [x[1] if isinstance(x, tuple) else x for x in out]


def test_a_hanging_endpoint_does_not_stall_the_stream(db: str, model_dir: Any) -> None:
    """The endpoint accepts connections and never answers, for the whole run, which lasts
    ``PM_TEST_HANG_S`` (default 60 s, as in the issue): the readings arrive paced over it.
    Sends time out only after 20 s, so a flow that sent inline would wait minutes for its
    alerts; this one processes every reading while the endpoint hangs and leaves the
    alerts to the worker."""
    records = _degrading_records()
    hang_s = float(os.environ.get("PM_TEST_HANG_S", "60"))

    def paced() -> Iterator[Any]:
        for i in range(0, len(records), 50):
            yield from records[i : i + 50]
            time.sleep(hang_s / (len(records) / 50))

    with HttpReceiver() as rx:
        rx.hang()
        hanging = {**FAST.model_dump(), "timeout_s": 20.0, "lease_s": 41.0}
        settings = load_settings(
            model=str(model_dir), output="none", database_url=db,
            apprise_urls=rx.apprise_url("/h"), alerts={"cooldown_s": 0.0},
            alert_delivery=hanging, postgres={"buffer_size": 100},
        )  # fmt: skip
        out = _run_flow(settings, paced())
        predictions = [x for x in out if isinstance(x, Prediction)]
        alerts = [x for x in out if isinstance(x, Alert)]
        # The whole stream went through while every send hung until its timeout.
        assert len(predictions) == len(records)
        assert alerts, "degrading engines should raise alerts"
        assert rx.hung >= 1 and rx.requests == []
        with psycopg.connect(db) as conn:
            stored = conn.execute("SELECT count(*) FROM predictions").fetchone()
        assert stored == (len(records),)
        assert {r[0] for r in rows(db)} == {a.alert_id for a in alerts}
        assert "delivered" not in {r[2] for r in rows(db)}
        assert {r[2] for r in rows(db)} <= {"pending", "sending", "failed"}  # none went out

        # The endpoint answers again: the next start delivers every alert, once.
        rx.unhang()  # the hung sends end without an answer: they failed
        wait_until(lambda: all(r[2] != "sending" for r in rows(db)), what="hung sends failed")
        assert all(r[4] for r in rows(db) if r[3] > 0)  # each attempt left its error
        with psycopg.connect(db) as conn:  # leases of sends cut off at close: as if expired
            conn.execute("UPDATE alert_deliveries SET due_at = now() WHERE state <> 'delivered'")
        worker = build_worker([rx.apprise_url("/h")], db, None, FAST)
        try:
            wait_until(lambda: len(delivered_ids(rx.requests)) == len(alerts), what="delivered")
            assert worker.wait_idle(10)
        finally:
            worker.close()
        assert delivered_ids(rx.requests) == {a.alert_id: 1 for a in alerts}
    assert {r[2] for r in rows(db)} == {"delivered"}


# -- Redis outages ---------------------------------------------------------------------------


@pytest.fixture
def private_redis() -> Iterator[Any]:
    """A Redis of this test's own (infra/scripts/redis.sh on a free port), so stopping it
    disturbs no other test; stopped and removed afterwards, whatever happened."""
    from tests.private_services import PrivateServices

    services = PrivateServices()
    try:
        services.start("redis")
        yield services
    finally:
        services.close()


def _outage_s() -> float:
    return float(os.environ.get("PM_TEST_REDIS_OUTAGE_S", "60"))


def test_redis_down_during_a_flow_run(
    db: str, model_dir: Any, private_redis: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis status and alert delivery on; Redis is stopped for a while mid-stream, and
    entirely during a replay: no crash, no duplicate page (the database dedups), the
    outage is counted, status writes resume when Redis is back."""
    caplog.set_level(logging.WARNING, logger="connectors.redis_state")
    outage_s = _outage_s()
    records = _degrading_records()
    third = len(records) // 3
    status_errors = metrics.REDIS_ERRORS.labels("status")
    errors_before = status_errors._value.get()
    seen_down: list[float] = []

    def with_outage() -> Iterator[Any]:
        yield from records[:third]
        private_redis.stop("redis")
        try:
            middle = records[third : 2 * third]
            for i in range(0, len(middle), 50):  # readings keep flowing during the outage
                yield from middle[i : i + 50]
                time.sleep(outage_s / (len(middle) / 50))
                seen_down.append(metrics.REDIS_UP.labels("status")._value.get())
        finally:
            private_redis.start("redis")
        yield from records[2 * third :]

    with HttpReceiver() as rx:
        settings = load_settings(
            model=str(model_dir), output="none", database_url=db,
            redis_url=private_redis.redis_url, apprise_urls=rx.apprise_url("/h"),
            alerts={"cooldown_s": 0.0}, alert_delivery=FAST.model_dump(),
        )  # fmt: skip
        flow_out: list[Any] = []
        flow = build_flow(settings, source=TestingSource(with_outage(), batch_size=50),
                          output=TestingSink(flow_out))  # fmt: skip
        run_main(flow)
        out = [x[1] if isinstance(x, tuple) else x for x in flow_out]
        predictions = [x for x in out if isinstance(x, Prediction)]
        alerts = {x.alert_id for x in out if isinstance(x, Alert)}
        assert len(predictions) == len(records)
        assert alerts
        assert 0 in seen_down, "pm_redis_up{client=status} showed the outage"
        assert status_errors._value.get() > errors_before

        # A full replay with Redis down the whole time: still no second page.
        private_redis.stop("redis")
        try:
            replay = _run_flow(settings, records)
        finally:
            private_redis.start("redis")
        assert len([x for x in replay if isinstance(x, Prediction)]) == len(records)
        assert delivered_ids(rx.requests) == {a: 1 for a in alerts}
    lines = [r.getMessage() for r in caplog.records]
    assert sum("redis (status) unavailable" in m for m in lines) == 2, lines  # once per outage

    # Status writes resumed after the outage: the newest prediction per machine.
    status = RedisStatusStore(private_redis.redis_url)
    try:
        latest = {p.equipment_id: p.ts_ms for p in predictions}
        for equipment_id, ts_ms in latest.items():
            assert status.read(equipment_id)["ts_ms"] == ts_ms
    finally:
        status.close()


def test_without_a_database_redis_down_degrades_to_in_process_dedup(private_redis: Any) -> None:
    """Redis-only mode: while Redis is down alerts still go out (in-process dedup, counted);
    the delivered marks reach Redis when it returns, so another process won't resend."""
    degraded = metrics.ALERT_DELIVERY_FAILURES.labels("redis")
    before = degraded._value.get()
    marks = RedisDeliveryMarks(private_redis.redis_url, prefix="pmtest:")
    ledger = LocalLedger(marks=marks, lease_s=5)
    ledger.health.probe_s = 0.2
    targets = {"t1": "label"}
    private_redis.stop("redis")
    try:
        assert ledger.record([render(make_alert())], targets) == 1
        (job,) = ledger.claim(10)
        ledger.confirm(job)  # delivered while Redis was down
        assert ledger.record([render(make_alert())], targets) == 0  # a replay: no resend
        assert ledger.claim(10) == []
        assert degraded._value.get() == before + 1
        assert not ledger.health.up
    finally:
        private_redis.start("redis")
    time.sleep(0.3)
    assert ledger.record([render(make_alert(alert_id="other"))], targets) == 1
    assert len(ledger.claim(10)) == 1  # Redis is probed again: the pending mark is written
    assert ledger.health.up
    other_process = RedisDeliveryMarks(private_redis.redis_url, prefix="pmtest:")
    assert other_process.claim(make_alert().alert_id, "t1", "tok", 5) == "done"
    ledger.close()
    other_process.close()


if __name__ == "__main__":  # the child of the SIGKILL test
    _child(sys.argv[1], sys.argv[2])
