"""contrib/haproxy/incoming.cfg in Debian's HAProxy, in front of three real
`twistd incoming` servers (the file's three `server` lines): uploads go
through the public TLS frontend's WebSocket, the backend API is refused
there and served on the internal frontend to the app's network only,
requests go round-robin with no stickiness, and a server whose /health
fails or that stops is taken out within seconds.

The servers are independent (each its own storage folder): today's servers
do not share uploads, so a WebSocket reaches the server that issued its
ticket only when the round-robin comes round to it; the others answer
"unknown upload" (code 2), as docs/cluster.md says.

The test runs the shipped file itself: only its example addresses, ports
and paths are swapped for free loopback ports and files under the test's
tmp folder (each swap must match).  Not as root, the chroot, user and group
lines go too (only root may use them).  HAProxy runs in the foreground
(`haproxy -db`).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.ssl import optionsForClientTLS

from test_nginx import (APP_ORIGIN, APP_SERVER, PUBLIC_REFUSALS, Proxy,  # noqa: F401 (fixtures)
                        app_server, assert_internal_side, assert_refused_publicly, browser,
                        is_ticket, outsider, tickets, wait_until_listening)
from test_tls import pki  # noqa: F401 (fixture)
from redis_server import redis_server, unique_prefix  # noqa: F401 (fixture)
from test_twistd import TwistdServer, backend, free_port  # noqa: F401 (fixture)
from wsclient import upload

from incoming.config import Settings

SHIPPED = Path(__file__).resolve().parent.parent / "contrib" / "haproxy" / "incoming.cfg"
SERVERS = ("incoming1", "incoming2", "incoming3")
SHIPPED_PORTS = ("127.0.0.1:4011", "127.0.0.1:4012", "127.0.0.1:4013")


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    assert found, "haproxy not found: install Debian's haproxy package (scripts/test does)"
    return found


def haproxy_config(folder: Path, upstreams, public: int, internal: int) -> str:
    """The shipped file with its example values swapped for the test's."""
    text = SHIPPED.read_text()
    swaps = [
        ("bind :443 ssl crt /etc/haproxy/certs/uploads.example.com.pem",
         f"bind 127.0.0.1:{public} ssl crt {folder / 'uploads.pem'}", 1),
        ("bind 10.0.0.1:4001", f"bind 127.0.0.1:{internal}", 1),
        ("{ src 10.0.0.0/24 }", f"{{ src {APP_SERVER} }}", 1),
        ("/run/haproxy/admin.sock", str(folder / "admin.sock"), 1),
        ("log /dev/log local0", "log stdout format raw local0", 1),
    ]
    # whole server lines, done before the binds: a test port such as 40133
    # must not be taken for the shipped 4013
    swaps[:0] = [(f"server {name} {shipped}", f"server {name} 127.0.0.1:{port}", 1)
                 for name, shipped, port in zip(SERVERS, SHIPPED_PORTS, upstreams, strict=True)]
    if os.geteuid() != 0:
        swaps += [(f"\n    {line}\n", "\n", 1)
                  for line in ("chroot /var/lib/haproxy", "user haproxy", "group haproxy")]
    for old, new, count in swaps:
        assert text.count(old) == count, f"{SHIPPED} no longer has {count} x {old!r}"
        text = text.replace(old, new)
    return text


