"""
Calls to the web app backend's ``signalFinishURL``.

The backend gets a form POST when a file is complete (answer ``done`` or
``wait``) and when an upload is cancelled (answer ignored).  The HTTP client
(`backend_http`, or treq's StubTreq in tests) and the clock are passed in.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import treq
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, inlineCallbacks
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import client as web_client
from twisted.web._newclient import (
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseNeverReceived,
)
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from .deadline import Deadline
from .form_client import FormClient

DONE = "done"
WAIT = "wait"

# Seconds before each new attempt of a cancellation POST that got no answer.
CANCEL_RETRY_DELAYS = (5.0, 30.0, 120.0)

# An answer longer than this is not "done" or "wait" anyway.
MAX_ANSWER_BYTES = 4096


class _Enough(Exception):
    """The first MAX_ANSWER_BYTES of an answer are all we read."""


class HandoverFailed(Exception):
    """The backend did not take the file; str() is the reason for the user."""


class BackendClient:
    """Sends the handover and cancellation POSTs of every upload."""

    _log = Logger()

    def __init__(self, http, clock, timeout: float, monotonic=None):
        self._http = http
        self._clock = clock
        self._timeout = timeout
        self._monotonic = monotonic or clock.seconds  # elapsed time, for the timeout

    def _post(self, url: str, fields: dict) -> Deferred:
        """POST the form; fire with (status code, first bytes of the body)."""

        @inlineCallbacks
        def exchange():
            # A redirect is an answer (a 303 would turn the POST into a GET
            # without the form), and only the first bytes are kept.
            response = yield self._http.post(url, data=fields, allow_redirects=False)
            body = bytearray()

            def keep(data):
                body.extend(data[: MAX_ANSWER_BYTES - len(body)])
                if len(body) >= MAX_ANSWER_BYTES:
                    raise _Enough()  # treq closes the connection: the rest is not read

            try:
                yield treq.collect(response, keep)
            except _Enough:
                pass
            return response.code, bytes(body)

        timed_out: list[bool] = []
        d = exchange()

        def give_up():
            timed_out.append(True)
            d.cancel()

        # Real elapsed time, not a wall clock that jumped (incoming.deadline).
        timer = Deadline(self._clock, self._monotonic, self._timeout, give_up)

        def settled(result):
            timer.cancel()
            if timed_out and isinstance(result, Failure):
                # Whatever the cancelled request failed with, it was our timeout.
                return Failure(TimeoutError(f"no answer within {self._timeout:g} s"))
            return result

        return d.addBoth(settled)

    @inlineCallbacks
    def hand_over(self, ticket, path: str, browser_name: str, sha256: str):
        """Offer the finished file; fire with DONE or WAIT, or HandoverFailed.

        ``sha256`` (hex, or None with --digest none) is an addition to the 0.1
        form; 0.1 backends ignore it.
        """
        fields = {
            "id": ticket.id,
            "backendSecret": ticket.backend_secret,
            "filename": path,
            "filenameFromBrowser": browser_name,
            "cancelled": "no",
            "cancelReason": "",
        }
        if sha256 is not None:
            fields["sha256"] = sha256
        if ticket.dest_type != "file":  # 0.1 backends never ask for another
            fields["destType"] = ticket.dest_type
        try:
            code, body = yield self._post(ticket.signal_finish_url, fields)
        except TimeoutError:
            raise HandoverFailed(
                f"backend did not answer the handover within {self._timeout:g} s"
            ) from None
        except Exception as e:
            raise HandoverFailed(f"handover request failed: {_describe(e)}") from None
        if code != 200:
            raise HandoverFailed(f"backend answered the handover with HTTP {code}")
        answer = body.lstrip()
        if answer.startswith(DONE.encode()):
            return DONE
        if answer.startswith(WAIT.encode()):
            return WAIT
        raise HandoverFailed(
            f"backend answered the handover with {answer[:40]!r}, not done or wait"
        )

    @inlineCallbacks
    def report_cancel(self, ticket, browser_name: str, reason: str):
        """Tell the backend an upload was cancelled.

        Any answer will do (0.1 semantics); only a POST that got no answer
        (connection refused, timeout) is sent again, after each delay in
        CANCEL_RETRY_DELAYS, so a backend that is briefly down still hears
        of it.  Fires with None; failures are logged, never raised.
        """
        fields = {
            "id": ticket.id,
            "backendSecret": ticket.backend_secret,
            "filename": "",
            "filenameFromBrowser": browser_name,
            "cancelled": "yes",
            "cancelReason": reason,
        }
        for attempt, delay in enumerate((0.0,) + CANCEL_RETRY_DELAYS):
            if delay:
                yield deferLater(self._clock, delay, lambda: None)
            try:
                yield self._post(ticket.signal_finish_url, fields)
                return None
            except Exception as e:
                self._log.warn(
                    "upload {id}: backend was not told of the cancellation "
                    "(attempt {attempt}): {why}",
                    id=ticket.id,
                    attempt=attempt + 1,
                    why=_describe(e),
                )
        self._log.error(
            "upload {id}: gave up telling the backend of the cancellation", id=ticket.id
        )
        return None


def _describe(error: BaseException) -> str:
    """A short text for errors whose str() is empty or a nested list."""
    reasons = getattr(error, "reasons", None)  # treq/twisted ResponseFailed
    if reasons:
        return "; ".join(_describe(r.value) for r in reasons)
    from OpenSSL.SSL import Error as TLSError

    if isinstance(error, TLSError) and error.args and isinstance(error.args[0], list):
        # [(library, function, reason), ...], e.g. "certificate verify failed"
        texts = [entry[-1] for entry in error.args[0] if isinstance(entry, tuple) and entry]
        if texts:
            return "TLS error: " + "; ".join(texts)
    text = str(error) or type(error).__name__
    return text


# A pooled connection unused this long is closed by us, before a backend's
# own keep-alive timeout (often 2-5 s) closes it under a new request.
POOL_IDLE_SECONDS = 1
# Connections kept open per backend (host and port) between handovers.
POOL_PER_BACKEND = 16


def backend_http(reactor, tls_policy):
    """The HTTP client of the handover and cancellation POSTs: persistent
    connections, pooled per backend and closed after POOL_IDLE_SECONDS
    unused, and a new connection for a POST that got no answer on a pooled
    one (`PooledThenFresh`); IP literals connected to directly (the standard
    endpoint sends every name, 127.0.0.1 too, through getaddrinfo in a
    thread); each POST made by the agent itself (`incoming.form_client`: no
    cookies stored or sent, no redirects, none of treq's per-request
    wrappers)."""
    from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

    endpoints = _BackendEndpoints(reactor, tls_policy or BrowserLikePolicyForHTTPS())

    def client(pool) -> FormClient:
        return FormClient(Agent.usingEndpointFactory(reactor, endpoints, pool=pool))

    return PooledThenFresh(
        client(_Pool(reactor, persistent=True)), client(HTTPConnectionPool(reactor, False))
    )


# A POST that failed so got no answer: the backend may not have seen it.
NOT_ANSWERED = (RequestNotSent, RequestTransmissionFailed, ResponseNeverReceived)


class PooledThenFresh:
    """POSTs on pooled connections; one that got no answer at all is sent
    once more on a new connection.  A backend may close a kept connection
    just as it is used again (its keep-alive timeout, a restart): on a fresh
    connection per POST that never happened, and it must not fail a
    handover now.  The backend may then see the same POST twice, as it may
    after a restart (handovers are at least once)."""

    def __init__(self, pooled, fresh):
        self.pooled = pooled
        self.fresh = fresh

    def post(self, url, **kwargs) -> Deferred:
        def again(failure):
            failure.trap(*NOT_ANSWERED)
            if _cancelled(failure):  # our timeout gave up on it: not again
                return failure
            return self.fresh.post(url, **kwargs)

        return self.pooled.post(url, **kwargs).addErrback(again)


def _cancelled(failure) -> bool:
    """Whether a NOT_ANSWERED failure came of cancelling the request
    (Twisted lists the CancelledError among its ``reasons``; RequestNotSent
    has none)."""
    reasons = getattr(failure.value, "reasons", None) or []
    return any(reason.check(CancelledError) for reason in reasons)


class _QuietClientFactory(web_client._HTTP11ClientFactory):
    """Twisted's pool factory logs "Starting factory" and "Stopping factory"
    for every connection: two lines per handover that say nothing."""

    noisy = False


class _Pool(web_client.HTTPConnectionPool):
    _factory = _QuietClientFactory
    maxPersistentPerHost = POOL_PER_BACKEND
    cachedConnectionTimeout = POOL_IDLE_SECONDS


@implementer(IAgentEndpointFactory)
class _BackendEndpoints:
    """TCP (TLS for https) to the backend; an IP literal without a lookup."""

    def __init__(self, reactor, tls_policy):
        self._reactor = reactor
        self._tls_policy = tls_policy

    def endpointForURI(self, uri):
        host = uri.host.decode("ascii")
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            endpoint: Any = HostnameEndpoint(self._reactor, uri.host, uri.port)
        else:
            direct = TCP6ClientEndpoint if address.version == 6 else TCP4ClientEndpoint
            endpoint = direct(self._reactor, str(address), uri.port)
        if uri.scheme == b"https":
            creator = self._tls_policy.creatorForNetloc(uri.host, uri.port)
            endpoint = wrapClientTLS(creator, endpoint)
        return endpoint
