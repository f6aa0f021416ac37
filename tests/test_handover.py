"""
BackendClient against a fake web app backend: treq's StubTreq serves a
twisted.web resource in memory, a Clock drives the handover timeout.
"""

from __future__ import annotations

import pytest
from twisted.internet import defer, error
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from treq.testing import StubTreq

from incoming.handover import CANCEL_RETRY_DELAYS, DONE, WAIT, BackendClient, HandoverFailed
from incoming.upload import Ticket

TIMEOUT = 55.0
URL = "http://backend.example/api/hand_over_upload"
SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"  # sha256 of "test"
TICKET = Ticket(
    id="6f1c7e2a-5b1d-4c1e-9a55-3f2b0c9d1e77",
    signal_finish_url=URL,
    backend_secret="s3cret",
    remove_file_when_finished=True,
)
FORM = b"application/x-www-form-urlencoded"


class FakeBackend(Resource):
    """Records each POST; answers with ``status`` and ``body``, or hangs
    (``body=None``) until the test finishes the request itself."""

    isLeaf = True

    def __init__(self, status: int = 200, body: bytes | None = b"done"):
        super().__init__()
        self.status = status
        self.body = body
        self.requests: list[dict] = []

    def render(self, request):
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "content_type": request.getHeader(b"content-type"),
                "fields": {
                    k.decode(): [v.decode() for v in vs] for k, vs in request.args.items()
                },
            }
        )
        if self.body is None:
            return NOT_DONE_YET
        request.setResponseCode(self.status)
        return self.body

    @property
    def fields(self) -> dict[str, str]:
        """The single-valued form fields of the only request."""
        (only,) = self.requests
        assert all(len(v) == 1 for v in only["fields"].values()), only["fields"]
        return {k: v[0] for k, v in only["fields"].items()}


class RefusingHttp:
    """An HTTP client whose connections are refused (the first `refusals`
    of them; None: all), and then answered with 200 "ok"."""

    def __init__(self, refusals=None):
        self.posts = 0
        self._refusals = refusals

    def post(self, url, data=None, **kw):
        self.posts += 1
        if self._refusals is None or self.posts <= self._refusals:
            return defer.fail(error.ConnectionRefusedError())
        return defer.succeed(Answer())


class Answer:
    """A response of 200 "ok", as treq reads one (deliverBody)."""

    code = 200
    length = 2

    def deliverBody(self, protocol):
        from twisted.python.failure import Failure
        from twisted.web.client import ResponseDone

        protocol.dataReceived(b"ok")
        protocol.connectionLost(Failure(ResponseDone()))


@pytest.fixture
def clock():
    return Clock()


def client_for(backend, clock) -> tuple[BackendClient, StubTreq]:
    stub = StubTreq(backend)
    return BackendClient(stub, clock, TIMEOUT), stub


def outcome(d: defer.Deferred, stub: StubTreq | None = None):
    """The result (or Failure) of a Deferred that must have fired."""
    if stub is not None:
        stub.flush()
    results = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


def handover_failure(d, stub=None) -> str:
    """Check the Deferred failed with HandoverFailed; return its text."""
    result = outcome(d, stub)
    assert isinstance(result, Failure), f"expected HandoverFailed, got {result!r}"
    assert result.check(HandoverFailed), result
    return str(result.value)


# ---- the handover POST ------------------------------------------------------


def test_handover_posts_the_form_the_backend_expects(clock):
    backend = FakeBackend(body=b"done")
    client, stub = client_for(backend, clock)
    outcome(client.hand_over(TICKET, "/srv/incoming/" + TICKET.id, "Urlaub 2024.jpg", SHA), stub)
    (request,) = backend.requests
    assert request["method"] == b"POST"
    assert request["path"] == b"/api/hand_over_upload"
    assert request["content_type"] == FORM
    assert backend.fields == {
        "id": TICKET.id,
        "backendSecret": "s3cret",
        "filename": "/srv/incoming/" + TICKET.id,
        "filenameFromBrowser": "Urlaub 2024.jpg",
        "cancelled": "no",
        "cancelReason": "",
        "sha256": SHA,
    }


@pytest.mark.parametrize(
    "body, answer",
    [
        (b"done", DONE),
        (b"done\n", DONE),
        (b"done\r\n", DONE),
        (b"wait", WAIT),
        (b"wait\n", WAIT),
    ],
)
def test_done_and_wait_answers(body, answer, clock):
    client, stub = client_for(FakeBackend(body=body), clock)
    assert outcome(client.hand_over(TICKET, "/f", "a.txt", SHA), stub) == answer


