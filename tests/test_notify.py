"""Sending alerts through Apprise's json:// plugin to a real HTTP receiver on 127.0.0.1
(who sends what, once, is tested in test_alert_delivery)."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from alerting.notify import AppriseNotifier, Message, fingerprint, render
from models.schemas import Alert
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


# --- one attempt per target: send() --------------------------------------------------------


def test_send_reports_success_or_the_reason_without_secrets() -> None:
    with HttpReceiver(status=503) as rx:
        url = f"json://user:hunter2@{rx.host}:{rx.port}/h"
        notifier = AppriseNotifier([url], timeout_s=2.0, retries=0)
        (fp,) = notifier.fingerprints
        assert fp == fingerprint(url) and "hunter2" not in fp
        assert "hunter2" not in notifier.label(fp)
        error = notifier.send(fp, render(make_alert()))
        assert error is not None and "503" in error
        assert "hunter2" not in error
        rx.status = 200
        assert notifier.send(fp, render(make_alert())) is None
        assert [r.status for r in rx.requests] == [503, 200]
        unknown = "0" * 16
        assert notifier.send(unknown, render(make_alert())) == f"target {unknown} is not configured"


def test_send_to_a_hanging_endpoint_returns_after_the_timeout() -> None:
    with HttpReceiver() as rx:
        rx.hang()
        notifier = AppriseNotifier([rx.apprise_url("/h")], timeout_s=0.5, retries=0)
        error = notifier.send(notifier.fingerprints[0], render(make_alert()))
        assert error is not None and "onnection" in error
        assert rx.hung == 1 and rx.requests == []


def test_rendered_message_round_trips_through_json_and_is_what_is_sent(
    receiver: HttpReceiver,
) -> None:
    message = render(make_alert(equipment_id="pump-\x00\ud800"))
    assert "\x00" not in message.title and "\ud800" not in message.title
    message.title.encode("utf-8")  # valid UTF-8
    assert Message.from_json(message.to_json()) == message
    notifier = fast_notifier([receiver.apprise_url("/h")])
    assert notifier.send(notifier.fingerprints[0], message) is None
    assert receiver.wait_for(1)[0].json["title"] == message.title