class HAProxy(Proxy):
    """haproxy -db -f <folder>/haproxy.cfg: the shipped file, swapped."""

    name = "haproxy"

    def __init__(self, folder: Path, upstreams, pki):  # noqa: F811
        super().__init__(folder)
        # HAProxy wants the certificate and its key in one file
        pem = Path(pki.cert).read_bytes() + Path(pki.key).read_bytes()
        (folder / "uploads.pem").write_bytes(pem)
        config = folder / "haproxy.cfg"
        config.write_text(haproxy_config(folder, upstreams, self.public, self.internal))
        self.config_test = subprocess.run([haproxy_binary(), "-c", "-f", str(config)],
                                          capture_output=True, text=True, timeout=60)
        self.start([haproxy_binary(), "-db", "-f", str(config)])

    def log(self) -> str:
        path = self.folder / "haproxy.out"
        return self.config_test.stdout + self.config_test.stderr + (
            path.read_text(errors="replace") if path.exists() else "")

    def servers(self) -> dict[str, tuple[str, str]]:
        """(status, last check) of each server of `backend incoming`, from
        `show stat` on the stats socket."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.folder / "admin.sock"))
            s.sendall(b"show stat\n")
            answer = b""
            while piece := s.recv(65536):
                answer += piece
        rows = csv.DictReader(answer.decode().lstrip("# ").splitlines())
        return {row["svname"]: (row["status"], row["check_status"]) for row in rows
                if row["pxname"] == "incoming" and row["svname"] not in ("FRONTEND", "BACKEND")}


@contextlib.contextmanager
def running_stack(tmp_path_factory, pki, shared=()):  # noqa: F811
    """Three `twistd incoming`, HAProxy in front of them: independent, or
    sharing uploads with the options ``shared``."""
    apps = [TwistdServer(tmp_path_factory.mktemp(name), "--allowed-origins", APP_ORIGIN, "--demo",
                         *shared)
            for name in SERVERS]
    proxy = None
    try:
        for app in apps:
            wait_until_listening(app)
        proxy = HAProxy(tmp_path_factory.mktemp("haproxy"), [app.port for app in apps], pki)
        proxy.wait_listening()
        yield apps, proxy
    finally:
        if proxy is not None:
            proxy.stop()
        for app in apps:
            if app.process.poll() is None:
                app.process.send_signal(signal.SIGTERM)
            app.process.wait(30)
            app._log.close()
    assert "[ALERT]" not in proxy.log(), proxy.log()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, pki):  # noqa: F811
    with running_stack(tmp_path_factory, pki) as apps_and_proxy:
        yield apps_and_proxy


async def new_ticket(app_server, proxy, backend) -> str:  # noqa: F811
    response = await app_server.post(proxy.internal_url("/incoming/0.1/backend/new_upload"), data={
        "signalFinishURL": backend.url, "backendSecret": "s3cret",
        "removeFileWhenFinished": "false"})
    ticket = await response.text()
    assert response.code == 200 and is_ticket(ticket), ticket
    return ticket


async def upload_through(proxy, pki, apps, ticket, data):  # noqa: F811
    """Connect through the public frontend until a server knows the ticket:
    the outcomes of the connections, and the server that issued it."""
    [issuer] = [app for app in apps if ticket in tickets(app)]
    tls = optionsForClientTLS("127.0.0.1", trustRoot=pki.trust_root())
    outcomes = []
    for _ in apps:
        outcome = await upload(proxy.public, ticket, data=data, origin=APP_ORIGIN, tls=tls)
        outcomes.append(outcome)
        if outcome.last()[0] != "MsgError":
            break
        assert outcome.last()[1]["ErrorCode"] == 2, outcome.messages  # unknown upload
    return outcomes, issuer


async def eventually(check, what: str, timeout=15.0) -> float:
    """Seconds until ``check()`` holds."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, f"not within {timeout} s: {what}"
        await task.deferLater(reactor, 0.1, lambda: None)
    return time.monotonic() - started


def test_haproxy_accepts_the_shipped_config_without_warnings(stack):
    _, proxy = stack
    output = proxy.config_test.stdout + proxy.config_test.stderr
    assert proxy.config_test.returncode == 0, output
    assert "Configuration file is valid" in output
    assert "[WARNING]" not in output and "[ALERT]" not in output, output


def test_tunnel_timeout_outlasts_the_servers_websocket_timeout():
    """HAProxy must not cut a quiet upload before the server's own pings do."""
    seconds = int(re.search(r"^\s*timeout tunnel (\d+)s$", SHIPPED.read_text(), re.M).group(1))
    assert seconds > Settings().websocket_timeout


