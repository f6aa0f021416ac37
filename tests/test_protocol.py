"""The 0.1 protocol over a real listening port, with a 0.1-style client."""

import hashlib
import os

import pytest_twisted

from wsclient import upload


def payload(size: int) -> bytes:
    return os.urandom(size)


@pytest_twisted.ensureDeferred
async def test_full_upload_is_handed_over_with_the_same_bytes(server):
    data = payload(300 * 1024 + 17)
    ticket = await server.new_upload(removeFileWhenFinished="false", backendSecret="s3")
    outcome = await upload(server.port, ticket, data=data, name="holiday.mov")
    assert outcome.types()[0] == "MsgUploadConf"
    assert outcome.first("MsgUploadConf") == {"ChunkSizeKB": 64, "FilePos": 0, "SendAhead": 4}
    assert outcome.last() == ("MsgAllDone", {"Success": True})
    assert outcome.close_code == 1000
    (call,) = server.backend.calls
    assert call["id"] == ticket
    assert call["backendSecret"] == "s3"
    assert call["cancelled"] == "no"
    assert call["filenameFromBrowser"] == "holiday.mov"
    assert call["filename"] == os.path.join(server.storage_dir, ticket)
    with open(call["filename"], "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == hashlib.sha256(data).hexdigest()
    assert not os.path.exists(call["filename"] + ".part")
