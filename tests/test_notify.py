"""Alert delivery through Apprise's json:// plugin to a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from alerting.notify import AlertDispatcher, AppriseNotifier, MemoryDeduper
from alerting.rules import AlertState, Thresholds, evaluate
from models.schemas import Alert, Prediction
from tests.http_receiver import HttpReceiver


def fast_notifier(urls: list[str], retries: int = 2) -> AppriseNotifier:
    """A notifier with short timeouts and back-off, for tests."""
    return AppriseNotifier(urls, timeout_s=2.0, retries=retries, backoff_s=0.01)


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    with HttpReceiver() as rx:
        yield rx


def make_alert(**kw: object) -> Alert:
    base = Alert(
        alert_id="0123456789abcdef",
        equipment_id="turbofan-0007",
        ts_ms=1_795_770_000_000,
        rule="rul_low",
        severity="critical",
        state="firing",
        value=20.5,
        threshold=24.0,
        message="turbofan-0007: predicted RUL 20.5 h is below the critical threshold 24 h",
        evidence={
            "rul": 10.25,
            "rul_unit": "cycles",
            "rul_hours": 20.5,
            "health": 0.31,
            "anomaly_score": 0.42,
            "model_name": "rul_gbr",
            "model_version": "3",
            "top_sensors": ["T24", "T50"],
        },
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- AppriseNotifier ---------------------------------------------------------------------


def test_json_payload_carries_title_body_and_type(receiver: HttpReceiver) -> None:
    notifier = fast_notifier([receiver.apprise_url("/hooks/pm")])
    alert = make_alert()

    assert notifier.notify(alert) is True

    (req,) = receiver.wait_for(1)
    assert req.method == "POST"
    assert req.path == "/hooks/pm"
    assert req.headers["Content-Type"] == "application/json"
    payload = req.json
    assert set(payload) == {"version", "title", "message", "attachments", "type"}
    assert payload["version"] == "1.0"
    assert payload["attachments"] == []
    assert payload["title"] == "[CRITICAL] turbofan-0007 rul_low firing"
    assert payload["type"] == "failure"
    body = payload["message"]
    assert body.startswith(alert.message)
    for fact in (
        "value: 20.5 (threshold 24)",
        "RUL: 10.25 cycles = 20.5 h",
        "health: 0.31",
        "anomaly score: 0.42",
        "top sensors: T24, T50",
        "model: rul_gbr v3",
        "event time: 2026-11-27T",
        "alert id: 0123456789abcdef",
    ):
        assert fact in body


@pytest.mark.parametrize(
    ("severity", "state", "expected_type", "expected_title"),
    [
        ("warning", "firing", "warning", "[WARNING] turbofan-0007 rul_low firing"),
        (
            "critical",
            "escalated",
            "failure",
            "[CRITICAL] turbofan-0007 rul_low escalated",
        ),
        (
            "critical",
            "resolved",
            "success",
            "[RESOLVED] turbofan-0007 rul_low resolved (was critical)",
        ),
        (
            "warning",
            "resolved",
            "success",
            "[RESOLVED] turbofan-0007 rul_low resolved (was warning)",
        ),
    ],
)
def test_severity_and_state_map_to_apprise_type(
    receiver: HttpReceiver,
    severity: str,
    state: str,
    expected_type: str,
    expected_title: str,
) -> None:
    notifier = fast_notifier([receiver.apprise_url("/h")])
    assert notifier.notify(make_alert(severity=severity, state=state))
    payload = receiver.wait_for(1)[0].json
    assert payload["type"] == expected_type
    assert payload["title"] == expected_title


def test_every_target_receives_the_alert() -> None:
    with HttpReceiver() as a, HttpReceiver() as b:
        notifier = fast_notifier([a.apprise_url("/a"), b.apprise_url("/b")])
        assert notifier.notify(make_alert())
        assert a.wait_for(1)[0].path == "/a"
        assert b.wait_for(1)[0].path == "/b"


def test_transient_500_is_retried_and_succeeds(receiver: HttpReceiver) -> None:
    receiver.queue_statuses([500])
    notifier = fast_notifier([receiver.apprise_url("/h")], retries=2)
    assert notifier.notify(make_alert()) is True
    assert [r.status for r in receiver.requests] == [500, 200]
    assert receiver.requests[0].json == receiver.requests[1].json


def test_retry_goes_only_to_the_failed_target() -> None:
    with HttpReceiver() as ok, HttpReceiver() as flaky:
        flaky.queue_statuses([503])
        notifier = fast_notifier([ok.apprise_url("/"), flaky.apprise_url("/")])
        assert notifier.notify(make_alert()) is True
        assert len(ok.requests) == 1
        assert [r.status for r in flaky.requests] == [503, 200]


def test_persistent_500_fails_after_retries_with_backoff_and_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with HttpReceiver(status=500) as rx:
        notifier = AppriseNotifier([rx.apprise_url("/h")], retries=2, timeout_s=2.0, backoff_s=0.1)
        start = time.monotonic()
        with caplog.at_level(logging.ERROR, logger="alerting.notify"):
            assert notifier.notify(make_alert()) is False
        elapsed = time.monotonic() - start
        assert len(rx.requests) == 3
    assert elapsed >= 0.1 + 0.2
    assert any("0123456789abcdef" in r.getMessage() for r in caplog.records)


def test_unreachable_target_returns_false() -> None:
    notifier = fast_notifier([f"json://127.0.0.1:{free_port()}/h"], retries=1)
    assert notifier.notify(make_alert()) is False


def test_read_timeout_is_applied() -> None:
    with HttpReceiver(delay_s=2.0) as rx:
        notifier = AppriseNotifier([rx.apprise_url("/slow")], timeout_s=0.3, retries=0)
        start = time.monotonic()
        assert notifier.notify(make_alert()) is False
        assert time.monotonic() - start < 1.5
        assert len(rx.requests) == 1


def test_invalid_url_is_rejected_at_construction_naming_it_without_secrets() -> None:
    good = "json://127.0.0.1:9/h"
    with pytest.raises(ValueError, match=r"#1: 'notaservice://host/\.\.\.'") as err:
        AppriseNotifier([good, "notaservice://user:secret@host/token"])
    assert "secret" not in str(err.value)
    assert "token" not in str(err.value)


# --- MemoryDeduper -------------------------------------------------------------------------


def test_memory_deduper_is_bounded_and_evicts_oldest() -> None:
    d = MemoryDeduper(max_ids=3)
    assert [d.first_time(x) for x in "abcd"] == [True] * 4
    assert len(d) == 3
    assert d.first_time("a") is True  # "a" was evicted
    assert d.first_time("d") is False
    d.release("d")
    assert d.first_time("d") is True


def test_memory_deduper_claims_once_under_threads() -> None:
    d = MemoryDeduper()
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def claim() -> None:
        barrier.wait()
        results.append(d.first_time("same-id"))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]


# --- AlertDispatcher -----------------------------------------------------------------------


def test_dispatch_sends_each_alert_id_once(receiver: HttpReceiver) -> None:
    dispatcher = AlertDispatcher(fast_notifier([receiver.apprise_url("/h")]), MemoryDeduper())
    a, b = make_alert(), make_alert(alert_id="fedcba9876543210", state="escalated")
    assert dispatcher.dispatch([a, a, b]) == 2
    assert dispatcher.dispatch([a, b]) == 0
    assert len(receiver.requests) == 2
    assert [r.json["title"].split()[-1] for r in receiver.requests] == [
        "firing",
        "escalated",
    ]


def test_failed_delivery_releases_the_id_so_a_later_dispatch_retries() -> None:
    with HttpReceiver(status=500) as rx:
        dispatcher = AlertDispatcher(
            fast_notifier([rx.apprise_url("/h")], retries=1), MemoryDeduper()
        )
        alert = make_alert()
        assert dispatcher.dispatch([alert]) == 0
        assert len(rx.requests) == 2  # first try + one retry, both 500

        rx.status = 200
        assert dispatcher.dispatch([alert]) == 1
        assert dispatcher.dispatch([alert]) == 0
        assert [r.status for r in rx.requests] == [500, 500, 200]


class _Exploding:
    def notify(self, alert: Alert) -> bool:
        raise RuntimeError("boom")


def test_notifier_exception_releases_the_claim() -> None:
    deduper = MemoryDeduper()
    dispatcher = AlertDispatcher(_Exploding(), deduper)
    with pytest.raises(RuntimeError):
        dispatcher.dispatch([make_alert()])
    assert deduper.first_time(make_alert().alert_id) is True


def test_replayed_predictions_notify_nothing_twice(receiver: HttpReceiver) -> None:
    """Rules → dispatcher → HTTP: a replay from fresh state yields the same ids."""
    th = Thresholds()
    healths = [0.9, 0.6, 0.6, 0.3, 0.3, 0.95, 0.9]
    preds = [
        Prediction(
            equipment_id="turbofan-0007",
            equipment_type="turbofan_engine",
            ts_ms=1_795_770_000_000 + i * 60_000,
            rul=None,
            rul_unit="cycles",
            rul_hours=None,
            rul_lower=None,
            rul_upper=None,
            health=h,
            anomaly_score=0.1,
            status="ok",
            model_name="m",
            model_version="1",
        )
        for i, h in enumerate(healths)
    ]
    dispatcher = AlertDispatcher(fast_notifier([receiver.apprise_url("/h")]), MemoryDeduper())
    for _run in range(2):
        state = AlertState()
        for p in preds:
            dispatcher.dispatch(evaluate(state, p, th))
    titles = [r.json["title"] for r in receiver.requests]
    assert titles == [
        "[WARNING] turbofan-0007 health_low firing",
        "[CRITICAL] turbofan-0007 health_low escalated",
        "[RESOLVED] turbofan-0007 health_low resolved (was critical)",
    ]
