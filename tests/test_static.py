"""Serving incoming.js and the other browser files (incoming.static).

In memory with treq's StubTreq against the real resource tree, except the
last test, which asks the installed ``twistd incoming`` in a subprocess (run
from an empty folder, so only the installed package can answer).
"""

from __future__ import annotations

import hashlib
import os

import pytest
import pytest_twisted
import treq
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.http import datetimeToString
from twisted.web.resource import Resource
from twisted.web.server import Site

from incoming import static
from incoming.config import Settings
from incoming.static import FileCache, StaticFile, StaticFolder
from incoming.web import make_site
from fakes import fired

JS = "http://incoming.example/incoming/0.1/frontend/incoming.js"
DTS = "http://incoming.example/incoming/0.1/frontend/incoming.d.ts"
REPO_FRONTEND = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "frontend")
# A fixed modification time: Sun, 06 Nov 1994 08:49:37 GMT.
MTIME = 784111777


class Answer:
    def __init__(self, response, body: bytes):
        self.code = response.code
        self.headers = response.headers
        self.length = response.length  # the client takes Content-Length out
        self.body = body

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    def __repr__(self):
        return f"<{self.code} {self.header('content-type')} {self.body[:60]!r}>"


class Client:
    """A browser against a resource, in memory."""

    def __init__(self, resource):
        self._stub = StubTreq(resource)

    def request(self, method: str, url: str, **headers) -> Answer:
        wire_headers = {k.replace("_", "-"): [v] for k, v in headers.items()}
        response = fired(self._stub.request(method, url, headers=wire_headers,
                                            allow_redirects=False))
        return Answer(response, fired(response.content()))

    def get(self, url: str, **headers) -> Answer:
        return self.request("GET", url, **headers)


@pytest.fixture
def site_client(tmp_path):
    site, _registry = make_site(
        Settings(storage_dir=str(tmp_path / "storage")), Clock(), StubTreq(Resource()))
    return Client(site.resource)


@pytest.fixture
def folder(tmp_path):
    """A frontend folder of our own, with files of known content and age."""
    base = tmp_path / "frontend"
    base.mkdir()
    (base / "incoming.js").write_text("var incoming = {};\n")
    (base / "incoming.d.ts").write_text("export {};\n")
    (base / "page.html").write_text("<!doctype html><title>t</title>\n")
    (base / "notes.txt").write_text("not served\n")
    for name in os.listdir(base):
        os.utime(base / name, (MTIME, MTIME))
    return base


@pytest.fixture
def client(folder):
    root = Resource()
    root.putChild(b"f", StaticFolder(folder, FileCache(), index="page.html"))
    return Client(root)


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


# ---- the library, from the real tree ----------------------------------------


def test_incoming_js_is_served_from_the_frontend_folder(site_client):
    answer = site_client.get(JS)
    assert answer.code == 200, answer
    assert answer.header("content-type") == "application/javascript; charset=utf-8"
    expected = open(os.path.join(static.frontend_dir(), "incoming.js"), "rb").read()
    assert answer.body == expected
    assert answer.header("etag") == etag_of(expected)
    mtime = int(os.path.getmtime(os.path.join(static.frontend_dir(), "incoming.js")))
    assert answer.header("last-modified") == datetimeToString(mtime).decode()
    assert answer.header("cache-control") == "no-cache"
    assert answer.header("x-content-type-options") == "nosniff"


def test_the_checkout_serves_the_repository_frontend_folder():
    # Tests run from the source tree: no installed copy may shadow it.
    assert os.path.samefile(static.frontend_dir(), REPO_FRONTEND)


def test_type_declarations_are_served(site_client):
    answer = site_client.get(DTS)
    assert answer.code == 200, answer
    assert answer.header("content-type") == "application/typescript; charset=utf-8"
    assert answer.body == open(os.path.join(REPO_FRONTEND, "incoming.d.ts"), "rb").read()


