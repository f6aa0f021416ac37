"""TLS: `twistd incoming --port ssl:...` serves the API, incoming.js and wss:
uploads; the handover to an https backend checks its certificate, against
--backend-ca (a private CA) or the system's trust store.

A private CA and a certificate for 127.0.0.1/localhost are made here with
the `cryptography` package; nothing leaves the machine.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import signal

import attr
import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.ssl import Certificate, optionsForClientTLS, trustRootFromCertificates
from twisted.python.usage import UsageError
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.server import Site

from conftest import FakeBackend
from test_twistd import TwistdServer, free_port
from test_protocol import wait_until
from wsclient import upload

from incoming.config import ConfigError, read_yaml_config
from incoming.tap import Options
from incoming.tls import CertificateError, backend_tls_policy, load_ca_bundle

# Twisted's own TLS endpoint (the in-process https backend) still hands
# pyOpenSSL X509/PKey objects to pyOpenSSL; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")

# ---- a private CA, made for the test -----------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca(common_name: str):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True,
            crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_server_cert(ca_key, ca_cert):
    """A certificate for localhost and 127.0.0.1, signed by the CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


@attr.s(frozen=True, auto_attribs=True)
class Pki:
    ca: str  # PEM file of the CA certificate
    other_ca: str  # an unrelated CA
    bundle: str  # both CAs in one file
    key: str  # the server's private key
    cert: str  # the server's certificate

    def endpoint(self, port: int) -> str:
        return f"ssl:{port}:interface=127.0.0.1:privateKey={self.key}:certKey={self.cert}"

    def trust_root(self):
        with open(self.ca, "rb") as f:
            return trustRootFromCertificates([Certificate.loadPEM(f.read())])


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = make_ca("Incoming!! test CA")
    _, other_cert = make_ca("Some other CA")
    key, cert = make_server_cert(ca_key, ca_cert)
    pem = serialization.Encoding.PEM
    files = {
        "ca": ca_cert.public_bytes(pem),
        "other_ca": other_cert.public_bytes(pem),
        "bundle": other_cert.public_bytes(pem) + ca_cert.public_bytes(pem),
        "key": _pem_key(key),
        "cert": cert.public_bytes(pem),
    }
    paths = {}
    for name, data in files.items():
        path = folder / f"{name}.pem"
        path.write_bytes(data)
        paths[name] = str(path)
    return Pki(**paths)


# ---- the pieces ---------------------------------------------------------------


def test_a_ca_bundle_loads_every_certificate(pki):
    assert len(load_ca_bundle(pki.ca)) == 1
    assert len(load_ca_bundle(pki.bundle)) == 2
    assert isinstance(backend_tls_policy(pki.bundle), BrowserLikePolicyForHTTPS)
    assert isinstance(backend_tls_policy(""), BrowserLikePolicyForHTTPS)


