"""A real redis-server for the tests, on a free loopback port (Debian's
redis-server package; scripts/test installs it).  Each test gets its own
key prefix, so tests share one server without seeing each other's keys."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid

import pytest
import pytest_twisted
from twisted.internet import reactor

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """``redis-server`` in a folder of its own; ``stop()`` and ``start()``
    again on the same port and data (with ``appendonly``, it keeps them)."""

    def __init__(self, folder, appendonly: bool = False):
        self.port = free_port()
        self.folder = folder
        self.appendonly = appendonly
        self.process = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.folder), "--save", "",
                "--appendonly", "yes" if self.appendonly else "no",
                "--appendfsync", "always", "--maxmemory-policy", "noeviction"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if self.process.poll() is not None:
                raise AssertionError(f"redis-server exited with {self.process.returncode}")
            time.sleep(0.02)
        raise AssertionError("redis-server did not listen within 10 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One redis-server for the whole test session."""
    if not shutil.which("redis-server") and not shutil.which(REDIS_SERVER):
        pytest.fail("redis-server is not installed: `apt-get install redis-server` "
                    "(scripts/test does this)")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


def unique_prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def redis_hub(redis_server):
    """A RedisHub on the session's server, under a prefix of its own."""
    from incoming.redis_client import RedisHub, parse_redis_url

    hub = RedisHub(parse_redis_url(redis_server.url), unique_prefix(), reactor)
    yield hub
    pytest_twisted.blockon(hub.close())
