"""
An example web app backend for Incoming!! in Python (3.9+, with `requests`).

It does the four things every backend does (docs/backend-integration.md
walks through them):

1. gets an upload ticket from Incoming!! (``new_upload``) for each file the
   page wants to upload;
2. serves a page that loads ``incoming.js`` from the Incoming!! server and
   uploads each file with its ticket;
3. takes the handover POST at its ``signalFinishURL``: checks the secret,
   moves the file into its own folder and answers ``done``, or (with
   ``--answer wait``) answers ``wait``, verifies the file's sha256 in the
   background and then calls ``finish_upload``;
4. cancels an upload on request (``cancel_upload``).

It is plain WSGI on the standard library's server so that it runs as it
is; in Flask, Django or FastAPI the same functions become three views.
What it remembers (tickets, secrets, received files) lives in a dict: a
real backend keeps it in its database, so that a handover that comes twice
(after a restart of Incoming!!) is recognised even across its own restarts.

Run it next to a server started with ``twistd -n incoming --port 4000``:

    pip install requests
    python3 docs/examples/backend.py --incoming http://127.0.0.1:4000 \\
        --listen 127.0.0.1:8000 --files ./received

and open http://127.0.0.1:8000/ in a browser.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import html
import json
import logging
import os
import secrets
import shutil
import socketserver
import threading
import time
from urllib.parse import parse_qs, urlsplit
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import requests

log = logging.getLogger("example-backend")


# ---- 1. the Incoming!! backend API -------------------------------------------


class IncomingError(Exception):
    """Incoming!! answered with an error status; ``str()`` is its message."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class IncomingClient:
    """The three functions of the backend API, as form POSTs.

    ``base_url`` is how this backend reaches Incoming!! (e.g.
    ``http://127.0.0.1:4000``, or nginx's internal address); ``token`` is the
    server's ``--backend-token``, if it has one.
    """

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 10.0):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def _post(self, function: str, **params) -> str:
        url = f"{self.base_url}/incoming/0.1/backend/{function}"
        response = requests.post(url, data=params, headers=self.headers, timeout=self.timeout)
        if response.status_code != 200:
            raise IncomingError(response.status_code, response.text.strip())
        return response.text.strip()

    def new_upload(self, signal_finish_url: str, backend_secret: str,
                   remove_file_when_finished: bool = False) -> str:
        """A new ticket id. 503 (IncomingError) when the server is full."""
        return self._post(
            "new_upload",
            signalFinishURL=signal_finish_url,
            backendSecret=backend_secret,
            removeFileWhenFinished="true" if remove_file_when_finished else "false",
        )

    def cancel_upload(self, upload_id: str, backend_secret: str) -> None:
        """412 (IncomingError) when the file is already being handed over."""
        self._post("cancel_upload", id=upload_id, backendSecret=backend_secret)

    def finish_upload(self, upload_id: str, backend_secret: str) -> None:
        """After answering ``wait``: tell Incoming!! that we are done."""
        self._post("finish_upload", id=upload_id, backendSecret=backend_secret)


