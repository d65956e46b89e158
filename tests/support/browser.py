"""Browser tests: a page in headless Debian chromium through playwright, kept on this machine.

The monitoring dashboard must work without internet (no CDN), and must not throw. The
`browser_page` fixture (registered by tests/conftest.py, which keeps its users in
tests/system/) gives a BrowserPage whose `errors` collects every console error and uncaught
page error, and whose `blocked` records every request the page made to anything but
127.0.0.1, localhost or ::1, each refused before it leaves the machine. A test asserts both
are empty (`assert_clean`); screenshots go to the artifact dir under a name from the test,
and one is taken by itself when a test using the page fails.

Chromium is Debian's (`make browser`), never playwright's download; one browser runs per
test session and each test gets a fresh context (no cookies, storage or cache shared).
Playwright's sync API handles the page's events only while a playwright call runs, so wait
with playwright's own waits (`page.expect_console_message`, `locator.wait_for`, ...), which
take a deadline, not with tests.support.bus.wait_for.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import threading
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

from tests.support.bus import REPO

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page, Route, WebSocketRoute

CHROMIUM = Path("/usr/bin/chromium")
# Root needs --no-sandbox; the rest keep chromium from calling home (updates, sync, field
# trials, QUIC probes), which no route would see, since they are not the page's requests.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
)
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
ARTIFACTS_ENV = "SPB_ARTIFACTS"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


def artifact_dir() -> Path:
    """Where screenshots go: $SPB_ARTIFACTS, else tests/artifacts (gitignored); made if missing."""
    path = Path(os.environ.get(ARTIFACTS_ENV) or REPO / "tests" / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def artifact_name(nodeid: str) -> str:
    """A file name from a test's node id: tests/system/test_x.py::test_y[a/b] -> test_x.test_y-a-b."""
    module, _, rest = nodeid.partition("::")
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{Path(module).stem}.{rest}").strip("-.")


def is_local(url: str) -> bool:
    """Whether a request stays on this machine: http(s) or ws(s) to loopback by name or address."""
    return urlsplit(url).hostname in LOCAL_HOSTS


def require_chromium(path: Path = CHROMIUM) -> Path:
    """The chromium to drive; a failing test (never a silent skip) if it is not installed."""
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"{path} is missing: the browser tests need Debian's chromium; "
            "run `make browser` (as root) or `sudo apt-get install chromium`",
            pytrace=False,
        )
    return path


@dataclass
class BrowserPage:
    """One test's page, what went wrong on it, and what it asked of the internet."""

    page: Page
    name: str  # the screenshots' base name (artifact_name of the test)
    artifacts: Path
    errors: list[str] = field(default_factory=list)  # console errors and uncaught page errors
    blocked: list[str] = field(default_factory=list)  # URLs of refused off-machine requests

    def screenshot(self, label: str = "") -> Path:
        """A full-page PNG in the artifact dir, named after the test (and `label`); its path."""
        path = self.artifacts / f"{self.name}{'-' + label if label else ''}.png"
        self.page.screenshot(path=path, full_page=True)
        return path

    def assert_clean(self) -> None:
        """No console or page error, and no request for anything off this machine."""
        assert (self.errors, self.blocked) == ([], []), f"errors {self.errors}, off-machine requests {self.blocked}"

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            where = message.location
            self.errors.append(f"console.error: {message.text} ({where['url']}:{where['lineNumber']})")

    def _page_error(self, error: Exception) -> None:
        self.errors.append(f"pageerror: {error}")

    def _route(self, route: Route) -> None:
        url = route.request.url
        if is_local(url):
            route.fallback()
        else:
            self.blocked.append(url)
            route.abort("blockedbyclient")

    def _web_socket(self, ws: WebSocketRoute) -> None:
        # Never connected to the server: the page's socket just closes.
        self.blocked.append(ws.url)
        ws.close(code=1008, reason="off-machine")


@pytest.fixture(scope="session")
def _chromium() -> Iterator[Browser]:
    """One headless chromium for the session (a launch takes about a second)."""
    executable = require_chromium()
    from playwright.sync_api import sync_playwright  # only where a browser test runs

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=list(CHROMIUM_ARGS))
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def browser_page(_chromium: Browser, request: pytest.FixtureRequest) -> Iterator[BrowserPage]:
    """A fresh page that refuses and records off-machine requests and collects errors.

    Service workers are blocked, so every request the page makes passes the route. A failed
    test leaves `<test>-failed.png` in the artifact dir.
    """
    context = _chromium.new_context(service_workers="block")
    try:
        page = context.new_page()
        watched = BrowserPage(page, artifact_name(request.node.nodeid), artifact_dir())
        page.on("console", watched._console)
        page.on("pageerror", watched._page_error)
        context.route("**/*", watched._route)
        context.route_web_socket(lambda url: not is_local(url), watched._web_socket)
        yield watched
        reports = request.node.stash.get(_REPORTS, {})
        if any(report.failed for report in reports.values()):
            watched.screenshot("failed")
    finally:
        context.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[Any]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the test, so browser_page's teardown knows whether it failed."""
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


@contextmanager
def serve_static(directory: Path) -> Iterator[str]:
    """An http.server for `directory` on a free loopback port, on a thread: its base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, name="static-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