def test_the_module_entry_is_served_for_pages_of_any_origin(site_client):
    """incoming.mjs: a JavaScript type (browsers refuse a module script of
    another), and readable by pages of other origins (module scripts are
    fetched with CORS), as the library files all are."""
    answer = site_client.get(JS.replace("incoming.js", "incoming.mjs"))
    assert answer.code == 200, answer
    assert answer.header("content-type") == "application/javascript; charset=utf-8"
    assert answer.body == open(os.path.join(REPO_FRONTEND, "incoming.mjs"), "rb").read()
    assert b'import "./incoming.js"' in answer.body
    for path in (JS, DTS, JS.replace("incoming.js", "incoming.mjs")):
        assert site_client.get(path).header("access-control-allow-origin") == "*", path


def test_incoming_js_revalidates_to_304(site_client):
    first = site_client.get(JS)
    again = site_client.get(JS, if_none_match=first.header("etag"))
    assert again.code == 304
    assert again.body == b""
    assert again.header("etag") == first.header("etag")


def test_nothing_else_is_served_beside_the_library(site_client):
    assert site_client.get(JS.replace("incoming.js", "incoming.py")).code == 404
    assert site_client.get(JS + "/x").code == 404
    assert site_client.get("http://incoming.example/demo/").code == 404  # demo is off


# ---- conditional requests -----------------------------------------------------


def test_etag_and_last_modified(client, folder):
    answer = client.get("http://x/f/incoming.js")
    assert answer.code == 200
    assert answer.body == b"var incoming = {};\n"
    assert answer.header("etag") == etag_of(answer.body)
    assert answer.header("last-modified") == "Sun, 06 Nov 1994 08:49:37 GMT"
    assert answer.header("cache-control") == "no-cache"
    assert answer.length == len(answer.body)


@pytest.mark.parametrize("header", [
    "{etag}",
    "W/{etag}",
    '"other", {etag}',
    "*",
])
def test_if_none_match_that_matches_is_304(client, header):
    etag = client.get("http://x/f/incoming.js").header("etag")
    answer = client.get("http://x/f/incoming.js", if_none_match=header.format(etag=etag))
    assert answer.code == 304, answer
    assert answer.body == b""
    assert answer.header("etag") == etag
    assert answer.header("last-modified") == "Sun, 06 Nov 1994 08:49:37 GMT"
    assert answer.header("cache-control") == "no-cache"


def test_a_304_on_the_wire_has_no_content_length(folder):
    """Not a misleading "Content-Length: 0" (RFC 9110 8.6)."""
    root = Resource()
    root.putChild(b"f", StaticFolder(folder, FileCache()))
    etag = etag_of(b"var incoming = {};\n")
    protocol = Site(root).buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(
        b"GET /f/incoming.js HTTP/1.1\r\nHost: x\r\nIf-None-Match: "
        + etag.encode() + b"\r\n\r\n")
    head = transport.value().decode("latin-1").lower()
    assert head.startswith("http/1.1 304 "), head
    assert "content-length" not in head
    assert "transfer-encoding" not in head
    assert head.endswith("\r\n\r\n")
    protocol.connectionLost(None)


def test_if_none_match_that_differs_is_200_whatever_if_modified_since_says(client):
    answer = client.get("http://x/f/incoming.js", if_none_match='"stale"',
                        if_modified_since="Sun, 06 Nov 1994 08:49:37 GMT")
    assert answer.code == 200
    assert answer.body == b"var incoming = {};\n"


@pytest.mark.parametrize("since, code", [
    ("Sun, 06 Nov 1994 08:49:37 GMT", 304),  # the same second
    ("Mon, 07 Nov 1994 00:00:00 GMT", 304),  # later
    ("Sun, 06 Nov 1994 08:49:36 GMT", 200),  # a second earlier
    ("yesterday-ish", 200),  # unreadable: ignored
])
def test_if_modified_since(client, since, code):
    answer = client.get("http://x/f/incoming.js", if_modified_since=since)
    assert answer.code == code, answer
    if code == 304:
        assert answer.body == b""


def test_a_changed_file_gets_a_new_etag(client, folder):
    etag = client.get("http://x/f/incoming.js").header("etag")
    (folder / "incoming.js").write_text("var incoming = {v: 2};\n")
    os.utime(folder / "incoming.js", (MTIME + 60, MTIME + 60))
    answer = client.get("http://x/f/incoming.js", if_none_match=etag)
    assert answer.code == 200
    assert answer.body == b"var incoming = {v: 2};\n"
    assert answer.header("etag") == etag_of(answer.body) != etag


