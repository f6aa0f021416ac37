"""
The HTTP API that web app backends call: new_upload, cancel_upload,
finish_upload.

Parameters come from the query string or the form body (both as in 0.1).
Every answer is text/plain: the value on 200, a message on an error.
Status codes: 400 bad or missing parameter (including a malformed ticket
id, and a signalFinishURL host outside --finish-url-hosts), 401 missing or
wrong bearer token (with --backend-token), 403 wrong backendSecret, a
caller outside --backend-allow, or a call from a web page (an Origin header
not in --backend-origins, or Sec-Fetch-Site other than none), 404 unknown
ticket, 405 wrong method, 412 too late (cancel during or after the handover,
finish when nothing waits), 500 a bug, 503 too many open uploads
(--max-uploads) or a record that cannot be stored.
"""

from __future__ import annotations

import hmac
import ipaddress
from urllib.parse import urlsplit

from autobahn.util import wildcards2patterns
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from .config import describe
from .hostlist import HostList
from .ids import parse_ticket_id
from .interfaces import StoreError
from .registry import UnknownUpload
from .upload import TooLate
from .wire import shown

_log = Logger()

TRUE_WORDS = {"1", "t", "true"}
FALSE_WORDS = {"0", "f", "false"}


class ApiError(Exception):
    """An error answer: HTTP status and a message for the backend's logs."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def respond(request, body: Deferred):
    """Render what ``body`` fires with (bytes, status and headers set): at
    once if it has fired already, else when it does."""
    now: list = []
    body.addCallback(now.append)
    if now:
        return now[0]
    gone: list = []
    request.notifyFinish().addErrback(lambda _: gone.append(True))

    def write(_):
        if not gone:
            request.write(now[0])
            request.finish()

    body.addCallback(write)
    body.addErrback(lambda f: _log.failure("answering {path}", f, path=request.path))
    return NOT_DONE_YET


def text_response(request, status: int, text: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return text.encode("utf-8")


class BackendGuard:
    """Who may call the backend API: not a web page (unless its origin is
    listed), and optionally only some address ranges and a bearer token.

    The address and token checks are off by default (0.1-compatible); they
    are the way to run without a reverse proxy.
    """

    _log = Logger()

    def __init__(self, networks=(), token: str = "", origins=()):
        self._networks = [ipaddress.ip_network(n, strict=False) for n in networks]
        self._token = token.encode("utf-8")
        self._origins = wildcards2patterns(list(origins))

    def check(self, request) -> None:
        self._check_browser(request)
        if self._networks:
            host = getattr(request.getClientAddress(), "host", "")
            try:
                address = ipaddress.ip_address(str(host))
            except ValueError:
                address = None
            if address is None or not any(address in n for n in self._networks):
                raise ApiError(403, "this address may not call the backend API")
        if self._token:
            given = request.getHeader(b"authorization") or b""
            scheme, _, token = given.partition(b" ")
            valid = scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._token)
            if not valid:
                request.setHeader(b"www-authenticate", b'Bearer realm="incoming"')
                raise ApiError(401, "missing or wrong bearer token")

    def _check_browser(self, request) -> None:
        """Refuse a call that a web page made a visitor's browser send.

        A form POST needs no CORS preflight, so any site could otherwise
        call new_upload through a browser that reaches the server.  Browsers
        mark such requests with Origin (every POST) and Sec-Fetch-Site;
        backends send neither (Node's fetch sends Sec-Fetch-Mode only, which
        is why that header is not looked at).  An Origin equal to the Host
        is refused too: with DNS rebinding a hostile page has that origin.
        """
        origins = [o.decode("latin-1") for o in request.requestHeaders.getRawHeaders(b"origin", [])]
        site = request.getHeader(b"sec-fetch-site")
        if origins:
            refused = [o for o in origins if not any(p.match(o) for p in self._origins)]
            if not refused:
                return
            marker = f"Origin {shown(refused[0])}"
        elif site is not None and site.strip().lower() != b"none":
            marker = f"Sec-Fetch-Site {shown(site.decode('latin-1'))}"
        else:
            return
        self._log.info("backend API: refused a call from a web page ({marker})", marker=marker)
        raise ApiError(
            403,
            f"backend API calls from a web page ({marker}) are refused; list the "
            f"page's origin in {describe('backend_origins')} to allow them",
        )


class BackendCall(Resource):
    """One POST-only function of the backend API."""

    isLeaf = True
    _log = Logger()

    def __init__(self, registry, settings, guard: BackendGuard):
        super().__init__()
        self._registry = registry
        self._settings = settings
        self._guard = guard

    def render(self, request):
        try:
            self._guard.check(request)
        except ApiError as e:
            return text_response(request, e.status, f"{e}\n")
        if request.method != b"POST":
            request.setHeader(b"allow", b"POST")
            return text_response(
                request,
                405,
                f"method {request.method.decode('latin-1')} not allowed; use POST\n",
            )
        d = maybeDeferred(self.call, Params(request))
        d.addCallback(lambda text: text_response(request, 200, text))
        d.addErrback(self._error, request)
        return respond(request, d)

    def _error(self, failure, request) -> bytes:
        if failure.check(TooLate):
            failure = Failure(ApiError(412, str(failure.value)))
        elif failure.check(UnknownUpload):
            failure = Failure(ApiError(404, str(failure.value)))
        elif failure.check(StoreError):
            self._log.error("backend API: {why}", why=str(failure.value))
            failure = Failure(ApiError(503, f"cannot store the upload: {failure.value}"))
        if failure.check(ApiError):
            return text_response(request, failure.value.status, f"{failure.value}\n")
        self._log.failure("backend API call failed", failure)
        return text_response(request, 500, "internal error; see the server's log\n")

    def call(self, params: Params) -> str:
        raise NotImplementedError

    def _authorized_ticket(self, params: Params) -> Deferred:
        """Fire with the Ticket named by `id`, if `backendSecret` matches it
        (wherever its upload runs)."""
        raw_id = params.required("id")
        ticket_id = parse_ticket_id(raw_id)
        if ticket_id is None:
            raise ApiError(400, f"id {raw_id!r} is not an upload ticket id (a UUID)")
        given = params.optional("backendSecret", "").encode("utf-8")

        def check(ticket):
            if ticket is None:
                raise ApiError(404, f"no upload with id {ticket_id}")
            if not hmac.compare_digest(given, ticket.backend_secret.encode("utf-8")):
                raise ApiError(403, "wrong backendSecret for this upload")
            return ticket

        return self._registry.ticket_of(ticket_id).addCallback(check)


class Params:
    """Form values of a request, from the body or the query string."""

    def __init__(self, request):
        self._args = request.args

    def optional(self, name: str, default: str) -> str:
        values = self._args.get(name.encode("ascii"))
        if not values:
            return default
        try:
            return values[0].decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, f"{name} is not valid UTF-8") from None

    def required(self, name: str) -> str:
        value = self.optional(name, "")
        if not value:
            raise ApiError(400, f"missing parameter {name}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.optional(name, "").strip().lower()
        if not value:
            return default
        if value in TRUE_WORDS:
            return True
        if value in FALSE_WORDS:
            return False
        raise ApiError(400, f"{name} must be true or false, not {value!r}")


ANY_HOST = HostList()


def check_finish_url(url: str, hosts: HostList = ANY_HOST) -> str:
    """The URL, if the server may POST handovers to it."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. "http://[::1/": an unclosed IPv6 bracket
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ApiError(400, f"signalFinishURL {url!r} is not an absolute http(s) URL")
    if not hosts.allows(parts.hostname):
        raise ApiError(
            400,
            f"signalFinishURL host {shown(parts.hostname)} is not in "
            f"{describe('finish_url_hosts')}",
        )
    return url


