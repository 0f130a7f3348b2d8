"""Deliver alerts through Apprise, once per alert id.

* :class:`AppriseNotifier` sends one alert to every configured Apprise URL (email, Slack,
  ``json://`` webhooks, ...), retrying each failed target with exponential back-off.
* :class:`Deduper` is the port that remembers which alert ids went out;
  :class:`MemoryDeduper` is the bounded in-process implementation (a Redis one with
  ``SET NX`` plus TTL serves several workers and restarts).
* :class:`AlertDispatcher` ties them: claim the id, send, release the claim if sending
  failed so that a later dispatch of the same alert tries again.

Apprise objects are not picklable: build these once per worker, never put them in state.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol
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
    if ev.get("top_sensors"):
        lines.append(f"top sensors: {', '.join(ev['top_sensors'])}")
    if ev.get("model_name"):
        lines.append(f"model: {ev['model_name']} v{ev.get('model_version', '?')}")
    lines.append(f"event time: {ms_to_iso(alert.ts_ms)}")
    lines.append(f"alert id: {alert.alert_id}")
    return "\n".join(lines)


class Notifier(Protocol):
    """Anything that can deliver one alert and say whether it arrived."""

    def notify(self, alert: Alert) -> bool: ...


class AppriseNotifier:
    """Send alerts to Apprise URLs; ``notify`` returns True only if every target accepted.

    Each target is tried ``1 + retries`` times at most, waiting ``backoff_s``, then twice
    that, and so on; a retry goes only to the targets that failed. Delivery failures are
    logged (with the URL's secrets masked by Apprise) and never raised.

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
        self._services = []
        for i, url in enumerate(urls):
            service = apprise.Apprise.instantiate(url)
            if service is None:
                raise ValueError(f"invalid Apprise URL #{i}: {_mask(url)!r}")
            service.socket_connect_timeout = timeout_s
            service.socket_read_timeout = timeout_s
            self._services.append(service)

    @property
    def targets(self) -> list[str]:
        """The configured targets, secrets masked (safe to log)."""
        return [_masked(s) for s in self._services]

    def notify(self, alert: Alert) -> bool:
        title, body, kind = format_title(alert), format_body(alert), notify_type(alert)
        pending = list(self._services)
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            pending = [s for s in pending if not _send(s, title, body, kind)]
            if not pending:
                return True
        for service in pending:
            log.error(
                "alert %s (%s) not delivered to %s after %d attempt(s)",
                alert.alert_id,
                title,
                _masked(service),
                self.retries + 1,
            )
        return False


def _send(service: apprise.NotifyBase, title: str, body: str, kind: apprise.NotifyType) -> bool:
    try:
        return bool(
            service.notify(
                body=body,
                title=title,
                notify_type=kind,
                body_format=apprise.NotifyFormat.TEXT,
            )
        )
    except Exception:  # a plugin bug must not stop the flow; count it as a failed delivery
        log.exception("Apprise target %s raised", _masked(service))
        return False


def _masked(service: apprise.NotifyBase) -> str:
    """The service's URL with secrets masked by Apprise (safe to log)."""
    return str(service.url(privacy=True))


def _mask(url: str) -> str:
    """Scheme and host of a URL that Apprise rejected, without credentials, path or query.

    >>> _mask("slack://user:secret@hooks.example/T000/B000/XXXX?x=1")
    'slack://hooks.example/...'
    """
    try:
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
    except ValueError:
        return "<unparseable>"
    return f"{parts.scheme}://{host}/..." if parts.scheme else "<no scheme>"


class Deduper(Protocol):
    """Remembers which alert ids were delivered.

    ``first_time`` atomically claims an id (True the first time, False after);
    ``release`` drops a claim whose delivery failed, so the id can be claimed again.
    """

    def first_time(self, alert_id: str) -> bool: ...

    def release(self, alert_id: str) -> None: ...


class MemoryDeduper:
    """In-process :class:`Deduper` holding the newest ``max_ids`` ids (oldest evicted).

    Thread-safe. Forgets everything on restart: use a shared store across workers.

    >>> d = MemoryDeduper(max_ids=2)
    >>> d.first_time("a"), d.first_time("a"), d.first_time("b"), d.first_time("c")
    (True, False, True, True)
    >>> d.first_time("a")  # evicted, so new again
    True
    >>> d.release("a"); d.first_time("a")
    True
    """

    def __init__(self, max_ids: int = 100_000) -> None:
        if max_ids < 1:
            raise ValueError(f"max_ids must be >= 1, got {max_ids}")
        self.max_ids = max_ids
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._ids)

    def first_time(self, alert_id: str) -> bool:
        with self._lock:
            if alert_id in self._ids:
                return False
            self._ids[alert_id] = None
            if len(self._ids) > self.max_ids:
                self._ids.popitem(last=False)
            return True

    def release(self, alert_id: str) -> None:
        with self._lock:
            self._ids.pop(alert_id, None)


SENT, DUPLICATE, FAILED = "sent", "duplicate", "failed"


class AlertDispatcher:
    """Send each alert at most once per alert id (as far as the deduper remembers).

    The id is claimed before sending, so two workers racing on a shared deduper cannot
    both send it, and released when delivery fails, so a later dispatch retries it.
    """

    def __init__(self, notifier: Notifier, deduper: Deduper) -> None:
        self.notifier = notifier
        self.deduper = deduper

    def dispatch(self, alerts: Iterable[Alert]) -> int:
        """Deliver the alerts whose id is new; return how many were delivered."""
        return sum(result == SENT for _, result in self.dispatch_each(alerts))

    def dispatch_each(self, alerts: Iterable[Alert]) -> Iterator[tuple[Alert, str]]:
        """Deliver the alerts whose id is new, yielding each alert with its result:
        ``sent``, ``duplicate`` (already sent) or ``failed`` (released for a retry)."""
        for alert in alerts:
            if not self.deduper.first_time(alert.alert_id):
                yield alert, DUPLICATE
                continue
            delivered = False
            try:
                delivered = self.notifier.notify(alert)
            finally:
                if not delivered:
                    self.deduper.release(alert.alert_id)
            yield alert, SENT if delivered else FAILED
