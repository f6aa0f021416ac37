"""End to end: the installed `twistd incoming` in its own process."""

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.web.server import Site

from conftest import FakeBackend
from wsclient import DataSource, upload

BIN = os.path.dirname(sys.executable)
TWISTD = os.path.join(BIN, "twistd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_plugin_is_found_after_a_regular_install(tmp_path):
    """The README installs with `pip install .`; twistd must then see us.

    Run from an empty folder so the source tree is not on sys.path.
    """
    listing = subprocess.run(
        [sys.executable, "-c",
         "from twisted.plugin import getPlugins\n"
         "from twisted.application.service import IServiceMaker\n"
         "print(sorted(p.tapname for p in getPlugins(IServiceMaker)))"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert "'incoming'" in listing.stdout, listing.stderr
    usage = subprocess.run([TWISTD, "--help"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=60)
    assert "incoming" in usage.stdout


class TwistdServer:
    """`twistd -n incoming` on a free loopback port, in tmp_path; ``args``
    go to incoming, ``twistd_args`` (e.g. --logger) to twistd itself."""

    def __init__(self, tmp_path, *args, preexec_fn=None, twistd_args=()):
        self.port = free_port()
        self.storage = tmp_path / "storage"
        self.log_path = tmp_path / "twistd.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", *twistd_args, "incoming",
             "--port", f"tcp:{self.port}:interface=127.0.0.1",
             "--storage-dir", str(self.storage), *args],
            cwd=tmp_path, stdout=self._log, stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,
        )

    async def ready(self, timeout=30.0):
        """Wait (without blocking the reactor) until the server accepts: the
        port is bound early, but accepts only once the uploads are restored,
        which the server logs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"twistd exited: {self.log()}")
            if "; accepting connections on" in self.log():
                return
            await task.deferLater(reactor, 0.05, lambda: None)
        raise AssertionError(f"twistd did not listen: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            for _ in range(200):
                if self.process.poll() is not None:
                    break
                await task.deferLater(reactor, 0.05, lambda: None)
            else:
                self.process.kill()
        self._log.close()
        return self.process.wait()

    def url(self, name):
        return f"http://127.0.0.1:{self.port}/incoming/0.1/backend/{name}"


@pytest_twisted.async_yield_fixture
async def backend():
    resource = FakeBackend()
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
    resource.url = f"http://127.0.0.1:{port.getHost().port}/handover"
    yield resource
    await port.stopListening()


async def new_upload(server, backend, **params):
    import treq

    response = await treq.post(server.url("new_upload"),
                               params={"signalFinishURL": backend.url, **params})
    text = await response.text()
    assert response.code == 200, text
    return text


def write_test_file(path, size):
    """Pseudo-random content whose repeats never line up with chunks."""
    block = os.urandom(1048583)  # a prime number of bytes
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            piece = block[:min(left, len(block))]
            f.write(piece)
            digest.update(piece)
            left -= len(piece)
    return digest.hexdigest()


def stored_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(1 << 20):
            digest.update(piece)
    return digest.hexdigest()


@pytest_twisted.ensureDeferred
async def test_upload_through_twistd_subprocess(tmp_path, backend):
    server = TwistdServer(tmp_path)
    try:
        await server.ready()
        data = os.urandom(3 * 1024 * 1024 + 5)
        ticket = await new_upload(server, backend, removeFileWhenFinished="false")
        outcome = await upload(server.port, ticket, data=data)
        assert outcome.first("MsgUploadConf") == {"ChunkSizeKB": 512, "FilePos": 0, "SendAhead": 4}
        assert outcome.last()[0] == "MsgAllDone"
        stored = server.storage / ticket
        assert stored.read_bytes() == data
        assert backend.calls[0]["filename"] == str(stored)
    finally:
        code = await server.stop()
    # twistd re-raises SIGTERM after a clean shutdown, so -15 is a clean exit
    assert code in (0, -signal.SIGTERM), server.log()
    assert "Server Shut Down" in server.log()
    assert f"upload {ticket}: handed over" in server.log()


@pytest_twisted.ensureDeferred
async def test_one_gib_upload_keeps_every_byte(tmp_path, backend):
    """1 GiB through the 0.1 protocol with 0.1 defaults; prints MB/s."""
    size = 1 << 30
    source_path = tmp_path / "source.bin"
    expected = write_test_file(source_path, size)
    server = TwistdServer(tmp_path)
    try:
        await server.ready()
        ticket = await new_upload(server, backend, removeFileWhenFinished="false")
        started = time.monotonic()
        outcome = await upload(server.port, ticket, DataSource(path=str(source_path)))
        elapsed = time.monotonic() - started
        assert outcome.last()[0] == "MsgAllDone", outcome.last()
        assert stored_sha256(server.storage / ticket) == expected
        print(f"\n1 GiB upload: {size / elapsed / 1e6:.1f} MB/s ({elapsed:.1f} s)")
    finally:
        await server.stop()
        source_path.unlink(missing_ok=True)
