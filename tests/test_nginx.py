"""contrib/nginx/incoming.conf in a real nginx, in front of a real `twistd
incoming`: browsers upload through the public TLS block, the backend API is
refused there and served on the internal block to the app's network only.

The test runs the shipped file itself: only its example addresses, ports and
paths are swapped for free loopback ports and files under the test's tmp
folder (each swap must match, so a reshaped file fails here instead of being
tested half).  nginx runs in the foreground with its own prefix, pid file,
logs and temp folders.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.ssl import optionsForClientTLS
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

from test_tls import pki  # noqa: F401 (fixture: a test CA and a 127.0.0.1 certificate)
from test_twistd import TwistdServer, backend, free_port  # noqa: F401 (fixture)
from fakes import stored_records
from wsclient import upload

from incoming.config import Settings

SHIPPED = Path(__file__).resolve().parent.parent / "contrib" / "nginx" / "incoming.conf"
APP_ORIGIN = "https://app.example.com"
APP_SERVER = "127.0.0.2"  # the internal block's allow list, in the test


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    assert found, "nginx not found: install Debian's nginx package (scripts/test does)"
    return found


def site_config(folder: Path, upstream: int, public: int, internal: int, pki) -> str:  # noqa: F811
    """The shipped file with its example values swapped for the test's."""
    text = SHIPPED.read_text()
    swaps = [
        ("server 127.0.0.1:4000;", f"server 127.0.0.1:{upstream};", 1),
        ("listen 443 ssl;", f"listen 127.0.0.1:{public} ssl;", 1),
        ("listen 10.0.0.1:4001;", f"listen 127.0.0.1:{internal};", 1),
        ("allow 10.0.0.0/24;", f"allow {APP_SERVER};", 1),
        ("/etc/letsencrypt/live/uploads.example.com/fullchain.pem", pki.cert, 1),
        ("/etc/letsencrypt/live/uploads.example.com/privkey.pem", pki.key, 1),
        ("/var/cache/nginx-incoming", str(folder / "cache"), 1),
        ("/var/log/nginx/", f"{folder / 'logs'}/", 2),
    ]
    for old, new, count in swaps:
        assert text.count(old) == count, f"{SHIPPED} no longer has {count} x {old!r}"
        text = text.replace(old, new)
    return text


MAIN_CONFIG = """\
daemon off;
master_process on;
worker_processes 1;
{user}
pid {folder}/nginx.pid;
error_log {folder}/logs/error.log info;
events {{ worker_connections 256; }}
http {{
    client_body_temp_path {folder}/tmp/body;
    proxy_temp_path {folder}/tmp/proxy;
    fastcgi_temp_path {folder}/tmp/fastcgi;
    uwsgi_temp_path {folder}/tmp/uwsgi;
    scgi_temp_path {folder}/tmp/scgi;
    access_log off;
    include {folder}/incoming.conf;
}}
"""


def cluster_variant(text: str) -> str:
    """The file with its commented upstream for several servers in place of
    the one-server upstream."""
    single = re.findall(r"^upstream incoming_server \{\n.*?^\}\n", text, re.M | re.S)
    several = re.findall(r"^#upstream incoming_server \{\n.*?^#\}\n", text, re.M | re.S)
    assert len(single) == len(several) == 1, f"{SHIPPED} no longer has both upstream blocks"
    uncommented = re.sub(r"^#", "", several[0], flags=re.M)
    return text.replace(several[0], "").replace(single[0], uncommented)


def nginx_command(folder: Path, site: str) -> list[str]:
    """nginx -p <folder>, with ``site`` (a site config) in a minimal nginx.conf."""
    (folder / "logs").mkdir()
    (folder / "tmp").mkdir()
    (folder / "incoming.conf").write_text(site)
    # As root (CI) the workers would switch to "nobody", who cannot enter
    # the test's private tmp folder; as anyone else the directive is moot.
    user = "user root root;" if os.geteuid() == 0 else ""
    (folder / "nginx.conf").write_text(MAIN_CONFIG.format(folder=folder, user=user))
    return [nginx_binary(), "-p", str(folder), "-c", str(folder / "nginx.conf"),
            "-e", str(folder / "logs" / "error.log")]