def test_no_stickiness():
    code = "\n".join(line.split("#", 1)[0] for line in SHIPPED.read_text().splitlines())
    assert re.search(r"^\s*balance roundrobin$", code, re.M)
    for sticky in ("cookie", "stick", "balance source", "hash", "persist"):
        assert sticky not in code, sticky


@pytest_twisted.ensureDeferred
async def test_upload_through_the_public_frontend(stack, pki, app_server, backend):  # noqa: F811
    apps, proxy = stack
    ticket = await new_ticket(app_server, proxy, backend)
    data = os.urandom(3 * 512 * 1024 + 5)  # several 512 KiB chunks
    outcomes, issuer = await upload_through(proxy, pki, apps, ticket, data)
    # Round-robin: after new_upload, the next two connections go to the two
    # servers that do not know the ticket, the third to the one that does.
    assert [o.last()[0] for o in outcomes] == ["MsgError", "MsgError", "MsgAllDone"]
    assert outcomes[-1].first("MsgUploadConf")["FilePos"] == 0
    stored = issuer.storage / ticket
    assert stored.read_bytes() == data
    assert [a for a in apps if (a.storage / ticket).exists()] == [issuer]
    [call] = backend.calls
    assert (call["id"], call["filename"], call["cancelled"]) == (ticket, str(stored), "no")
    assert "\"GET /incoming/0.1/frontend/upload_ws HTTP/1.1\"" in proxy.log()
    assert " 101 " in proxy.log()


@pytest.mark.parametrize("path", PUBLIC_REFUSALS)
@pytest_twisted.ensureDeferred
async def test_public_frontend_refuses_the_backend_api_and_the_demo(stack, browser, backend, path):  # noqa: F811
    apps, proxy = stack

    def codes(method):  # 403 for the backend API and for any POST, else 404
        return (403,) if path.startswith("/incoming/0.1/backend/") or method == "POST" else (404,)

    await assert_refused_publicly(browser, proxy, apps, backend, path, codes)


@pytest_twisted.ensureDeferred
async def test_public_frontend_serves_incoming_js(stack, browser):  # noqa: F811
    _, proxy = stack
    for name in ("incoming.js", "incoming.d.ts"):
        response = await browser.get(proxy.public_url(f"/incoming/0.1/frontend/{name}?v=2"))
        assert response.code == 200, name
        assert b"Uploader" in await response.content()
    response = await browser.post(proxy.public_url("/incoming/0.1/frontend/incoming.js"), data=b"x")
    assert response.code == 403
    await response.content()


@pytest_twisted.ensureDeferred
async def test_internal_frontend_serves_the_backend_api_to_the_app_network_only(
        stack, app_server, outsider, backend):  # noqa: F811
    apps, proxy = stack
    ticket = await assert_internal_side(proxy, apps, app_server, outsider, backend)
    for path in ("/metrics", "/demo/"):
        response = await app_server.get(proxy.internal_url(path))
        assert response.code == 404, path
        await response.content()
    # cancel_upload goes to the next server (round-robin), which does not
    # know the ticket: today's servers do not share uploads
    response = await app_server.post(proxy.internal_url("/incoming/0.1/backend/cancel_upload"),
                                     data={"id": ticket, "backendSecret": "query-s3cret"})
    assert response.code == 404, await response.text()

    await eventually(lambda: "\"POST /incoming/0.1/backend/new_upload HTTP/1.1\"" in proxy.log(),
                     "HAProxy logs the new_upload")
    assert "query-s3cret" not in proxy.log()


@pytest_twisted.ensureDeferred
async def test_round_robin_without_stickiness(stack, app_server, backend):  # noqa: F811
    apps, proxy = stack
    before = [set(tickets(app)) for app in apps]
    issued = [await new_ticket(app_server, proxy, backend) for _ in range(2 * len(apps))]
    new = [set(tickets(app)) - old for app, old in zip(apps, before, strict=True)]
    assert set().union(*new) == set(issued)
    assert [len(n) for n in new] == [2] * len(apps)  # the same client, each server in turn


