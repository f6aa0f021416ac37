"""The --demo web app (incoming.demo): tickets, handovers answered done and
wait in turn, finish_upload after the delay, sha256 and cancellations in
the files list.

The server is built by ``make_site(..., demo=True)`` with a Clock, a
``run_blocking`` that runs work in the test's thread (or holds the hashing
until the test says), and two StubTreqs: the browser's, and the server's own HTTP client,
which reaches the demo's handover URL through the same resource tree.  The
browser's WebSocket is played by a fake channel on the registry's upload.
No reactor, no sleeping; the last two tests use real processes and ports.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid

import pytest
import pytest_twisted
import treq
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.resource import Resource

from fakes import FakeChannel
from incoming import demo
from incoming.config import Settings
from incoming.storage_pool import StoragePool
from incoming.tap import Options
from incoming.web import make_site
from test_protocol import wait_until
from wsclient import upload as ws_upload

PAGE = "http://demo.example:8080/demo/"
API = PAGE + "api/"


# ---- fakes ------------------------------------------------------------------


class Worker:
    """The server's ``run_blocking``: runs work at once, except that it holds
    the demo's hashing while ``held`` (until run() is called)."""

    def __init__(self):
        self.held = False
        self.waiting = []

    def __call__(self, f, *args):
        d = Deferred()
        self.waiting.append((d, f, args))
        if not (self.held and f is demo.file_sha256):
            self.run(only=self.waiting[-1])
        return d

    def run(self, only=None):
        for item in [only] if only else list(self.waiting):
            self.waiting.remove(item)
            d, f, args = item
            maybeDeferred(f, *args).chainDeferred(d)


def fired(d):
    results = []
    d.addBoth(results.append)
    assert results, "the request did not complete synchronously"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


class Answer:
    def __init__(self, response, body: bytes):
        self.code = response.code
        self.headers = response.headers
        self.body = body

    def header(self, name):
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    def json(self):
        assert self.header("content-type") == "application/json; charset=utf-8", self
        return json.loads(self.body)

    def __repr__(self):
        return f"<{self.code} {self.header('content-type')} {self.body[:80]!r}>"


class DemoServer:
    def __init__(self, tmp_path, demo_on=True, **settings):
        self.clock = Clock()
        self.worker = Worker()
        self.settings = Settings(storage_dir=str(tmp_path / "storage"), chunk_size_kb=1,
                                 **settings)
        self.storage = tmp_path / "storage"
        tree = Resource()  # filled below: the server's client reaches its own tree
        self.server_http = StubTreq(tree)
        self.site, self.registry = make_site(
            self.settings, self.clock, self.server_http, demo=demo_on,
            run_blocking=self.worker)
        tree.children.update(self.site.resource.children)
        self.browser = StubTreq(self.site.resource)

    def request(self, method, url, **kwargs) -> Answer:
        response = fired(self.browser.request(method, url, allow_redirects=False, **kwargs))
        return Answer(response, fired(response.content()))

    def ticket(self) -> str:
        answer = self.request("POST", API + "ticket")
        assert answer.code == 200, answer
        return answer.json()["id"]

    def files(self) -> list[dict]:
        answer = self.request("GET", API + "files")
        assert answer.code == 200, answer
        return answer.json()["files"]

    def record(self, ticket) -> dict:
        (found,) = [f for f in self.files() if f["id"] == ticket]
        return found

    def send(self, ticket, data: bytes, name="photo.jpg", upto=None) -> FakeChannel:
        """Play a browser that sends the file (or its first ``upto`` bytes)."""
        upload = self.registry.get(ticket)
        channel = FakeChannel()
        upload.connect(channel, len(data), name)
        end = len(data) if upto is None else upto
        for pos in range(0, end, self.settings.chunk_size):
            upload.receive(channel, data[pos:min(end, pos + self.settings.chunk_size)])
        self.server_http.flush()
        return channel

    def left_behind(self, *tickets) -> list[str]:
        """The uploads' files still in the storage folder."""
        return [name for ticket in tickets for name in (ticket, ticket + ".part")
                if (self.storage / name).exists()]


@pytest.fixture
def server(tmp_path):
    return DemoServer(tmp_path)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- on and off ---------------------------------------------------------------


def test_demo_is_off_by_default(tmp_path):
    server = DemoServer(tmp_path, demo_on=False)
    assert server.request("GET", PAGE).code == 404
    assert server.request("POST", API + "ticket").code == 404
    assert server.request("GET", API + "files").code == 404


def test_the_demo_flag(tmp_path):
    options = Options()
    options.parseOptions(["--storage-dir", str(tmp_path / "s")])
    assert not options["demo"]
    options = Options()
    options.parseOptions(["--storage-dir", str(tmp_path / "s"), "--demo"])
    assert options["demo"]
    assert "--demo" in str(options)


