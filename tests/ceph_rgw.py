"""A real Ceph cluster with a RADOS Gateway (the S3 API) for the tests, on
free loopback ports (Debian's ceph-mon, ceph-osd and radosgw packages;
scripts/test installs them).

One monitor, one OSD keeping its objects in memory (memstore: no block
device, no root needed), pools of size 1, no authentication inside the
cluster (cephx off), and radosgw's beast frontend on 127.0.0.1.  Every
daemon is a child of the test run, in the foreground, with its config,
data, logs and sockets in one folder; nothing is read from /etc/ceph or
/var/lib/ceph."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from redis_server import free_port

PROGRAMS = ("monmaptool", "ceph-mon", "ceph-osd", "ceph", "radosgw", "radosgw-admin")
INSTALL = "`apt-get install ceph-mon ceph-osd radosgw` (scripts/test does this)"

CONF = """\
[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{mon_port}
public addr = 127.0.0.1
ms bind msgr1 = false
auth cluster required = none
auth service required = none
auth client required = none
# radosgw asks the monitor for a "secure" connection, which needs cephx.
ms mon client mode = crc
run dir = {folder}/run
admin socket = $run_dir/$name.$pid.asok
log file = {folder}/log/$name.log
mon data = {folder}/mon
mon data avail warn = 0
mon data avail crit = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
# A change to a map waits this long for others to go with it (1 s by
# default): radosgw makes a dozen in a row while it starts.
paxos propose interval = 0.05
osd data = {folder}/osd
osd objectstore = memstore
memstore device bytes = {memstore_bytes}
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0

[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:{rgw_port}
"""


class CephRGW:
    """``ceph-mon``, ``ceph-osd`` and ``radosgw`` in ``folder``, with one S3
    user: ``endpoint``, ``access_key``, ``secret_key``.  ``stop()`` ends the
    daemons and removes the folder (the OSD's objects are in memory)."""

    def __init__(self, folder, memstore_bytes: int = 1 << 30):
        self.folder = Path(folder)
        self.mon_port = free_port()
        self.rgw_port = free_port()
        self.memstore_bytes = memstore_bytes
        self.endpoint = f"http://127.0.0.1:{self.rgw_port}"
        self.access_key = "incoming-test"
        self.secret_key = secrets.token_hex(20)
        self.conf = self.folder / "ceph.conf"
        self.processes: list[subprocess.Popen] = []
        self.startup_seconds: float | None = None

    def start(self, timeout: float = 120) -> None:
        began = time.monotonic()
        deadline = began + timeout
        for name in ("mon", "osd", "run", "log"):
            (self.folder / name).mkdir(parents=True, exist_ok=True)
        fsid = str(uuid.uuid4())
        self.conf.write_text(CONF.format(
            fsid=fsid, mon_port=self.mon_port, rgw_port=self.rgw_port,
            folder=self.folder, memstore_bytes=self.memstore_bytes))
        monmap = self.folder / "monmap"
        self._run(["monmaptool", "--create", "--fsid", fsid,
                   "--addv", "a", f"[v2:127.0.0.1:{self.mon_port}]", str(monmap)])
        self._run(["ceph-mon", "-i", "a", "--mkfs", "--monmap", str(monmap)])
        self._spawn(["ceph-mon", "-f", "-i", "a"])
        # Waits for the monitor, then gives the OSD its id (0) in the map.
        osd_uuid = str(uuid.uuid4())
        self._run(["ceph", "--connect-timeout", "30", "osd", "new", osd_uuid])
        self._run(["ceph-osd", "-i", "0", "--mkfs", "--osd-uuid", osd_uuid])
        self._spawn(["ceph-osd", "-f", "-i", "0"])
        # Creates its pools once the OSD is up, then listens.
        self._spawn(["radosgw", "-f", "-n", "client.rgw"])
        self._wait_for_http(deadline)
        self._run(["radosgw-admin", "user", "create", "--uid", "incoming-test",
                   "--display-name", "Incoming!! tests",
                   "--access-key", self.access_key, "--secret-key", self.secret_key])
        self.startup_seconds = time.monotonic() - began

    def stop_gateway(self) -> None:
        """Stop radosgw alone (the S3 endpoint goes away; the cluster stays)."""
        gateway = self.processes.pop()
        assert gateway.args[0] == "radosgw", gateway.args
        gateway.terminate()
        gateway.wait(10)

    def start_gateway(self, timeout: float = 60) -> None:
        """Start radosgw again on the same port; return once it answers."""
        self._spawn(["radosgw", "-f", "-n", "client.rgw"])
        self._wait_for_http(time.monotonic() + timeout)

    def collect_garbage(self) -> None:
        """Free the data of deleted objects now (RGW's garbage collection
        otherwise waits hours, and memstore keeps it in memory)."""
        self._run(["radosgw-admin", "gc", "process", "--include-all"])

    def stop(self) -> None:
        for process in reversed(self.processes):  # radosgw, the OSD, the monitor
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.processes = []
        shutil.rmtree(self.folder, ignore_errors=True)

    def _args(self, args: list[str]) -> list[str]:
        return [args[0], "-c", str(self.conf), *args[1:]]

    def _run(self, args: list[str]) -> None:
        result = subprocess.run(self._args(args), capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited with {result.returncode}:\n"
                                 f"{result.stdout}{result.stderr}")

    def _spawn(self, args: list[str]) -> None:
        with open(self.folder / "log" / f"{args[0]}.out", "wb") as output:
            self.processes.append(subprocess.Popen(
                self._args(args), stdin=subprocess.DEVNULL, stdout=output,
                stderr=subprocess.STDOUT))

    def _wait_for_http(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            for process in self.processes:
                if process.poll() is not None:
                    raise AssertionError(f"{process.args[0]} exited with "
                                         f"{process.returncode}:\n{self._log_tails()}")
            try:
                with urllib.request.urlopen(self.endpoint, timeout=2):
                    return
            except urllib.error.HTTPError:
                return  # an S3 error document: it answers
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"radosgw did not answer on {self.endpoint} in time:\n"
                             f"{self._log_tails()}")

    def _log_tails(self) -> str:
        tails = []
        for log in sorted((self.folder / "log").iterdir()):
            lines = log.read_text(errors="replace").splitlines()[-15:]
            tails.append(f"--- {log.name}\n" + "\n".join(lines))
        return "\n".join(tails)


@pytest.fixture(scope="session")
def ceph_rgw(tmp_path_factory, request):
    """One Ceph cluster with a RADOS Gateway for the whole test session."""
    missing = [program for program in PROGRAMS if not shutil.which(program)]
    if missing:
        pytest.fail(f"Ceph is not installed (no {', '.join(missing)}): {INSTALL}")
    server = CephRGW(tmp_path_factory.mktemp("ceph"))
    try:
        server.start()
        plugins = request.config.pluginmanager
        reporter = plugins.get_plugin("terminalreporter")
        capture = plugins.get_plugin("capturemanager")
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line(f"\nCeph RGW at {server.endpoint}: "
                                    f"started in {server.startup_seconds:.1f} s")
        yield server
    finally:
        server.stop()