def test_a_bad_ca_file_is_refused_with_its_option_named(pki, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    for path in (str(not_pem), str(tmp_path / "missing.pem"), pki.key):
        with pytest.raises(CertificateError):
            load_ca_bundle(path)
        options = Options()
        with pytest.raises(UsageError, match="--backend-ca"):
            options.parseOptions(["--backend-ca", path])
    with pytest.raises(ConfigError, match="BackendCA"):
        read_yaml_config(f"BackendCA: {not_pem}\n")


def test_backend_ca_from_option_and_config_file(pki, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    options = Options()
    options.parseOptions(["--backend-ca", pki.ca])
    assert options.settings.backend_ca == pki.ca
    config = tmp_path / "incoming_cfg.yaml"
    config.write_text(f"BackendCA: {pki.bundle}\n")
    options = Options()
    options.parseOptions(["--config", str(config)])
    assert options.settings.backend_ca == pki.bundle
    defaults = Options()
    defaults.parseOptions([])
    assert defaults.settings.backend_ca == ""


def test_a_missing_server_key_is_a_usage_error(pki, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    endpoint = f"ssl:0:privateKey={tmp_path / 'nope.pem'}:certKey={pki.cert}"
    with pytest.raises(UsageError, match="--port"):
        Options().parseOptions(["--port", endpoint])


# ---- end to end: twistd over TLS, an https backend ---------------------------


class TlsServer(TwistdServer):
    """`twistd -n incoming --port ssl:...`: the later --port wins over the
    tcp one TwistdServer passes, and ready() waits for our port."""

    def __init__(self, tmp_path, pki, *args):
        port = free_port()
        super().__init__(tmp_path, "--port", pki.endpoint(port), *args)
        self.port = port

    def https(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}/incoming/0.1/{path}"


@pytest_twisted.async_yield_fixture
async def https_backend(pki):
    """FakeBackend behind TLS, with a certificate from the test CA."""
    resource = FakeBackend()
    endpoint = serverFromString(
        reactor, f"ssl:0:interface=127.0.0.1:privateKey={pki.key}:certKey={pki.cert}")
    port = await endpoint.listen(Site(resource))
    # A host name, so the handover checks a DNS name (the wss test an IP).
    resource.url = f"https://localhost:{port.getHost().port}/handover"
    yield resource
    await port.stopListening()


@pytest_twisted.async_yield_fixture
async def trusting_http(pki):
    """A treq client that trusts the test CA only."""
    pool = HTTPConnectionPool(reactor, persistent=False)
    agent = Agent(reactor, contextFactory=BrowserLikePolicyForHTTPS(pki.trust_root()), pool=pool)
    yield HTTPClient(agent)
    await pool.closeCachedConnections()


async def new_upload(http, server, backend) -> str:
    response = await http.post(server.https("backend/new_upload"), data={
        "signalFinishURL": backend.url, "backendSecret": "s3cret",
        "removeFileWhenFinished": "false",
    })
    text = await response.text()
    assert response.code == 200, text
    return text


async def stop(server):
    code = await server.stop()
    assert code in (0, -signal.SIGTERM), server.log()


@pytest_twisted.ensureDeferred
async def test_api_library_and_wss_upload_over_tls_with_https_handover(
        tmp_path, pki, https_backend, trusting_http):
    server = TlsServer(tmp_path, pki, "--backend-ca", pki.ca)
    try:
        await server.ready()
        ticket = await new_upload(trusting_http, server, https_backend)

        library = await trusting_http.get(server.https("frontend/incoming.js"))
        body = await library.content()
        assert library.code == 200
        assert library.headers.getRawHeaders(b"content-type")[0].startswith(
            b"application/javascript")
        assert b"MsgUploadReq" in body

        data = os.urandom(700 * 1024 + 3)
        outcome = await upload(server.port, ticket, data=data,
                               tls=optionsForClientTLS("127.0.0.1", trustRoot=pki.trust_root()))
        assert outcome.last()[0] == "MsgAllDone", outcome.messages
        stored = server.storage / ticket
        assert stored.read_bytes() == data
        [call] = https_backend.calls
        assert call["id"] == ticket
        assert call["backendSecret"] == "s3cret"
        assert call["filename"] == str(stored)
        assert call["content"] == data
    finally:
        await stop(server)
    assert f"upload {ticket}: handed over" in server.log()


@pytest_twisted.ensureDeferred
async def test_a_client_that_does_not_trust_the_ca_is_refused(tmp_path, pki):
    """treq's default (the system's trust store) does not know the test CA."""
    import treq

    server = TlsServer(tmp_path, pki)
    try:
        await server.ready()
        with pytest.raises(Exception) as info:
            await treq.post(server.https("backend/new_upload"),
                            data={"signalFinishURL": "https://localhost/x"})
        assert "certificate verify failed" in _error_text(info.value)
    finally:
        await stop(server)


def _error_text(error: BaseException) -> str:
    reasons = getattr(error, "reasons", None)
    if reasons:
        return "; ".join(_error_text(r.value) for r in reasons)
    return str(error)


@pytest.mark.parametrize("backend_ca", [None, "other_ca"])
@pytest_twisted.ensureDeferred
async def test_handover_to_an_untrusted_backend_fails_with_a_certificate_error(
        tmp_path, pki, https_backend, trusting_http, backend_ca):
    """Without --backend-ca the system's trust store is used, which does not
    know the test CA; with an unrelated CA it fails as well."""
    args = ["--backend-ca", getattr(pki, backend_ca)] if backend_ca else []
    server = TlsServer(tmp_path, pki, *args)
    try:
        await server.ready()
        ticket = await new_upload(trusting_http, server, https_backend)
        data = os.urandom(1000)
        outcome = await upload(server.port, ticket, data=data,
                               tls=optionsForClientTLS("127.0.0.1", trustRoot=pki.trust_root()))
        msg_type, msg = outcome.last()
        assert msg_type == "MsgError", outcome.messages
        assert msg["ErrorCode"] == 7
        assert msg["Msg"] == "handover request failed: TLS error: certificate verify failed"
        assert https_backend.calls == []  # no request got through
        # deleted in a storage thread, just after the browser is told
        await wait_until(lambda: not (server.storage / ticket).exists())
    finally:
        await stop(server)
    assert "certificate verify failed" in server.log()
