"""The byte-window extension through bench/'s latency-emulating proxy:
a new client fills a long link and its uploads arrive intact; a 0.1 client
keeps 0.1 settings."""

import hashlib
import os
import sys
import time
from pathlib import Path

import pytest_twisted
from twisted.internet import reactor

from conftest import start_server
from wsclient import upload

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the bench package
from bench.latency_proxy import ProxyFactory  # noqa: E402


async def through_proxy(server, data, **options):
    proxy = reactor.listenTCP(0, ProxyFactory(f"127.0.0.1:{server.port}", delay=0.02,
                                              rate=50e6, buffer=8 << 20),
                              interface="127.0.0.1")
    try:
        ticket = await server.new_upload(removeFileWhenFinished="false")
        started = time.monotonic()
        outcome = await upload(proxy.getHost().port, ticket, data=data, **options)
        return ticket, outcome, time.monotonic() - started
    finally:
        await proxy.stopListening()


@pytest_twisted.ensureDeferred
async def test_byte_window_fills_a_40_ms_link_and_keeps_every_byte(tmp_path):
    server, stop = await start_server(tmp_path, chunk_size_kb=512, window=8 << 20)
    try:
        data = os.urandom(24 << 20)
        _, old, old_seconds = await through_proxy(server, data)
        ticket, new, new_seconds = await through_proxy(server, data, byte_window=True)
        assert "WindowBytes" not in old.first("MsgUploadConf")  # 0.1 stays 0.1
        assert new.first("MsgUploadConf")["WindowBytes"] == 8 << 20
        assert old.last()[0] == new.last()[0] == "MsgAllDone"
        with open(os.path.join(server.storage_dir, ticket), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == hashlib.sha256(data).hexdigest()
        assert server.backend.calls[1]["sha256"] == hashlib.sha256(data).hexdigest()
        # figures for the curious; the comparison that counts is bench/'s
        print(f"\n24 MiB over 40 ms RTT: 0.1 window {len(data) / old_seconds / 1e6:.1f} MB/s, "
              f"byte window {len(data) / new_seconds / 1e6:.1f} MB/s")
    finally:
        await stop()
