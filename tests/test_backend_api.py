"""The backend HTTP API (new_upload, cancel_upload, finish_upload) against the
real resource tree, driven in memory with treq's StubTreq.

The server under test is built by ``incoming.web.make_site`` with a
``task.Clock`` and a StubTreq around a fake web app backend (which records
the handover and cancellation POSTs and answers done, wait, or never).
Everything is synchronous: no reactor, no sleeping.
"""

from __future__ import annotations

import io
import os
import uuid
from urllib.parse import quote

import pytest
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from fakes import FakeChannel
from incoming.config import Settings
from incoming.web import make_site

BASE = "http://incoming.example/incoming/0.1/backend/"
BACKEND_URL = "http://backend.example/api/backend/hand_over_upload"
SECRET = "s3cr3t-Backend-Value-7f1c"


# ---- helpers ----------------------------------------------------------------


def fired(d):
    """The result of a Deferred that must already have fired (StubTreq is
    synchronous for resources that answer at once)."""
    results = []
    d.addBoth(results.append)
    assert results, "the request did not complete synchronously"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


class FakeBackend(Resource):
    """The web app backend's signalFinishURL: records every POST and answers
    with ``answer`` (done, wait, or hang: never answer)."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.answer = "done"
        self.calls: list[dict] = []
        self.hanging = []

    def render_POST(self, request):
        self.calls.append({k.decode(): v[0].decode() for k, v in request.args.items()})
        if self.answer == "hang":
            self.hanging.append(request)
            return NOT_DONE_YET
        return self.answer.encode()

    def cancellations(self):
        return [c for c in self.calls if c.get("cancelled") == "yes"]

    def handovers(self):
        return [c for c in self.calls if c.get("cancelled") == "no"]


class Answer:
    def __init__(self, response, text):
        self.code = response.code
        self.headers = response.headers
        self.text = text

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    @property
    def content_type(self) -> str:
        return self.header("content-type") or ""

    def __repr__(self):
        return f"<{self.code} {self.content_type} {self.text!r}>"


class Server:
    def __init__(self, tmp_path, **settings):
        self.clock = Clock()
        self.storage_dir = tmp_path / "storage"
        self.settings = Settings(storage_dir=str(self.storage_dir), **settings)
        self.backend = FakeBackend()
        self.site, self.registry = make_site(self.settings, self.clock, StubTreq(self.backend))
        self.client = StubTreq(self.site.resource)

    def request(self, method: str, function: str, params=None, data=None, headers=None) -> Answer:
        response = fired(
            self.client.request(method, BASE + function, params=params, data=data, headers=headers)
        )
        return Answer(response, fired(response.text("utf-8")))

    def post(self, function: str, params=None, data=None, headers=None) -> Answer:
        return self.request("POST", function, params=params, data=data, headers=headers)

    def new_upload(self, **values) -> str:
        values.setdefault("signalFinishURL", BACKEND_URL)
        answer = self.post("new_upload", data=values)
        assert answer.code == 200, answer
        return answer.text.strip()

    def upload_file(self, ticket: str, data: bytes = b"hello world") -> FakeChannel:
        """Play a browser that sends the whole file in one chunk."""
        upload = self.registry.get(ticket)
        channel = FakeChannel()
        upload.connect(channel, len(data), "holiday.jpg")
        upload.receive(channel, data)
        return channel


@pytest.fixture
def server(tmp_path):
    return Server(tmp_path)


def assert_error(answer: Answer, status: int) -> None:
    """An error answer: the status, and a plain-text message saying why."""
    assert answer.code == status, answer
    assert answer.content_type.startswith("text/plain"), answer
    assert answer.text.strip(), f"empty error body for {status}"


def assert_ok(answer: Answer) -> None:
    assert answer.code == 200, answer
    assert answer.content_type.startswith("text/plain"), answer
    assert answer.text == "ok"


# ---- new_upload -------------------------------------------------------------


def test_new_upload_from_form_body_answers_a_uuid_as_plain_text(server):
    answer = server.post("new_upload", data={"signalFinishURL": BACKEND_URL})
    assert answer.code == 200, answer
    assert answer.content_type.startswith("text/plain")
    ticket = answer.text
    assert str(uuid.UUID(ticket)) == ticket
    upload = server.registry.get(ticket)
    assert upload is not None
    assert upload.ticket.signal_finish_url == BACKEND_URL
    # The defaults of the API: remove the file, no secret.
    assert upload.ticket.remove_file_when_finished is True
    assert upload.ticket.backend_secret == ""


def test_new_upload_from_query_string(server):
    answer = server.post(
        "new_upload",
        params={
            "signalFinishURL": BACKEND_URL,
            "removeFileWhenFinished": "false",
            "backendSecret": SECRET,
            "destType": "file",
        },
    )
    assert answer.code == 200, answer
    upload = server.registry.get(answer.text)
    assert upload is not None
    assert upload.ticket.signal_finish_url == BACKEND_URL
    assert upload.ticket.remove_file_when_finished is False
    assert upload.ticket.backend_secret == SECRET


def test_every_new_upload_gets_its_own_ticket(server):
    first, second = server.new_upload(), server.new_upload()
    assert first != second
    assert server.registry.get(first) is not server.registry.get(second)


def test_new_upload_stores_the_backend_secret(server):
    ticket = server.new_upload(backendSecret=SECRET)
    assert server.registry.get(ticket).ticket.backend_secret == SECRET


def test_new_upload_without_signal_finish_url_is_400(server):
    assert_error(server.post("new_upload", data={"backendSecret": "x"}), 400)
    assert_error(server.post("new_upload", data={"signalFinishURL": ""}), 400)
    assert len(server.registry) == 0


@pytest.mark.parametrize(
    "url",
    [
        "/api/backend/hand_over_upload",
        "hand_over_upload",
        "backend.example/hand_over",
        "ftp://backend.example/hand_over",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "http://",
        "http://[::1/hand_over",  # urlsplit raises on it
    ],
)
def test_new_upload_with_relative_or_non_http_url_is_400(server, url):
    answer = server.post("new_upload", data={"signalFinishURL": url})
    assert_error(answer, 400)
    assert len(server.registry) == 0


def test_new_upload_accepts_https_url(server):
    ticket = server.new_upload(signalFinishURL="https://backend.example/hand_over")
    assert server.registry.get(ticket) is not None


@pytest.mark.parametrize("dest_type", ["ceph", "s3", "FILE", "files"])
def test_new_upload_with_dest_type_other_than_file_is_400(server, dest_type):
    answer = server.post(
        "new_upload", data={"signalFinishURL": BACKEND_URL, "destType": dest_type}
    )
    assert_error(answer, 400)
    assert len(server.registry) == 0


@pytest.mark.parametrize(
    "spelling, expected",
    [
        ("true", True),
        ("false", False),
        ("1", True),
        ("0", False),
        ("t", True),
        ("f", False),
        ("TRUE", True),
        ("False", False),
    ],
)
def test_remove_file_when_finished_spellings(server, spelling, expected):
    ticket = server.new_upload(removeFileWhenFinished=spelling)
    assert server.registry.get(ticket).ticket.remove_file_when_finished is expected


@pytest.mark.parametrize("spelling", ["maybe", "yes please", "2"])
def test_remove_file_when_finished_other_words_are_400(server, spelling):
    answer = server.post(
        "new_upload",
        data={"signalFinishURL": BACKEND_URL, "removeFileWhenFinished": spelling},
    )
    assert_error(answer, 400)
    assert len(server.registry) == 0


# ---- --finish-url-hosts ---------------------------------------------------------


FINISH_URL_HOSTS = ("backend.example", "*.apps.example", "10.1.0.0/16", "2001:db8::/32")


@pytest.mark.parametrize(
    "url",
    [
        "http://backend.example/hand_over",
        "https://BACKEND.example.:8443/hand_over",  # any case, any port, a final dot
        "http://web-3.apps.example/hand_over",
        "http://a.b.apps.example/hand_over",
        "http://10.1.200.3:8000/hand_over",
        "http://[2001:db8::7]/hand_over",
    ],
)
def test_a_signal_finish_url_on_an_allowed_host_gets_a_ticket(tmp_path, url):
    server = Server(tmp_path, finish_url_hosts=FINISH_URL_HOSTS)
    ticket = server.new_upload(signalFinishURL=url)
    assert server.registry.get(ticket).ticket.signal_finish_url == url


@pytest.mark.parametrize(
    "url, host",
    [
        ("http://metadata.internal/latest", "metadata.internal"),
        ("http://backend.example.evil/x", "backend.example.evil"),
        ("http://apps.example/x", "apps.example"),  # the wildcard wants a subdomain
        ("http://evilapps.example/x", "evilapps.example"),
        ("http://10.2.0.1/x", "10.2.0.1"),
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254"),
        ("http://[::1]:8080/x", "::1"),
        ("http://[::ffff:10.1.0.1]/x", "::ffff:10.1.0.1"),  # not an IPv4 address
        ("http://127.1/x", "127.1"),  # a name, never resolved: not 127.0.0.1
    ],
)
def test_a_signal_finish_url_on_another_host_is_400_naming_it(tmp_path, url, host):
    server = Server(tmp_path, finish_url_hosts=FINISH_URL_HOSTS)
    answer = server.post("new_upload", data={"signalFinishURL": url})
    assert_error(answer, 400)
    assert answer.text == (
        f"signalFinishURL host '{host}' is not in --finish-url-hosts (FinishURLHosts)\n"
    )
    assert_nothing_created(server)


@pytest.mark.parametrize(
    "url", ["http://169.254.169.254/latest", "http://[::1]:8080/x", "https://anything.example/"]
)
def test_without_finish_url_hosts_any_host_gets_a_ticket(server, url):
    assert server.registry.get(server.new_upload(signalFinishURL=url)) is not None


# ---- cancel_upload ----------------------------------------------------------


def test_cancel_upload_cancels_and_tells_the_backend(server):
    ticket = server.new_upload(backendSecret=SECRET)
    answer = server.post("cancel_upload", data={"id": ticket, "backendSecret": SECRET})
    assert_ok(answer)
    assert server.registry.get(ticket).state == "cancelled"
    (call,) = server.backend.calls
    assert call["id"] == ticket
    assert call["backendSecret"] == SECRET
    assert call["cancelled"] == "yes"
    assert call["filename"] == ""
    assert call["cancelReason"]


def test_cancel_upload_with_parameters_in_the_query_string(server):
    ticket = server.new_upload(backendSecret=SECRET)
    assert_ok(server.post("cancel_upload", params={"id": ticket, "backendSecret": SECRET}))
    assert server.registry.get(ticket).state == "cancelled"


def test_cancel_upload_without_secret_when_none_was_set(server):
    ticket = server.new_upload()
    assert_ok(server.post("cancel_upload", data={"id": ticket}))
    assert server.registry.get(ticket).state == "cancelled"


def test_cancel_upload_tells_a_connected_browser(server):
    ticket = server.new_upload()
    upload = server.registry.get(ticket)
    channel = FakeChannel()
    upload.connect(channel, 100, "big.iso")
    upload.receive(channel, b"x" * 10)
    assert_ok(server.post("cancel_upload", data={"id": ticket}))
    assert upload.state == "cancelled"
    assert any(event[0] in ("cancelled", "error") for event in channel.events), channel.events


@pytest.mark.parametrize("given", ["", "wrong", SECRET + "x", SECRET.upper()])
def test_cancel_upload_with_wrong_secret_is_403_and_does_not_cancel(server, given):
    ticket = server.new_upload(backendSecret=SECRET)
    answer = server.post("cancel_upload", data={"id": ticket, "backendSecret": given})
    assert_error(answer, 403)
    assert SECRET not in answer.text
    assert server.registry.get(ticket).state == "created"
    assert server.backend.calls == []


def test_cancel_upload_with_a_secret_when_none_was_set_is_403(server):
    ticket = server.new_upload()
    answer = server.post("cancel_upload", data={"id": ticket, "backendSecret": "guess"})
    assert_error(answer, 403)
    assert server.registry.get(ticket).state == "created"


def test_cancel_upload_without_id_is_400(server):
    server.new_upload()
    assert_error(server.post("cancel_upload", data={"backendSecret": SECRET}), 400)
    assert_error(server.post("cancel_upload", data={"id": ""}), 400)


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "1234", "../../etc/passwd", "{}"])
def test_cancel_upload_with_malformed_id_is_400(server, bad_id):
    assert_error(server.post("cancel_upload", data={"id": bad_id}), 400)


def test_cancel_upload_of_unknown_ticket_is_404(server):
    server.new_upload()
    assert_error(server.post("cancel_upload", data={"id": str(uuid.uuid4())}), 404)


def test_cancel_upload_during_handover_is_412_and_handover_goes_on(server):
    ticket = server.new_upload(backendSecret=SECRET)
    server.backend.answer = "hang"
    server.upload_file(ticket)
    upload = server.registry.get(ticket)
    assert upload.state == "handing_over"
    assert len(server.backend.handovers()) == 1

    answer = server.post("cancel_upload", data={"id": ticket, "backendSecret": SECRET})
    assert_error(answer, 412)
    assert upload.state == "handing_over"
    assert server.backend.cancellations() == []


def test_cancel_upload_while_waiting_for_finish_is_412(server):
    ticket = server.new_upload()
    server.backend.answer = "wait"
    server.upload_file(ticket)
    upload = server.registry.get(ticket)
    assert upload.state == "waiting_for_finish"
    assert_error(server.post("cancel_upload", data={"id": ticket}), 412)
    assert upload.state == "waiting_for_finish"


def test_cancel_upload_after_it_finished_is_412(server):
    ticket = server.new_upload()
    server.upload_file(ticket)
    assert server.registry.get(ticket).state == "finished"
    assert_error(server.post("cancel_upload", data={"id": ticket}), 412)
    assert server.registry.get(ticket).state == "finished"


def test_cancel_upload_twice_is_200_and_backend_is_told_once(server):
    ticket = server.new_upload(backendSecret=SECRET)
    params = {"id": ticket, "backendSecret": SECRET}
    assert_ok(server.post("cancel_upload", data=params))
    assert_ok(server.post("cancel_upload", data=params))
    assert server.registry.get(ticket).state == "cancelled"
    assert len(server.backend.cancellations()) == 1


def test_cancel_upload_accepts_id_in_other_uuid_spellings(server):
    ticket = server.new_upload()
    assert_ok(server.post("cancel_upload", data={"id": ticket.upper()}))
    assert server.registry.get(ticket).state == "cancelled"


# ---- finish_upload ----------------------------------------------------------


def test_finish_upload_when_nothing_waits_is_412(server):
    ticket = server.new_upload(backendSecret=SECRET)
    answer = server.post("finish_upload", data={"id": ticket, "backendSecret": SECRET})
    assert_error(answer, 412)
    assert server.registry.get(ticket).state == "created"


def test_finish_upload_after_done_is_412(server):
    ticket = server.new_upload()
    server.upload_file(ticket)
    assert server.registry.get(ticket).state == "finished"
    assert_error(server.post("finish_upload", data={"id": ticket}), 412)


def test_finish_upload_of_cancelled_upload_is_412(server):
    ticket = server.new_upload()
    assert_ok(server.post("cancel_upload", data={"id": ticket}))
    assert_error(server.post("finish_upload", data={"id": ticket}), 412)
    assert server.registry.get(ticket).state == "cancelled"


def test_finish_upload_with_wrong_secret_is_403_and_still_waits(server):
    ticket = server.new_upload(backendSecret=SECRET)
    server.backend.answer = "wait"
    channel = server.upload_file(ticket)
    upload = server.registry.get(ticket)
    assert upload.state == "waiting_for_finish"

    answer = server.post("finish_upload", data={"id": ticket, "backendSecret": "wrong"})
    assert_error(answer, 403)
    assert upload.state == "waiting_for_finish"
    assert ("all_done",) not in channel.events


def test_finish_upload_after_wait_finishes_the_upload(server):
    ticket = server.new_upload(backendSecret=SECRET)
    server.backend.answer = "wait"
    channel = server.upload_file(ticket)
    upload = server.registry.get(ticket)
    assert upload.state == "waiting_for_finish"
    (handover,) = server.backend.handovers()
    assert handover["id"] == ticket and handover["backendSecret"] == SECRET

    answer = server.post("finish_upload", data={"id": ticket, "backendSecret": SECRET})
    assert_ok(answer)
    assert upload.state == "finished"
    assert ("all_done",) in channel.events
    # A second finish is too late now.
    assert_error(
        server.post("finish_upload", data={"id": ticket, "backendSecret": SECRET}), 412
    )


def test_finish_upload_with_parameters_in_the_query_string(server):
    ticket = server.new_upload(backendSecret=SECRET)
    server.backend.answer = "wait"
    server.upload_file(ticket)
    assert_ok(server.post("finish_upload", params={"id": ticket, "backendSecret": SECRET}))
    assert server.registry.get(ticket).state == "finished"


def test_finish_upload_missing_malformed_unknown_id(server):
    assert_error(server.post("finish_upload", data={}), 400)
    assert_error(server.post("finish_upload", data={"id": "nope"}), 400)
    assert_error(server.post("finish_upload", data={"id": str(uuid.uuid4())}), 404)


# ---- wrong method -----------------------------------------------------------


@pytest.mark.parametrize("function", ["new_upload", "cancel_upload", "finish_upload"])
def test_get_is_405_with_allow_post(server, function):
    params = {"signalFinishURL": BACKEND_URL, "id": str(uuid.uuid4())}
    answer = server.request("GET", function, params=params)
    assert_error(answer, 405)
    assert answer.header("allow") == "POST"
    assert len(server.registry) == 0


# ---- calls from web pages ------------------------------------------------------


EVIL_PAGE = "https://evil.example"


def assert_refused_as_web_page(answer: Answer, marker: str) -> None:
    """403, saying why and which setting would allow it."""
    assert_error(answer, 403)
    assert "from a web page" in answer.text and marker in answer.text, answer
    assert "--backend-origins (BackendOrigins)" in answer.text, answer


def assert_nothing_created(server: Server) -> None:
    assert len(server.registry) == 0
    assert server.registry.open_count() == 0
    assert os.listdir(server.storage_dir) == [], "a record or file was stored"
    assert server.backend.calls == []


@pytest.mark.parametrize(
    "headers, marker",
    [
        # A form on another site, posted by a visitor's browser (no preflight).
        ({"Origin": EVIL_PAGE, "Sec-Fetch-Site": "cross-site"}, f"Origin '{EVIL_PAGE}'"),
        ({"Origin": EVIL_PAGE}, f"Origin '{EVIL_PAGE}'"),
        # A sandboxed frame or a file:// page.
        ({"Origin": "null"}, "Origin 'null'"),
        # The server's own origin, as a DNS-rebinding page has it.
        ({"Origin": "http://incoming.example"}, "Origin 'http://incoming.example'"),
        ({"Sec-Fetch-Site": "cross-site"}, "Sec-Fetch-Site 'cross-site'"),
        ({"Sec-Fetch-Site": "same-site"}, "Sec-Fetch-Site 'same-site'"),
        ({"Sec-Fetch-Site": "same-origin"}, "Sec-Fetch-Site 'same-origin'"),
    ],
)
def test_new_upload_from_a_web_page_is_403_and_creates_nothing(server, headers, marker):
    answer = server.post("new_upload", data={"signalFinishURL": BACKEND_URL}, headers=headers)
    assert_refused_as_web_page(answer, marker)
    assert_nothing_created(server)


@pytest.mark.parametrize("function", ["cancel_upload", "finish_upload"])
def test_cancel_and_finish_from_a_web_page_are_403_and_change_nothing(server, function):
    ticket = server.new_upload(backendSecret=SECRET)
    server.backend.answer = "wait"
    if function == "finish_upload":
        server.upload_file(ticket)
    state = server.registry.get(ticket).state
    calls = list(server.backend.calls)
    answer = server.post(
        function, data={"id": ticket, "backendSecret": SECRET}, headers={"Origin": EVIL_PAGE}
    )
    assert_refused_as_web_page(answer, f"Origin '{EVIL_PAGE}'")
    assert server.registry.get(ticket).state == state
    assert server.backend.calls == calls


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Sec-Fetch-Site": "none"},  # typed by the user: no page asked for it
        {"Sec-Fetch-Mode": "cors"},  # what Node's fetch sends from a backend
    ],
)
def test_calls_without_browser_markers_are_answered_as_before(server, headers):
    answer = server.post("new_upload", data={"signalFinishURL": BACKEND_URL}, headers=headers)
    assert answer.code == 200, answer
    assert server.registry.get(answer.text) is not None


@pytest.mark.parametrize(
    "origin", ["https://admin.example.com", "https://uploads.example.org"]
)
def test_a_listed_origin_may_call_the_backend_api(tmp_path, origin):
    server = Server(
        tmp_path, backend_origins=("https://admin.example.com", "https://*.example.org")
    )
    headers = {"Origin": origin, "Sec-Fetch-Site": "cross-site"}
    answer = server.post("new_upload", data={"signalFinishURL": BACKEND_URL}, headers=headers)
    assert answer.code == 200, answer
    assert_ok(server.post("cancel_upload", data={"id": answer.text}, headers=headers))
    assert server.registry.get(answer.text).state == "cancelled"


def test_an_unlisted_origin_is_refused_when_others_are_listed(tmp_path):
    server = Server(tmp_path, backend_origins=("https://*.example.org",))
    for origin in ("https://example.org", "http://app.example.org", "https://example.org.evil"):
        answer = server.post(
            "new_upload", data={"signalFinishURL": BACKEND_URL}, headers={"Origin": origin}
        )
        assert_refused_as_web_page(answer, f"Origin '{origin}'")
    assert_nothing_created(server)


def test_a_refused_web_page_call_is_logged_with_its_origin_cut_short(server, log_events):
    origin = "https://" + "a" * 500 + ".example"
    answer = server.post(
        "new_upload", data={"signalFinishURL": BACKEND_URL}, headers={"Origin": origin}
    )
    assert_error(answer, 403)
    assert origin not in answer.text  # cut short in the answer too
    texts = [formatEvent(e) for e in log_events]
    refusals = [t for t in texts if "refused a call from a web page" in t]
    assert len(refusals) == 1, texts
    assert "https://aaaa" in refusals[0] and origin not in refusals[0]


# ---- secrets stay out of the logs --------------------------------------------


@pytest.fixture
def log_events():
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def event_text(event) -> str:
    """Everything an observer could write for one event."""
    parts = [formatEvent(event)]
    parts += [repr(value) for key, value in event.items() if key != "log_logger"]
    return "\n".join(parts)


def test_secrets_are_not_logged(server, log_events):
    ticket = server.new_upload(backendSecret=SECRET, removeFileWhenFinished="false")
    # A wrong guess is a secret too (it may be a real one of another upload).
    guess = "Guessed-Secret-31337"
    assert_error(server.post("cancel_upload", data={"id": ticket, "backendSecret": guess}), 403)
    assert_ok(server.post("cancel_upload", params={"id": ticket, "backendSecret": SECRET}))
    other = server.new_upload(backendSecret=SECRET)
    server.backend.answer = "wait"
    server.upload_file(other)
    assert_ok(server.post("finish_upload", data={"id": other, "backendSecret": SECRET}))

    texts = [event_text(e) for e in log_events]
    assert any(ticket in t for t in texts), "expected the server to log the upload at all"
    for text in texts:
        assert SECRET not in text
        assert guess not in text


def raw_request(site, clock, target: str) -> bytes:
    """One HTTP/1.1 request through the Site itself; the raw response."""
    site.reactor = clock  # the channel's timeouts go on the test clock
    transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 50000))
    channel = site.buildProtocol(transport.getPeer())
    channel.makeConnection(transport)
    channel.dataReceived(
        f"POST {target} HTTP/1.1\r\n"
        "Host: incoming.example\r\n"
        "Content-Length: 0\r\n"
        "Connection: close\r\n"
        "\r\n".encode("ascii")
    )
    return transport.value()


def test_access_log_does_not_contain_secrets_from_the_query_string(server):
    access_log = io.StringIO()
    server.site.logFile = access_log
    url = quote(BACKEND_URL, safe="")
    response = raw_request(
        server.site,
        server.clock,
        f"/incoming/0.1/backend/new_upload?signalFinishURL={url}&backendSecret={SECRET}",
    )
    assert response.startswith(b"HTTP/1.1 200"), response
    ticket = response.split(b"\r\n\r\n", 1)[1].decode().strip()
    assert server.registry.get(ticket).ticket.backend_secret == SECRET

    response = raw_request(
        server.site,
        server.clock,
        f"/incoming/0.1/backend/cancel_upload?id={ticket}&backendSecret={SECRET}",
    )
    assert response.startswith(b"HTTP/1.1 200"), response

    lines = access_log.getvalue().splitlines()
    assert len(lines) == 2, lines  # one line per request is still written
    assert "/incoming/0.1/backend/new_upload" in lines[0]
    assert "/incoming/0.1/backend/cancel_upload" in lines[1]
    assert SECRET not in access_log.getvalue()
