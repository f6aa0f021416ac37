"""Hypothesis throws random and malformed frames, message sequences and
backend API parameters at a running server; afterwards a normal upload
still succeeds and nothing is left behind."""

import json
import os
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.error import HTTPError
from urllib.parse import urlencode
from urllib.request import Request, urlopen

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from test_twistd import TWISTD
from fakes import data_files, open_records

MSG_TYPES = ["MsgUploadReq", "MsgAck", "MsgPause", "MsgCancel", "MsgError",
             "MsgChunkAck", "MsgAllDone", "", "msguploadreq"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)


@st.composite
def control_message(draw, ticket):
    msg_type = draw(st.sampled_from(MSG_TYPES) | st.text(max_size=12))
    data = draw(st.fixed_dictionaries({}, optional={
        "Id": st.sampled_from([ticket, ticket.upper(), "x", "../../etc/passwd"]) | json_values,
        "LengthBytes": st.integers(-5, 300_000) | json_values,
        "Name": st.text(max_size=30) | json_values,
        "Reason": json_values, "Msg": json_values, "ErrorCode": json_values,
    }))
    shape = draw(st.sampled_from(["ok", "no-data", "list", "junk"]))
    if shape == "ok":
        return json.dumps({"MsgType": msg_type, "MsgData": data}).encode()
    if shape == "no-data":
        return json.dumps({"MsgType": msg_type}).encode()
    if shape == "list":
        return json.dumps([msg_type, data]).encode()
    return draw(st.binary(max_size=64))


@st.composite
def frame_script(draw, ticket):
    frames = []
    if draw(st.booleans()):  # often start like a real client
        length = draw(st.integers(0, 200_000))
        frames.append((False, json.dumps({"MsgType": "MsgUploadReq", "MsgData": {
            "Id": ticket, "LengthBytes": length, "Name": "f"}}).encode()))
    for _ in range(draw(st.integers(0, 8))):
        if draw(st.booleans()):
            frames.append((True, draw(st.binary(max_size=70_000))))
        else:
            frames.append((False, draw(control_message(ticket))))
    return frames


API_PARAM = st.sampled_from(["id", "backendSecret", "signalFinishURL", "destType",
                             "removeFileWhenFinished", "x"])
API_VALUE = st.text(max_size=40) | st.sampled_from(
    ["http://127.0.0.1:1/x", "ftp://a/b", "true", "maybe", "", "0"])


