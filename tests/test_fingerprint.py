"""The "fingerprint" extension: the same ticket resumed with a different
file of the same size (a re-pick after a page reload) is refused with code 4
and nothing is appended; the right file resumes; 0.1 clients keep sizes only."""

from __future__ import annotations

import hashlib
import os

import pytest_twisted

from conftest import start_server
from wsclient import upload

SIZE = 1024 * 1024
FIRST = os.urandom(SIZE)
# Same size, same first half: a camera's RAW files, a disk image re-made...
OTHER = FIRST[: SIZE // 2] + os.urandom(SIZE // 2)
STOP = 3 * SIZE // 4  # the first connection stops here (past where they differ)
FP = ("fingerprint",)
DATE = 1_700_000_000_000


def part(server, ticket) -> bytes:
    with open(os.path.join(server.storage_dir, f"{ticket}.part"), "rb") as f:
        return f.read()


async def started(server, name="IMG_0001.CR3"):
    """A ticket whose upload stopped at STOP, sent by a fingerprint client."""
    ticket = await server.new_upload(removeFileWhenFinished="false")
    first = await upload(server.port, ticket, data=FIRST, name=name, features=FP,
                         last_modified=DATE, stop_at=STOP, action="pause")
    assert first.acked == STOP
    return ticket


async def finishes_with_the_first_file(server, ticket, name="IMG_0001.CR3"):
    resumed = await upload(server.port, ticket, data=FIRST, name=name, features=FP,
                           last_modified=DATE)
    assert resumed.file_pos == STOP
    assert resumed.last()[0] == "MsgAllDone"
    (call,) = await server.backend.wait_for_calls(1)
    assert call["sha256"] == hashlib.sha256(FIRST).hexdigest()
    with open(call["filename"], "rb") as f:
        assert f.read() == FIRST


@pytest_twisted.ensureDeferred
async def test_a_different_file_of_the_same_size_is_refused_and_nothing_appended(tmp_path):
    server, stop = await start_server(tmp_path)
    try:
        ticket = await started(server)
        # same name and date (a copy), other bytes before FilePos
        other = await upload(server.port, ticket, data=OTHER, name="IMG_0001.CR3",
                             features=FP, last_modified=DATE)
        conf = other.first("MsgUploadConf")
        assert conf["Sample"] == {"Offset": STOP - 4096, "Length": 4096}
        assert other.last()[0] == "MsgError"
        assert other.last()[1]["ErrorCode"] == 4
        assert "not the file this upload started with" in other.last()[1]["Msg"]
        assert part(server, ticket) == FIRST[:STOP]  # nothing appended
        assert server.registry.get(ticket).state == "paused"  # the right file may come
        await finishes_with_the_first_file(server, ticket)
    finally:
        await stop()


@pytest_twisted.ensureDeferred
async def test_another_name_or_date_is_refused_before_anything_is_sent(tmp_path):
    server, stop = await start_server(tmp_path)
    try:
        ticket = await started(server)
        renamed = await upload(server.port, ticket, data=FIRST, name="IMG_0002.CR3",
                               features=FP, last_modified=DATE)
        assert renamed.types() == ["MsgError"]
        assert renamed.last()[1]["ErrorCode"] == 4
        assert "file name 'IMG_0002.CR3' differs" in renamed.last()[1]["Msg"]
        redated = await upload(server.port, ticket, data=FIRST, name="IMG_0001.CR3",
                               features=FP, last_modified=DATE + 1000)
        assert redated.types() == ["MsgError"]
        assert redated.last()[1]["ErrorCode"] == 4
        assert "date" in redated.last()[1]["Msg"]
        assert part(server, ticket) == FIRST[:STOP]
        await finishes_with_the_first_file(server, ticket)
    finally:
        await stop()


@pytest_twisted.ensureDeferred
async def test_a_fingerprint_client_must_answer_the_sample_before_sending(tmp_path):
    server, stop = await start_server(tmp_path)
    try:
        ticket = await started(server)
        for how in ("unanswered", "chunks-first"):
            wrong = await upload(server.port, ticket, data=OTHER, name="IMG_0001.CR3",
                                 features=FP, last_modified=DATE, sample=how)
            assert wrong.last()[0] == "MsgError"
            assert wrong.last()[1]["ErrorCode"] == 1, how
            assert part(server, ticket) == FIRST[:STOP], how
        await finishes_with_the_first_file(server, ticket)
    finally:
        await stop()


@pytest_twisted.ensureDeferred
async def test_a_0_1_client_gets_no_sample_and_sizes_alone_are_compared(tmp_path):
    server, stop = await start_server(tmp_path)
    try:
        ticket = await started(server)
        zero_one = await upload(server.port, ticket, data=OTHER, name="another name")
        assert "Sample" not in zero_one.first("MsgUploadConf")
        assert zero_one.last()[0] == "MsgAllDone"  # as 0.1 did: it cannot tell
        (call,) = await server.backend.wait_for_calls(1)
        assert call["sha256"] == hashlib.sha256(FIRST[:STOP] + OTHER[STOP:]).hexdigest()
    finally:
        await stop()