def test_the_page_and_its_files(server):
    page = server.request("GET", PAGE)
    assert page.code == 200, page
    assert page.header("content-type") == "text/html; charset=utf-8"
    assert b'src="/incoming/0.1/frontend/incoming.js"' in page.body
    assert b'type="file" multiple' in page.body
    for name, content_type in [("demo.js", "application/javascript; charset=utf-8"),
                               ("demo.css", "text/css; charset=utf-8"),
                               ("index.html", "text/html; charset=utf-8")]:
        answer = server.request("GET", PAGE + name)
        assert answer.code == 200, (name, answer)
        assert answer.header("content-type") == content_type
        assert answer.header("etag")
    assert server.request("GET", PAGE[:-1]).header("location") == "/demo/"
    assert server.request("GET", PAGE + "../setup.py").code == 404


# ---- tickets --------------------------------------------------------------------


def test_demo_tickets_follow_finish_url_hosts(tmp_path):
    """The page's Host header names the handover URL; --finish-url-hosts
    bounds it as it bounds new_upload's signalFinishURL."""
    server = DemoServer(tmp_path / "allowed", finish_url_hosts=("demo.example",))
    assert server.registry.get(server.ticket()) is not None
    server = DemoServer(tmp_path / "refused", finish_url_hosts=("backend.example",))
    answer = server.request("POST", API + "ticket")
    assert answer.code == 400, answer
    assert answer.body == (b"signalFinishURL host 'demo.example' is not in "
                           b"--finish-url-hosts (FinishURLHosts)\n")
    assert len(server.registry) == 0


def test_a_ticket_hands_over_to_the_demo_on_the_host_the_browser_used(server):
    ticket = server.ticket()
    assert str(uuid.UUID(ticket)) == ticket
    upload = server.registry.get(ticket)
    assert upload.ticket.signal_finish_url == "http://demo.example:8080/demo/api/handover"
    assert len(upload.ticket.backend_secret) >= 16
    assert upload.ticket.remove_file_when_finished is True
    assert server.ticket() != ticket


def test_ticket_and_files_methods(server):
    answer = server.request("GET", API + "ticket")
    assert answer.code == 405
    assert answer.header("allow") == "POST"
    assert answer.header("content-type") == "text/plain; charset=utf-8"
    answer = server.request("POST", API + "files")
    assert answer.code == 405
    assert answer.header("allow") == "GET"
    assert server.request("GET", API + "handover").code == 405


# ---- handovers ------------------------------------------------------------------


def test_handovers_alternate_done_and_wait_then_finish_after_the_delay(server):
    first, second, third = os.urandom(3000), os.urandom(2500), b"third file"

    ticket1 = server.ticket()
    channel1 = server.send(ticket1, first, name="first.bin")
    assert channel1.done  # done: finished at once
    assert server.record(ticket1) == {
        "id": ticket1, "name": "first.bin", "size": 3000, "sha256": sha256(first),
        "server_sha256": sha256(first),  # sent by the server; the page compares them
        "outcome": "done", "reason": "",
    }

    ticket2 = server.ticket()
    channel2 = server.send(ticket2, second, name="second.bin")
    assert not channel2.done  # wait: the browser waits for finish_upload
    assert server.registry.get(ticket2).state == "waiting_for_finish"
    record = server.record(ticket2)
    assert record["outcome"] == "wait"
    assert record["sha256"] == sha256(second)  # hashed while it waits
    server.clock.advance(demo.FINISH_DELAY - 0.1)
    assert not channel2.done
    server.clock.advance(0.1)
    assert channel2.done
    assert server.registry.get(ticket2).state == "finished"
    assert server.record(ticket2)["outcome"] == "wait+finish"

    ticket3 = server.ticket()
    assert server.send(ticket3, third).done  # done again
    assert server.record(ticket3)["outcome"] == "done"
    assert [f["id"] for f in server.files()] == [ticket1, ticket2, ticket3]
    assert server.left_behind(ticket1, ticket2, ticket3) == []


def test_done_is_answered_only_after_the_hash(server):
    server.worker.held = True
    ticket = server.ticket()
    channel = server.send(ticket, b"x" * 1500)
    assert not channel.done
    assert server.registry.get(ticket).state == "handing_over"
    assert server.record(ticket)["outcome"] == "handover"
    assert server.left_behind(ticket) == [ticket]  # still there to be hashed
    server.worker.run()
    server.server_http.flush()
    assert channel.done
    assert server.record(ticket)["sha256"] == sha256(b"x" * 1500)
    assert server.left_behind(ticket) == []


def test_finish_after_wait_also_waits_for_the_hash(server):
    server.send(server.ticket(), b"first")  # done
    server.worker.held = True
    ticket = server.ticket()
    channel = server.send(ticket, b"second")  # wait, answered at once
    assert server.registry.get(ticket).state == "waiting_for_finish"
    server.clock.advance(demo.FINISH_DELAY + 1)
    assert not channel.done
    server.worker.run()
    assert channel.done
    assert server.record(ticket)["outcome"] == "wait+finish"


def test_a_file_that_cannot_be_read_is_noted(server):
    ticket = server.ticket()
    secret = server.registry.get(ticket).ticket.backend_secret
    answer = server.request("POST", API + "handover", data={
        "id": ticket, "backendSecret": secret, "filename": "/nonexistent/file",
        "filenameFromBrowser": "ghost.txt", "cancelled": "no", "cancelReason": "",
    })
    assert answer.code == 200
    assert answer.body == b"done"
    record = server.record(ticket)
    assert record["sha256"] is None
    assert record["reason"].startswith("could not read the file")