class Backend(BaseHTTPRequestHandler):
    """Answers every handover with done."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"done")

    def log_message(self, *args):
        pass


class Running:
    """`twistd incoming` in a subprocess and a backend thread: plain blocking
    clients can talk to them from Hypothesis tests (no reactor involved)."""

    def __init__(self, folder):
        self.storage_dir = str(folder / "storage")
        self.backend = ThreadingHTTPServer(("127.0.0.1", 0), Backend)
        threading.Thread(target=self.backend.serve_forever, daemon=True).start()
        self.backend_url = f"http://127.0.0.1:{self.backend.server_address[1]}/handover"
        self.secrets: dict[str, str] = {}  # ticket -> the backendSecret it was made with
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log_path = folder / "twistd.log"
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "incoming", "--port", f"tcp:{self.port}:interface=127.0.0.1",
             "--storage-dir", self.storage_dir, "--websocket-timeout", "2"],
            cwd=folder, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while socket.socket().connect_ex(("127.0.0.1", self.port)) != 0:
            assert self.process.poll() is None and time.monotonic() < deadline, "twistd did not start"
            time.sleep(0.05)

    def url(self, path):
        return f"http://127.0.0.1:{self.port}/incoming/0.1/backend/{path}"

    def call(self, method, path, params, in_query):
        body = urlencode(params).encode()
        url = self.url(path) + ("?" + body.decode() if in_query else "")
        request = Request(url, data=None if in_query or method == "GET" else body, method=method)
        try:
            with urlopen(request, timeout=10) as response:
                answer = response.status, response.headers["content-type"], response.read().decode()
        except HTTPError as e:
            return e.code, e.headers["content-type"], e.read().decode()
        if path == "new_upload" and answer[0] == 200:  # a ticket: keep its secret
            self.secrets[answer[2].strip()] = params.get("backendSecret", "")
        return answer

    def new_upload(self, **params):
        params.setdefault("signalFinishURL", self.backend_url)
        code, _, text = self.call("POST", "new_upload", params, in_query=False)
        assert code == 200, text
        return text

    def play(self, frames, quiet_after=0.3):
        """Send the frames, then collect what the server says until it closes
        (or says nothing for ``quiet_after`` seconds)."""
        said = []
        with connect(f"ws://127.0.0.1:{self.port}/incoming/0.1/frontend/upload_ws",
                     max_size=None, open_timeout=10) as ws:
            try:
                for is_binary, payload in frames:
                    ws.send(payload if is_binary else payload.decode("utf-8", "replace"))
                while True:
                    said.append(json.loads(ws.recv(timeout=quiet_after)))
            except (TimeoutError, ConnectionClosed):
                pass
        return said

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()
        self.backend.shutdown()


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    server = Running(tmp_path_factory.mktemp("fuzz"))
    yield server
    server.stop()


FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@FUZZ
@given(data=st.data())
def test_random_frames_never_break_the_server(running, data):
    ticket = running.new_upload()
    for message in running.play(data.draw(frame_script(ticket))):
        # whatever it said is valid protocol
        assert message["MsgType"] in {"MsgUploadConf", "MsgChunkAck", "MsgError", "MsgCancel",
                                      "MsgCancelAck", "MsgAllDone"}
        if message["MsgType"] == "MsgError":
            assert isinstance(message["MsgData"]["ErrorCode"], int)
            assert message["MsgData"]["Msg"]


@FUZZ
@given(path=st.sampled_from(["new_upload", "cancel_upload", "finish_upload"]),
       params=st.dictionaries(API_PARAM, API_VALUE, max_size=5),
       method=st.sampled_from(["POST", "GET", "PUT"]),
       in_query=st.booleans())
def test_random_api_calls_get_clear_answers(running, path, params, method, in_query):
    code, content_type, text = running.call(method, path, params, in_query)
    assert code in (200, 400, 403, 404, 405, 412), (code, text)
    assert content_type.startswith("text/plain")
    if code != 200:
        assert text.strip()


def test_after_the_fuzzing_a_normal_upload_works_and_nothing_is_left(running):
    data = os.urandom(300 * 1024)
    ticket = running.new_upload(removeFileWhenFinished="false")
    frames = [(False, json.dumps({"MsgType": "MsgUploadReq", "MsgData": {
        "Id": ticket, "LengthBytes": len(data), "Name": "after-fuzz.bin"}}).encode())]
    frames += [(True, data[i:i + 100 * 1024]) for i in range(0, len(data), 100 * 1024)]
    said = running.play(frames, quiet_after=30)  # the server closes after MsgAllDone
    assert said[-1]["MsgType"] == "MsgAllDone", said[-3:]
    with open(os.path.join(running.storage_dir, ticket), "rb") as f:
        assert f.read() == data
    assert running.process.poll() is None  # the server survived it all
    log = running.log_path.read_text(errors="replace")
    assert "Traceback" not in log and "Unhandled" not in log
    # cancel whatever the fuzzing left open; then only the kept file remains
    # (with each ticket's secret: a fuzzed new_upload may have set one)
    for record in open_records(running.storage_dir):
        upload_id = record.split()[0]
        secret = running.secrets.get(upload_id, "")
        code, _, text = running.call("POST", "cancel_upload",
                                     {"id": upload_id, "backendSecret": secret}, in_query=False)
        assert code in (200, 412), (upload_id, code, text)  # 412: being handed over
    for _ in range(100):  # cancelled files and tombstones: in storage threads
        if not open_records(running.storage_dir) and data_files(running.storage_dir) == [ticket]:
            break
        time.sleep(0.05)
    leftovers = data_files(running.storage_dir)
    assert leftovers == [ticket], leftovers
    assert open_records(running.storage_dir) == []  # tombstones only, until retention
