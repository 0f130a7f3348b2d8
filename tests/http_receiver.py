"""A real HTTP server on 127.0.0.1 that records what webhooks send it (for tests).

    with HttpReceiver() as rx:
        url = rx.apprise_url("/hook")        # json://127.0.0.1:PORT/hook
        ...                                   # deliver something
        rx.wait_for(1)                        # block until one request arrived
        rx.requests[0].json["title"]

``status`` is the code answered to every request; ``queue_statuses([500, 500])`` makes
the next requests get those codes first (then ``status`` again); ``delay_s`` holds each
answer back (to test client timeouts). ``hang()`` makes it accept connections and read
requests but never answer them (a hanging endpoint) until ``unhang()``; those requests are
counted in ``hung`` and not recorded as answered. ``port`` picks the port (e.g. to restart a
receiver where a stopped one was).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class HttpReceiver:
    """Threaded HTTP server on a free loopback port; records every request it answers."""

    def __init__(
        self, status: int = 200, host: str = "127.0.0.1", delay_s: float = 0.0, port: int = 0
    ) -> None:
        self.status = status
        self.delay_s = delay_s
        self.hung = 0
        self._queued: list[int] = []
        self._requests: list[ReceivedRequest] = []
        self._cond = threading.Condition()
        self._released = threading.Event()
        self._released.set()
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        host_, port_ = self._server.server_address[:2]
        self.host, self.port = str(host_), int(port_)
        self._thread: threading.Thread | None = None

    # -- lifecycle --
    def start(self) -> Self:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._released.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- addresses --
    def url(self, path: str = "/") -> str:
        return f"http://{self.host}:{self.port}{path}"

    def apprise_url(self, path: str = "/", scheme: str = "json") -> str:
        return f"{scheme}://{self.host}:{self.port}{path}"

    # -- behaviour and records --
    def hang(self) -> None:
        """From now on, read each request and never answer it (until ``unhang``)."""
        self._released.clear()

    def unhang(self) -> None:
        """Answer requests again; the hung ones are dropped without an answer."""
        self._released.set()

    def queue_statuses(self, statuses: list[int]) -> None:
        with self._cond:
            self._queued.extend(statuses)

    @property
    def requests(self) -> list[ReceivedRequest]:
        with self._cond:
            return list(self._requests)

    def clear(self) -> None:
        with self._cond:
            self._requests.clear()

    def wait_for(self, count: int, timeout_s: float = 5.0) -> list[ReceivedRequest]:
        """Block until at least ``count`` requests arrived; raise TimeoutError otherwise."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while len(self._requests) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"got {len(self._requests)} of {count} requests")
                self._cond.wait(left)
            return list(self._requests)

    def _answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> int:
        with self._cond:
            status = self._queued.pop(0) if self._queued else self.status
            self._requests.append(ReceivedRequest(method, path, headers, body, status))
            self._cond.notify_all()
        return status

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if not receiver._released.is_set():
                    with receiver._cond:
                        receiver.hung += 1
                        receiver._cond.notify_all()
                    receiver._released.wait()
                    self.close_connection = True
                    return
                status = receiver._answer(self.command, self.path, dict(self.headers), body)
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)
                reply = b'{"ok": true}' if status < 300 else b'{"ok": false}'
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(reply)))
                    self.end_headers()
                    self.wfile.write(reply)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client gave up (its timeout)

            do_POST = do_PUT = do_GET = do_PATCH = do_DELETE = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
