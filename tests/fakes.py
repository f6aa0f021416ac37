"""Test doubles shared by several test modules."""


class FakeChannel:
    """A browser's WebSocket connection as the upload sees it (its channel):
    records what the upload tells the browser."""

    def __init__(self):
        self.events = []

    def send_conf(self, chunk_size_kb, file_pos, send_ahead):
        self.events.append(("conf", file_pos))

    def send_chunk_ack(self, size):
        self.events.append(("chunk_ack", size))

    def finish_ok(self):
        self.events.append(("all_done",))

    def fail(self, code, text):
        self.events.append(("error", code, text))

    def cancelled(self, reason, code):
        self.events.append(("cancelled", reason))

    def cancel_acked(self):
        self.events.append(("cancel_ack",))

    def close(self):
        self.events.append(("close",))

    @property
    def done(self) -> bool:
        return ("all_done",) in self.events
