"""
Files that browsers load from this server: ``incoming.js``, its type
declarations and the demo page.

They live in the repository's ``frontend/`` folder, which setup.py installs
as ``incoming/frontend/`` inside the package, so a regular ``pip install .``
serves them; a source checkout serves ``frontend/`` directly.

Every answer carries an ETag (a hash of the content, so a reinstall with the
same bytes keeps browsers' copies valid), Last-Modified and ``Cache-Control:
no-cache``: browsers revalidate each time and get a 304 while the file is
unchanged, so a server upgrade reaches every page at its next load.
Each request stats its file in a storage thread (and reads it there when it
changed), never on the reactor thread.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import re
from pathlib import Path

import attr
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.http import datetimeToString, stringToDatetime
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from .storage_pool import run_here

_log = Logger()

# What we serve, by file name ending; anything else is a 404.
CONTENT_TYPES = {
    ".d.ts": b"application/typescript; charset=utf-8",
    ".js": b"application/javascript; charset=utf-8",
    ".mjs": b"application/javascript; charset=utf-8",  # a module script needs a JS type
    ".html": b"text/html; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
}

# The browser library's files, served at /incoming/0.1/frontend/.
LIBRARY_FILES = ("incoming.js", "incoming.mjs", "incoming.d.ts")

# A file name we look up: no folders, no dot files, no odd characters.
_SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*\Z")


def frontend_dir() -> Path:
    """The folder with incoming.js: in the installed package, else the checkout's."""
    installed = importlib.resources.files("incoming").joinpath("frontend")
    if installed.is_dir():
        return Path(str(installed))
    return Path(__file__).resolve().parent.parent / "frontend"


def content_type(name: str) -> bytes | None:
    for ending, value in CONTENT_TYPES.items():
        if name.endswith(ending):
            return value
    return None


def plain_text(request, status: int, text: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return text.encode("utf-8")


@attr.s(frozen=True, auto_attribs=True)
class _Version:
    """One read of a file: what was on disk at (mtime, size)."""

    mtime_ns: int
    size: int
    body: bytes
    etag: bytes

    @property
    def last_modified(self) -> int:
        return self.mtime_ns // 1_000_000_000


def _load(path: Path, cached: _Version | None) -> _Version | None:
    """Blocking: the file's current content (``cached`` if unchanged), or
    None if it is missing."""
    try:
        st = os.stat(path)
        if cached and (cached.mtime_ns, cached.size) == (st.st_mtime_ns, st.st_size):
            return cached
        body = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    digest = hashlib.sha256(body).hexdigest()[:32]
    return _Version(st.st_mtime_ns, len(body), body, f'"{digest}"'.encode("ascii"))


class FileCache:
    """Reads a file again only when its modification time or size changed.
    The stat (and a read) run through ``run_blocking`` (the storage pool in
    the server), never on the reactor thread."""

    def __init__(self, run_blocking=run_here):
        self._run = run_blocking
        self._versions: dict[Path, _Version] = {}

    def get(self, path: Path) -> Deferred:
        """Fire with the file's current content, or None if it is missing."""

        def keep(version: _Version | None) -> _Version | None:
            if version is None:
                self._versions.pop(path, None)
            else:
                self._versions[path] = version
            return version

        return self._run(_load, path, self._versions.get(path)).addCallback(keep)


def _etag_matches(header: bytes, etag: bytes) -> bool:
    """If-None-Match uses the weak comparison: W/ prefixes do not count."""
    wanted = etag.removeprefix(b"W/")
    for tag in header.split(b","):
        tag = tag.strip()
        if tag == b"*" or tag.removeprefix(b"W/") == wanted:
            return True
    return False


def _not_modified(request, version: _Version) -> bool:
    if_none_match = request.getHeader(b"if-none-match")
    if if_none_match is not None:  # it overrides If-Modified-Since (RFC 9110)
        return _etag_matches(if_none_match, version.etag)
    if_modified_since = request.getHeader(b"if-modified-since")
    if if_modified_since is None:
        return False
    try:
        since = stringToDatetime(if_modified_since)
    except (ValueError, IndexError, KeyError, UnicodeDecodeError):
        return False  # an unreadable date is ignored, as RFC 9110 says
    return version.last_modified <= since


class StaticFile(Resource):
    """One file of the frontend folder; GET and HEAD only."""

    isLeaf = True

    def __init__(self, path: Path, cache: FileCache, public: bool = False):
        """``public``: readable by scripts of any origin (CORS), for files
        that pages import as modules from this server."""
        super().__init__()
        self._public = public
        self._path = path
        self._type = content_type(path.name)
        self._cache = cache

    def render(self, request):
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            return plain_text(
                request,
                405,
                f"method {request.method.decode('latin-1')} not allowed; use GET\n",
            )
        if request.postpath or self._type is None:
            return plain_text(request, 404, "no such file\n")
        gone: list = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def answer(version):
            if not gone:
                self._answer(request, version)

        def failed(failure):
            _log.failure("cannot serve {path}", failure, path=str(self._path))
            if not gone:
                request.write(plain_text(request, 500, "cannot read the file\n"))
                request.finish()

        self._cache.get(self._path).addCallback(answer).addErrback(failed)
        return NOT_DONE_YET

    def _answer(self, request, version: _Version | None) -> None:
        if version is None:
            request.write(plain_text(request, 404, "no such file\n"))
            request.finish()
            return
        request.setHeader(b"etag", version.etag)
        request.setHeader(b"last-modified", datetimeToString(version.last_modified))
        request.setHeader(b"cache-control", b"no-cache")
        if _not_modified(request, version):
            request.setResponseCode(304)  # finished with no body and no Content-Length
            request.finish()
            return
        request.setResponseCode(200)
        request.setHeader(b"content-type", self._type)
        if self._public:  # the library: a page of any origin may import it as a module
            request.setHeader(b"access-control-allow-origin", b"*")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"content-length", b"%d" % version.size)
        if request.method != b"HEAD":
            request.write(version.body)
        request.finish()


class StaticFolder(Resource):
    """Files of one folder by name; the empty name (a trailing /) is ``index``.

    Children added with putChild (an API, say) come first.
    """

    def __init__(self, folder: Path, cache: FileCache, index: str | None = None):
        super().__init__()
        self._folder = folder
        self._cache = cache
        self._index = index

    def getChild(self, name, request):
        try:
            text = name.decode("utf-8")
        except UnicodeDecodeError:
            text = ""
        if not text and self._index:
            text = self._index
        if not _SAFE_NAME.match(text) or content_type(text) is None:
            return _NotFound()
        return StaticFile(self._folder / text, self._cache)

    def render(self, request):
        # /demo without the slash: relative links in the page need it.
        request.setHeader(b"location", request.path + b"/")
        return plain_text(request, 301, "moved to a trailing slash\n")


class _NotFound(Resource):
    isLeaf = True

    def render(self, request):
        return plain_text(request, 404, "no such file\n")


def library_files(frontend: Resource, cache: FileCache | None = None) -> None:
    """Add incoming.js, its module entry incoming.mjs and incoming.d.ts to
    the /incoming/0.1/frontend/ folder."""
    cache = cache or FileCache()
    base = frontend_dir()
    for name in LIBRARY_FILES:
        frontend.putChild(name.encode("ascii"), StaticFile(base / name, cache, public=True))