def config_test(command: list[str]) -> subprocess.CompletedProcess:
    """nginx -t for that command's configuration."""
    return subprocess.run(command + ["-t"], capture_output=True, text=True, timeout=60)


def assert_config_passes(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
    assert "[warn]" not in result.stderr, result.stderr


class Proxy:
    """A proxy in the foreground, with a public (TLS) and an internal port
    on loopback; its output goes to <folder>/<name>.out."""

    name = "proxy"

    def __init__(self, folder: Path):
        self.folder = folder
        self.public = free_port()
        self.internal = free_port()
        while self.internal == self.public:
            self.internal = free_port()

    def start(self, command: list[str]) -> None:
        self._out = open(self.folder / f"{self.name}.out", "wb")
        self.process = subprocess.Popen(command, stdout=self._out, stderr=subprocess.STDOUT)

    def log(self) -> str:
        raise NotImplementedError

    def wait_listening(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        for port in (self.public, self.internal):
            while True:
                assert self.process.poll() is None, f"{self.name} exited: {self.log()}"
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        break
                assert time.monotonic() < deadline, f"{self.name} did not listen: {self.log()}"
                time.sleep(0.05)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # fast shutdown
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._out.close()
        return self.process.wait()

    def public_url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.public}{path}"

    def internal_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.internal}{path}"


class Nginx(Proxy):
    """nginx -p <folder>: the shipped site config in a minimal nginx.conf."""

    name = "nginx"

    def __init__(self, folder: Path, upstream: int, pki):  # noqa: F811
        super().__init__(folder)
        self.command = nginx_command(
            folder, site_config(folder, upstream, self.public, self.internal, pki))
        self.config_test = config_test(self.command)
        self.start(self.command)

    def log(self) -> str:
        texts = [self.config_test.stderr]
        for name in ("nginx.out", "logs/error.log"):
            path = self.folder / name
            if path.exists():
                texts.append(path.read_text(errors="replace"))
        return "\n".join(texts)

    def access_log(self, name: str) -> str:
        return (self.folder / "logs" / name).read_text()


def wait_until_listening(server: TwistdServer, timeout=30.0):
    """TwistdServer.ready(), blocking (for a module fixture)."""
    deadline = time.monotonic() + timeout
    while True:
        assert server.process.poll() is None, f"twistd exited: {server.log()}"
        if "; accepting connections on" in server.log():  # restored, accepting
            return
        assert time.monotonic() < deadline, f"twistd did not listen: {server.log()}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, pki):  # noqa: F811
    """twistd incoming on a loopback port, nginx in front of it."""
    app = TwistdServer(tmp_path_factory.mktemp("twistd"), "--allowed-origins", APP_ORIGIN, "--demo")
    proxy = None
    try:
        wait_until_listening(app)
        proxy = Nginx(tmp_path_factory.mktemp("nginx"), app.port, pki)
        proxy.wait_listening()
        yield app, proxy
    finally:
        if proxy is not None:
            code = proxy.stop()
            assert code == 0, proxy.log()
        app.process.send_signal(signal.SIGTERM)
        app.process.wait(30)
        app._log.close()
    errors = [line for line in proxy.log().splitlines()
              if re.search(r"\[(emerg|alert|crit)\]", line)]
    assert not errors, proxy.log()


@pytest_twisted.async_yield_fixture
async def browser(pki):  # noqa: F811
    """HTTPS from anywhere: trusts the test CA (as browsers trust a real one)."""
    pool = HTTPConnectionPool(reactor, persistent=False)
    yield HTTPClient(Agent(reactor, BrowserLikePolicyForHTTPS(pki.trust_root()), pool=pool))
    await pool.closeCachedConnections()


def http_from(address: str):
    pool = HTTPConnectionPool(reactor, persistent=False)
    return HTTPClient(Agent(reactor, pool=pool, bindAddress=(address, 0))), pool


@pytest_twisted.async_yield_fixture
async def app_server():
    """The web app's backend: a client on the internal block's allow list."""
    client, pool = http_from(APP_SERVER)
    yield client
    await pool.closeCachedConnections()


