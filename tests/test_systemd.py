"""contrib/systemd: the shipped units pass systemd's own checks, and the
service's command line really runs on a socket handed over the way systemd
hands it (fd 3, LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES), without systemd."""

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor, task

from test_twistd import TWISTD, backend  # noqa: F401 (fixture)
from wsclient import upload

UNITS = Path(__file__).resolve().parent.parent / "contrib" / "systemd"
SERVICE = UNITS / "incoming.service"
SOCKET = UNITS / "incoming.socket"
SYSUSERS = UNITS / "sysusers.d" / "incoming.conf"


def unit_values(path, key):
    """Every value of ``key`` in a unit file, in order."""
    values = []
    for line in path.read_text().splitlines():
        match = re.match(rf"\s*{re.escape(key)}\s*=(.*)$", line)
        if match:
            values.append(match.group(1).strip())
    return values


def unit_value(path, key):
    (value,) = unit_values(path, key)
    return value


def systemd_tool(name):
    """A systemd command-line tool; missing means CI is broken (no skip)."""
    found = shutil.which(name)
    assert found, f"{name} not found: install Debian's systemd package (scripts/test does)"
    return found


@pytest.fixture
def unit_root(tmp_path):
    """A file-system root with systemd's own units, ours in /etc/systemd/system
    and the venv's twistd where ExecStart expects it: what verify needs to
    check the units as installed, without touching this machine's /opt."""
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    shutil.copy(SERVICE, units)
    shutil.copy(SOCKET, units)
    executable = shlex.split(unit_value(SERVICE, "ExecStart"))[0]
    assert executable == "/opt/incoming/venv/bin/twistd"  # as contrib/systemd/README.md installs it
    fake = root / executable.lstrip("/")
    fake.parent.mkdir(parents=True)
    # not a symlink: verify resolves those inside the root too
    fake.write_text(f'#!/bin/sh\nexec {shlex.quote(TWISTD)} "$@"\n')
    fake.chmod(0o755)
    return root


def test_systemd_analyze_verify_accepts_both_units(unit_root):
    analyze = systemd_tool("systemd-analyze")
    result = subprocess.run(
        [analyze, "verify", "--man=no", f"--root={unit_root}",
         "/etc/systemd/system/incoming.socket", "/etc/systemd/system/incoming.service"],
        capture_output=True, text=True, timeout=120,
    )
    # verify also exits 0 on an unknown key or a bad value: it only warns.
    assert result.returncode == 0, result.stderr + result.stdout
    assert result.stderr.strip() == "" and result.stdout.strip() == "", result.stderr + result.stdout


