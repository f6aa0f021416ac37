"""A bare WebSocket sink for the browser benchmark: takes binary messages
and throws them away; a text message "count" is answered with the bytes
taken so far.  What a page can send at most over one WebSocket, to compare
incoming.js with.  Run as ``python sink.py PORT``; prints "ready"."""

from __future__ import annotations

import sys

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor


class Sink(WebSocketServerProtocol):
    def onConnect(self, request):
        self.count = 0

    def onMessage(self, payload, isBinary):
        if isBinary:
            self.count += len(payload)
        else:
            self.sendMessage(str(self.count).encode())


def main() -> None:
    port = int(sys.argv[1])
    factory = WebSocketServerFactory(f"ws://127.0.0.1:{port}")
    factory.protocol = Sink
    factory.setProtocolOptions(maxFramePayloadSize=0, maxMessagePayloadSize=0)
    reactor.listenTCP(port, factory, interface="127.0.0.1")
    reactor.callWhenRunning(lambda: print("ready", flush=True))
    reactor.run()


if __name__ == "__main__":
    main()
