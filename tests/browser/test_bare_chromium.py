"""The benchmark's unwatched Chromium (bare_chromium.py) does what the
benchmark relies on: runs a page's functions and returns their values,
reports a throw and a function that never ends, selects a file the page
can read, and quits when closed."""

from __future__ import annotations

import os

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
    with pytest.raises(ChromiumError, match="in time"):
        page.evaluate("() => new Promise(() => {})", timeout=0.5)
    assert page.evaluate("() => 'still there'") == "still there"  # the late answer is dropped
    with pytest.raises(ChromiumError, match="no element"):
        page.set_input_files("#nothing", [tmp_path])
    path = tmp_path / "picked.bin"
    path.write_bytes(b"incoming" * 1000)
    page.set_input_files("#files", [path])
    read = page.evaluate("""async () => {
        const file = document.getElementById('files').files[0];
        return [file.name, new TextDecoder().decode(await file.slice(0, 8).arrayBuffer())];
    }""")
    assert read == ["picked.bin", "incoming"]


def test_close_quits_chromium_and_removes_its_profile():
    browser = BareChromium(CHROMIUM, CHROMIUM_ARGS)
    browser.open("about:blank")
    profile = browser._profile.name
    browser.close()
    assert browser.process.returncode == 0  # it quit when asked, not killed
    assert not os.path.exists(profile)
    browser.close()  # a second close does nothing


def test_a_missing_chromium_is_named(tmp_path):
    with pytest.raises(ChromiumError, match="no Chromium at"):
        BareChromium(str(tmp_path / "chromium"), CHROMIUM_ARGS)
