"""Packaging: `python -m build` makes a wheel and an sdist with everything a
server needs, and the wheel alone, installed in a fresh venv, runs
`twistd incoming`.

The wheel's dependencies come from the package index (as for a user).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
import pytest_twisted

import test_twistd
from test_twistd import TwistdServer, backend, new_upload  # noqa: F401 (fixture)
from wsclient import upload

ROOT = Path(__file__).resolve().parent.parent
SOURCE_VERSION = re.search(r'__version__ = "([^"]+)"',
                           (ROOT / "incoming" / "__init__.py").read_text()).group(1)
LIBRARY = ("incoming.js", "incoming.d.ts")
# Never shipped: Twisted's plugin cache, and __init__.py files that would make
# twisted/ or twisted/plugins/ ours instead of Twisted's.
FORBIDDEN = ("twisted/__init__.py", "twisted/plugins/__init__.py", "dropin.cache")
# Left out of the copy we build from: local state of a checkout.
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__", "*.pyc",
    ".hypothesis", ".pytest_cache", "dropin.cache", "incoming-storage", "node_modules",
)


def run(*argv, cwd, timeout=600):
    result = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, f"{argv}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    """(wheel, sdist) built by `python -m build` from a copy of the checkout."""
    base = tmp_path_factory.mktemp("packaging")
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    out = base / "dist"
    run(sys.executable, "-m", "build", "--outdir", out, source, cwd=base)
    [wheel] = out.glob("*.whl")
    [sdist] = out.glob("*.tar.gz")
    return wheel, sdist


@pytest.fixture(scope="module")
def venv(dists, tmp_path_factory):
    """A fresh venv (no system site-packages) with only the wheel installed."""
    wheel, _ = dists
    folder = tmp_path_factory.mktemp("venv") / "venv"
    run(sys.executable, "-m", "venv", folder, cwd=folder.parent)
    run(folder / "bin" / "python", "-m", "pip", "install", "-q", wheel, cwd=folder.parent)
    return folder


def wheel_names(wheel) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        return z.namelist()


def wheel_metadata(wheel):
    with zipfile.ZipFile(wheel) as z:
        [name] = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        return Parser().parsestr(z.read(name).decode("utf-8"))


def test_wheel_holds_the_library_the_plugin_and_the_license(dists):
    wheel, _ = dists
    names = wheel_names(wheel)
    with zipfile.ZipFile(wheel) as z:
        for name in LIBRARY:
            assert z.read(f"incoming/frontend/{name}") == (ROOT / "frontend" / name).read_bytes()
        assert z.read("twisted/plugins/incoming_plugin.py") == (
            ROOT / "twisted" / "plugins" / "incoming_plugin.py").read_bytes()
        [license_file] = [n for n in names if re.search(r"\.dist-info/(licenses/)?LICENSE$", n)]
        assert z.read(license_file) == (ROOT / "LICENSE").read_bytes()
    assert "incoming/frontend/demo/index.html" in names
    assert "incoming/tap.py" in names
    for name in names:
        assert not name.endswith(FORBIDDEN), name
    meta = wheel_metadata(wheel)
    assert meta["Version"] == SOURCE_VERSION
    assert meta["License"] == "MIT" or meta["License-Expression"] == "MIT"
    assert any(r.startswith("Twisted[tls]") for r in meta.get_all("Requires-Dist"))


def test_sdist_holds_what_the_wheel_is_built_from(dists):
    """`python -m build` makes the wheel from the sdist, so the tests above
    prove the sdist complete; here the files a packager looks for."""
    _, sdist = dists
    with tarfile.open(sdist) as t:
        names = [n.split("/", 1)[1] for n in t.getnames() if "/" in n]
    for name in LIBRARY:
        assert f"frontend/{name}" in names
    for name in ("twisted/plugins/incoming_plugin.py", "LICENSE", "README.md",
                 "setup.py", "setup.cfg", "MANIFEST.in", "incoming/tap.py",
                 "frontend/demo/index.html"):
        assert name in names
    for name in names:
        assert not name.endswith(FORBIDDEN), name


def test_MIT_license_names_the_authors():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License")
    assert "Copyright (c) the Incoming!! authors" in text


def test_version_option_in_process(capsys):
    from incoming import __version__
    from incoming.tap import Options

    with pytest.raises(SystemExit) as info:
        Options().parseOptions(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"incoming {__version__}\n"
    assert __version__ == SOURCE_VERSION


def test_installed_wheel_gives_twistd_incoming(venv, tmp_path):
    """From an empty folder, so nothing of the checkout is on sys.path."""
    twistd = venv / "bin" / "twistd"
    help_text = run(twistd, "incoming", "--help", cwd=tmp_path).stdout
    assert "--backend-ca" in help_text and "--storage-dir" in help_text
    version = run(twistd, "incoming", "--version", cwd=tmp_path).stdout
    assert version == f"incoming {SOURCE_VERSION}\n"
    # The package comes from the venv, not the checkout.
    where = run(venv / "bin" / "python", "-c",
                "import incoming, sys; print(incoming.__file__); print(sys.prefix)",
                cwd=tmp_path).stdout.split()
    assert where[0].startswith(str(venv)), where


@pytest_twisted.ensureDeferred
async def test_upload_through_the_installed_wheel(dists, venv, tmp_path, backend, monkeypatch):
    import treq

    with zipfile.ZipFile(dists[0]) as z:
        shipped = z.read("incoming/frontend/incoming.js")

    monkeypatch.setattr(test_twistd, "TWISTD", str(venv / "bin" / "twistd"))
    server = TwistdServer(tmp_path)
    try:
        await server.ready()
        library = await treq.get(
            f"http://127.0.0.1:{server.port}/incoming/0.1/frontend/incoming.js")
        assert library.code == 200
        assert await library.content() == shipped
        data = os.urandom(1024 * 1024 + 17)
        ticket = await new_upload(server, backend, removeFileWhenFinished="false")
        outcome = await upload(server.port, ticket, data=data)
        assert outcome.last()[0] == "MsgAllDone", outcome.messages
        assert (server.storage / ticket).read_bytes() == data
        assert backend.calls[0]["id"] == ticket
    finally:
        await server.stop()
    assert f"upload {ticket}: handed over" in server.log()