class NewUpload(BackendCall):
    """Issue a ticket; answer its id."""

    def __init__(self, registry, settings, guard: BackendGuard):
        super().__init__(registry, settings, guard)
        self._hosts = HostList(settings.finish_url_hosts)

    def call(self, params):
        limit = self._settings.max_uploads
        if not limit:
            return self._issue(params)

        def counted(count):
            if count >= limit:
                raise ApiError(503, f"too many open uploads ({limit}); try again later")
            return self._issue(params)

        return self._registry.count_open().addCallback(counted)

    def _issue(self, params):
        url = check_finish_url(params.required("signalFinishURL"), self._hosts)
        dest_type = params.optional("destType", "file")
        known = self._registry.dest_types()
        if dest_type == "s3" and dest_type not in known:
            raise ApiError(
                400, f"destType 's3' needs an S3 store on this server: set {describe('s3_bucket')}"
            )
        if dest_type not in known:
            supported = ", ".join(repr(name) for name in known)
            raise ApiError(400, f"destType {dest_type!r} is not supported (only {supported})")
        d = self._registry.create(
            signal_finish_url=url,
            backend_secret=params.optional("backendSecret", ""),
            remove_file_when_finished=params.boolean("removeFileWhenFinished", True),
            dest_type=dest_type,
        )
        return d.addCallback(lambda upload: upload.ticket.id)


class CancelUpload(BackendCall):
    """Cancel an upload that is not being handed over yet."""

    def call(self, params):
        d = self._authorized_ticket(params)
        return d.addCallback(
            lambda ticket: self._registry.request_cancel(ticket.id, "cancelled by the backend")
        )


class FinishUpload(BackendCall):
    """The backend is done with a file it answered wait for."""

    def call(self, params):
        d = self._authorized_ticket(params)
        return d.addCallback(lambda ticket: self._registry.request_finish(ticket.id))


def backend_api(registry, settings) -> Resource:
    """The /incoming/0.1/backend/ folder."""
    guard = BackendGuard(settings.backend_allow, settings.backend_token, settings.backend_origins)
    folder = Resource()
    for name, call in (
        (b"new_upload", NewUpload),
        (b"cancel_upload", CancelUpload),
        (b"finish_upload", FinishUpload),
    ):
        folder.putChild(name, call(registry, settings, guard))
    return folder
