"""Chromium with no driver watching its traffic, for the benchmark.

Playwright enables the DevTools Network domain on every page it drives, and
Chromium then reports each WebSocket frame to it, binary payloads base64-
encoded in full, which the Playwright driver parses and forwards: for an
upload, more CPU than the page's own sending, spent on the same cores.  A
user's browser does none of that.  This starts Chromium with
``--remote-debugging-pipe`` and speaks to it only through the Target, Runtime
and DOM domains (open a page, select a file, run a function), so the pages
it runs send as a user's would."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path


class ChromiumError(Exception):
    """Chromium answered a DevTools command with an error, or a page threw."""


class BareChromium:
    """One headless Chromium on a DevTools pipe (fd 3 in, fd 4 out)."""

    def __init__(self, executable: str, args: list[str]):
        self._profile = tempfile.TemporaryDirectory(prefix="bare-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def onto_fds_3_and_4():
            # The pipe ends go where Chromium looks for them (either may be
            # 3 or 4 already: lift both out of the way first), nothing else.
            lifted = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_r, from_browser_w)]
            os.dup2(lifted[0], 3)
            os.dup2(lifted[1], 4)
            os.closerange(5, os.sysconf("SC_OPEN_MAX"))

        self.process = subprocess.Popen(
            [executable, *args, "--remote-debugging-pipe",
             f"--user-data-dir={self._profile.name}", "about:blank"],
            preexec_fn=onto_fds_3_and_4, close_fds=False,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._read_buffer = b""
        self._next_id = 0

    def command(self, method: str, session: str | None = None, **params) -> dict:
        """Send one command and wait for its answer (events are dropped)."""
        self._next_id += 1
        sent_id = self._next_id
        message = {"id": sent_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            answer = self._read_message()
            if answer.get("id") == sent_id:
                if "error" in answer:
                    raise ChromiumError(f"{method}: {answer['error']}")
                return answer["result"]

    def _read_message(self) -> dict:
        while b"\0" not in self._read_buffer:
            data = os.read(self._from_browser, 1 << 16)
            if not data:
                raise ChromiumError(f"Chromium closed its pipe (exit {self.process.poll()})")
            self._read_buffer += data
        line, self._read_buffer = self._read_buffer.split(b"\0", 1)
        return json.loads(line)

    def open(self, url: str) -> BarePage:
        target = self.command("Target.createTarget", url=url)["targetId"]
        session = self.command("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        return BarePage(self, session)

    def close(self):
        try:
            self.command("Browser.close")
        except (ChromiumError, OSError):
            pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)
        self._profile.cleanup()


class BarePage:
    """A page of a BareChromium: evaluate functions, select files."""

    def __init__(self, browser: BareChromium, session: str):
        self._browser = browser
        self._session = session

    def _call(self, method: str, **params) -> dict:
        return self._browser.command(method, self._session, **params)

    def evaluate(self, function: str, arg=None):
        """Call the JS `function` with `arg` (JSON), await it, return its
        value (JSON); a throw raises ChromiumError."""
        result = self._call("Runtime.evaluate", expression=f"({function})({json.dumps(arg)})",
                            awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise ChromiumError(json.dumps(result["exceptionDetails"])[:2000])
        return result["result"].get("value")

    def wait_for(self, condition: str, timeout: float):
        deadline = time.monotonic() + timeout
        while not self.evaluate(f"() => {{ try {{ return !!({condition}); }} "
                                f"catch (e) {{ return false; }} }}"):
            if time.monotonic() > deadline:
                raise ChromiumError(f"{condition} did not hold within {timeout} s")
            time.sleep(0.05)

    def set_input_files(self, selector: str, paths: list[Path]):
        found = self._call("Runtime.evaluate",
                           expression=f"document.querySelector({json.dumps(selector)})")
        self._call("DOM.setFileInputFiles", files=[str(p) for p in paths],
                   objectId=found["result"]["objectId"])
