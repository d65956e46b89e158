"""spb-monitor web against the running street (tests/system/monitor/conftest.py), in Debian's
headless chromium through playwright: the page shows the six meters, its trade list follows a
trade to `settled` live, its chart draws a cleared interval, and it throws nothing and asks
nothing of the internet. A screenshot goes to the artifact dir for a person.
Chromium comes from tests/support/browser.py's `browser_page` fixture.
"""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

# The page's CSP forbids eval, so every wait below is a function (playwright compiles those
# itself) rather than an expression (which it evaluates with eval, in the page).
FIRST_SETTLED_MS = 90_000  # the street starts trading some intervals (6 s) after it is up
ROWS = "#trades tr[data-state=settled]"


def test_the_dashboard_follows_the_street_live(monitor_process, local_url, browser_page):
    _, line = monitor_process("web", "--broker", local_url, "--port", "0", ready="dashboard ")
    url = line.split()[1]
    page = browser_page.page
    page.goto(url)
    page.wait_for_function("() => document.querySelectorAll('#meters tbody tr .dot.on').length === 6", timeout=30_000)
    assert page.eval_on_selector_all("#meters tbody tr", "rows => rows.map(r => r.dataset.meter)") == [
        f"m000{i}" for i in range(1, 7)
    ]
    settled_at_load = page.eval_on_selector_all(ROWS, "rows => rows.map(r => r.dataset.trade)")
    newly = page.wait_for_function(
        f"before => [...document.querySelectorAll('{ROWS}')].map(r => r.dataset.trade).find(t => !before.includes(t))",
        arg=settled_at_load,
        timeout=FIRST_SETTLED_MS,
    ).json_value()
    page.wait_for_function("() => document.querySelectorAll('#chart circle.point').length > 0", timeout=30_000)
    page.wait_for_function("() => document.querySelectorAll('#validators .dot.on').length === 4", timeout=30_000)
    shot = browser_page.screenshot()  # tests/artifacts/ (or $SPB_ARTIFACTS), kept for a person to look at
    assert shot.read_bytes().startswith(b"\x89PNG")

    row = page.locator(f'#trades tr[data-trade="{newly}"]')
    assert "→" in row.inner_text(), "a trade names its payer's and payee's meters"
    snapshot = json.loads(get(url, "/api/snapshot"))
    assert any(t["ctp"] == newly and t["state"] == "settled" for t in snapshot["trades"])
    browser_page.assert_clean()


def test_the_dashboard_stops_cleanly_with_a_browser_watching(monitor_process, local_url):
    """SIGTERM while an event stream is open: the server ends its streams and exits 0."""
    proc, line = monitor_process("web", "--broker", local_url, "--port", "0", ready="dashboard ")
    address = urlsplit(line.split()[1])
    conn = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    try:
        conn.request("GET", "/api/events")
        response = conn.getresponse()
        assert response.status == 200 and response.getheader("content-type", "").startswith("text/event-stream")
        assert response.readline() == b"event: snapshot\n"
        proc.terminate()
        assert proc.wait(20) == 0
        rest = response.read()  # the stream ended: the server closed it, not a timeout
        assert rest.endswith(b"\n\n") or rest == b""
    finally:
        conn.close()


def get(url: str, path: str) -> str:
    address = urlsplit(url)
    conn = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        assert response.status == 200, response.status
        return response.read().decode()
    finally:
        conn.close()
