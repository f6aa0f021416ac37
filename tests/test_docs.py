"""The documentation under docs/ tells the truth, and keeps telling it:

- docs/javascript-api.md documents exactly what frontend/incoming.d.ts
  declares (and the error codes have the same numbers);
- docs/configuration.md lists exactly the options of the installed
  `twistd incoming --help`, with the same defaults and YAML keys;
- docs/wire-protocol.md and docs/backend-api.md list every message type,
  error code and HTTP status that the server's code can produce;
- the Python example backend (docs/examples/backend.py) works end to end
  against a real server: ticket, page, a 0.1-style upload, handover
  answered done (or wait + finish_upload), cancel, a repeated handover;
- the Node example (docs/examples/backend.mjs) makes the same calls;
- every relative link in the docs, the README and the changelog resolves.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor, task, threads

from conftest import start_server
from test_config import help_by_option
from wsclient import upload
from fakes import data_files

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def doc(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def section(text: str, heading: str) -> str:
    """The text under a `## heading`, up to the next heading of that level."""
    match = re.search(rf"^## {re.escape(heading)}\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"no section '## {heading}'"
    return match.group(1)


def table_rows(text: str) -> list[list[str]]:
    """The cells of every Markdown table row (header and rule rows included)."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("|") and line.endswith("|"):
            rows.append([cell.strip() for cell in line[1:-1].split("|")])
    return rows


def ticked(cell: str) -> list[str]:
    """The `code spans` of a table cell, in order."""
    return re.findall(r"`([^`]*)`", cell)


# ---- docs/javascript-api.md <-> frontend/incoming.d.ts ----------------------


def _block(text: str, opening: str) -> str:
    """The body of a `{ ... }` block that starts at ``opening``."""
    start = text.index(opening) + len(opening)
    depth, i = 1, start
    while depth:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return text[start:i - 1]


def _without_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def _params(signature: str) -> list[str]:
    return [p.split(":")[0].strip().rstrip("?") for p in signature.split(",") if p.strip()]


def declared_api() -> dict:
    """What incoming.d.ts declares: namespace members, Uploader members
    (name -> parameter names, or None for a property) and ERROR codes."""
    dts = _without_comments((ROOT / "frontend" / "incoming.d.ts").read_text())
    namespace = _block(dts, "declare namespace incoming {")
    uploader = _block(namespace, "class Uploader {")
    codes = _block(namespace, "interface ErrorCodes {")
    top = namespace.replace(uploader, "").replace(codes, "")
    members = {}
    for name, params in re.findall(r"^\s*(?:function|const|class)\s+(\w+)\s*(\([^)]*\))?",
                                   top, re.M):
        members[name] = _params(params[1:-1]) if params else None
    members["Uploader"] = _params(re.search(r"constructor\(([^)]*)\)", uploader).group(1))
    uploader_members = {}
    for name, params in re.findall(r"^\s*(?:readonly\s+)?(\w+)\s*(\([^)]*\))?\s*:",
                                   uploader, re.M):
        if name != "constructor":
            uploader_members[name] = _params(params[1:-1]) if params else None
    error_codes = {name: int(value) for name, value in
                   re.findall(r"readonly\s+(\w+)\s*:\s*(-?\d+)\s*;", codes)}
    return {"namespace": members, "uploader": uploader_members, "errors": error_codes}


def documented_api() -> dict:
    text = doc("javascript-api.md")
    namespace = {}
    for name, params in re.findall(
            r"^#{2,4} `(?:new )?incoming\.(\w+)(\([^)]*\))?`\s*$", text, re.M):
        assert name not in namespace, f"incoming.{name} documented twice"
        namespace[name] = _params(params[1:-1]) if params else None
    uploader = {}
    for row in table_rows(text):
        match = re.fullmatch(r"`uploader\.(\w+)(\(([^)]*)\))?`", row[0])
        if match:
            name, call, params = match.groups()
            assert name not in uploader, f"uploader.{name} documented twice"
            uploader[name] = _params(params) if call else None
    errors = {}
    for row in table_rows(text):
        match = re.fullmatch(r"`incoming\.ERROR\.(\w+)`", row[0])
        if match:
            errors[match.group(1)] = int(row[1])
    return {"namespace": namespace, "uploader": uploader, "errors": errors}


def test_every_uploader_member_of_the_declarations_is_documented_and_vice_versa():
    declared, documented = declared_api(), documented_api()
    assert len(declared["uploader"]) >= 25  # the parser found the class body
    assert documented["uploader"] == declared["uploader"]