def test_head_has_the_headers_and_no_body(client):
    answer = client.request("HEAD", "http://x/f/incoming.js")
    assert answer.code == 200
    assert answer.body == b""
    assert answer.header("content-length") == str(len(b"var incoming = {};\n"))
    assert answer.header("content-type") == "application/javascript; charset=utf-8"
    assert answer.header("etag") is not None


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_other_methods_are_405_in_plain_text(client, method):
    answer = client.request(method, "http://x/f/incoming.js")
    assert answer.code == 405, answer
    assert answer.header("content-type") == "text/plain; charset=utf-8"
    assert answer.header("allow") == "GET, HEAD"
    assert method.encode() in answer.body


# ---- content types and names ------------------------------------------------------


@pytest.mark.parametrize("name, content_type", [
    ("incoming.js", "application/javascript; charset=utf-8"),
    ("incoming.d.ts", "application/typescript; charset=utf-8"),
    ("page.html", "text/html; charset=utf-8"),
])
def test_content_types(client, name, content_type):
    answer = client.get(f"http://x/f/{name}")
    assert answer.code == 200
    assert answer.header("content-type") == content_type


def test_the_folder_index_and_the_trailing_slash(client):
    answer = client.get("http://x/f/")
    assert answer.code == 200
    assert answer.body.startswith(b"<!doctype html>")
    redirect = client.get("http://x/f")
    assert redirect.code == 301
    assert redirect.header("location") == "/f/"


@pytest.mark.parametrize("path", [
    "notes.txt",  # a type we do not serve
    "missing.js",
    ".hidden.js",
    "..%2F..%2Fetc%2Fpasswd.js",
    "sub/incoming.js",
    "incoming.js/",
])
def test_what_is_not_served_is_404(client, folder, path):
    (folder / ".hidden.js").write_text("secret")
    answer = client.get(f"http://x/f/{path}")
    assert answer.code == 404, answer
    assert answer.header("content-type") == "text/plain; charset=utf-8"


def test_a_file_that_disappears_is_404(client, folder):
    assert client.get("http://x/f/incoming.js").code == 200
    (folder / "incoming.js").unlink()
    assert client.get("http://x/f/incoming.js").code == 404


def test_files_are_found_next_to_the_package_when_installed(tmp_path, monkeypatch):
    """An installed package has incoming/frontend/; a checkout has ../frontend."""
    package = tmp_path / "incoming"
    (package / "frontend").mkdir(parents=True)

    class Files:
        def joinpath(self, name):
            return package / name

    monkeypatch.setattr(static.importlib.resources, "files", lambda name: Files())
    assert static.frontend_dir() == package / "frontend"


def test_static_file_outside_a_folder(folder):
    root = Resource()
    root.putChild(b"lib.js", StaticFile(folder / "incoming.js", FileCache()))
    assert Client(root).get("http://x/lib.js").body == b"var incoming = {};\n"


# ---- the installed server ---------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_installed_twistd_serves_incoming_js(tmp_path):
    """After `pip install .` the library ships inside the package."""
    from test_twistd import TwistdServer

    server = TwistdServer(tmp_path)
    try:
        await server.ready()
        base = f"http://127.0.0.1:{server.port}"
        response = await treq.get(base + "/incoming/0.1/frontend/incoming.js")
        body = await response.content()
        assert response.code == 200
        assert response.headers.getRawHeaders("content-type") == [
            "application/javascript; charset=utf-8"]
        assert body == open(os.path.join(REPO_FRONTEND, "incoming.js"), "rb").read()
        etag = response.headers.getRawHeaders("etag")[0]
        again = await treq.get(base + "/incoming/0.1/frontend/incoming.js",
                               headers={"If-None-Match": etag})
        await again.content()
        assert again.code == 304
        dts = await treq.get(base + "/incoming/0.1/frontend/incoming.d.ts")
        await dts.content()
        assert dts.code == 200
        module = await treq.get(base + "/incoming/0.1/frontend/incoming.mjs")
        assert await module.content() == open(os.path.join(REPO_FRONTEND, "incoming.mjs"), "rb").read()
        demo = await treq.get(base + "/demo/")
        await demo.content()
        assert demo.code == 404  # --demo is off by default
    finally:
        await server.stop()
