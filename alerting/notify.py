"""Render alerts and send them through Apprise, one target at a time.

* :func:`render` turns an alert into the :class:`Message` that is sent (and stored, so a
  retry after a restart sends the same text).
* :class:`AppriseNotifier` holds one Apprise service per configured URL (email, Slack,
  ``json://`` webhooks, ...), each known by a :func:`fingerprint` (a hash of the URL, safe
  to store and log) and a masked label. ``send`` makes one bounded attempt to one target
  and returns the failure reason or None; ``notify`` tries every target with back-off.

Who sends what, once, is decided by the delivery ledger (``connectors.alert_delivery``).
Apprise objects are not picklable: build these once per process, never put them in state.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import apprise

from models.schemas import Alert, ms_to_iso

log = logging.getLogger(__name__)

_NOTIFY_TYPES = {
    "warning": apprise.NotifyType.WARNING,
    "critical": apprise.NotifyType.FAILURE,
}


def notify_type(alert: Alert) -> apprise.NotifyType:
    """Apprise message type: resolved → success, else by severity.

    >>> from models.schemas import Alert
    >>> a = Alert("id", "turbofan-0007", 0, "rul_low", "critical", "firing", 20.5, 24.0, "m")
    >>> notify_type(a).value
    'failure'
    """
    if alert.state == "resolved":
        return apprise.NotifyType.SUCCESS
    return _NOTIFY_TYPES.get(alert.severity, apprise.NotifyType.INFO)


def format_title(alert: Alert) -> str:
    """One-line title, e.g. ``[CRITICAL] turbofan-0007 rul_low firing``.

    >>> from models.schemas import Alert
    >>> a = Alert("id", "turbofan-0007", 0, "rul_low", "critical", "resolved", 90.0, 79.2, "m")
    >>> format_title(a)
    '[RESOLVED] turbofan-0007 rul_low resolved (was critical)'
    """
    if alert.state == "resolved":
        return f"[RESOLVED] {alert.equipment_id} {alert.rule} resolved (was {alert.severity})"
    return f"[{alert.severity.upper()}] {alert.equipment_id} {alert.rule} {alert.state}"


def format_body(alert: Alert) -> str:
    """The alert's message followed by its key evidence, one fact per line (plain text)."""
    ev = alert.evidence
    lines = [alert.message, ""]
    lines.append(f"value: {alert.value:g} (threshold {alert.threshold:g})")
    if ev.get("rul") is not None:
        hours = ev.get("rul_hours")
        in_hours = f" = {hours:g} h" if hours is not None and ev.get("rul_unit") != "hours" else ""
        lines.append(f"RUL: {ev['rul']:g} {ev.get('rul_unit', '')}{in_hours}".rstrip())
    for key, label in (("health", "health"), ("anomaly_score", "anomaly score")):
        if ev.get(key) is not None:
            lines.append(f"{label}: {ev[key]:g}")
    if ev.get("rul_lower") is not None or ev.get("rul_upper") is not None:
        lines.append(f"RUL band: {_g(ev.get('rul_lower'))} .. {_g(ev.get('rul_upper'))} "
                     f"{ev.get('rul_unit', '')}".rstrip())  # fmt: skip
    if ev.get("rul_trend"):
        trend = " -> ".join(_g(t.get("rul_hours")) for t in ev["rul_trend"])
        slope = ev.get("rul_slope_h_per_h")
        per = f" ({slope:+g} h per hour)" if slope is not None else ""
        lines.append(f"RUL trend, last {len(ev['rul_trend'])} predictions: {trend} h{per}")
    if ev.get("sensors"):
        lines.append("sensors furthest from this machine's baseline:")
        for e in ev["sensors"]:
            lines.append(f"  {e.get('sensor')}: {_g(e.get('value'))} vs baseline "
                         f"{_g(e.get('baseline'))} (z {_g(e.get('z'), '+.1f')})")  # fmt: skip
    elif ev.get("top_sensors"):
        lines.append(f"top sensors: {', '.join(ev['top_sensors'])}")
    if ev.get("model_name"):
        lines.append(f"model: {ev['model_name']} v{ev.get('model_version', '?')}")
    lines.append(f"event time: {ms_to_iso(alert.ts_ms)}")
    lines.append(f"alert id: {alert.alert_id}")
    return "\n".join(lines)


def _g(x: Any, spec: str = "g") -> str:
    """A number of the evidence for the text ("?" when missing or not a number)."""
    return format(x, spec) if isinstance(x, int | float) else "?"


@dataclass(frozen=True)
class Message:
    """What goes out for one alert: title, plain-text body, Apprise type (its value)."""

    alert_id: str
    title: str
    body: str
    kind: str

    def to_json(self) -> dict[str, str]:
        return {"alert_id": self.alert_id, "title": self.title, "body": self.body,
                "kind": self.kind}  # fmt: skip

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Message:
        return cls(str(d["alert_id"]), str(d["title"]), str(d["body"]), str(d["kind"]))


