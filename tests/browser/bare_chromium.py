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
import select
import signal
import subprocess
import tempfile
import time
from pathlib import Path

COMMAND_TIMEOUT = 600.0  # seconds a command may take: a whole 1 GiB round fits


class ChromiumError(Exception):
    """Chromium answered a DevTools command with an error, did not answer
    in time, went away, or a page threw."""


class BareChromium:
    """One headless Chromium on a DevTools pipe (fd 3 in, fd 4 out), in a
    process group of its own (so that a hung one is killed whole)."""

    def __init__(self, executable: str, args: list[str]):
        if not (os.path.isfile(executable) and os.access(executable, os.X_OK)):
            raise ChromiumError(f"no Chromium at {executable} (apt-get install chromium)")
        self._profile = tempfile.TemporaryDirectory(prefix="bare-chromium-",
                                                    ignore_cleanup_errors=True)
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def onto_fds_3_and_4():
            # The pipe ends go where Chromium looks for them.  Either may be
            # 3 or 4 already: both are lifted out of the way first, as
            # close-on-exec copies; dup2 makes 3 and 4 inheritable.
            lifted = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
                      for fd in (to_browser_r, from_browser_w)]
            os.dup2(lifted[0], 3)
            os.dup2(lifted[1], 4)

        try:
            self.process = subprocess.Popen(
                [executable, *args, "--remote-debugging-pipe",
                 f"--user-data-dir={self._profile.name}", "about:blank"],
                preexec_fn=onto_fds_3_and_4, close_fds=False, start_new_session=True,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except BaseException:
            for fd in (self._to_browser, self._from_browser):
                os.close(fd)
            self._profile.cleanup()
            raise
        finally:
            os.close(to_browser_r)
            os.close(from_browser_w)
        self._read_buffer = b""
        self._next_id = 0
        self._closed = False

    def command(self, method: str, session: str | None = None,
                timeout: float = COMMAND_TIMEOUT, **params) -> dict:
        """Send one command and wait for its answer (events are dropped,
        except the end of `session`'s page)."""
        self._next_id += 1
        sent_id = self._next_id
        message = {"id": sent_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        try:
            os.write(self._to_browser, json.dumps(message).encode() + b"\0")  # pipes take it whole
        except OSError as e:
            raise ChromiumError(f"{method}: Chromium is gone ({e})") from None
        deadline = time.monotonic() + timeout
        while True:
            answer = self._read_message(method, deadline)
            if answer.get("id") == sent_id:
                if "error" in answer:
                    raise ChromiumError(f"{method}: {answer['error']}")
                return answer["result"]
            if session and answer.get("method") == "Target.detachedFromTarget" and \
                    answer.get("params", {}).get("sessionId") == session:
                raise ChromiumError(f"{method}: the page went away (crashed or closed)")

    def _read_message(self, method: str, deadline: float) -> dict:
        while b"\0" not in self._read_buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise ChromiumError(f"{method}: no answer from Chromium in time")
            data = os.read(self._from_browser, 1 << 16)
            if not data:
                try:
                    status = self.process.wait(5)
                except subprocess.TimeoutExpired:
                    status = "still running"
                raise ChromiumError(f"{method}: Chromium closed its pipe (exit {status})")
            self._read_buffer += data
        line, self._read_buffer = self._read_buffer.split(b"\0", 1)
        return json.loads(line)

    def open(self, url: str) -> BarePage:
        target = self.command("Target.createTarget", url=url)["targetId"]
        session = self.command("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        return BarePage(self, session)

    def close(self):
        """Ask Chromium to quit; kill its whole group if it does not within
        10 s.  Once only; later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            self.command("Browser.close", timeout=10)
        except ChromiumError:
            pass  # gone already, or hung: killed below
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)
        self._profile.cleanup()


class BarePage:
    """A page of a BareChromium: evaluate functions, select files."""

    def __init__(self, browser: BareChromium, session: str):
        self._browser = browser
        self._session = session

    def _call(self, method: str, timeout: float = COMMAND_TIMEOUT, **params) -> dict:
        return self._browser.command(method, self._session, timeout, **params)

    def evaluate(self, function: str, arg=None, timeout: float = COMMAND_TIMEOUT):
        """Call the JS `function` with `arg` (JSON), await it, return its
        value (JSON); a throw, or no answer within `timeout` s, raises
        ChromiumError."""
        result = self._call("Runtime.evaluate", timeout,
                            expression=f"({function})({json.dumps(arg)})",
                            awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise ChromiumError(details.get("exception", {}).get("description")
                                or details.get("text") or json.dumps(details))
        return result["result"].get("value")

    def wait_for(self, condition: str, timeout: float):
        """Poll the JS expression `condition` until it is true (errors while
        the page is still loading count as false)."""
        deadline = time.monotonic() + timeout
        check = f"() => {{ try {{ return !!({condition}); }} catch (e) {{ return false; }} }}"
        while True:
            try:
                if self.evaluate(check):
                    return
            except ChromiumError:
                if time.monotonic() > deadline:
                    raise
            if time.monotonic() > deadline:
                raise ChromiumError(f"{condition} did not hold within {timeout} s")
            time.sleep(0.05)

    def set_input_files(self, selector: str, paths: list[str | Path]):
        found = self._call("Runtime.evaluate",
                           expression=f"document.querySelector({json.dumps(selector)})")
        if "objectId" not in found.get("result", {}):
            raise ChromiumError(f"no element matches {selector}")
        self._call("DOM.setFileInputFiles", files=[str(p) for p in paths],
                   objectId=found["result"]["objectId"])
