"""The benchmark's unwatched Chromium (bare_chromium.py) does what the
benchmark relies on: runs a page's functions and returns their values,
reports a throw, and selects a file the page can read."""

from __future__ import annotations

import pytest

from .bare_chromium import BareChromium, ChromiumError
from .harness import CHROMIUM, CHROMIUM_ARGS


@pytest.fixture
def chromium():
    browser = BareChromium(CHROMIUM, CHROMIUM_ARGS)
    yield browser
    browser.close()


def test_a_page_runs_functions_and_reads_a_selected_file(chromium, tmp_path):
    page = chromium.open("data:text/html,<input type=file id=files>")
    page.wait_for("document.getElementById('files')", 10)
    assert page.evaluate("async (x) => x * 2", 21) == 42
    with pytest.raises(ChromiumError, match="no such thing"):
        page.evaluate("() => { throw new Error('no such thing'); }")
    path = tmp_path / "picked.bin"
    path.write_bytes(b"incoming" * 1000)
    page.set_input_files("#files", [path])
    read = page.evaluate("""async () => {
        const file = document.getElementById('files').files[0];
        return [file.name, new TextDecoder().decode(await file.slice(0, 8).arrayBuffer())];
    }""")
    assert read == ["picked.bin", "incoming"]


def test_close_ends_the_browser(tmp_path):
    browser = BareChromium(CHROMIUM, CHROMIUM_ARGS)
    browser.open("about:blank")
    browser.close()
    assert browser.process.poll() is not None
