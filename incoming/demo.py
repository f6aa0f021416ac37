"""
``--demo``: a web app under /demo/ that plays the app backend, so that one
command shows Incoming!! at work in a browser.

The page (frontend/demo/) asks /demo/api/ticket for a ticket per file and
uploads it with incoming.js.  The play backend gets the tickets from the
registry (as new_upload would, with a secret of its own), takes the
handovers at /demo/api/handover like a real backend would (checks the
secret, hashes the file, answers ``done`` and ``wait`` in turn, and after
``wait`` finishes the upload FINISH_DELAY seconds later) and lists what
arrived at /demo/api/files.

Off by default and not for a public server: anyone who reaches it can upload.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections import OrderedDict

import attr
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from .backend_api import ApiError, Params, check_finish_url, respond
from .handover import DONE, WAIT
from .hostlist import HostList
from .registry import UnknownUpload
from .static import FileCache, StaticFolder, frontend_dir, plain_text
from .upload import TooLate

_log = Logger()

# Seconds between answering wait and calling finish_upload.
FINISH_DELAY = 3.0
# How many received files the list keeps (the oldest go first).
MAX_RECORDS = 200

# How a received file ended, as /demo/api/files reports it.
HANDING_OVER = "handover"  # hashing before answering done
ANSWERED_DONE = "done"
WAITING = "wait"  # answered wait; finish_upload is due
WAIT_FINISHED = "wait+finish"
CANCELLED = "cancelled"


def file_sha256(path: str) -> tuple[int, str]:
    """Size and sha256 of a file; runs in a worker thread."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while piece := f.read(1 << 20):
            digest.update(piece)
            size += len(piece)
    return size, digest.hexdigest()


@attr.s(auto_attribs=True)
class Received:
    """One file the play backend was handed, or told was cancelled."""

    id: str
    name: str
    size: int | None = None
    sha256: str | None = None  # computed here, from the stored file
    server_sha256: str | None = None  # what the server sent in the handover
    outcome: str = HANDING_OVER
    reason: str = ""


class DemoBackend:
    """The play backend's state: open tickets and what arrived."""

    _log = Logger()

    def __init__(self, registry, clock, run_blocking, finish_url_hosts=()):
        self._registry = registry
        self._clock = clock
        self._run_blocking = run_blocking  # a thread pool in production
        # Its tickets follow --finish-url-hosts, like new_upload's.
        self.finish_url_hosts = HostList(finish_url_hosts)
        self._secrets: dict[str, str] = {}  # ticket id -> backendSecret, until it ends
        self._records: OrderedDict[str, Received] = OrderedDict()
        self._handovers = 0

    # ---- what the page asks for ------------------------------------------

    def new_ticket(self, finish_url: str) -> Deferred:
        """Fire with a new ticket's id."""
        secret = secrets.token_urlsafe(18)
        d = self._registry.create(
            signal_finish_url=finish_url,
            backend_secret=secret,
            remove_file_when_finished=True,  # hashed before the server may remove it
        )

        def created(upload):
            self._secrets[upload.ticket.id] = secret
            return upload.ticket.id

        return d.addCallback(created)

    def files(self) -> list[dict]:
        return [attr.asdict(record) for record in self._records.values()]

    # ---- what the server tells us ------------------------------------------

    def knows(self, ticket_id: str, secret: str) -> bool:
        expected = self._secrets.get(ticket_id)
        return expected is not None and hmac.compare_digest(
            expected.encode("utf-8"), secret.encode("utf-8")
        )

    def cancelled(self, ticket_id: str, browser_name: str, reason: str) -> None:
        self._secrets.pop(ticket_id, None)
        record = self._records.get(ticket_id) or self._record(ticket_id, browser_name)
        upload = self._registry.get(ticket_id)
        if record.size is None and upload is not None:
            record.size = upload.length
        record.outcome, record.reason = CANCELLED, reason
        self._log.info("demo: upload {id} cancelled: {reason}", id=ticket_id, reason=reason)

    def take(self, ticket_id: str, path: str, browser_name: str, server_sha256=None):
        """A complete file: fire with the answer, done and wait in turn.

        done is answered after the hash (the server may then remove the
        file); wait at once, and finish_upload follows when the hash is done
        and FINISH_DELAY seconds have passed.
        """
        record = self._record(ticket_id, browser_name)
        record.server_sha256 = server_sha256
        answer = DONE if self._handovers % 2 == 0 else WAIT
        self._handovers += 1
        hashed = self._run_blocking(file_sha256, path)
        hashed.addCallbacks(
            lambda result: self._hashed(record, *result),
            lambda failure: self._hash_failed(record, failure),
        )
        if answer == DONE:

            def answer_done(_):
                if record.outcome == HANDING_OVER:  # not cancelled meanwhile
                    self._secrets.pop(ticket_id, None)
                    record.outcome = ANSWERED_DONE
                return DONE

            return hashed.addCallback(answer_done)
        record.outcome = WAITING
        delay = deferLater(self._clock, FINISH_DELAY, lambda: None)
        finishing = gatherResults([hashed, delay], consumeErrors=True)
        finishing.addCallback(lambda _: self._finish(record))
        finishing.addErrback(
            lambda f: self._log.failure("demo: upload {id}: finishing", f, id=ticket_id)
        )
        return succeed(WAIT)

    # ---- inside -------------------------------------------------------------

    def _record(self, ticket_id: str, browser_name: str) -> Received:
        record = Received(id=ticket_id, name=browser_name)
        self._records[ticket_id] = record
        while len(self._records) > MAX_RECORDS:
            self._records.popitem(last=False)
        return record

    def _hashed(self, record: Received, size: int, sha256: str) -> None:
        record.size, record.sha256 = size, sha256
        self._log.info(
            "demo: upload {id}: {size} bytes, sha256 {sha256}",
            id=record.id,
            size=size,
            sha256=sha256,
        )

    def _hash_failed(self, record: Received, failure) -> None:
        if record.outcome == CANCELLED:
            return  # the server gave up on the handover and removed the file
        record.reason = f"could not read the file: {failure.getErrorMessage()}"
        if failure.check(OSError):
            self._log.warn("demo: upload {id}: {why}", id=record.id, why=record.reason)
        else:
            self._log.failure("demo: upload {id}: hashing", failure, id=record.id)

    def _finish(self, record: Received) -> None:
        """finish_upload, through the registry as the backend API would."""
        if record.outcome == CANCELLED:  # the server gave up waiting meanwhile
            return

        def sent(_):
            self._secrets.pop(record.id, None)
            record.outcome = WAIT_FINISHED
            self._log.info("demo: upload {id}: finish_upload sent", id=record.id)

        def refused(failure):
            failure.trap(TooLate, UnknownUpload)
            record.reason = f"finish_upload failed: {failure.value}"
            self._log.warn("demo: upload {id}: {why}", id=record.id, why=str(failure.value))

        return self._registry.request_finish(record.id).addCallbacks(sent, refused)


