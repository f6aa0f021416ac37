"""JSON lines logs (``twistd --logger incoming.logs.json_observer``): the
shape of one event, where the lines go, and a real twistd's log of an
upload, with its secret nowhere in it."""

from __future__ import annotations

import json
import os
import signal
import uuid
from datetime import datetime

import pytest
import pytest_twisted
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from incoming import logs
from test_twistd import TwistdServer, backend, new_upload  # noqa: F401 (fixture)
from wsclient import upload


def event(**fields):
    base = {"log_time": 1700000000.25, "log_level": LogLevel.info,
            "log_namespace": "incoming.upload.Upload", "log_logger": object()}
    return {**base, **fields}


def test_an_event_is_one_line_of_json_with_the_upload_id():
    line = logs.event_as_json(event(
        log_format="upload {id}: paused at byte {pos} of {length}",
        id="1b4e28ba-2fa1-41d2-883f-0016d3cca427", pos=5, length=10,
    ))
    assert line.endswith("\n") and "\n" not in line[:-1]
    record = json.loads(line)
    assert record == {
        "time": "2023-11-14T22:13:20.250+00:00",
        "level": "info",
        "namespace": "incoming.upload.Upload",
        "system": "-",
        "text": "upload 1b4e28ba-2fa1-41d2-883f-0016d3cca427: paused at byte 5 of 10",
        "upload_id": "1b4e28ba-2fa1-41d2-883f-0016d3cca427",
        "pos": 5,
        "length": 10,
    }


def test_objects_are_left_out_and_our_keys_are_not_overwritten():
    record = json.loads(logs.event_as_json(event(
        log_format="{what}", what="x", request=object(), ticket=("a", "b"),
        text="not the text", level="not the level",
    )))
    assert record["text"] == "x"
    assert record["level"] == "info"
    assert "request" not in record and "ticket" not in record


def test_a_failure_carries_its_traceback():
    try:
        1 / 0
    except ZeroDivisionError:
        failure = Failure()
    record = json.loads(logs.event_as_json(event(
        log_format="upload {id}: handover", id="x", log_failure=failure,
        log_level=LogLevel.critical)))
    assert record["level"] == "critical"
    assert "ZeroDivisionError" in record["failure"]


@pytest.mark.parametrize("argv, expected", [
    (["-n", "--logger", "incoming.logs.json_observer", "incoming"], "-"),
    (["--nodaemon", "--logfile", "-", "incoming"], "-"),
    (["-n", "--logfile", "/var/log/in.jsonl", "incoming"], "/var/log/in.jsonl"),
    (["-nl", "in.jsonl", "incoming", "--port", "4000"], "in.jsonl"),
    (["--logfile=in.jsonl", "incoming"], "in.jsonl"),
    (["--logger", "incoming.logs.json_observer", "incoming"], "twistd.log"),  # a daemon
    (["-n", "incoming", "-l", "not-twistds-option"], "-"),
])
def test_the_log_file_is_read_as_twistd_reads_it(argv, expected):
    assert logs._twistd_logfile(argv) == expected


def test_json_observer_writes_to_the_logfile(tmp_path, monkeypatch):
    path = tmp_path / "incoming.jsonl"
    monkeypatch.setattr("sys.argv", ["twistd", "-n", "--logger", "incoming.logs.json_observer",
                                     "--logfile", str(path), "incoming"])
    observer = logs.json_observer()
    Logger(namespace="test", observer=observer).info("upload {id}: created", id="abc")
    [record] = [json.loads(line) for line in path.read_text().splitlines()]
    assert (record["text"], record["upload_id"]) == ("upload abc: created", "abc")


@pytest_twisted.ensureDeferred
async def test_twistd_json_log_of_an_upload(tmp_path, backend):
    secret = "s3cret-" + uuid.uuid4().hex
    server = TwistdServer(tmp_path, twistd_args=["--logger", "incoming.logs.json_observer"])
    try:
        await server.ready()
        ticket = await new_upload(server, backend, backendSecret=secret)
        outcome = await upload(server.port, ticket, data=os.urandom(700 * 1024))
        assert outcome.last()[0] == "MsgAllDone"
        assert backend.calls[0]["backendSecret"] == secret  # it was there to leak
    finally:
        code = await server.stop()
    assert code in (0, -signal.SIGTERM), server.log()

    text = server.log()
    assert secret not in text
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    for record in records:
        assert {"time", "level", "namespace", "text"} <= set(record), record
        datetime.fromisoformat(record["time"])
    ours = [r for r in records if r.get("upload_id") == ticket]
    texts = [r["text"] for r in ours]

    def one(words):
        found = [r for r in ours if words in r["text"]]
        assert len(found) == 1, (words, texts)
        return found[0]

    created = one(": created")
    assert created["namespace"] == "incoming.registry.UploadRegistry"
    assert created["level"] == "info"
    assert one(": browser connected")["how"] == "starting"
    assert one(": complete,")["length"] == 700 * 1024
    one(": handed over")
    assert texts.index(created["text"]) < texts.index(one(": handed over")["text"])
    assert any(r["text"] == "Server Shut Down." for r in records)
