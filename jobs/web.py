"""The fleet web page: ``pm web [--bind 127.0.0.1] [--port 8501]``.

A standard-library HTTP server (``http.server``; no framework to install or patch for a
page with three views and one form), reading PostgreSQL on every request:

* ``GET /``: the fleet by risk, the open alerts (each with an acknowledge form) and the
  alert-fatigue figures per rule and per machine;
* ``GET /machine?id=ID``: one machine's trajectory (RUL with band, health, thresholds and
  alert moments, an inline PNG) and its alert transitions;
* ``POST /ack`` (form ``alert_id``, ``by``): acknowledge, then redirect back;
* ``GET /healthz``: ``ok``.

Everything from the database is HTML-escaped. ``POST /ack`` is refused unless it is a
same-origin form post (``Origin`` / ``Sec-Fetch-Site``), and when bound to one address the
``Host`` header must name it or localhost (no DNS rebinding). A Content-Security-Policy
allows no scripts at all.
"""

from __future__ import annotations

import base64
import html
import sys
import urllib.parse
from collections.abc import Collection, Sequence
from datetime import datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg

from connectors import fleet_queries as q
from connectors.fleet_fatigue import FatigueReport, Figures, duration_text, fatigue
from connectors.fleet_plot import trajectory_png
from connectors.settings import AlertSettings
from models.logsafe import redact, safe_for_log

