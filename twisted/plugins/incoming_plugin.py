"""twistd plugin: ``twistd -n incoming --port 4000`` (see incoming.tap)."""

from twisted.application.service import ServiceMaker

Incoming = ServiceMaker(
    "Incoming!!",
    "incoming.tap",
    "Large file uploads over WebSocket, handed over to your web app's backend.",
    "incoming",
)