@pytest_twisted.async_yield_fixture
async def outsider():
    """Any other machine on the internal network (127.0.0.1 is not allowed)."""
    client, pool = http_from("127.0.0.1")
    yield client
    await pool.closeCachedConnections()


def is_ticket(text: str) -> bool:
    try:
        uuid.UUID(text)
        return True
    except ValueError:
        return False


def tickets(app: TwistdServer) -> set:
    """Every upload record the server keeps (its ticket log and .json files)."""
    return set(stored_records(app.storage))


def test_nginx_accepts_the_shipped_config_without_warnings(stack):
    _, proxy = stack
    assert_config_passes(proxy.config_test)


def test_nginx_accepts_the_upstream_for_several_servers(tmp_path, pki):  # noqa: F811
    """The commented upstream block, swapped in, with the same swaps."""
    site = cluster_variant(site_config(tmp_path, free_port(), free_port(), free_port(), pki))
    assert re.search(r"^upstream incoming_server \{\n(    server 127\.0\.0\.1:401[123];.*\n){3}\}",
                     site, re.M), site
    assert not re.search(r"^\s*(ip_hash|hash|sticky)\b", site, re.M)
    assert_config_passes(config_test(nginx_command(tmp_path, site)))


def test_websocket_timeouts_outlast_the_servers_websocket_timeout():
    """nginx must not cut a quiet upload before the server's own pings do."""
    block = re.search(r"location = /incoming/0\.1/frontend/upload_ws \{(.*?)\n    \}",
                      SHIPPED.read_text(), re.S).group(1)
    for directive in ("proxy_read_timeout", "proxy_send_timeout", "send_timeout"):
        seconds = int(re.search(rf"^\s*{directive} (\d+)s;", block, re.M).group(1))
        assert seconds > Settings().websocket_timeout, directive


@pytest_twisted.ensureDeferred
async def test_upload_through_the_public_block(stack, pki, app_server, browser, backend):  # noqa: F811
    app, proxy = stack
    response = await app_server.post(proxy.internal_url("/incoming/0.1/backend/new_upload"), data={
        "signalFinishURL": backend.url, "backendSecret": "s3cret",
        "removeFileWhenFinished": "false"})
    ticket = await response.text()
    assert response.code == 200 and is_ticket(ticket), ticket

    data = os.urandom(3 * 512 * 1024 + 5)  # several 512 KiB chunks
    outcome = await upload(proxy.public, ticket, data=data, origin=APP_ORIGIN,
                           tls=optionsForClientTLS("127.0.0.1", trustRoot=pki.trust_root()))
    assert outcome.first("MsgUploadConf")["FilePos"] == 0
    assert outcome.last()[0] == "MsgAllDone", outcome.messages
    stored = app.storage / ticket
    assert stored.read_bytes() == data
    [call] = backend.calls
    assert (call["id"], call["filename"], call["cancelled"]) == (ticket, str(stored), "no")
    # nginx's logs keep the path, never the query string
    assert "GET /incoming/0.1/frontend/upload_ws HTTP/1.1\" 101" in proxy.access_log(
        "incoming.access.log")


# Paths that a public side must refuse, whatever their spelling.
PUBLIC_REFUSALS = [
    "/incoming/0.1/backend/new_upload",
    "/incoming/0.1/backend/cancel_upload",
    "/incoming/0.1/backend/finish_upload",
    "/incoming/0.1/frontend/..%2fbackend/new_upload",
    "/incoming/0.1/frontend/%2e%2e/backend/new_upload",
    "//incoming/0.1//backend/new_upload",
    "/demo/api/ticket",
    "/metrics",
    "/health",
]


async def assert_refused_publicly(browser, proxy, apps, backend, path, codes):  # noqa: F811
    """POST and GET of ``path`` on the proxy's public side get one of
    ``codes(method)`` and open no upload on any of ``apps``."""
    before = [tickets(app) for app in apps]
    for method in ("POST", "GET"):
        response = await browser.request(method, proxy.public_url(path), data={
            "signalFinishURL": backend.url, "backendSecret": "s3cret"} if method == "POST" else None)
        text = await response.text()
        assert response.code in codes(method), (method, response.code, text)
        assert not is_ticket(text.strip())
    assert [tickets(app) for app in apps] == before  # no upload was opened


