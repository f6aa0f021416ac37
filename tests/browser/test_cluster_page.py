"""incoming.js in Chromium in front of servers that share uploads (one
folder, one Redis prefix): the server that holds the page's upload is
killed (SIGKILL) in the middle of it; the page reconnects by itself,
reaches another server, and the file arrives whole.  Once through a plain
round-robin TCP balancer, once through the shipped HAProxy config (an
https page, wss:// through its TLS frontend)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from redis_server import redis_server, unique_prefix  # noqa: F401 (fixture)
from test_haproxy import SERVERS, HAProxy
from test_tls import pki  # noqa: F401 (fixture)

from .harness import Backend, IncomingServer, MiB, TcpProxy, write_test_file


@contextlib.contextmanager
def shared_servers(tmp_path: Path, redis_server, count: int, *more):  # noqa: F811
    """`count` servers on one storage folder and one Redis prefix; ``more``
    options for each."""
    args = ("--storage-dir", str(tmp_path / "shared-storage"), "--state", redis_server.url,
            "--state-prefix", unique_prefix(), *more)
    servers = []
    try:
        for n in range(count):
            (tmp_path / f"server{n}").mkdir()
            servers.append(IncomingServer(tmp_path / f"server{n}", *args))
        for server in servers:
            server.wait_ready()
        yield servers
    finally:
        for server in servers:
            server.stop()


def kill_the_holder_mid_upload(tmp_path, servers, backend, page, size=12 * MiB, **params):
    """Upload through `page`, kill the server that holds the connection at
    3 MiB acknowledged; the page must finish by itself with the right file.
    ``params`` go to new_upload; fire with the ticket."""
    path = tmp_path / "video.mp4"
    sha = write_test_file(path, size)
    ticket = servers[0].new_upload(backend, **params)
    (i,) = page.start([path], [ticket])
    page.wait_for(i, "u.bytes_acked >= 3 * 1024 * 1024", 30, "some bytes acknowledged")
    [holder] = [s for s in servers if "browser connected" in s.log()]
    holder.process.kill()  # no goodbye: the page sees a lost connection
    started = time.monotonic()
    page.wait_for(i, "u.finished", 90, "finished through another server")
    state = page.now(i)
    assert state["error_code"] == -1 and state["bytes_acked"] == size
    (call,) = backend.calls_for(ticket)
    assert call["sha256"] == sha and call["cancelled"] == "no"
    print(f"\nfinished {time.monotonic() - started:.1f} s after the kill")
    return ticket, sha


def test_a_page_upload_survives_the_death_of_the_server_that_holds_it(
        tmp_path, redis_server, backend, open_page):  # noqa: F811
    with shared_servers(tmp_path, redis_server, 2) as servers:
        balancer = TcpProxy(servers[0].port, rate=2 * MiB, more_targets=[servers[1].port])
        try:
            kill_the_holder_mid_upload(tmp_path, servers, backend, open_page(balancer.host))
        finally:
            balancer.kill()


def test_a_page_upload_through_haproxy_survives_the_death_of_the_server_that_holds_it(
        tmp_path, redis_server, backend, open_page, pki):  # noqa: F811
    """The shipped HAProxy config in front of three servers; the page is
    served over https and uploads over wss:// through HAProxy's TLS
    frontend (behind a rate-limited TCP hop, so that the kill comes
    mid-upload)."""
    page_server = Backend(tls=(pki.cert, pki.key))
    (tmp_path / "haproxy").mkdir()
    with shared_servers(tmp_path, redis_server, len(SERVERS)) as servers:
        proxy = HAProxy(tmp_path / "haproxy", [s.port for s in servers], pki)
        slow = None
        try:
            proxy.wait_listening()
            slow = TcpProxy(proxy.public, rate=2 * MiB)
            page = open_page(slow.host, page_server=page_server)
            assert page.evaluate("() => location.protocol") == "https:"
            kill_the_holder_mid_upload(tmp_path, servers, backend, page)
            assert [s["url"] for s in page.sockets()][0].startswith("wss://"), page.sockets()
        finally:
            if slow is not None:
                slow.kill()
            proxy.stop()
            page_server.stop()