def test_every_error_code_is_documented_with_its_number_and_vice_versa():
    declared, documented = declared_api(), documented_api()
    assert declared["errors"]["FILE_READ_ERROR"] == 11
    assert documented["errors"] == declared["errors"]


def test_every_namespace_member_is_documented_and_vice_versa():
    declared, documented = declared_api(), documented_api()
    assert {"set_server_hostname", "Uploader", "ERROR", "version"} <= set(declared["namespace"])
    assert documented["namespace"] == declared["namespace"]


def test_the_library_defines_what_the_declarations_declare():
    """The d.ts is the reference the page is checked against; make sure it
    matches incoming.js itself (names of the exported object, the
    prototype functions, the ERROR table)."""
    js = (ROOT / "frontend" / "incoming.js").read_text()
    exported = set(re.findall(r"^\s+(\w+):", _block(js, "return {"), re.M))
    declared = declared_api()
    assert exported == set(declared["namespace"])
    error_table = _block(js, "var ERROR = {")
    assert {n: int(v) for n, v in re.findall(r"(\w+): (-?\d+)", error_table)} == declared["errors"]
    functions = {n for n, v in declared["uploader"].items() if v is not None}
    assert functions == set(re.findall(r"Uploader\.prototype\.([a-z]\w*) = function", js))
    properties = {n for n, v in declared["uploader"].items() if v is None}
    constructor = _block(js, "function Uploader(upload_id, file) {")
    assigned = set(re.findall(r"^\s+this\.([a-z]\w*) = ", constructor, re.M))
    assert properties <= assigned


# ---- docs/configuration.md <-> twistd incoming --help -----------------------