@pytest.mark.parametrize("path", PUBLIC_REFUSALS)
@pytest_twisted.ensureDeferred
async def test_public_block_refuses_the_backend_api_and_the_demo(stack, browser, backend, path):  # noqa: F811
    app, proxy = stack
    await assert_refused_publicly(browser, proxy, [app], backend, path, lambda method: (403, 404))


async def assert_internal_side(proxy, apps, app_server, outsider, backend) -> str:  # noqa: F811
    """The proxy's internal side: new_upload for the app's servers (the
    ticket, asked for with the secret in the query string as 0.1 backends
    do), 403 for other addresses, /health; not the browsers' routes."""
    url = proxy.internal_url("/incoming/0.1/backend/new_upload")
    response = await app_server.post(url, params={"signalFinishURL": backend.url,
                                                  "backendSecret": "query-s3cret"})
    ticket = await response.text()
    assert response.code == 200 and is_ticket(ticket), ticket

    before = [tickets(app) for app in apps]
    response = await outsider.post(url, data={"signalFinishURL": backend.url})
    assert response.code == 403
    assert not is_ticket((await response.text()).strip())
    assert [tickets(app) for app in apps] == before

    response = await app_server.get(proxy.internal_url("/incoming/0.1/frontend/incoming.js"))
    assert response.code == 404
    await response.content()
    response = await app_server.get(proxy.internal_url("/health"))
    assert (response.code, (await response.text()).strip()) == (200, "ok")
    return ticket


@pytest_twisted.ensureDeferred
async def test_internal_block_serves_the_backend_api_to_the_app_network_only(
        stack, app_server, outsider, backend):  # noqa: F811
    app, proxy = stack
    ticket = await assert_internal_side(proxy, [app], app_server, outsider, backend)
    response = await app_server.post(proxy.internal_url("/incoming/0.1/backend/cancel_upload"),
                                     data={"id": ticket, "backendSecret": "query-s3cret"})
    assert response.code == 200, await response.text()

    log = proxy.access_log("incoming-backend.access.log")
    assert "POST /incoming/0.1/backend/new_upload HTTP/1.1\" 200" in log
    assert "query-s3cret" not in log


@pytest_twisted.ensureDeferred
async def test_incoming_js_is_served_and_revalidated_by_nginx(stack, browser, app_server):
    app, proxy = stack
    direct = await app_server.get(f"http://127.0.0.1:{app.port}/incoming/0.1/frontend/incoming.js")
    original = await direct.content()
    etag = direct.headers.getRawHeaders(b"etag")[0]

    path = "/incoming/0.1/frontend/incoming.js"
    first = await browser.get(proxy.public_url(path))
    assert first.code == 200
    assert await first.content() == original
    for name in (b"etag", b"cache-control", b"content-type", b"last-modified"):
        assert first.headers.getRawHeaders(name) == direct.headers.getRawHeaders(name), name
    assert first.headers.getRawHeaders(b"content-type")[0].startswith(b"application/javascript")

    again = await browser.get(proxy.public_url(path))
    assert await again.content() == original
    assert again.headers.getRawHeaders(b"x-cache-status") == [b"HIT"]

    # A page load revalidates: nginx answers 304 from its copy.
    revalidated = await browser.get(proxy.public_url(path), headers={b"if-none-match": [etag]})
    assert revalidated.code == 304
    assert await revalidated.content() == b""
    assert revalidated.headers.getRawHeaders(b"x-cache-status") == [b"HIT"]

    declarations = await browser.get(proxy.public_url("/incoming/0.1/frontend/incoming.d.ts"))
    assert declarations.code == 200
    assert b"Uploader" in await declarations.content()

    # GET and HEAD only
    post = await browser.post(proxy.public_url(path), data=b"x")
    assert post.code == 403
    await post.content()
