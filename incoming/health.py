"""
GET /health for load balancers and orchestrators: 200 ``ok`` while the
server can take uploads, 503 with what is wrong when the storage folder is
not writable (a lost mount, a read-only file system) or does not answer (a
hung network file system), or a shared store (Redis with --state, the S3
bucket) does not answer, so traffic goes elsewhere.
"""

from __future__ import annotations

import os

from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.web.resource import Resource

from .backend_api import respond, text_response
from .shared_result import SharedResult

# How long /health waits for the storage folder's answer.
FOLDER_CHECK_SECONDS = 2.0


def _folder_problem(folder: str) -> str | None:
    """Blocking: None if the folder is there and writable."""
    if os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK):
        return None
    return "storage folder is not writable"


class FolderCheck:
    """Is the storage folder there and writable?  Asked in a storage thread
    (on a lost network mount a stat hangs, and the reactor must not), one
    question at a time however often /health is called; no answer within
    FOLDER_CHECK_SECONDS is a problem too."""

    def __init__(self, folder: str, run_blocking, clock, timeout: float = FOLDER_CHECK_SECONDS):
        self._folder = os.path.abspath(folder)
        self._run = run_blocking
        self._clock = clock
        self._timeout = timeout
        self._asking: SharedResult | None = None

    def __call__(self) -> Deferred:
        asking = self._asking
        if asking is None:
            d = maybeDeferred(self._run, _folder_problem, self._folder)
            asking = self._asking = SharedResult(d)
            d.addBoth(self._answered)
        waiter = asking.get()
        waiter.addTimeout(
            self._timeout,
            self._clock,
            onTimeoutCancel=lambda _result, timeout: (
                f"storage folder does not answer within {timeout:g} s"
            ),
        )
        return waiter.addErrback(lambda f: f"storage folder check failed: {f.getErrorMessage()}")

    def _answered(self, _) -> None:
        self._asking = None


class HealthCheck(Resource):
    """Answers in text/plain; ``checks`` are callables that fire with None
    when all is well, else the problem."""

    isLeaf = True

    def __init__(self, checks=()):
        super().__init__()
        self._checks = list(checks)

    def render_GET(self, request):
        d = gatherResults([maybeDeferred(check) for check in self._checks], consumeErrors=True)

        def answer(problems):
            problems = [p for p in problems if p]
            if problems:
                return text_response(request, 503, "".join(f"{p}\n" for p in problems))
            return text_response(request, 200, "ok\n")

        return respond(request, d.addCallback(answer))
