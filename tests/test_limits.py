"""Limits and guards: each refuses with a clear error and disturbs nothing else."""

import os

import pytest_twisted
import treq
from twisted.internet import defer

from incoming.config import Settings

from conftest import start_server
from wsclient import upload
from fakes import data_files as folder_data_files

NORMAL = os.urandom(50 * 1024)


async def normal_upload_still_works(server):
    ticket = await server.new_upload(removeFileWhenFinished="false")
    outcome = await upload(server.port, ticket, data=NORMAL)
    assert outcome.last()[0] == "MsgAllDone"
    with open(os.path.join(server.storage_dir, ticket), "rb") as f:
        assert f.read() == NORMAL


def data_files(server):
    """The folder's data files (records and records being written left out)."""
    return folder_data_files(server.storage_dir)


@pytest_twisted.ensureDeferred
async def test_file_above_max_file_size_is_refused_and_the_backend_told(tmp_path):
    server, stop = await start_server(tmp_path, max_file_size=100 * 1024)
    try:
        ticket = await server.new_upload()
        outcome = await upload(server.port, ticket, data=os.urandom(100 * 1024 + 1))
        assert outcome.types() == ["MsgError"]
        assert outcome.last()[1]["ErrorCode"] == 5
        assert "larger than the limit of 102400 bytes" in outcome.last()[1]["Msg"]
        (call,) = await server.backend.wait_for_calls(1)
        assert call["cancelled"] == "yes"
        assert "larger than the limit" in call["cancelReason"]
        assert data_files(server) == []
        await normal_upload_still_works(server)
    finally:
        await stop()


@pytest_twisted.ensureDeferred
async def test_upload_that_cannot_fit_is_refused_but_not_cancelled(tmp_path):
    server, stop = await start_server(tmp_path, storage_reserve=1 << 60)
    try:
        ticket = await server.new_upload()
        outcome = await upload(server.port, ticket, data=NORMAL)
        assert outcome.types() == ["MsgError"]
        assert outcome.last()[1]["ErrorCode"] == 10
        assert "not enough free space" in outcome.last()[1]["Msg"]
        assert server.registry.get(ticket).state == "created"  # may retry later
        assert server.backend.calls == []
        assert data_files(server) == []
        # an empty file needs no space and still works
        empty = await server.new_upload()
        assert (await upload(server.port, empty, data=b"")).last()[0] == "MsgAllDone"
    finally:
        await stop()


@pytest_twisted.ensureDeferred
async def test_max_uploads_answers_503_until_one_ends(tmp_path):
    server, stop = await start_server(tmp_path, max_uploads=2)
    try:
        first = await server.new_upload()
        await server.new_upload()
        code, text = await server.call("new_upload", signalFinishURL=server.backend_url)
        assert code == 503
        assert "too many open uploads (2)" in text
        code, _ = await server.call("cancel_upload", id=first)
        assert code == 200
        await normal_upload_still_works(server)
    finally:
        await stop()


@pytest_twisted.ensureDeferred
async def test_a_burst_of_tickets_stops_at_the_default_cap_and_costs_little(tmp_path):
    """No --max-uploads given: a caller that asks for tickets without end is
    stopped at 100,000 open ones (never-connected tickets count), and what
    they leave on disk is one small line each."""
    server, stop = await start_server(tmp_path)
    try:
        cap = Settings().max_uploads
        assert cap == 100_000
        # the registry as new_upload calls it (an HTTP round trip each would
        # only make the test slow), then the last ones through the API
        burst = [server.registry.create(server.backend_url, "s", True) for _ in range(cap - 1)]
        await defer.gatherResults(burst)
        last = await server.new_upload()
        for _ in range(3):
            code, text = await server.call("new_upload", signalFinishURL=server.backend_url)
            assert code == 503
            assert "too many open uploads (100000)" in text
        assert server.registry.open_count() == cap
        assert os.listdir(server.storage_dir) == [".incoming.tickets"]
        per_ticket = os.path.getsize(os.path.join(server.storage_dir, ".incoming.tickets")) / cap
        assert per_ticket < 320, f"{per_ticket:.0f} bytes on disk per ticket"
        code, _ = await server.call("cancel_upload", id=last, backendSecret="")
        assert code == 200
        await normal_upload_still_works(server)  # room for one again
    finally:
        await stop()


@pytest_twisted.ensureDeferred
async def test_allowed_origins_refuse_other_pages_with_403(tmp_path):
    server, stop = await start_server(tmp_path, allowed_origins=("https://app.example.com",))
    try:
        ticket = await server.new_upload(removeFileWhenFinished="false")
        refused = await upload(server.port, ticket, data=NORMAL, origin="https://evil.example.com")
        assert refused.messages == []
        assert "403" in (refused.close_reason or "")
        assert server.registry.get(ticket).state == "created"
        allowed = await upload(server.port, ticket, data=NORMAL, origin="https://app.example.com")
        assert allowed.last()[0] == "MsgAllDone"
    finally:
        await stop()


@pytest_twisted.ensureDeferred
async def test_backend_allow_refuses_other_addresses(tmp_path):
    server, stop = await start_server(tmp_path, backend_allow=("10.0.0.0/8",))
    try:
        code, text = await server.call("new_upload", signalFinishURL=server.backend_url)
        assert code == 403
        assert "may not call the backend API" in text
        assert len(server.registry) == 0
    finally:
        await stop()
    server, stop = await start_server(tmp_path, backend_allow=("10.0.0.0/8", "127.0.0.0/8"))
    try:
        await normal_upload_still_works(server)
    finally:
        await stop()


@pytest_twisted.ensureDeferred
async def test_backend_token_is_required_as_a_bearer_header(tmp_path):
    server, stop = await start_server(tmp_path, backend_token="t0ken")
    try:
        url = server.url("new_upload")
        params = {"signalFinishURL": server.backend_url}
        missing = await treq.post(url, params=params)
        assert missing.code == 401
        assert "bearer token" in await missing.text()
        wrong = await treq.post(url, params=params, headers={"Authorization": "Bearer nope"})
        assert wrong.code == 401
        right = await treq.post(url, params=params, headers={"Authorization": "Bearer t0ken"})
        assert right.code == 200
        ticket = await right.text()
        outcome = await upload(server.port, ticket, data=NORMAL)  # browsers need no token
        assert outcome.last()[0] == "MsgAllDone"
    finally:
        await stop()
