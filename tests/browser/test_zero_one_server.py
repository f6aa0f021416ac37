"""incoming.js against a 0.1 server: a stand-in that speaks the 0.1 protocol
the way the 2014 Go server did (no ErrorCode but 0, no WindowBytes, no new
message types) and serves the library like the real one."""

import asyncio
import hashlib
import json
import threading
from http import HTTPStatus

import pytest
from websockets.asyncio.server import serve
from websockets.datastructures import Headers
from websockets.http11 import Response

from .harness import FRONTEND_JS, LIBRARY_PATH, MiB, free_port, write_test_file

ZERO_ONE_CLIENT_TYPES = {"MsgUploadReq", "MsgAck", "MsgPause", "MsgCancel", "MsgError"}
ZERO_ONE_REQUEST_FIELDS = {"Id", "LengthBytes", "Name"}


class ZeroOneServer:
    """The 0.1 server's behaviour, in a thread: 64 KiB chunks, 4 ahead."""

    def __init__(self, tickets):
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.files = {ticket: bytearray() for ticket in tickets}
        self.client_messages = []
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._stop = None
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait(10)

    def _run(self, ready):
        asyncio.set_event_loop(self._loop)

        async def main():
            self._stop = asyncio.Event()
            async with serve(self._upload, "127.0.0.1", self.port, max_size=None,
                             process_request=self._library, compression=None):
                ready.set()
                await self._stop.wait()

        self._loop.run_until_complete(main())

    def _library(self, connection, request):
        if request.path == LIBRARY_PATH:
            body = FRONTEND_JS.read_bytes()
            headers = Headers({"Content-Type": "application/javascript",
                               "Content-Length": str(len(body))})
            return Response(HTTPStatus.OK, "OK", headers, body)
        return None  # a WebSocket handshake

    async def _upload(self, ws):
        self.connections += 1
        ticket = None
        async for message in ws:
            if isinstance(message, bytes):
                self.files[ticket].extend(message)
                await ws.send(json.dumps({"MsgType": "MsgChunkAck",
                                          "MsgData": {"ChunkSize": len(message)}}))
                if len(self.files[ticket]) == self.length:
                    await ws.send(json.dumps({"MsgType": "MsgAllDone",
                                              "MsgData": {"Success": True}}))
                    await ws.close()
                continue
            msg = json.loads(message)
            self.client_messages.append(msg)
            if msg["MsgType"] == "MsgUploadReq":
                ticket = msg["MsgData"]["Id"]
                if ticket not in self.files:
                    await ws.send(json.dumps({"MsgType": "MsgError", "MsgData": {
                        "ErrorCode": 0, "Msg": "upload id unknown"}}))
                    await ws.close()
                    return
                self.length = msg["MsgData"]["LengthBytes"]
                await ws.send(json.dumps({"MsgType": "MsgUploadConf", "MsgData": {
                    "ChunkSizeKB": 64, "FilePos": len(self.files[ticket]), "SendAhead": 4}}))

    def stop(self):
        self._loop.call_soon_threadsafe(self._stop.set)


@pytest.fixture
def zero_one():
    server = ZeroOneServer(["11111111-2222-4333-8444-555555555555"])
    yield server
    server.stop()


def test_the_library_uploads_to_a_0_1_server_with_0_1_messages(tmp_path, zero_one, open_page):
    path = tmp_path / "old server.bin"
    sha = write_test_file(path, 2 * MiB + 7)
    page = open_page(zero_one.host)
    (i,) = page.start([path], ["11111111-2222-4333-8444-555555555555"])
    page.wait_for(i, "u.finished", 30, "finished against the 0.1 server")
    state = page.now(i)
    assert state["frac_complete"] == 1 and state["bytes_acked"] == 2 * MiB + 7
    stored = bytes(zero_one.files["11111111-2222-4333-8444-555555555555"])
    assert hashlib.sha256(stored).hexdigest() == sha
    # only 0.1 message types; MsgUploadReq only adds Features and LastModified
    assert {m["MsgType"] for m in zero_one.client_messages} <= ZERO_ONE_CLIENT_TYPES
    (request,) = [m for m in zero_one.client_messages if m["MsgType"] == "MsgUploadReq"]
    assert set(request["MsgData"]) - ZERO_ONE_REQUEST_FIELDS == {"Features", "LastModified"}


def test_a_0_1_error_is_a_generic_error_and_ends_the_upload(tmp_path, zero_one, open_page):
    path = tmp_path / "x.bin"
    write_test_file(path, 1000)
    page = open_page(zero_one.host)
    (i,) = page.start([path], ["99999999-2222-4333-8444-555555555555"])
    page.wait_for(i, "r.errors.length > 0", 10, "onerror")
    page.sleep(2)  # no retry loop after the server's final word
    state = page.now(i)
    assert state["error_code"] == page.evaluate("() => incoming.ERROR.GENERIC") == 0
    assert state["error_msg"] == "upload id unknown"
    assert zero_one.connections == 1
