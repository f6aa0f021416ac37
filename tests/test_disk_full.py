"""A full disk in the middle of an upload: the browser is told (code 10),
the bytes stored are kept, and the same upload goes on once there is room.
On a real, small file system (a tmpfs mounted by the test), so that the
kernel, not a fake, says ENOSPC."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess

import pytest
import pytest_twisted

from conftest import start_server
from test_protocol import wait_until
from wsclient import upload

MiB = 1 << 20


# Mounting needs root: CI runs as root; elsewhere sudo asks (never a skip).
AS_ROOT = [] if os.geteuid() == 0 else ["sudo"]


@pytest.fixture
def small_disk(tmp_path):
    """A file system of 8 MiB, writable by this process."""
    mount = tmp_path / "disk"
    mount.mkdir()
    options = f"size=8m,uid={os.getuid()},gid={os.getgid()}"
    subprocess.run([*AS_ROOT, "mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)],
                   check=True)
    yield mount
    subprocess.run([*AS_ROOT, "umount", "-l", str(mount)], check=True)


def fill_up(path) -> None:
    """Take every free byte of the file system that holds ``path``."""
    block = b"\0" * (64 * 1024)
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError as e:
            assert e.errno == errno.ENOSPC
    small = b"\0" * 512
    with open(path, "ab", buffering=0) as f:  # the last partial block too
        try:
            while True:
                f.write(small)
        except OSError as e:
            assert e.errno == errno.ENOSPC


def part_size(server, ticket) -> int:
    try:
        return os.path.getsize(os.path.join(server.storage_dir, f"{ticket}.part"))
    except FileNotFoundError:
        return 0


@pytest_twisted.ensureDeferred
async def test_a_disk_that_fills_up_mid_upload_pauses_it_and_it_resumes_later(
    tmp_path, small_disk
):
    data = os.urandom(6 * MiB)
    server, stop = await start_server(
        tmp_path, storage_dir=str(small_disk / "storage"), storage_reserve=0
    )
    try:
        ticket = await server.new_upload(removeFileWhenFinished="false")
        sending = upload(server.port, ticket, data=data, pace=0.01)
        await wait_until(lambda: part_size(server, ticket) >= MiB, timeout=20)
        filler = small_disk / "another program's file"
        fill_up(filler)  # the disk is full while the upload runs

        stopped = await sending
        assert stopped.last()[0] == "MsgError"
        assert stopped.last()[1]["ErrorCode"] == 10
        assert "disk is full" in stopped.last()[1]["Msg"]
        assert server.registry.get(ticket).state == "paused"  # not cancelled
        kept = part_size(server, ticket)
        assert MiB <= kept < len(data)
        assert kept % (64 * 1024) == 0  # a torn chunk is cut back to the last whole one
        with open(os.path.join(server.storage_dir, f"{ticket}.part"), "rb") as f:
            assert f.read() == data[:kept]  # every byte stored is kept, and right
        assert server.backend.calls == []  # the backend hears of no cancellation

        os.unlink(filler)  # room again: the same upload goes on from where it was
        resumed = await upload(server.port, ticket, data=data)
        assert resumed.file_pos == kept
        assert resumed.last()[0] == "MsgAllDone"
        (call,) = await server.backend.wait_for_calls(1)
        assert call["cancelled"] == "no"
        assert call["sha256"] == hashlib.sha256(data).hexdigest()
        with open(call["filename"], "rb") as f:
            assert f.read() == data
    finally:
        await stop()


@pytest_twisted.ensureDeferred
async def test_uploads_that_connect_together_cannot_overcommit_the_disk(tmp_path, small_disk):
    first_data, second_data = os.urandom(5 * MiB), os.urandom(5 * MiB)
    server, stop = await start_server(
        tmp_path, storage_dir=str(small_disk / "storage"), storage_reserve=0
    )
    try:
        first = await server.new_upload()
        second = await server.new_upload()
        sending = upload(server.port, first, data=first_data, pace=0.01)
        await wait_until(lambda: part_size(server, first) > 0, timeout=20)
        # 8 MiB free less a little: enough for either file, not for both
        refused = await upload(server.port, second, data=second_data)
        assert refused.types() == ["MsgError"]
        assert refused.last()[1]["ErrorCode"] == 10
        assert "not enough free space" in refused.last()[1]["Msg"]
        assert server.registry.get(second).state == "created"  # may come back

        assert (await sending).last()[0] == "MsgAllDone"  # the first was not starved
        await wait_until(lambda: not os.path.exists(os.path.join(server.storage_dir, first)))
        again = await upload(server.port, second, data=second_data)  # room once it is gone
        assert again.last()[0] == "MsgAllDone"
        calls = await server.backend.wait_for_calls(2)
        assert [c["sha256"] for c in calls] == [
            hashlib.sha256(first_data).hexdigest(),
            hashlib.sha256(second_data).hexdigest(),
        ]
    finally:
        await stop()
