"""The --demo web app as a newcomer uses it: pick files, watch them arrive,
cancel one, and see the backend's list with the right sha256 values."""

import os
import re
import shutil

import pytest

from .harness import IncomingServer, MiB, write_test_file


@pytest.fixture
def demo_server(tmp_path):
    server = IncomingServer(tmp_path, "--demo")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_the_demo_uploads_pauses_cancels_and_lists_what_arrived(tmp_path, browser, demo_server):
    files = {}
    for name, size in [("holiday video.mp4", 3 * MiB + 11), ("notes ü&+%.txt", 1),
                       ("report.pdf", 700 * 1024)]:
        files[name] = write_test_file(tmp_path / name, size)
    big = tmp_path / "huge.iso"
    write_test_file(big, 512 * MiB)
    page = browser.new_page()
    try:
        page.goto(demo_server.url("/demo/"))
        page.set_input_files("#files", [str(tmp_path / name) for name in files])
        # all three arrive; done and wait+finish alternate, so one takes ~3 s more
        page.wait_for_function(
            """() => [...document.querySelectorAll('#received tr')]
                   .filter(tr => tr.querySelector('.sha').textContent.includes("matches the server's"))
                   .length === 3""", timeout=60_000)
        page.wait_for_function(  # the wait one finishes after finish_upload
            """() => [...document.querySelectorAll('#uploads .state')]
                   .filter(s => s.textContent === 'finished').length === 3""", timeout=30_000)
        rows = page.eval_on_selector_all("#received tr", """trs => trs.map(tr => ({
            name: tr.querySelector('.name').textContent,
            sha: tr.querySelector('.sha').firstChild.textContent,
            how: tr.querySelector('.how').textContent}))""")
        assert {r["name"]: r["sha"] for r in rows} == files
        hows = " ".join(r["how"] for r in rows).lower()
        assert "done" in hows and "finish" in hows, hows
        assert page.eval_on_selector_all(
            "#uploads .percent", "ps => ps.map(p => parseFloat(p.textContent))") == [100] * 3

        # a large file: pause, resume, then cancel it from its row
        page.set_input_files("#files", [str(big)])
        row = page.locator("#uploads li").first  # newest on top
        pause = row.get_by_role("button", name="Pause")
        pause.wait_for(timeout=10_000)
        page.wait_for_function(
            "() => parseFloat(document.querySelector('#uploads .percent').textContent) > 0",
            timeout=20_000)
        pause.click()
        row.get_by_role("button", name="Resume").click()
        page.wait_for_function(
            "() => !document.querySelector('#uploads li').querySelector('button:disabled')",
            timeout=20_000)
        row.get_by_role("button", name="Cancel").click()
        page.wait_for_function(
            """() => [...document.querySelectorAll('#received tr')]
                   .some(tr => tr.textContent.includes('huge.iso')
                               && tr.textContent.includes('cancelled by the user'))""",
            timeout=20_000)
        shot = tmp_path / "demo.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        if os.environ.get("INCOMING_SCREENSHOTS"):  # keep it for a human to look at
            shutil.copy(shot, os.environ["INCOMING_SCREENSHOTS"])
    finally:
        page.close()
    leftovers = [n for n in os.listdir(demo_server.storage)  # records and the server's own
                 if not n.endswith(".json") and not n.startswith(".incoming.")]
    assert leftovers == []  # handed-over files removed, the cancelled one deleted


def test_the_demo_goes_on_with_an_upload_after_a_reload(tmp_path, browser, demo_server):
    """Reload in the middle, pick the same file: it goes on from where it was."""
    big = tmp_path / "travel video.mov"
    sha = write_test_file(big, 256 * MiB)
    page = browser.new_page()
    try:
        page.goto(demo_server.url("/demo/"))
        page.set_input_files("#files", [str(big)])
        page.wait_for_function(
            "() => parseFloat(document.querySelector('#uploads .percent').textContent) >= 15",
            timeout=60_000)
        page.reload()
        banner = page.locator("#resume-note")
        banner.wait_for(state="visible", timeout=10_000)
        assert "travel video.mov" in banner.text_content()
        page.set_input_files("#files", [str(big)])
        page.wait_for_function(
            """() => [...document.querySelectorAll('#received tr')]
                   .some(tr => tr.textContent.includes('travel video.mov')
                               && tr.querySelector('.sha').textContent.includes("matches the server's"))""",
            timeout=90_000)
        assert page.locator("#resume-note").is_hidden()
        rows = page.eval_on_selector_all("#received tr", """trs => trs.map(tr => ({
            name: tr.querySelector('.name').textContent,
            sha: tr.querySelector('.sha').firstChild.textContent}))""")
        assert [r["sha"] for r in rows if r["name"] == "travel video.mov"] == [sha]
        starts = [int(n) for n in re.findall(r"browser connected, \w+ at byte (\d+)",
                                               demo_server.log())]
        assert len(starts) == 2 and starts[0] == 0 and starts[1] > 0.1 * 256 * MiB, starts
    finally:
        page.close()
