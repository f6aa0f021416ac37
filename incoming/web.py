"""The resource tree: every URL the server answers, built in one place."""

from __future__ import annotations

from autobahn.twisted.resource import WebSocketResource
from twisted.web.resource import Resource
from twisted.web.server import Site

from .backend_api import backend_api
from .handover import BackendClient
from .registry import UploadRegistry
from .storage import Storage
from .wsproto import UploadFactory


def build_root(registry, settings, clock) -> Resource:
    """/incoming/0.1/backend/* and /incoming/0.1/frontend/upload_ws."""
    frontend = Resource()
    frontend.putChild(b"upload_ws", WebSocketResource(UploadFactory(registry, settings, clock)))
    version = Resource()
    version.putChild(b"backend", backend_api(registry))
    version.putChild(b"frontend", frontend)
    incoming = Resource()
    incoming.putChild(b"0.1", version)
    root = Resource()
    root.putChild(b"incoming", incoming)
    return root


def make_site(settings, clock, http) -> tuple[Site, UploadRegistry]:
    """The whole server as a twisted.web Site, plus its upload registry.

    ``clock`` is the reactor (or a Clock in tests); ``http`` is a treq
    HTTPClient (or StubTreq) used for the handover calls.
    """
    storage = Storage(settings.storage_dir)
    storage.prepare()
    backend = BackendClient(http, clock, settings.handover_timeout)
    registry = UploadRegistry(settings, storage, backend, clock)
    site = Site(build_root(registry, settings, clock))
    site.displayTracebacks = False
    return site, registry
