"""incoming.js in Chromium, through a round-robin TCP balancer in front of
two servers that share uploads (one folder, one Redis prefix): the server
that holds the page's upload is killed (SIGKILL) in the middle of it; the
page reconnects by itself, reaches the other server, and the file arrives
whole."""

from __future__ import annotations

import time

from redis_server import redis_server, unique_prefix  # noqa: F401 (fixture)

from .harness import IncomingServer, MiB, TcpProxy, write_test_file


def test_a_page_upload_survives_the_death_of_the_server_that_holds_it(
        tmp_path, redis_server, backend, open_page):  # noqa: F811
    shared = tmp_path / "shared-storage"
    args = ("--storage-dir", str(shared), "--state", redis_server.url,
            "--state-prefix", unique_prefix())
    servers = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        servers.append(IncomingServer(tmp_path / name, *args))
    balancer = None
    try:
        for server in servers:
            server.wait_ready()
        balancer = TcpProxy(servers[0].port, rate=2 * MiB, more_targets=[servers[1].port])
        path = tmp_path / "video.mp4"
        sha = write_test_file(path, 12 * MiB)
        ticket = servers[0].new_upload(backend)
        page = open_page(balancer.host)
        (i,) = page.start([path], [ticket])
        page.wait_for(i, "u.bytes_acked >= 3 * 1024 * 1024", 30, "some bytes acknowledged")
        [holder] = [s for s in servers if "browser connected" in s.log()]
        holder.process.kill()  # no goodbye: the page sees a lost connection
        started = time.monotonic()
        page.wait_for(i, "u.finished", 90, "finished through the other server")
        state = page.now(i)
        assert state["error_code"] == -1 and state["bytes_acked"] == 12 * MiB
        (call,) = backend.calls_for(ticket)
        assert call["sha256"] == sha and call["cancelled"] == "no"
        print(f"\nfinished {time.monotonic() - started:.1f} s after the kill")
    finally:
        if balancer is not None:
            balancer.kill()
        for server in servers:
            server.stop()
