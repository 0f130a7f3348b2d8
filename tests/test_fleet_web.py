"""The fleet web page in a real browser: headless Chromium (Debian's package, installed by
``infra/scripts/chromium.sh ensure``, which ``make test`` runs) against the real server on
a fresh PostgreSQL database. The acknowledge is posted with urllib exactly as the page's
form posts it, and the browser then shows the acknowledged state."""

from __future__ import annotations

import base64
import html
import os
import re
import shutil
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from connectors.settings import AlertSettings
from jobs.web import Server
from tests import fleet_data

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    message = "no chromium on PATH: run infra/scripts/chromium.sh ensure (make test does)"
    if os.environ.get("PM_REQUIRE_SERVICES") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def site(fresh_db: str) -> Iterator[tuple[str, str]]:
    """(base URL, DSN) of the web page on a free port, over the known fleet."""
    fleet_data.fill(fresh_db)
    server = Server(fresh_db, AlertSettings(), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.url, fresh_db
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def browser(chromium: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / "chromium-profile"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--no-first-run", f"--user-data-dir={profile}", *args]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    return run


def dump_dom(chromium: str, tmp_path: Path, url: str) -> str:
    return browser(chromium, tmp_path, "--dump-dom", url).stdout


def post_ack(url: str, alert_id: str, by: str, headers: dict[str, str] | None = None) -> int:
    """POST /ack as the page's form does (same origin); returns the HTTP status."""
    data = urllib.parse.urlencode({"alert_id": alert_id, "by": by, "next": "/"}).encode()
    req = urllib.request.Request(f"{url}/ack", data=data, method="POST")
    req.add_header("Content-Type", "application/x-www-form-urlencoded")
    req.add_header("Origin", url)
    for k, v in (headers or {}).items():
        req.add_header(k, v)

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    try:
        with urllib.request.build_opener(NoRedirect).open(req, timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def acked_by(dsn: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT alert_id, acknowledged_by FROM alerts WHERE acknowledged_at IS NOT NULL"
        ).fetchall()
    return dict(rows)


def test_fleet_page_in_the_browser(chromium: str, site: tuple[str, str], tmp_path: Path) -> None:
    url, _ = site
    dom = dump_dom(chromium, tmp_path, url + "/")
    assert "<h1>Fleet status</h1>" in dom
    fleet_table = dom.split("<h2>Open alerts")[0]
    positions = [fleet_table.find(html.escape(eq.replace("\x1b", "\\x1b"), quote=False))
                 for eq in fleet_data.RISK_ORDER]  # fmt: skip
    assert -1 not in positions and positions == sorted(positions)  # by risk
    assert "10.0 h [5.0–15.0]" in fleet_table and "rul_low:critical" in fleet_table
    # The hostile id is text, never markup: no script element in the rendered DOM.
    assert "<script" not in dom and "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
    assert "Open alerts (2)" in dom
    fatigue = dom.split("<h2>Alert fatigue</h2>")[1]
    rul_low = re.search(r"<tr[^>]*><td>rul_low</td>(.*?)</tr>", fatigue)
    assert rul_low, "a fatigue row per rule"
    cells = re.findall(r"<td>(.*?)</td>", rul_low.group(1))
    assert cells[:6] == ["3", "0.63", "2", "1", "50%", "0"]  # alerts .. flap rate, acked
    assert dom.count('<form class="ack"') == 2

    shot = tmp_path / "fleet.png"
    browser(chromium, tmp_path, "--window-size=1400,900", f"--screenshot={shot}", url + "/")
    assert_screenshot(shot, (900, 1400))


def assert_screenshot(path: Path, shape: tuple[int, int]) -> None:
    """A PNG of the window's size showing a rendered page (text, coloured rows), not blank."""
    import matplotlib.image

    img = matplotlib.image.imread(path)
    assert img.shape[:2] == shape
    pixels = img.reshape(-1, img.shape[2])[:, :3]
    colours = {tuple(px) for px in pixels[::5].round(2).tolist()}
    assert len(colours) > 50
    assert (pixels < 0.5).all(axis=1).mean() > 0.005  # dark text on the light page


def test_machine_page_shows_trajectory_and_alerts(
    chromium: str, site: tuple[str, str], tmp_path: Path
) -> None:
    url, _ = site
    page = url + "/machine?id=pump-0001"
    dom = dump_dom(chromium, tmp_path, page)
    assert "<h1>pump-0001</h1>" in dom and "Alert transitions (4)" in dom
    match = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', dom)
    assert match, "the trajectory image is inline"
    png = base64.b64decode(match.group(1))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    # Only the open alert (the escalation) offers an acknowledge; the old episode does not.
    assert dom.count('<form class="ack"') == 1 and 'value="a-esc-2"' in dom
    shot = tmp_path / "machine.png"
    browser(chromium, tmp_path, "--window-size=1200,1100", f"--screenshot={shot}", page)
    assert_screenshot(shot, (1100, 1200))

    missing = dump_dom(chromium, tmp_path, url + "/machine?id=nope")
    assert "Unknown equipment nope" in missing


def test_acknowledge_from_the_page(chromium: str, site: tuple[str, str], tmp_path: Path) -> None:
    url, dsn = site
    # Cross-site posts are refused and change nothing.
    assert post_ack(url, "a-esc-2", "mallory", {"Origin": "http://evil.example"}) == 403
    assert post_ack(url, "a-esc-2", "mallory", {"Sec-Fetch-Site": "cross-site"}) == 403
    assert post_ack(url, "a-esc-2", "mallory", {"Host": "evil.example"}) == 403
    assert acked_by(dsn) == {}
    # Bad input: clear client errors.
    assert post_ack(url, "no-such-alert", "alice") == 404
    assert post_ack(url, "a-esc-2", "  ") == 400

    assert post_ack(url, "a-esc-2", "alice") == 303
    assert post_ack(url, "a-esc-2", "bob") == 303  # idempotent: the first one is kept
    assert acked_by(dsn) == {"a-esc-2": "alice"}

    dom = dump_dom(chromium, tmp_path, url + "/")
    assert "acknowledged by alice" in dom
    assert dom.count('<form class="ack"') == 1  # only h-fire-1 is left to acknowledge


def test_http_details(site: tuple[str, str]) -> None:
    url, _ = site
    with urllib.request.urlopen(url + "/", timeout=30) as resp:
        body = resp.read().decode()
        csp = resp.headers["Content-Security-Policy"]
    assert "script-src" not in csp and "default-src 'none'" in csp
    assert "<script>" not in body and "&lt;script&gt;" in body
    with urllib.request.urlopen(url + "/healthz", timeout=30) as resp:
        assert resp.read() == b"ok\n"
    for path, code in (("/nope", 404), ("/machine", 400)):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url + path, timeout=30)
        assert err.value.code == code
    req = urllib.request.Request(url + "/", headers={"Host": "rebound.example"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 421  # DNS rebinding: another name for 127.0.0.1 is refused


def test_database_down_is_a_503_not_a_crash(tmp_path: Path) -> None:
    server = Server("postgresql://pm:s3cretpw@127.0.0.1:9/pm", AlertSettings(), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(server.url + "/", timeout=30)
        assert err.value.code == 503
        body = err.value.read().decode()
        assert "Database unavailable" in body and "s3cretpw" not in body
    finally:
        server.shutdown()
        server.server_close()
