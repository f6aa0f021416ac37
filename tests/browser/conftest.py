"""Fixtures of the real-browser tests: Chromium (Debian's, driven by
Playwright; the benchmark's runs without it, bare_chromium.py), the installed `twistd -n incoming`, a threaded test backend
that also serves the test page, and a TCP proxy a test can cut.

These tests are plain synchronous tests. pytest-twisted runs the Twisted
reactor in a greenlet for the other tests; nothing here needs that reactor,
and Playwright's sync API runs its own asyncio loop in its own greenlet, so
both live in one `python -m pytest` run.
"""

from __future__ import annotations

import json
import os
import shlex
import time

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

from .harness import CHROMIUM, CHROMIUM_ARGS, PAGE_LOADED, Backend, IncomingServer, TcpProxy


def diagnose(request, title, text):
    """Show `text()` in the report if the test fails."""
    request.node.__dict__.setdefault("incoming_diagnostics", {})[title] = text


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for title, text in item.__dict__.get("incoming_diagnostics", {}).items():
            try:
                report.sections.append((title, text() or "(nothing)"))
            except Exception as e:  # never hide the failure itself
                report.sections.append((title, f"(unavailable: {e!r})"))


@pytest.fixture(scope="package")
def browser():
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(
            f"Chromium is missing: the browser tests need Debian's Chromium at {CHROMIUM}. "
            "Install it with `apt-get install chromium` (scripts/test does this); "
            "these tests never download a browser.",
            pytrace=False,
        )
    playwright = sync_playwright().start()
    try:
        # launch() starts Chromium with a fresh temporary profile.
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
        )
    except Exception:
        playwright.stop()
        raise
    yield browser
    browser.close()
    playwright.stop()


@pytest.fixture(scope="package")
def incoming_server(tmp_path_factory):
    """`twistd -n incoming` with its defaults (512 KiB chunks, 4 ahead), and
    the options in INCOMING_BROWSER_SERVER_ARGS if set (for measuring, e.g.
    "--digest none --fsync none" in the benchmark: what the server's CPU
    and syncs cost the browser)."""
    extra = shlex.split(os.environ.get("INCOMING_BROWSER_SERVER_ARGS", ""))
    server = IncomingServer(tmp_path_factory.mktemp("incoming"), *extra)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture
def server(request, incoming_server):
    """The shared server, checked alive; a failing test's report shows the
    server's log lines of that test."""
    assert incoming_server.process.poll() is None, (
        f"twistd died earlier:\n{incoming_server.log()}")
    start = len(incoming_server.log())
    diagnose(request, "twistd log during this test", lambda: incoming_server.log()[start:])
    return incoming_server


@pytest.fixture(scope="package")
def backend():
    backend = Backend()
    yield backend
    backend.stop()


@pytest.fixture
def proxies(server):
    """Make TCP proxies to the server; all are killed at the end."""
    made = []

    def make(rate=None) -> TcpProxy:
        proxy = TcpProxy(server.port, rate=rate)
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.kill()


@pytest.fixture
def open_page(request, browser, backend, server):
    """open_page(host) -> BrowserPage: the test page in a fresh browser
    context, loading incoming.js from `host` (the server, or a proxy in
    front of it) and calling incoming.set_server_hostname(host).
    `page_server`: a Backend that serves the page instead of `backend`;
    an https one makes the page load the library over https and upload
    over wss:// (the test certificates are accepted)."""
    contexts = []
    console = []
    diagnose(request, "browser console", lambda: "\n".join(console))

    def open_(host: str | None = None, page_server: Backend | None = None) -> BrowserPage:
        host = host or server.host
        page_server = page_server or backend
        url, library = page_server.test_page(host)
        context = browser.new_context(ignore_https_errors=page_server.scheme == "https")
        contexts.append(context)
        page = context.new_page()
        page.on("console", lambda m: console.append(f"console.{m.type}: {m.text}"))
        page.on("pageerror", lambda e: console.append(f"page error: {e}"))
        page.goto(url)
        assert page.evaluate(f"() => {PAGE_LOADED}"), (
            f"incoming.js did not load from {library}: {console}")
        return BrowserPage(page)

    yield open_
    for context in contexts:
        context.close()


class BrowserPage:
    """The test page: start uploads, act like a user, read the records."""

    def __init__(self, page):
        self.page = page

    def start(self, paths, tickets, plans=None) -> list[int]:
        """Select `paths` in the file input, start one uploader per file."""
        self.page.set_input_files("#files", [str(p) for p in paths])
        first = self.page.evaluate("([t, p]) => T.start(t, p)", [list(tickets), plans])
        return list(range(first, first + len(tickets)))

    def act(self, index: int, action: str, arg=None) -> dict:
        """pause(arg) / cancel(arg) on uploader `index`; snapshots around it."""
        return self.page.evaluate("([i, a, x]) => T.act(i, a, x)", [index, action, arg])

    def now(self, index: int) -> dict:
        return self.page.evaluate("i => T.snapshot(T.uploaders[i])", index)

    def state(self, index: int) -> dict:
        return self.page.evaluate("i => T.state(i)", index)

    def record(self, index: int) -> dict:
        return self.page.evaluate("i => T.records[i]", index)

    def sockets(self) -> list[dict]:
        return self.page.evaluate("() => window.__sockets")

    def evaluate(self, js: str, arg=None):
        return self.page.evaluate(js, arg)

    def wait_for(self, index: int, condition: str, timeout: float, what: str = ""):
        """Wait until the JS expression `condition` (over the uploader `u`
        and its record `r`) is true; fail with the uploader's state."""
        js = f"i => {{ const u = T.uploaders[i], r = T.records[i]; return !!({condition}); }}"
        try:
            self.page.wait_for_function(js, arg=index, polling=20, timeout=timeout * 1000)
        except PlaywrightTimeout:
            raise AssertionError(
                f"{what or condition} did not happen within {timeout} s; uploader {index}: "
                f"{json.dumps(self.state(index), indent=1)}") from None

    def sleep(self, seconds: float):
        """Let time pass (the browser keeps running)."""
        self.page.wait_for_timeout(seconds * 1000)


@pytest.fixture
def wait_until():
    def wait(predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} did not happen within {timeout} s")
            time.sleep(0.02)
    return wait