MAX_FORM_BYTES = 4096
_CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
_LOCAL_NAMES = ("localhost", "127.0.0.1", "[::1]")
_STATUS_CLASS = {"critical": "crit", "warning": "warn", "ok": "ok"}

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.crit { background: #f8d7da; } .warn { background: #fff3cd; } .ok { background: #d4edda; }
.acked { color: #666; }
form.ack { display: flex; gap: 4px; margin: 0; }
form.ack input[type=text] { width: 8em; }
img { max-width: 100%; border: 1px solid #ccc; }
"""


class Server(ThreadingHTTPServer):
    """The HTTP server, holding what the handler needs."""

    daemon_threads = True

    def __init__(self, dsn: str, thresholds: AlertSettings, bind: str, port: int) -> None:
        super().__init__((bind, port), Handler)
        self.dsn = dsn
        self.thresholds = thresholds
        self.bind = bind

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"


def _e(x: Any) -> str:
    """Text for HTML: control characters shown escaped (as in the terminal), then
    HTML-escaped, quotes included."""
    return "-" if x is None else html.escape(safe_for_log(x, 500), quote=True)


def _f(x: float | None, fmt: str = ".1f") -> str:
    return "-" if x is None else format(x, fmt)


def _t(ts: datetime | None) -> str:
    return "-" if ts is None else ts.strftime("%Y-%m-%d %H:%M:%SZ")


def _page(title: str, body: str) -> bytes:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head>"
        f"<body><p><a href=/>Fleet</a></p>{body}</body></html>"
    ).encode()


def _table(headers: Sequence[str], rows: Sequence[tuple[str, Sequence[str]]]) -> str:
    """``rows``: (row CSS class, cells already HTML)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        f"<tr class='{cls}'>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"
        for cls, cells in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _machine_link(equipment_id: str) -> str:
    if equipment_id.startswith("fleet:"):  # a fleet-level rule (feature drift): no machine page
        return _e(equipment_id)
    query = urllib.parse.urlencode({"id": equipment_id})
    return f"<a href='/machine?{_e(query)}'>{_e(equipment_id)}</a>"


def _rul(m: q.MachineStatus) -> str:
    if m.rul_hours is None:
        return "-"
    band = (
        f" [{m.rul_lower_hours:.1f}–{m.rul_upper_hours:.1f}]"
        if m.rul_lower_hours is not None and m.rul_upper_hours is not None
        else ""
    )
    return f"{m.rul_hours:.1f} h{band}"


def fleet_html(machines: Sequence[q.MachineStatus]) -> str:
    rows = [
        (
            _STATUS_CLASS.get(m.status or "", ""),
            [
                str(i),
                _machine_link(m.equipment_id),
                _e(m.equipment_type),
                _e(m.status or "no data"),
                _e(_rul(m)),
                _f(m.health, ".3f"),
                _f(m.anomaly_score, ".3f"),
                _e(", ".join(m.active_alerts) or "-"),
                _t(m.last_reading),
            ],
        )
        for i, m in enumerate(machines, 1)
    ]
    headers = ["#", "equipment", "type", "status", "RUL [band]", "health", "anomaly",
               "active alerts", "last reading"]  # fmt: skip
    return _table(headers, rows)


def _ack_cell(a: dict[str, Any], back: str, open_ids: Collection[str] | None) -> str:
    if a["acknowledged_at"] is not None:
        return f"acknowledged by {_e(a['acknowledged_by'])} at {_t(a['acknowledged_at'])}"
    if a["state"] == "resolved" or (open_ids is not None and a["alert_id"] not in open_ids):
        return "-"
    return (
        "<form class=ack method=post action=/ack>"
        f"<input type=hidden name=alert_id value='{_e(a['alert_id'])}'>"
        f"<input type=hidden name=next value='{_e(back)}'>"
        "<input type=text name=by placeholder='your name' required maxlength=100>"
        "<button type=submit>Acknowledge</button></form>"
    )


def alerts_html(
    alerts: Sequence[dict[str, Any]], back: str, open_ids: Collection[str] | None = None
) -> str:
    """Alert rows; an acknowledge form on unacknowledged open ones (all non-resolved rows
    when ``open_ids`` is None)."""
    rows = [
        (
            "acked" if a["acknowledged_at"] else _STATUS_CLASS.get(a["severity"], ""),
            [
                _t(a["ts"]),
                _machine_link(a["equipment_id"]),
                _e(a["rule"]),
                _e(a["severity"]),
                _e(a["state"]),
                _f(a["value"], ".3f"),
                _f(a["threshold"], ".3f"),
                _e(a["message"]),
                f"<code>{_e(a['alert_id'])}</code>",
                _ack_cell(a, back, open_ids),
            ],
        )
        for a in alerts
    ]
    headers = ["time", "equipment", "rule", "severity", "state", "value", "threshold",
               "message", "alert id", "acknowledge"]  # fmt: skip
    return _table(headers, rows) if rows else "<p>None.</p>"


def fatigue_html(report: FatigueReport) -> str:
    """Alert-fatigue tables: per rule, and per machine that raised alerts."""

    def cells(f: Figures) -> list[str]:
        d = f.to_json_dict()
        return [_e(f.key), str(d["alerts"]), f"{d['per_machine_day']:.2f}", str(d["episodes"]),
                str(d["flaps"]), f"{d['flap_rate']:.0%}", str(d["acked"]),
                duration_text(d["ack_median_s"])]  # fmt: skip

    headers = ["alerts", "per machine-day", "episodes", "flaps", "flap rate", "acked",
               "time to ack (median)"]  # fmt: skip
    noisy = [f for f in report.machines if f.alerts]
    return (
        f"<h2>Alert fatigue</h2><p>Flap: a rule firing again within "
        f"{report.dwell_s / 3600:g} h of resolving.</p>"
        + _table(["rule", *headers], [("", cells(f)) for f in report.rules])
        + _table(["equipment", *headers], [("", cells(f)) for f in noisy])
    )


class Handler(BaseHTTPRequestHandler):
    server: Server
    server_version = "pm-web"
    sys_version = ""

    # -- routing -----------------------------------------------------------------------

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if not self._host_ok():
            return self._send(HTTPStatus.MISDIRECTED_REQUEST, _page("refused", "<p>Bad Host.</p>"))
        if url.path == "/healthz":
            return self._send(HTTPStatus.OK, b"ok\n", "text/plain; charset=utf-8")
        if url.path == "/":
            return self._db(self._fleet)
        if url.path == "/machine":
            ids = urllib.parse.parse_qs(url.query).get("id", [])
            if len(ids) != 1:
                return self._send(HTTPStatus.BAD_REQUEST, _page("bad request", "<p>id?</p>"))
            return self._db(lambda conn: self._machine(conn, ids[0]))
        self._send(HTTPStatus.NOT_FOUND, _page("not found", "<p>Not found.</p>"))

    def do_POST(self) -> None:
        if urllib.parse.urlsplit(self.path).path != "/ack":
            return self._send(HTTPStatus.NOT_FOUND, _page("not found", "<p>Not found.</p>"))
        problem = self._post_problem()
        if problem:
            return self._send(HTTPStatus.FORBIDDEN, _page("refused", f"<p>{_e(problem)}</p>"))
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_FORM_BYTES:
            return self._send(HTTPStatus.BAD_REQUEST, _page("bad request", "<p>Bad form.</p>"))
        form = urllib.parse.parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
        alert_id = (form.get("alert_id") or [""])[0]
        by = (form.get("by") or [""])[0]
        back = (form.get("next") or ["/"])[0]
        if not back.startswith("/") or back.startswith("//") or "\\" in back:
            back = "/"
        self._db(lambda conn: self._ack(conn, alert_id, by, back))

    # -- views -------------------------------------------------------------------------

    def _fleet(self, conn: psycopg.Connection[dict[str, Any]]) -> None:
        machines = q.fleet_status(conn)
        alerts = q.open_alerts(conn)
        report = fatigue(q.all_alerts(conn), q.observed_spans(conn))
        body = (
            f"<h1>Fleet status</h1><p>{len(machines)} machines, highest risk first "
            "(status, then RUL lower bound, then health).</p>"
            f"{fleet_html(machines)}<h2>Open alerts ({len(alerts)})</h2>{alerts_html(alerts, '/')}"
            f"{fatigue_html(report)}"
        )
        self._send(HTTPStatus.OK, _page("Fleet status", body))

    def _machine(self, conn: psycopg.Connection[dict[str, Any]], equipment_id: str) -> None:
        m = q.machine(conn, equipment_id)
        if m is None:
            body = f"<p>Unknown equipment {_e(equipment_id)}.</p>"
            return self._send(HTTPStatus.NOT_FOUND, _page("not found", body))
        hist = q.history(conn, equipment_id, limit=2000)
        alerts = q.alerts_for(conn, equipment_id)
        png = trajectory_png(equipment_id, hist, alerts, self.server.thresholds)
        back = "/machine?" + urllib.parse.urlencode({"id": equipment_id})
        open_ids = {a["alert_id"] for a in q.open_alerts(conn) if a["equipment_id"] == equipment_id}
        body = (
            f"<h1>{_e(equipment_id)}</h1>{fleet_html([m])}"
            f"<img alt='RUL and health trajectory of {_e(equipment_id)}' "
            f"src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
            f"<h2>Alert transitions ({len(alerts)})</h2>{alerts_html(alerts[::-1], back, open_ids)}"
        )
        self._send(HTTPStatus.OK, _page(equipment_id, body))

    def _ack(
        self, conn: psycopg.Connection[dict[str, Any]], alert_id: str, by: str, back: str
    ) -> None:
        try:
            q.acknowledge(conn, alert_id, by)
        except q.UnknownAlert:
            body = f"<p>Unknown alert {_e(alert_id)}.</p>"
            return self._send(HTTPStatus.NOT_FOUND, _page("not found", body))
        except ValueError as exc:
            return self._send(HTTPStatus.BAD_REQUEST, _page("bad request", f"<p>{_e(exc)}</p>"))
        self.send_response(HTTPStatus.SEE_OTHER)
        self.send_header("Location", back)
        self.send_header("Content-Length", "0")
        self.end_headers()

    # -- helpers -----------------------------------------------------------------------

    def _host_ok(self) -> bool:
        if self.server.bind in ("", "0.0.0.0", "::"):
            return True  # reachable under any name: the operator chose so
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].lower()
        return host in (self.server.bind, *_LOCAL_NAMES)

    def _post_problem(self) -> str | None:
        if not self._host_ok():
            return "Bad Host."
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/x-www-form-urlencoded":
            return "Form posts only."
        site = self.headers.get("Sec-Fetch-Site")
        if site is not None and site not in ("same-origin", "none"):
            return "Cross-site request refused."
        origin = self.headers.get("Origin")
        if origin is not None and origin != f"http://{self.headers.get('Host', '')}":
            return "Cross-origin request refused."
        return None

    def _db(self, view: Any) -> None:
        try:
            with q.connect(self.server.dsn) as conn:
                view(conn)
        except psycopg.Error as exc:
            message = redact(str(exc).strip(), [self.server.dsn])
            self.log_error("database error: %s", safe_for_log(message))
            body = f"<p>Database unavailable: {_e(message)}</p>"
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, _page("database unavailable", body))

    def _send(
        self, status: HTTPStatus, body: bytes, ctype: str = "text/html; charset=utf-8"
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", _CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"pm web: {safe_for_log(format % args, 300)}\n")


def serve(dsn: str, thresholds: AlertSettings, bind: str = "127.0.0.1", port: int = 8501) -> int:
    """Serve until interrupted."""
    server = Server(dsn, thresholds, bind, port)
    print(f"pm web: serving the fleet page on {server.url}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