def test_http_500_fails_the_handover_even_if_the_body_says_done(clock):
    client, stub = client_for(FakeBackend(status=500, body=b"done"), clock)
    text = handover_failure(client.hand_over(TICKET, "/f", "a.txt", SHA), stub)
    assert "500" in text


def test_http_404_fails_the_handover(clock):
    client, stub = client_for(FakeBackend(status=404, body=b"no such page"), clock)
    assert "404" in handover_failure(client.hand_over(TICKET, "/f", "a.txt", SHA), stub)


@pytest.mark.parametrize("body", [b"<html>ok</html>", b"", b"finished", b"ok"])
def test_an_answer_other_than_done_or_wait_fails(body, clock):
    client, stub = client_for(FakeBackend(body=body), clock)
    handover_failure(client.hand_over(TICKET, "/f", "a.txt", SHA), stub)


def test_a_backend_that_never_answers_fails_after_the_timeout(clock):
    backend = FakeBackend(body=None)
    client, stub = client_for(backend, clock)
    d = client.hand_over(TICKET, "/f", "a.txt", SHA)
    stub.flush()
    assert len(backend.requests) == 1
    clock.advance(TIMEOUT - 1)
    assert not d.called
    clock.advance(1)
    text = handover_failure(d)
    assert "55" in text  # says how long it waited


def test_connection_refused_fails_the_handover(clock):
    http = RefusingHttp()
    client = BackendClient(http, clock, TIMEOUT)
    text = handover_failure(client.hand_over(TICKET, "/f", "a.txt", SHA))
    assert "refused" in text.lower()
    assert http.posts == 1


def test_a_handover_that_answers_in_time_leaves_no_timer(clock):
    client, stub = client_for(FakeBackend(body=b"wait"), clock)
    assert outcome(client.hand_over(TICKET, "/f", "a.txt", SHA), stub) == WAIT
    assert clock.getDelayedCalls() == []


# ---- the cancellation POST --------------------------------------------------


def test_report_cancel_posts_cancelled_yes_with_the_reason(clock):
    backend = FakeBackend(body=b"done")
    client, stub = client_for(backend, clock)
    result = outcome(client.report_cancel(TICKET, "a.txt", "cancelled by the browser: oops"), stub)
    assert result is None
    (request,) = backend.requests
    assert request["method"] == b"POST"
    assert request["path"] == b"/api/hand_over_upload"
    assert request["content_type"] == FORM
    assert backend.fields == {
        "id": TICKET.id,
        "backendSecret": "s3cret",
        "filename": "",
        "filenameFromBrowser": "a.txt",
        "cancelled": "yes",
        "cancelReason": "cancelled by the browser: oops",
    }


@pytest.mark.parametrize("status, body", [(500, b"oops"), (200, b"<html>what</html>")])
def test_report_cancel_ignores_the_answer(status, body, clock):
    backend = FakeBackend(status=status, body=body)
    client, stub = client_for(backend, clock)
    assert outcome(client.report_cancel(TICKET, "a.txt", "idle"), stub) is None
    assert len(backend.requests) == 1


def test_report_cancel_tries_a_refused_connection_again_then_gives_up(clock):
    http = RefusingHttp()
    client = BackendClient(http, clock, TIMEOUT)
    d = client.report_cancel(TICKET, "a.txt", "idle")
    assert http.posts == 1 and not d.called
    for delay in CANCEL_RETRY_DELAYS:
        clock.advance(delay)
    assert http.posts == 1 + len(CANCEL_RETRY_DELAYS)
    assert outcome(d) is None  # swallowed, after the last attempt


def test_report_cancel_reaches_a_backend_that_comes_back(clock):
    http = RefusingHttp(refusals=1)
    client = BackendClient(http, clock, TIMEOUT)
    d = client.report_cancel(TICKET, "a.txt", "idle")
    clock.advance(CANCEL_RETRY_DELAYS[0])
    assert http.posts == 2
    assert outcome(d) is None
    clock.advance(sum(CANCEL_RETRY_DELAYS))
    assert http.posts == 2  # delivered once: no more attempts


def test_report_cancel_gives_up_on_a_silent_backend(clock):
    client, stub = client_for(FakeBackend(body=None), clock)
    d = client.report_cancel(TICKET, "a.txt", "idle")
    stub.flush()
    clock.advance(TIMEOUT - 1)
    assert not d.called
    for delay in (1,) + CANCEL_RETRY_DELAYS:  # each attempt times out
        clock.advance(delay)
        stub.flush()
        clock.advance(TIMEOUT)
    assert outcome(d) is None