def test_handovers_need_the_ticket_secret(server):
    ticket = server.ticket()
    fields = {"id": ticket, "backendSecret": "guess", "filename": "/etc/passwd",
              "filenameFromBrowser": "x", "cancelled": "no", "cancelReason": ""}
    answer = server.request("POST", API + "handover", data=fields)
    assert answer.code == 403, answer
    assert answer.header("content-type") == "text/plain; charset=utf-8"
    fields.update(id=str(uuid.uuid4()))
    assert server.request("POST", API + "handover", data=fields).code == 403
    assert server.files() == []


# ---- cancellations --------------------------------------------------------------


def test_a_cancellation_is_recorded_with_its_reason(server):
    ticket = server.ticket()
    data = os.urandom(5000)
    channel = server.send(ticket, data, name="big.iso", upto=2048)
    server.registry.get(ticket).cancel_from_browser(channel, "user changed their mind")
    server.server_http.flush()
    assert ("cancel_ack",) in channel.events
    assert server.record(ticket) == {
        "id": ticket, "name": "big.iso", "size": 5000, "sha256": None,
        "server_sha256": None, "outcome": "cancelled", "reason": "user changed their mind",
    }
    assert server.left_behind(ticket) == []


def test_a_failed_finish_is_recorded_as_the_cancellation_it_becomes(tmp_path):
    server = DemoServer(tmp_path)
    server.send(server.ticket(), b"first")  # done
    server.worker.held = True  # the hash outlasts the confirm timeout
    ticket = server.ticket()
    channel = server.send(ticket, b"second")
    server.clock.advance(server.settings.handover_confirm_timeout + 1)
    server.server_http.flush()
    assert channel.events[-1][:2] == ("error", 7)  # HANDOVER_FAILED
    server.worker.run()
    record = server.record(ticket)
    assert record["outcome"] == "cancelled"
    assert record["reason"] == "backend did not call finish_upload within 600 s"
    assert server.left_behind(ticket) == []


def test_files_answer_is_json_that_is_not_cached(server):
    answer = server.request("GET", API + "files")
    assert answer.code == 200
    assert answer.header("cache-control") == "no-store"
    assert answer.json() == {"files": []}


def test_the_list_keeps_the_latest_files(server, monkeypatch):
    monkeypatch.setattr(demo, "MAX_RECORDS", 3)
    tickets = [server.ticket() for _ in range(5)]
    for ticket in tickets:
        server.send(ticket, b"data")
        server.clock.advance(demo.FINISH_DELAY)
    assert [f["id"] for f in server.files()] == tickets[2:]


# ---- for real: a port, threads, a subprocess ---------------------------------------


@pytest_twisted.ensureDeferred
async def test_upload_through_the_demo_with_real_threads(tmp_path):
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=False)
    http = HTTPClient(Agent(reactor, pool=pool))
    settings = Settings(storage_dir=str(tmp_path / "storage"), chunk_size_kb=64)
    storage_pool = StoragePool(reactor)
    storage_pool.startService()
    site, registry = make_site(settings, reactor, http, demo=True, run_blocking=storage_pool.run)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    base = f"http://127.0.0.1:{port.getHost().port}/demo/api/"
    try:
        response = await http.post(base + "ticket")
        ticket = (await response.json())["id"]
        data = os.urandom(300 * 1024 + 7)
        outcome = await ws_upload(port.getHost().port, ticket, data=data)
        assert outcome.last()[0] == "MsgAllDone", outcome.messages
        response = await http.get(base + "files")
        (record,) = (await response.json())["files"]
        assert record["sha256"] == sha256(data)
        assert record["size"] == len(data)
        assert record["outcome"] == "done"
        # removed in a storage thread, just after the browser is told
        await wait_until(lambda: not os.path.exists(os.path.join(settings.storage_dir, ticket)))
    finally:
        await port.stopListening()
        await pool.closeCachedConnections()
        await storage_pool.stopService()


@pytest_twisted.ensureDeferred
async def test_installed_twistd_serves_the_demo(tmp_path):
    from test_twistd import TwistdServer

    server = TwistdServer(tmp_path, "--demo")
    try:
        await server.ready()
        base = f"http://127.0.0.1:{server.port}/demo/"
        page = await treq.get(base)
        body = await page.content()
        assert page.code == 200
        assert b"/incoming/0.1/frontend/incoming.js" in body
        response = await treq.post(base + "api/ticket")
        ticket = (await response.json())["id"]
        assert str(uuid.UUID(ticket)) == ticket
        outcome = await ws_upload(server.port, ticket, data=b"hello demo")
        assert outcome.last()[0] == "MsgAllDone", outcome.messages
        response = await treq.get(base + "api/files")
        (record,) = (await response.json())["files"]
        assert record["sha256"] == sha256(b"hello demo")
    finally:
        await server.stop()
    assert "demo: upload" in server.log()
