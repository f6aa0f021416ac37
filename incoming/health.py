"""
GET /health for load balancers and orchestrators: 200 ``ok`` while the
server can take uploads, 503 with what is wrong when the storage folder is
not writable (a lost mount, a read-only file system) or a shared store
(Redis, with --state) does not answer, so traffic goes elsewhere.
"""

from __future__ import annotations

import os

from twisted.internet.defer import gatherResults, maybeDeferred
from twisted.web.resource import Resource

from .backend_api import respond, text_response


class HealthCheck(Resource):
    """Answers in text/plain; ``checks`` are callables that fire with None
    when all is well, else the problem."""

    isLeaf = True

    def __init__(self, storage_folder: str, checks=()):
        super().__init__()
        self._folder = os.path.abspath(storage_folder)
        self._checks = list(checks)

    def _folder_problem(self) -> str | None:
        if os.path.isdir(self._folder) and os.access(self._folder, os.W_OK | os.X_OK):
            return None
        return "storage folder is not writable"

    def render_GET(self, request):
        checks = [self._folder_problem, *self._checks]
        d = gatherResults([maybeDeferred(check) for check in checks], consumeErrors=True)

        def answer(problems):
            problems = [p for p in problems if p]
            if problems:
                return text_response(request, 503, "".join(f"{p}\n" for p in problems))
            return text_response(request, 200, "ok\n")

        return respond(request, d.addCallback(answer))
