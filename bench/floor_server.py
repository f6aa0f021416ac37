"""
The floor: the least a server built as Incoming!! is (twisted.web for the
backend API, Autobahn for the WebSocket, a Twisted ``Agent`` for the
handover) can do for one 0.1 upload cycle, so that the bench can say how
much of a small upload's cost is the stack's and how much is ours.

``new_upload`` answers a ticket id; the WebSocket answers MsgUploadReq
with MsgUploadConf, writes each chunk where it belongs and acks it, and
after the last one renames the file, POSTs the handover form on a kept
connection, sends MsgAllDone and closes.  Nothing else: no records, no
locks, no sha256, no log lines, no timers of its own, the file work
(and, with ``--fsync complete``, a sync before the rename) done on the
reactor thread, which Incoming!! must not do.  A WebSocket upgrade
of the upload URL is routed past twisted.web as Incoming!! routes it.

    python -m bench.floor_server --port 4002 --dir /tmp/floor
"""

from __future__ import annotations

import argparse
import json
import os
import uuid
from urllib.parse import urlencode

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource

from bench.procstat import raise_open_files_limit
from incoming.autobahn_debug import format_debug_lines_lazily
from incoming.form_client import FORM, BytesBody
from incoming.ws_route import UploadSite

UPLOAD_WS = b"/incoming/0.1/frontend/upload_ws"
CHUNK_KB = 512


class NewUpload(Resource):
    isLeaf = True

    def __init__(self, tickets: dict):
        super().__init__()
        self._tickets = tickets

    def render_POST(self, request):
        ticket = str(uuid.uuid4())
        self._tickets[ticket] = request.args[b"signalFinishURL"][0]
        return ticket.encode()


class FloorUpload(WebSocketServerProtocol):
    """One upload: where its bytes go, and the handover at the end."""

    def _send(self, kind: str, data: dict) -> None:
        self.sendMessage(json.dumps({"MsgType": kind, "MsgData": data}).encode())

    def onMessage(self, payload, isBinary):
        if isBinary:
            os.pwrite(self.fd, payload, self.pos)
            self.pos += len(payload)
            self._send("MsgChunkAck", {"ChunkSize": len(payload)})
            if self.pos == self.length:
                self._hand_over()
            return
        message = json.loads(payload)
        if message["MsgType"] != "MsgUploadReq":
            return  # MsgAck
        request = message["MsgData"]
        self.id, self.length, self.pos = request["Id"], request["LengthBytes"], 0
        self.path = os.path.join(self.factory.folder, self.id)
        self.fd = os.open(self.path + ".part", os.O_WRONLY | os.O_CREAT, 0o640)
        self._send("MsgUploadConf", {"ChunkSizeKB": CHUNK_KB, "FilePos": 0, "SendAhead": 4})
        if self.length == 0:
            self._hand_over()

    def _hand_over(self) -> None:
        if self.factory.sync:
            os.fsync(self.fd)
        os.close(self.fd)
        os.rename(self.path + ".part", self.path)
        form = {"id": self.id, "backendSecret": "", "filename": self.path,
                "filenameFromBrowser": "", "cancelled": "no", "cancelReason": ""}
        url = self.factory.tickets.pop(self.id)
        d = self.factory.agent.request(b"POST", url, Headers({b"Content-Type": [FORM]}),
                                       BytesBody(urlencode(form).encode()))
        d.addCallback(readBody)
        d.addCallbacks(self._handed_over, self._failed)

    def _handed_over(self, _body) -> None:
        self._send("MsgAllDone", {"Success": True})
        self.sendClose(1000)

    def _failed(self, failure) -> None:
        self._send("MsgError", {"Code": 8, "Msg": str(failure.value)})
        self.sendClose(1000)


def make_site(folder: str, sync: bool = False) -> UploadSite:
    format_debug_lines_lazily()  # as Incoming!! does: Autobahn's debug lines cost
    tickets: dict[str, bytes] = {}
    factory = WebSocketServerFactory()
    factory.protocol = FloorUpload
    factory.setProtocolOptions(maxFramePayloadSize=CHUNK_KB * 1024,
                               maxMessagePayloadSize=CHUNK_KB * 1024)
    factory.folder = folder
    factory.sync = sync  # --fsync complete: each file synced before its rename
    factory.tickets = tickets
    factory.agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=True))
    root, api = Resource(), Resource()
    version, backend, frontend = Resource(), Resource(), Resource()
    root.putChild(b"incoming", api)
    api.putChild(b"0.1", version)
    version.putChild(b"backend", backend)
    version.putChild(b"frontend", frontend)
    backend.putChild(b"new_upload", NewUpload(tickets))
    frontend.putChild(b"upload_ws", WebSocketResource(factory))
    return UploadSite(root, UPLOAD_WS, factory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backlog", type=int, default=1024)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--fsync", choices=("none", "complete"), default="none")
    args = parser.parse_args()
    raise_open_files_limit()
    os.makedirs(args.dir, exist_ok=True)
    reactor.listenTCP(args.port, make_site(args.dir, args.fsync == "complete"), backlog=args.backlog,
                      interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main()