# ---- the app: tickets it issued, files it received ---------------------------


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class ExampleBackend:
    """What the app knows and does; the WSGI app below is its web face.

    ``answer`` is how it answers a handover: ``done`` (take the file now) or
    ``wait`` (take it in the background, then call finish_upload).
    """

    def __init__(self, incoming: IncomingClient, incoming_public_url: str,
                 handover_url: str, files_dir: str, answer: str = "done"):
        if answer not in ("done", "wait"):
            raise ValueError("answer must be done or wait")
        self.incoming = incoming
        self.incoming_public_url = incoming_public_url.rstrip("/")
        self.handover_url = handover_url
        self.files_dir = os.path.abspath(files_dir)
        self.answer = answer
        os.makedirs(self.files_dir, exist_ok=True)
        self._lock = threading.Lock()
        # ticket id -> {"secret", "status", "name", "path", "sha256", "reason"}
        # status: open, receiving (wait answered), received, cancelled, failed
        self.uploads: dict[str, dict] = {}

    # 1. a ticket per file, with a secret of its own
    def new_ticket(self) -> str:
        secret = secrets.token_urlsafe(24)
        ticket = self.incoming.new_upload(self.handover_url, secret,
                                          remove_file_when_finished=False)
        with self._lock:
            self.uploads[ticket] = {"secret": secret, "status": "open", "name": None,
                                    "path": None, "sha256": None, "reason": None}
        return ticket

    # 2. the page
    def page(self) -> str:
        server = html.escape(self.incoming_public_url, quote=True)
        host = json.dumps(urlsplit(self.incoming_public_url).netloc)
        return PAGE.replace("{INCOMING_URL}", server).replace("{INCOMING_HOST}", host)

    # 3. the handover: Incoming!! POSTs here (signalFinishURL)
    def handle_handover(self, form: dict[str, str]) -> tuple[int, str]:
        """(HTTP status, body) for one handover or cancellation POST."""
        ticket = form.get("id", "")
        with self._lock:
            record = self.uploads.get(ticket)
        given = form.get("backendSecret", "").encode()
        if record is None or not hmac.compare_digest(given, record["secret"].encode()):
            return 403, "unknown upload or wrong secret\n"  # Incoming!! cancels it
        if form.get("cancelled") == "yes":
            # Incoming!!'s verdict is final: the browser was told the upload
            # failed (even if we took the file but answered too late).
            with self._lock:
                path, record["path"] = record["path"], None
                record["status"] = "cancelled"
                record["reason"] = form.get("cancelReason", "")
                record["name"] = form.get("filenameFromBrowser") or record["name"]
            if path is not None and os.path.exists(path):
                os.unlink(path)
            log.info("upload %s cancelled: %s", ticket, record["reason"])
            return 200, "ok\n"  # the answer to a cancellation is ignored
        with self._lock:
            if record["status"] in ("received", "receiving"):
                # The same handover again (Incoming!! restarted before it
                # read our answer): we have the file already.
                return 200, "done" if record["status"] == "received" else "wait"
            record["status"] = "receiving"
            record["name"] = form.get("filenameFromBrowser", "")
            record["sha256"] = form.get("sha256")  # absent with --digest none
        try:
            # Our own name for the file: never the browser's file name.
            record["path"] = self._take_file(ticket, form["filename"])
        except OSError as e:
            with self._lock:
                record["status"] = "failed"
                record["reason"] = str(e)
            return 500, "cannot take the file\n"  # Incoming!! cancels the upload
        if self.answer == "done":
            with self._lock:
                record["status"] = "received"
            return 200, "done"
        threading.Thread(target=self._verify_then_finish, args=(ticket,), daemon=True).start()
        return 200, "wait"

    def _take_file(self, ticket: str, incoming_path: str) -> str:
        """Move the stored file into our folder (a rename on one file system)."""
        target = os.path.join(self.files_dir, ticket)
        shutil.move(incoming_path, target)
        return target

    def _verify_then_finish(self, ticket: str) -> None:
        """After answering wait: the slow part, then finish_upload."""
        record = self.uploads[ticket]
        if record["sha256"] is not None and sha256_of(record["path"]) != record["sha256"]:
            with self._lock:
                record["status"] = "failed"
                record["reason"] = "sha256 mismatch"
            return  # no finish_upload: Incoming!! cancels it after its confirm timeout
        with self._lock:
            record["status"] = "received"
        finish_upload_retrying(self.incoming, ticket, record["secret"])

    def listing(self) -> dict[str, dict]:
        """What the app knows of each upload, without the secrets."""
        with self._lock:
            return {ticket: {k: v for k, v in record.items() if k != "secret"}
                    for ticket, record in self.uploads.items()}

    # 4. cancel
    def cancel(self, ticket: str) -> None:
        with self._lock:
            record = self.uploads[ticket]
        self.incoming.cancel_upload(ticket, record["secret"])


def finish_upload_retrying(incoming: IncomingClient, ticket: str, secret: str,
                           patience: float = 60.0) -> None:
    """finish_upload, retried while it cannot have arrived yet.

    A 412 right after answering wait means Incoming!! has not read the
    answer yet; a connection error means it is restarting (it keeps
    waiting across a restart).  404 means it no longer knows the upload.
    """
    deadline = time.monotonic() + patience
    while True:
        try:
            incoming.finish_upload(ticket, secret)
            return
        except IncomingError as e:
            if e.status != 412 or time.monotonic() > deadline:
                log.warning("finish_upload %s: %s", ticket, e)
                return
        except requests.ConnectionError as e:
            if time.monotonic() > deadline:
                log.warning("finish_upload %s: %s", ticket, e)
                return
        time.sleep(0.2)


# ---- the page ------------------------------------------------------------------

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>Upload</title>
<script src="{INCOMING_URL}/incoming/0.1/frontend/incoming.js"></script>
<input type="file" id="files" multiple>
<ul id="list"></ul>
<script>
incoming.set_server_hostname({INCOMING_HOST});

