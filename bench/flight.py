"""How much a load client keeps unacknowledged: the 0.1 window (SendAhead
chunks) or the byte window a server grants with the "byte-window" feature."""

from __future__ import annotations

import math
import time
from collections import deque


class Flight:
    """How much may be unacknowledged.

    0.1: SendAhead chunks.  Byte window: up to min(WindowBytes, 2 x the
    measured bandwidth-delay product) bytes, never less than SendAhead
    chunks.  The delay is the quickest ack round trip seen; the bandwidth
    the best delivery rate seen over a round trip (as BBR measures it), so
    the window doubles each round trip until the link is full.
    """

    def __init__(self, chunk: int, send_ahead: int, window_bytes: int | None = None):
        self._send_ahead = send_ahead
        self._floor = send_ahead * chunk
        self.window_bytes = window_bytes
        self._chunks = deque()  # (size, sent at, bytes delivered then, time of that)
        self.bytes = 0
        self._delivered = 0
        self._delivered_at = time.monotonic()
        self.min_rtt = math.inf
        self.max_rate = 0.0
        self.peak = 0  # most bytes ever in flight

    def limit(self) -> int:
        bdp = self.max_rate * self.min_rtt if self.max_rate else 0
        return int(max(self._floor, min(self.window_bytes, 2 * bdp)))

    def may_send(self, size: int) -> bool:
        if self.window_bytes is None:
            return len(self._chunks) < self._send_ahead
        return not self._chunks or self.bytes + size <= self.limit()

    def sent(self, size: int) -> None:
        self._chunks.append((size, time.monotonic(), self._delivered, self._delivered_at))
        self.bytes += size
        self.peak = max(self.peak, self.bytes)

    def acked(self) -> None:
        size, sent_at, delivered, delivered_at = self._chunks.popleft()
        now = time.monotonic()
        self.bytes -= size
        self._delivered += size
        self._delivered_at = now
        self.min_rtt = min(self.min_rtt, now - sent_at)
        if now > delivered_at:
            self.max_rate = max(self.max_rate, (self._delivered - delivered) / (now - delivered_at))

    def summary(self) -> dict:
        return {"window_bytes": self.window_bytes, "peak_in_flight": self.peak,
                "min_rtt_ms": round(self.min_rtt * 1000, 2),
                "max_rate_mbps": round(self.max_rate / 1e6, 1)}
