"""Test doubles shared by several test modules."""

import os

import attr


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


def fired(d):
    """The result of a Deferred that has already fired (stores that run at
    once, as in unit tests); raises its failure."""
    results = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


def embedded_registry(settings, backend, clock, **kw):
    """A registry on the embedded stores, storage work done at once."""
    from incoming.embedded import embedded_stores
    from incoming.registry import UploadRegistry
    from incoming.storage_pool import run_here

    stores = embedded_stores(settings, run_here)
    stores.data.prepare()
    return UploadRegistry(settings, stores, backend, clock, **kw)


def create(registry, url="http://backend.example/handover", secret="s3cret", remove=True):
    """A new upload of a registry whose stores answer at once."""
    return fired(registry.create(url, secret, remove))


def data_files(folder) -> list[str]:
    """What the storage folder holds besides records (open ones and the
    tombstones of ended uploads, ``<id>.json``) and the server's lock file,
    sorted."""
    import os

    records = (".json", ".json.tmp", ".json.corrupt")
    return sorted(
        n for n in os.listdir(folder) if not n.endswith(records) and not n.startswith(".incoming.")
    )


def stored_records(folder) -> dict:
    """Every record in the folder, by id, as the server will read it at its
    next start: its line in the ticket log, overridden by its own ``.json``."""
    import json
    import os

    from incoming.ticket_log import read_log

    records = {i: attr.asdict(r) for i, r in read_log(str(folder)).records.items()}
    for name in os.listdir(folder):
        if name.endswith(".json"):
            with open(os.path.join(folder, name)) as f:
                records[name[: -len(".json")]] = json.load(f)
    return records


def open_records(folder) -> list[str]:
    """"<id> (<state>)" of each record in the folder that is not a tombstone."""
    return sorted(
        f"{i} ({r['state']})"
        for i, r in stored_records(folder).items()
        if r["state"] not in ("finished", "cancelled")
    )


def open_files(pid: int) -> list[str]:
    """What a process's file descriptors point at (deleted files included)."""
    names = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            names.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    return names