@pytest_twisted.ensureDeferred
async def test_failing_servers_are_taken_out_and_uploads_go_on(
        tmp_path_factory, pki, app_server, backend):  # noqa: F811
    with running_stack(tmp_path_factory, pki) as (apps, proxy):
        first, second, third = apps
        await eventually(lambda: all(s == "UP" for s, _ in proxy.servers().values()),
                         "all servers UP")

        # /health answers 503 (its storage folder is gone): out, then back in
        away = first.storage.with_name("storage.away")
        first.storage.rename(away)
        took = await eventually(lambda: proxy.servers()["incoming1"][0] == "DOWN",
                                "incoming1 DOWN")
        assert proxy.servers()["incoming1"][1] == "L7STS"  # checked: HTTP status
        print(f"\n/health 503: DOWN after {took:.1f} s")
        away.rename(first.storage)
        took = await eventually(lambda: proxy.servers()["incoming1"][0] == "UP", "incoming1 UP")
        print(f"/health 200 again: UP after {took:.1f} s")

        # a server that stops (SIGTERM): out
        second.process.send_signal(signal.SIGTERM)
        second.process.wait(30)
        took = await eventually(lambda: proxy.servers()["incoming2"][0] == "DOWN",
                                "incoming2 DOWN")
        assert proxy.servers()["incoming2"][1] in ("L4CON", "L4TOUT")  # checked: connection refused
        print(f"SIGTERM: DOWN after {took:.1f} s")

        # every new request goes to the servers left, uploads go on
        issued = [await new_ticket(app_server, proxy, backend) for _ in range(4)]
        assert all(t in tickets(first) or t in tickets(third) for t in issued)
        data = os.urandom(700 * 1024)
        outcomes, issuer = await upload_through(proxy, pki, apps, issued[-1], data)
        assert outcomes[-1].last()[0] == "MsgAllDone", outcomes[-1].messages
        assert len(outcomes) <= 2
        assert (issuer.storage / issued[-1]).read_bytes() == data


@pytest_twisted.ensureDeferred
async def test_servers_that_share_uploads_lose_nothing_when_one_is_killed(
        tmp_path_factory, pki, app_server, backend, redis_server):  # noqa: F811
    """Three servers on one folder and one Redis prefix behind the shipped
    round-robin: the one that takes the upload is killed (SIGKILL) in the
    middle; the client reconnects through HAProxy, reaches another, and the
    file arrives whole."""
    folder = tmp_path_factory.mktemp("shared-storage")
    shared = ("--storage-dir", str(folder), "--state", redis_server.url,
              "--state-prefix", unique_prefix())
    with running_stack(tmp_path_factory, pki, shared) as (apps, proxy):
        ticket = await new_ticket(app_server, proxy, backend)
        data = os.urandom(3 * 1024 * 1024)
        tls = optionsForClientTLS("127.0.0.1", trustRoot=pki.trust_root())
        first = upload(proxy.public, ticket, data=data, origin=APP_ORIGIN, tls=tls, pace=0.5)
        await eventually(lambda: any("browser connected" in a.log() for a in apps),
                         "a server took the upload")
        [holder] = [a for a in apps if "browser connected" in a.log()]
        await task.deferLater(reactor, 1.2, lambda: None)
        holder.process.kill()
        cut = await first
        assert not cut.messages or cut.last()[0] != "MsgAllDone"
        for _ in range(40):  # busy (code 3) until the dead server's lease runs out
            outcome = await upload(proxy.public, ticket, data=data, origin=APP_ORIGIN, tls=tls,
                                   features=("takeover",))
            if outcome.messages and outcome.last()[0] == "MsgAllDone":
                break
            await task.deferLater(reactor, 0.5, lambda: None)
        assert outcome.last()[0] == "MsgAllDone", outcome.messages
        assert outcome.file_pos > 0  # resumed where the killed server stopped
        assert (folder / ticket).read_bytes() == data
        [call] = [c for c in backend.calls if c["id"] == ticket]
        assert call["sha256"] == hashlib.sha256(data).hexdigest()