def test_service_sandbox_is_tight(unit_root):
    """systemd's exposure score for the service (0 best, 10 worst) stays at
    "OK" level: no one drops the sandboxing by accident."""
    analyze = systemd_tool("systemd-analyze")
    result = subprocess.run(
        [analyze, "security", "--offline=yes", f"--root={unit_root}", "--threshold=20",
         "--no-pager", "/etc/systemd/system/incoming.service"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    score = re.search(r"Overall exposure level for incoming.service: ([0-9.]+)", result.stdout)
    assert score and float(score.group(1)) <= 2.0, result.stdout


def test_service_settings_a_user_relies_on():
    assert unit_value(SERVICE, "KillSignal") == "SIGTERM"
    assert unit_value(SERVICE, "Restart") == "on-failure"
    # longer than the graceful stop (browsers get 3 s to take the 1001 close)
    assert re.fullmatch(r"(\d+)s", unit_value(SERVICE, "TimeoutStopSec"))
    assert int(unit_value(SERVICE, "TimeoutStopSec")[:-1]) >= 10
    assert unit_value(SERVICE, "StateDirectory") == "incoming"
    assert unit_value(SERVICE, "ProtectSystem") == "strict"
    assert unit_value(SERVICE, "NoNewPrivileges") == "yes"
    assert "@system-service" in unit_values(SERVICE, "SystemCallFilter")
    assert unit_value(SERVICE, "Requires") == "incoming.socket"
    command = shlex.split(unit_value(SERVICE, "ExecStart"))
    assert "--nodaemon" in command and "--pidfile=" in command
    assert command[command.index("--storage-dir") + 1] == "${STATE_DIRECTORY}"


def test_sysusers_file_creates_the_service_user(tmp_path):
    """systemd-sysusers makes the User= and Group= the service runs as."""
    sysusers = systemd_tool("systemd-sysusers")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    result = subprocess.run([sysusers, f"--root={root}", "-"], input=SYSUSERS.read_text(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    users = {line.split(":")[0]: line.split(":") for line in (root / "etc/passwd").read_text().splitlines()}
    groups = {line.split(":")[0] for line in (root / "etc/group").read_text().splitlines()}
    user, group = unit_value(SERVICE, "User"), unit_value(SERVICE, "Group")
    assert user in users and group in groups
    assert users[user][5] == "/var/lib/incoming"  # the StateDirectory
    assert users[user][6].endswith("nologin")


# What systemd does for an activated service, in a process we start: the
# listening socket becomes fd 3, LISTEN_FDS/LISTEN_FDNAMES describe it, and
# LISTEN_PID is the pid of the process that execs twistd (twistd only adopts
# descriptors meant for its own pid).  Twisted also ignores the descriptors
# when LISTEN_FDNAMES is missing, as systemd has set it since version 227.
AS_SYSTEMD = """
import os, sys
fd, name, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.set_inheritable(3, True)
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES=name)
os.execv(argv[0], argv)
"""


def service_command(storage, options=""):
    """The service's ExecStart as systemd runs it: our twistd, with
    ${STATE_DIRECTORY} as one word and $INCOMING_OPTS (from
    /etc/default/incoming) split into words, none when empty."""
    command = shlex.split(unit_value(SERVICE, "ExecStart"))
    command[0] = TWISTD
    expanded = []
    for word in command:
        if word == "${STATE_DIRECTORY}":
            expanded.append(storage)
        elif word == "$INCOMING_OPTS":
            expanded.extend(options.split())
        else:
            assert "$" not in word, f"expand {word} here as systemd does"
            expanded.append(word)
    return expanded


class ActivatedServer:
    """The service's command line on a listening socket made here."""

    def __init__(self, tmp_path, options=""):
        host, _, _ = unit_value(SOCKET, "ListenStream").rpartition(":")
        self.storage = tmp_path / "state"
        self.storage.mkdir()
        self.log_path = tmp_path / "twistd.log"
        self._log = open(self.log_path, "wb")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind((host, 0))  # the unit's address, a free port
        listener.listen(128)
        self.port = listener.getsockname()[1]
        env = dict(os.environ, STATE_DIRECTORY=str(self.storage))
        self.process = subprocess.Popen(
            [sys.executable, "-c", AS_SYSTEMD, str(listener.fileno()),
             unit_value(SOCKET, "FileDescriptorName"),
             *service_command(str(self.storage), options)],
            pass_fds=(listener.fileno(),), env=env, cwd=tmp_path,
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        listener.close()  # the server holds the only copy now

    def url(self, path):
        return f"http://127.0.0.1:{self.port}/incoming/0.1/{path}"

    def log(self):
        return self.log_path.read_text(errors="replace")

    async def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            for _ in range(400):
                if self.process.poll() is not None:
                    break
                await task.deferLater(reactor, 0.05, lambda: None)
            else:
                self.process.kill()
        self._log.close()
        return self.process.wait()


@pytest_twisted.ensureDeferred
async def test_socket_activated_server_takes_an_upload_and_stops_cleanly(tmp_path, backend):  # noqa: F811
    server = ActivatedServer(tmp_path, options="--chunk-size 256")  # INCOMING_OPTS
    try:
        # The socket listens before twistd runs: this request waits in the
        # backlog instead of being refused, then twistd answers it.
        try:
            response = await treq.get(server.url("frontend/incoming.js"), timeout=60)
        except Exception as e:
            raise AssertionError(f"no answer on the inherited socket ({e!r}): {server.log()}")
        assert response.code == 200, server.log()
        assert b"Uploader" in await response.content()

        response = await treq.post(server.url("backend/new_upload"),
                                   params={"signalFinishURL": backend.url,
                                           "removeFileWhenFinished": "false"})
        ticket = await response.text()
        assert response.code == 200, ticket
        data = os.urandom(5 * 256 * 1024 + 77)
        outcome = await upload(server.port, ticket, data=data)
        assert outcome.first("MsgUploadConf")["ChunkSizeKB"] == 256
        assert outcome.last()[0] == "MsgAllDone", outcome.messages
        stored = server.storage / ticket  # in $STATE_DIRECTORY
        assert stored.read_bytes() == data
        assert backend.calls[0]["filename"] == str(stored)
    finally:
        code = await server.stop()
    # twistd re-raises SIGTERM after a clean shutdown: systemd counts both
    # exit 0 and death by SIGTERM as success (no Restart=on-failure).
    assert code in (0, -signal.SIGTERM), server.log()
    assert "Server Shut Down" in server.log()
    assert "Traceback" not in server.log()


@pytest.mark.parametrize("listen_pid", [None, "parent"])
def test_without_a_socket_from_systemd_the_service_refuses_to_start(tmp_path, listen_pid):
    """Started without its socket (or with descriptors meant for another
    process), the service stops at once with an error about --port instead of
    listening anywhere else."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    if listen_pid == "parent":
        env.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="incoming")
    (tmp_path / "state").mkdir()
    result = subprocess.run(service_command(str(tmp_path / "state")), env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "--port 'systemd:domain=INET:index=0'" in result.stderr + result.stdout