def help_text(tmp_path, *argv) -> str:
    result = subprocess.run([TWISTD, *argv, "--help"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def help_default(text: str) -> str | None:
    match = re.search(r"\[default: (.*?)\]\s*$", text)
    return match.group(1) if match else None


def documented_options(heading: str) -> dict[str, list[str]]:
    """Option name -> the row's cells, from the table of one section."""
    options = {}
    for row in table_rows(section(doc("configuration.md"), heading)):
        names = re.findall(r"`--([\w-]+)`", row[0])
        if names:
            assert names[0] not in options, f"--{names[0]} documented twice"
            options[names[0]] = row
    return options


def check_default(option: str, cell: str, expected: str | None) -> None:
    """The default cell starts with `the --help default`, or with a dash
    when --help shows none."""
    if expected is None:
        assert cell.startswith("—"), f"--{option}: --help shows no default, the doc says {cell!r}"
    else:
        match = re.match(r"`([^`]*)`", cell)
        assert match, f"--{option}: default cell {cell!r} does not start with `value`"
        assert match.group(1) == expected, f"--{option}: doc {match.group(1)!r}, --help {expected!r}"


# The keys of the 0.1 server's incoming_cfg.yaml (shared/spec/wire-protocol.md).
ZERO_ONE_KEYS = {
    "listen": ["IncomingIP", "IncomingPort"], "storage_dir": ["StorageDir"],
    "chunk_size_kb": ["UploadChunkSizeKB"], "send_ahead": ["UploadSendAhead"],
    "idle_timeout": ["UploadMaxIdleDurationS"],
    "websocket_timeout": ["WebsocketConnectionTimeoutS"],
    "handover_timeout": ["HandoverTimeoutS"],
    "handover_confirm_timeout": ["HandoverConfirmTimeoutS"],
}


def test_configuration_page_lists_every_option_of_twistd_incoming_with_its_default(tmp_path):
    """Run the installed twistd, as an operator would, from an empty folder."""
    options = help_by_option(help_text(tmp_path, "incoming"))
    assert {"port", "storage-dir", "config", "help"} <= set(options)
    documented = documented_options("Options of twistd incoming")
    assert set(documented) == set(options), (
        f"in --help only: {sorted(set(options) - set(documented))}; "
        f"in the doc only: {sorted(set(documented) - set(options))}")
    for option, help_line in options.items():
        row = documented[option]
        assert len(row) == 5 and row[4], f"--{option}: row needs 5 cells with a meaning"
        check_default(option, row[3], help_default(help_line))


def test_configuration_page_names_the_yaml_and_0_1_keys_of_each_option():
    from incoming.config import SETTINGS

    documented = documented_options("Options of twistd incoming")
    by_flag = {s.flag: s for s in SETTINGS}
    for option, row in documented.items():
        setting = by_flag.get(option)
        if setting is None:
            assert row[1] == row[2] == "—", f"--{option} has no config key"
            continue
        yaml_keys = ["IncomingIP", "IncomingPort"] if setting.yaml_key is None \
            else [setting.yaml_key]
        assert ticked(row[2]) == yaml_keys, option
        assert ticked(row[1]) == ZERO_ONE_KEYS.get(setting.field, []), option
        assert ticked(row[1]) or row[1] == "—", option


def test_configuration_page_lists_twistd_options_that_exist(tmp_path):
    options = help_by_option(help_text(tmp_path))
    documented = documented_options("Options of twistd itself")
    assert {"nodaemon", "pidfile", "logfile", "logger"} <= set(documented)
    for option, row in documented.items():
        assert option in options, f"twistd has no --{option}"
        check_default(option, row[1], help_default(options[option]))


def test_the_config_example_of_the_configuration_page_is_accepted(tmp_path):
    """Both YAML blocks of the page are read by the real config reader."""
    from incoming.config import read_yaml_config

    blocks = re.findall(r"```yaml\n(.*?)```", doc("configuration.md"), re.S)
    assert len(blocks) == 2
    first = read_yaml_config(blocks[0])
    assert first["listen"] == "tcp:4000:interface=127.0.0.1"
    assert first["chunk_size_kb"] == 512
    second = read_yaml_config(blocks[1])
    assert second["max_file_size"] == 20 << 30
    assert second["allowed_origins"] == ("https://app.example.com", "https://*.example.org")


# ---- docs/wire-protocol.md and docs/backend-api.md <-> the server's code ----


def test_wire_protocol_page_lists_every_message_type_and_error_code():
    from incoming import wire

    text = doc("wire-protocol.md")
    source = (ROOT / "incoming" / "wire.py").read_text()
    server_types = set(re.findall(r'_encode\("(\w+)"', source))
    documented_types = {row[0].strip("`") for row in table_rows(section(text, "Messages"))
                        if row[0].startswith("`Msg")}
    assert documented_types == set(wire.CLIENT_MESSAGE_TYPES) | server_types
    codes = {}
    for row in table_rows(section(text, "Error codes")):
        if row[0].isdigit():
            codes[row[1].strip("`")] = int(row[0])
    # 11 is sent by incoming.js only (FILE_READ_ERROR), never by the server.
    assert codes == {code.name: int(code) for code in wire.ErrorCode} | {"FILE_READ_ERROR": 11}
    close_codes = {row[0] for row in table_rows(section(text, "Close codes"))}
    assert {"1000", "1001", "1009"} <= close_codes


def test_backend_api_page_lists_every_status_the_api_answers():
    source = (ROOT / "incoming" / "backend_api.py").read_text()
    statuses = {int(s) for s in re.findall(r"ApiError\((\d{3})", source)}
    statuses |= {int(s) for s in re.findall(r"text_response\(\s*request,\s*(\d{3})", source)}
    assert {200, 400, 401, 403, 404, 405, 412, 503} <= statuses
    documented = {int(row[0]) for row in table_rows(section(doc("backend-api.md"), "Status codes"))
                  if row[0].isdigit()}
    assert documented == statuses


def test_backend_api_page_documents_every_handover_field():
    """The fields the server's handover and cancellation POSTs carry."""
    source = (ROOT / "incoming" / "handover.py").read_text()
    fields = set(re.findall(r'^\s+"(\w+)": ', source, re.M))
    fields |= set(re.findall(r'fields\["(\w+)"\] = ', source))  # sha256, destType
    handover = section(doc("backend-api.md"), "The handover POST your backend receives")
    documented = {row[0].strip("`") for row in table_rows(handover) if row[0].startswith("`")}
    assert fields == documented


# ---- links and excerpts --------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return {slug(h) for h in re.findall(r"^#+ (.*)$", text, re.M)}


MARKDOWN = sorted(DOCS.glob("*.md")) + [ROOT / "README.md", ROOT / "CHANGELOG.md"]


@pytest.mark.parametrize("page", MARKDOWN, ids=lambda p: p.name)
def test_relative_links_and_anchors_resolve(page):
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # an absolute URL
        path_part, _, anchor = target.partition("#")
        path = (page.parent / path_part).resolve() if path_part else page
        assert path.exists(), f"{page.name}: broken link {target}"
        if anchor and path.suffix == ".md":
            assert anchor in anchors(path), f"{page.name}: no heading for #{anchor} in {path.name}"


def test_readme_links_every_page_of_the_docs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for page in DOCS.glob("*.md"):
        assert f"(docs/{page.name})" in readme, f"README does not link docs/{page.name}"
    assert "(CHANGELOG.md)" in readme


def _is_excerpt_of(block: str, source: str) -> bool:
    """True if the block's lines are consecutive lines of the source, all
    indented by the same amount there."""
    lines, source_lines = block.rstrip("\n").splitlines(), source.splitlines()
    for start, line in enumerate(source_lines):
        indent = len(line) - len(lines[0])
        if indent < 0 or line[indent:] != lines[0] or line[:indent].strip():
            continue
        window = source_lines[start:start + len(lines)]
        if len(window) == len(lines) and all(
                s[indent:] == b if b else not s.strip() for s, b in zip(window, lines)):
            return True
    return False


def test_code_excerpts_of_the_integration_guide_are_copied_from_the_examples():
    text = doc("backend-integration.md")
    blocks = {"python": DOCS / "examples" / "backend.py", "js": DOCS / "examples" / "backend.mjs"}
    count = 0
    for language, block in re.findall(r"```(python|js)\n(.*?)```", text, re.S):
        source = blocks[language].read_text(encoding="utf-8")
        assert _is_excerpt_of(block, source), f"not in {blocks[language].name}:\n{block}"
        count += 1
    assert count >= 8
    assert "(examples/backend.py)" in text and "(examples/backend.mjs)" in text


# ---- the Python example backend, end to end -------------------------------------


def load_example():
    spec = importlib.util.spec_from_file_location("example_backend",
                                                  DOCS / "examples" / "backend.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def loopback_without_proxy(monkeypatch):
    """The example's requests go to loopback even where a proxy is set."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


class ExampleRun:
    """The example backend's web app on a loopback port, in a thread, talking
    to a real Incoming!! server (tests/conftest.py) in this process."""

    def __init__(self, tmp_path, server, answer):
        self.module = load_example()
        self.server = server
        self.web = self.module.serve(None, "127.0.0.1", 0)
        self.base = f"http://127.0.0.1:{self.web.server_address[1]}"
        incoming = f"http://127.0.0.1:{server.port}"
        self.backend = self.module.ExampleBackend(
            self.module.IncomingClient(incoming), incoming_public_url=incoming,
            handover_url=f"{self.base}/incoming/handover",
            files_dir=str(tmp_path / "received"), answer=answer)
        self.web.set_app(self.module.make_app(self.backend))
        self.thread = threading.Thread(target=self.web.serve_forever, daemon=True)
        self.thread.start()

    async def post(self, path, **form):
        # persistent=False: wsgiref answers in HTTP/1.0 and closes, which
        # Twisted's connection pool does not notice in time for a quick
        # second request.
        response = await treq.post(self.base + path, data=form, persistent=False)
        return response.code, await response.text()

    async def ticket(self) -> str:
        code, text = await self.post("/ticket")
        assert code == 200, text
        return json.loads(text)["ticket"]

    async def until(self, condition, timeout=10.0):
        for _ in range(int(timeout / 0.05)):
            if condition():
                return
            await task.deferLater(reactor, 0.05, lambda: None)
        raise AssertionError("condition not met in time")

    async def stop(self):
        await threads.deferToThread(self.web.shutdown)
        self.web.server_close()


@pytest_twisted.ensureDeferred
async def test_python_example_backend_takes_an_upload_answering_done(tmp_path):
    server, stop = await start_server(tmp_path)
    example = ExampleRun(tmp_path, server, answer="done")
    try:
        # The page loads incoming.js from the server and points it there.
        response = await treq.get(example.base + "/", persistent=False)
        page = await response.text()
        assert response.code == 200
        assert f'src="http://127.0.0.1:{server.port}/incoming/0.1/frontend/incoming.js"' in page
        assert f'incoming.set_server_hostname("127.0.0.1:{server.port}")' in page
        library = await treq.get(f"http://127.0.0.1:{server.port}/incoming/0.1/frontend/incoming.js")
        assert library.code == 200
        await library.content()

        ticket = await example.ticket()
        data = os.urandom(300 * 1024 + 7)
        outcome = await upload(server.port, ticket, data=data, name="report.pdf")
        assert outcome.last()[0] == "MsgAllDone", outcome.messages

        record = example.backend.listing()[ticket]
        assert record["status"] == "received"
        assert record["name"] == "report.pdf"
        assert record["sha256"] == hashlib.sha256(data).hexdigest()
        assert Path(record["path"]).read_bytes() == data
        assert Path(record["path"]).name == ticket  # its own name, not the browser's
        assert data_files(server.storage_dir) == []  # moved away; no record left behind

        # The same handover again (as after a restart of the server): done,
        # without touching the file it already has.
        secret = example.backend.uploads[ticket]["secret"]
        again = dict(id=ticket, backendSecret=secret, filename=str(tmp_path / "gone"),
                     filenameFromBrowser="report.pdf", cancelled="no", cancelReason="",
                     sha256=hashlib.sha256(b"").hexdigest())
        assert await example.post("/incoming/handover", **again) == (200, "done")
        assert Path(record["path"]).read_bytes() == data
        # A handover with a wrong secret is refused.
        code, _ = await example.post("/incoming/handover", **{**again, "backendSecret": "x"})
        assert code == 403
        # Too late to cancel a finished upload: Incoming!!'s 412 becomes the example's 409.
        code, text = await example.post("/cancel", id=ticket)
        assert code == 409 and "too late" in text
    finally:
        await example.stop()
        await stop()


@pytest_twisted.ensureDeferred
async def test_python_example_backend_answers_wait_then_calls_finish_upload(
        tmp_path, monkeypatch):
    server, stop = await start_server(tmp_path)
    example = ExampleRun(tmp_path, server, answer="wait")
    finishes = []
    real_finish = example.module.finish_upload_retrying

    def recording_finish(incoming, ticket, secret, patience=60.0):
        finishes.append((ticket, server.registry.get(ticket).state))
        real_finish(incoming, ticket, secret, patience)

    monkeypatch.setattr(example.module, "finish_upload_retrying", recording_finish)
    try:
        ticket = await example.ticket()
        data = os.urandom(200 * 1024)
        outcome = await upload(server.port, ticket, data=data)
        assert outcome.last()[0] == "MsgAllDone", outcome.messages
        # finish_upload came while the server was handing over or waiting
        # (not after the end), and MsgAllDone only after it.
        assert len(finishes) == 1 and finishes[0][0] == ticket
        assert finishes[0][1] in ("handing_over", "waiting_for_finish")
        record = example.backend.listing()[ticket]
        assert record["status"] == "received"
        assert Path(record["path"]).read_bytes() == data
        assert server.registry.get(ticket).state == "finished"
    finally:
        await example.stop()
        await stop()


@pytest_twisted.ensureDeferred
async def test_python_example_backend_cancels_an_upload(tmp_path):
    server, stop = await start_server(tmp_path)
    example = ExampleRun(tmp_path, server, answer="done")
    try:
        ticket = await example.ticket()
        data = os.urandom(512 * 1024)
        # A browser that has sent a quarter of the file and stays connected.
        browser = upload(server.port, ticket, data=data, stop_at=128 * 1024, action="idle")
        await example.until(lambda: server.registry.get(ticket).received == 128 * 1024)
        assert await example.post("/cancel", id=ticket) == (200, "ok")
        outcome = await browser
        assert outcome.last() == ("MsgCancel", {"Reason": "cancelled by the backend",
                                                "ErrorCode": 6})
        # The cancellation comes back to the example's handover URL.
        await example.until(lambda: example.backend.listing()[ticket]["status"] == "cancelled")
        assert example.backend.listing()[ticket]["reason"] == "cancelled by the backend"
        assert data_files(server.storage_dir) == []
    finally:
        await example.stop()
        await stop()


# ---- the Node example -------------------------------------------------------------


def test_node_example_makes_the_documented_calls():
    """Not run here (Node may be missing): its text must make the same calls
    as the Python example, with the parameter names of the API."""
    text = (DOCS / "examples" / "backend.mjs").read_text(encoding="utf-8")
    for needle in (
        "/incoming/0.1/backend/${fn}",
        'method: "POST"',
        "application/x-www-form-urlencoded",
        'this.post("new_upload", {',
        "signalFinishURL,", "backendSecret,", "removeFileWhenFinished:",
        'this.post("cancel_upload", { id, backendSecret })',
        'this.post("finish_upload", { id, backendSecret })',
        "Authorization = `Bearer ${this.token}`",
        'form.get("cancelled") === "yes"',
        'form.get("filename")', 'form.get("filenameFromBrowser")', 'form.get("sha256")',
        "timingSafeEqual",
        'return [200, "done"]', 'return [200, "wait"]',
        "error.status === 412",
        "/incoming/0.1/frontend/incoming.js",
        "incoming.set_server_hostname(",
        "new incoming.Uploader(",
    ):
        assert needle in text, needle
    # The page is the same as the Python example's.
    python_page = load_example().PAGE
    node_page = re.search(r"const PAGE = `(.*?)`;", text, re.S).group(1)
    assert node_page == python_page