async function newTicket() {
    const response = await fetch("/ticket", {method: "POST"});
    if (!response.ok) throw new Error(await response.text());
    return (await response.json()).ticket;
}

document.getElementById("files").onchange = async function (event) {
    for (const file of event.target.files) {
        const line = document.createElement("li");
        document.getElementById("list").appendChild(line);
        const uploader = new incoming.Uploader(await newTicket(), file);
        uploader.onprogress = function (u) {
            line.textContent = u.filename + ": " + Math.round(100 * u.frac_complete) +
                "% (" + u.state_msg + ")";
        };
        uploader.onfinished = function (u) { line.textContent = u.filename + ": received"; };
        uploader.oncancelled = function (u) {
            line.textContent = u.filename + ": cancelled (" + u.cancel_msg + ")";
        };
        uploader.onerror = function (u) {
            line.textContent = u.filename + ": error " + u.error_code + " (" + u.error_msg + ")";
        };
        uploader.start();
    }
};
</script>
"""


# ---- the web app (WSGI) ----------------------------------------------------------


def form_values(environ) -> dict[str, str]:
    """Form values of a urlencoded POST body (and the query string)."""
    values = parse_qs(environ.get("QUERY_STRING", ""))
    try:
        size = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        size = 0
    body = environ["wsgi.input"].read(size) if size else b""
    values.update(parse_qs(body.decode("utf-8")))
    return {key: items[0] for key, items in values.items()}


def make_app(backend: ExampleBackend):
    def app(environ, start_response):
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/")
        content_type = "text/plain; charset=utf-8"
        if method == "GET" and path == "/":
            status, body, content_type = 200, backend.page(), "text/html; charset=utf-8"
        elif method == "POST" and path == "/ticket":
            try:
                status, body = 200, json.dumps({"ticket": backend.new_ticket()})
                content_type = "application/json"
            except IncomingError as e:
                status, body = 503 if e.status == 503 else 502, e.message
        elif method == "POST" and path == "/incoming/handover":
            status, body = backend.handle_handover(form_values(environ))
        elif method == "POST" and path == "/cancel":
            try:
                backend.cancel(form_values(environ).get("id", ""))
                status, body = 200, "ok"
            except KeyError:
                status, body = 404, "no such upload"
            except IncomingError as e:  # 412: too late, the file is being handed over
                status, body = 409, e.message
        elif method == "GET" and path == "/files":
            status, body = 200, json.dumps(backend.listing())
            content_type = "application/json"
        else:
            status, body = 404, "not found"
        reason = {200: "OK", 403: "Forbidden", 404: "Not Found", 409: "Conflict",
                  500: "Internal Server Error", 502: "Bad Gateway",
                  503: "Service Unavailable"}[status]
        data = body.encode("utf-8")
        start_response(f"{status} {reason}", [("Content-Type", content_type),
                                              ("Content-Length", str(len(data)))])
        return [data]

    return app


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):
        log.debug(format, *args)


def serve(backend: ExampleBackend, host: str, port: int) -> WSGIServer:
    """The WSGI server, bound (port 0: any free port); call serve_forever()."""
    return make_server(host, port, make_app(backend), server_class=ThreadingWSGIServer,
                       handler_class=QuietHandler)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--incoming", default="http://127.0.0.1:4000",
                        help="where this backend reaches the Incoming!! backend API")
    parser.add_argument("--incoming-public", default=None,
                        help="where browsers reach Incoming!! (default: --incoming)")
    parser.add_argument("--token", default=os.environ.get("INCOMING_BACKEND_TOKEN"),
                        help="the server's --backend-token, if any")
    parser.add_argument("--listen", default="127.0.0.1:8000", help="host:port of this app")
    parser.add_argument("--files", default="received", help="where received files go")
    parser.add_argument("--answer", choices=("done", "wait"), default="done")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    host, port = args.listen.rsplit(":", 1)
    backend = ExampleBackend(
        IncomingClient(args.incoming, args.token),
        incoming_public_url=args.incoming_public or args.incoming,
        handover_url=f"http://{args.listen}/incoming/handover",
        files_dir=args.files,
        answer=args.answer,
    )
    server = serve(backend, host, int(port))
    log.info("example backend on http://%s/ (files go to %s)", args.listen, backend.files_dir)
    server.serve_forever()


if __name__ == "__main__":
    main()