def render(alert: Alert) -> Message:
    r"""The message for an alert, as text any store accepts (no NUL, valid UTF-8).

    >>> from models.schemas import Alert
    >>> m = render(Alert("id", "pump-\x00", 0, "rul_low", "warning", "firing", 1.0, 2.0, "m"))
    >>> m.title, m.kind
    ('[WARNING] pump-\ufffd rul_low firing', 'warning')
    """
    return Message(
        _clean(alert.alert_id),
        _clean(format_title(alert)),
        _clean(format_body(alert)),
        notify_type(alert).value,
    )


def _clean(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")


def fingerprint(url: str) -> str:
    """A stable, non-secret name for a target: 16 hex digits of the URL's SHA-256.

    >>> fingerprint("json://127.0.0.1:8080/hook")
    '43e055fc7a98ccc9'
    """
    return hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Target:
    fingerprint: str
    label: str  # the URL with secrets masked by Apprise
    service: Any  # apprise.NotifyBase


class AppriseNotifier:
    """One Apprise service per URL, with connect and read timeouts of ``timeout_s``.

    >>> n = AppriseNotifier(["json://user:secret@127.0.0.1:9/hook"], timeout_s=5)
    >>> n.targets[0].split("?")[0], "rto=5" in n.targets[0]
    ('json://user:****@127.0.0.1:9/hook', True)
    >>> AppriseNotifier(["nonsense://x"])
    Traceback (most recent call last):
    ...
    ValueError: invalid Apprise URL #0: 'nonsense://x/...'
    """

    def __init__(
        self,
        urls: Sequence[str],
        timeout_s: float = 10.0,
        retries: int = 2,
        backoff_s: float = 1.0,
    ) -> None:
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.retries = retries
        self.backoff_s = backoff_s
        self.by_fingerprint: dict[str, Target] = {}
        for i, url in enumerate(urls):
            service = apprise.Apprise.instantiate(url)
            if service is None:
                raise ValueError(f"invalid Apprise URL #{i}: {_mask(url)!r}")
            service.socket_connect_timeout = timeout_s
            service.socket_read_timeout = timeout_s
            fp = fingerprint(url)
            self.by_fingerprint[fp] = Target(fp, _masked(service).split("?")[0], service)

    @property
    def targets(self) -> list[str]:
        """The configured targets with their options, secrets masked (safe to log)."""
        return [_masked(t.service) for t in self.by_fingerprint.values()]

    @property
    def fingerprints(self) -> list[str]:
        return list(self.by_fingerprint)

    def label(self, fp: str) -> str:
        """The target's URL without options, secrets masked (safe to log and store)."""
        target = self.by_fingerprint.get(fp)
        return target.label if target else f"<unknown target {fp}>"

    def send(self, fp: str, message: Message) -> str | None:
        """One attempt to deliver ``message`` to the target ``fp``: None if it was
        accepted, else why not (Apprise's warning, which names no secret)."""
        target = self.by_fingerprint.get(fp)
        if target is None:
            return f"target {fp} is not configured"
        capture = _ThreadCapture()
        _APPRISE_LOG.addHandler(capture)
        try:
            ok = bool(
                target.service.notify(
                    body=message.body,
                    title=message.title,
                    notify_type=apprise.NotifyType(message.kind),
                    body_format=apprise.NotifyFormat.TEXT,
                )
            )
        except Exception as exc:  # a plugin bug must not stop delivery of other alerts
            log.exception("Apprise target %s raised", target.label)
            return f"{type(exc).__name__} in the Apprise plugin"
        finally:
            _APPRISE_LOG.removeHandler(capture)
        if ok:
            return None
        return capture.last or "the target did not accept the notification"

    def notify(self, alert: Alert) -> bool:
        """Send to every target, retrying the failed ones with back-off; True if all
        accepted. (The flow uses the ledger instead, which retries across restarts.)"""
        message = render(alert)
        pending = list(self.by_fingerprint)
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            pending = [fp for fp in pending if self.send(fp, message) is not None]
            if not pending:
                return True
        for fp in pending:
            log.error("alert %s not delivered to %s after %d attempt(s)",
                      alert.alert_id, self.label(fp), self.retries + 1)  # fmt: skip
        return False


_APPRISE_LOG = logging.getLogger("apprise")
_URL_CREDENTIALS = re.compile(r"(\w+://)[^/\s@]*@")


class _ThreadCapture(logging.Handler):
    """Keeps the last WARNING+ message Apprise logs from this thread."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread = threading.get_ident()
        self.last: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            text = _URL_CREDENTIALS.sub(r"\1****@", record.getMessage())
            self.last = text[:300]


def _masked(service: Any) -> str:
    """The service's URL with secrets masked by Apprise (safe to log)."""
    return str(service.url(privacy=True))


def _mask(url: str) -> str:
    """Scheme and host of a URL, without credentials, path or query.

    >>> _mask("slack://user:secret@hooks.example/T000/B000/XXXX?x=1")
    'slack://hooks.example/...'
    """
    try:
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
    except ValueError:
        return "<unparseable>"
    return f"{parts.scheme}://{host}/..." if parts.scheme else "<no scheme>"