# ---- HTTP -------------------------------------------------------------------


def json_response(request, status: int, value) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(value).encode("utf-8")


class _DemoCall(Resource):
    """One function of the play backend's API; one method only."""

    isLeaf = True
    method = b"POST"

    def __init__(self, backend: DemoBackend):
        super().__init__()
        self._backend = backend

    def render(self, request):
        if request.method != self.method:
            request.setHeader(b"allow", self.method)
            return plain_text(
                request,
                405,
                f"method {request.method.decode('latin-1')} not allowed; "
                f"use {self.method.decode('ascii')}\n",
            )
        try:
            return self.call(request)
        except ApiError as e:
            return plain_text(request, e.status, f"{e}\n")

    def call(self, request):
        raise NotImplementedError


class TicketCall(_DemoCall):
    """POST: a new upload ticket, as {"id": ...}.

    The handover URL is this server under the Host the browser used, so the
    server reaches the play backend the way the page reached the server.
    """

    def call(self, request):
        host = (request.getHeader(b"host") or b"").decode("latin-1")
        scheme = "https" if request.isSecure() else "http"
        path = b"/".join(request.prepath[:-1] + [b"handover"]).decode("utf-8")
        if not host or "/" in host or "@" in host:
            raise ApiError(400, "no usable Host header")
        url = check_finish_url(f"{scheme}://{host}/{path}", self._backend.finish_url_hosts)
        d = self._backend.new_ticket(url)
        return respond(request, d.addCallback(lambda i: json_response(request, 200, {"id": i})))


class HandoverCall(_DemoCall):
    """POST from the server: a complete file (answer done or wait) or a
    cancellation (the answer does not matter)."""

    _log = Logger()

    def call(self, request):
        params = Params(request)
        ticket_id = params.required("id")
        if not self._backend.knows(ticket_id, params.optional("backendSecret", "")):
            raise ApiError(403, "not a ticket of the demo, or a wrong backendSecret")
        name = params.optional("filenameFromBrowser", "")
        if params.optional("cancelled", "no") == "yes":
            self._backend.cancelled(ticket_id, name, params.optional("cancelReason", ""))
            return plain_text(request, 200, DONE)
        path = params.required("filename")
        gone = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def answer(text):
            if not gone:
                request.write(plain_text(request, 200, text))
                request.finish()

        def failed(failure):
            self._log.failure("demo: upload {id}: handover", failure, id=ticket_id)
            if not gone:
                request.write(plain_text(request, 500, "the demo backend failed\n"))
                request.finish()

        d = self._backend.take(ticket_id, path, name, params.optional("sha256", "") or None)
        d.addCallbacks(answer, failed)
        d.addErrback(lambda f: self._log.failure("demo: answering the handover", f))
        return NOT_DONE_YET


class FilesCall(_DemoCall):
    """GET: what the play backend received, oldest first."""

    method = b"GET"

    def call(self, request):
        return json_response(request, 200, {"files": self._backend.files()})


def demo_resource(
    registry, clock, run_blocking, cache: FileCache | None = None, finish_url_hosts=()
) -> Resource:
    """The /demo/ folder: the page from frontend/demo/ and its api/.

    ``run_blocking(f, *args)`` runs the hashing (in a thread pool in
    production) and returns a Deferred.  ``finish_url_hosts`` is
    --finish-url-hosts: the page's Host header names the handover URL.
    """
    _log.warn("demo: serving the demo web app at /demo/; not for a public server")
    backend = DemoBackend(registry, clock, run_blocking, finish_url_hosts)
    api = Resource()
    api.putChild(b"ticket", TicketCall(backend))
    api.putChild(b"handover", HandoverCall(backend))
    api.putChild(b"files", FilesCall(backend))
    folder = StaticFolder(frontend_dir() / "demo", cache or FileCache(), index="index.html")
    folder.putChild(b"api", api)
    return folder
