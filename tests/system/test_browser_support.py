"""tests/support/browser.py on itself: a static page served on loopback, in real headless chromium.

What the dashboard's tests rely on: a console error and an uncaught exception are caught,
a request for anything off this machine is refused and recorded (the page works without
internet), a clean page stays clean, and a screenshot lands as a PNG named after the test.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.browser import PNG_MAGIC, artifact_name, is_local, require_chromium, serve_static

OFF_MACHINE = "http://example.invalid/x.js"
PAGES = {
    "clean.html": '<!doctype html><meta charset="utf-8"><link rel="stylesheet" href="style.css">'
    '<script src="ok.js"></script><h1>spb</h1>',
    "style.css": "h1 { color: rgb(1, 2, 3); }",
    "ok.js": "document.documentElement.dataset.ran = 'yes';",
    "cdn.html": f'<!doctype html><meta charset="utf-8"><script src="{OFF_MACHINE}"></script>'
    '<script src="shout.js"></script><h1>cdn</h1>',
    "shout.js": "console.error('boom from shout.js');",
    "throws.html": '<!doctype html><meta charset="utf-8"><script>throw new Error("thrown on load");</script>',
}


@pytest.fixture
def site(tmp_path) -> str:
    for name, text in PAGES.items():
        (tmp_path / name).write_text(text)
    with serve_static(tmp_path) as url:
        yield url


def test_a_clean_local_page_stays_clean_and_its_screenshot_is_a_png(browser_page, site, request):
    page = browser_page.page
    page.goto(f"{site}/clean.html")
    assert page.locator("html").get_attribute("data-ran") == "yes"  # local requests pass
    assert page.locator("h1").evaluate("e => getComputedStyle(e).color") == "rgb(1, 2, 3)"
    browser_page.assert_clean()
    shot = browser_page.screenshot("clean")
    assert shot.parent == browser_page.artifacts
    assert shot.name == f"{artifact_name(request.node.nodeid)}-clean.png"
    assert shot.name == "test_browser_support.test_a_clean_local_page_stays_clean_and_its_screenshot_is_a_png-clean.png"
    assert shot.read_bytes().startswith(PNG_MAGIC)


def test_an_off_machine_request_is_refused_and_recorded_and_a_console_error_caught(browser_page, site):
    page = browser_page.page
    with page.expect_console_message(lambda m: m.type == "error" and "boom" in m.text):
        page.goto(f"{site}/cdn.html")
    assert browser_page.blocked == [OFF_MACHINE]
    # Chromium also reports the refused script itself (net::ERR_BLOCKED_BY_CLIENT) as a console error.
    assert [e for e in browser_page.errors if "boom" in e] == [f"console.error: boom from shout.js ({site}/shout.js:0)"]
    with pytest.raises(AssertionError, match=re.escape(OFF_MACHINE)):
        browser_page.assert_clean()


def test_an_uncaught_exception_is_caught(browser_page, site):
    page = browser_page.page
    with page.expect_event("pageerror"):
        page.goto(f"{site}/throws.html")
    assert browser_page.errors == ["pageerror: thrown on load"]
    assert browser_page.blocked == []


def test_missing_chromium_fails_the_test_with_what_to_install(tmp_path):
    with pytest.raises(pytest.fail.Exception, match=re.escape("run `make browser`")):
        require_chromium(tmp_path / "chromium")


@pytest.mark.parametrize(
    ("url", "local"),
    [
        ("http://127.0.0.1:8080/x", True),
        ("http://localhost/x", True),
        ("ws://[::1]:9/x", True),
        ("http://example.invalid/x.js", False),
        ("https://cdn.jsdelivr.net/npm/x", False),
        ("http://127.0.0.1.example.com/", False),
        ("http://10.0.0.1/", False),
    ],
)
def test_only_loopback_is_local(url, local):
    assert is_local(url) is local


def test_artifact_names_are_file_names():
    assert artifact_name("tests/system/test_x.py::test_y[a/b c]") == "test_x.test_y-a-b-c"
    assert "/" not in artifact_name(str(Path("tests") / "test_z.py::Test::test_w"))
