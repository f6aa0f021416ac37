"""
GET /health for load balancers and orchestrators: 200 ``ok`` while the
server can take uploads, 503 when the storage folder is not writable (a
lost mount, a read-only file system), so traffic goes elsewhere.
"""

from __future__ import annotations

import os

from twisted.web.resource import Resource


class HealthCheck(Resource):
    """Answers in text/plain; the check is one access(2) call."""

    isLeaf = True

    def __init__(self, storage_folder: str):
        super().__init__()
        self._folder = os.path.abspath(storage_folder)

    def render_GET(self, request):
        if os.path.isdir(self._folder) and os.access(self._folder, os.W_OK | os.X_OK):
            status, text = 200, "ok\n"
        else:
            status, text = 503, "storage folder is not writable\n"
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return text.encode("utf-8")
