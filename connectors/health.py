"""The flow's HTTP endpoints: ``/metrics``, ``/healthz`` and ``/readyz``.

Served by prometheus-client's registry through a small threaded HTTP server of our own
(Bytewax's API server always binds 0.0.0.0), on ``PM_METRICS_ADDRESS`` (127.0.0.1 by
default) and ``PM_METRICS_PORT``. It runs in a daemon thread, so it answers while a worker
is blocked, e.g. in a sink retrying through a database outage.

* ``/healthz``: 200 while the process serves HTTP (liveness).
* ``/readyz``: 200 when every readiness check passes, else 503; the JSON body names each
  check and why it failed. The flow registers: ``model`` (the model loaded at start-up, or
  ``PM_MODEL=none``), ``sinks`` (no sink partition reports a failed write, see
  :func:`connectors.metrics.sinks_down`), ``postgres`` and ``redis`` (a ``SELECT 1`` / ``PING``
  within 2 s, when configured). Probe results are cached for one second.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from connectors import metrics
from models.logsafe import redact, secret_parts

log = logging.getLogger(__name__)

Check = Callable[[], tuple[bool, str]]
"""A readiness check: returns (ok, detail)."""

PROBE_TIMEOUT_S = 2


class HealthServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on ``address:port`` (port 0: any free one,
    see :attr:`port`)."""

    def __init__(self, address: str = "127.0.0.1", port: int = 9100) -> None:
        self.checks: dict[str, Check] = {}
        self._server = ThreadingHTTPServer((address, port), _handler(self))
        self._server.daemon_threads = True
        self.address, self.port = self._server.server_address[:2]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="pm-health", daemon=True
        )

    def add_check(self, name: str, check: Check) -> None:
        self.checks[name] = check

    def start(self) -> HealthServer:
        self._thread.start()
        log.info("serving /metrics, /healthz, /readyz on %s:%s", self.address, self.port)
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        results: dict[str, Any] = {}
        for name, check in self.checks.items():
            try:
                ok, detail = check()
            except Exception as exc:  # a broken check means not ready, never a crash
                ok, detail = False, f"{type(exc).__name__}: {redact(str(exc))[:200]}"
            results[name] = {"ok": ok, "detail": detail}
        return all(r["ok"] for r in results.values()), results


def _handler(server: HealthServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._json(200, {"status": "alive"})
            elif path == "/readyz":
                ready, checks = server.readiness()
                self._json(200 if ready else 503, {"ready": ready, "checks": checks})
            else:
                paths = ["/metrics", "/healthz", "/readyz"]
                self._json(404, {"error": "not found", "paths": paths})

        def _json(self, code: int, body: dict[str, Any]) -> None:
            self._send(code, json.dumps(body).encode(), "application/json")

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # scrapes every few seconds: not worth a log line each

    return Handler


def cached(check: Check, ttl_s: float = 1.0) -> Check:
    """``check`` evaluated at most once per ``ttl_s`` (scrapes and probes may be frequent)."""
    lock = threading.Lock()
    last: list[Any] = [0.0, (False, "not checked yet")]

    def run() -> tuple[bool, str]:
        with lock:
            if time.monotonic() - last[0] >= ttl_s:
                last[1] = check()
                last[0] = time.monotonic()
            return last[1]

    return run


def sinks_check() -> tuple[bool, str]:
    down = metrics.sinks_down()
    return (not down, f"failing: {', '.join(down)}" if down else "no sink reports a failed write")


def postgres_check(dsn: str) -> Check:
    """``SELECT 1`` on a new connection, bounded by :data:`PROBE_TIMEOUT_S`."""

    def check() -> tuple[bool, str]:
        import psycopg

        try:
            with psycopg.connect(
                dsn, connect_timeout=PROBE_TIMEOUT_S, application_name="pm-readyz",
                options=f"-c statement_timeout={PROBE_TIMEOUT_S * 1000}",
            ) as conn:  # fmt: skip
                conn.execute("SELECT 1")
            return True, "SELECT 1 ok"
        except Exception as exc:
            return (
                False,
                f"{type(exc).__name__}: {redact(str(exc), secret_parts(dsn)).strip()[:200]}",
            )

    return cached(check)


def redis_check(url: str) -> Check:
    """``PING``, bounded by :data:`PROBE_TIMEOUT_S`."""

    def check() -> tuple[bool, str]:
        import redis

        client = redis.Redis.from_url(
            url, socket_timeout=PROBE_TIMEOUT_S, socket_connect_timeout=PROBE_TIMEOUT_S
        )
        try:
            client.ping()
            return True, "PING ok"
        except Exception as exc:
            return (
                False,
                f"{type(exc).__name__}: {redact(str(exc), secret_parts(url)).strip()[:200]}",
            )
        finally:
            client.close()

    return cached(check)
