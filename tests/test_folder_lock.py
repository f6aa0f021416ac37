"""One server per storage folder: a second twistd on the same folder refuses
to start and names the folder; the first goes on; after the first is killed
with -9, a new server starts on the folder at once."""

import os
import signal
import subprocess

import pytest_twisted

from test_twistd import TWISTD, TwistdServer, backend, new_upload  # noqa: F401 (fixture)
from wsclient import upload


@pytest_twisted.ensureDeferred
async def test_a_second_server_on_the_same_folder_refuses_to_start(tmp_path, backend):  # noqa: F811
    first = TwistdServer(tmp_path)
    await first.ready()
    try:
        second = subprocess.run(
            [TWISTD, "-n", "--pidfile=", "incoming", "--port", "tcp:0:interface=127.0.0.1",
             "--storage-dir", str(first.storage)],
            cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )
        assert second.returncode != 0
        said = second.stdout + second.stderr
        assert f"{os.path.abspath(first.storage)} is in use by another Incoming!! server" in said
        assert f"(pid {first.process.pid})" in said
        assert "Traceback" not in said
        ticket = await new_upload(first, backend)  # the first is unharmed
        assert (await upload(first.port, ticket, data=b"still mine")).last()[0] == "MsgAllDone"
    finally:
        first.process.send_signal(signal.SIGKILL)
        await first.stop()
    again = TwistdServer(tmp_path)  # the same folder, a new process
    try:
        await again.ready()  # the kernel dropped the lock with the killed process
    finally:
        await again.stop()
