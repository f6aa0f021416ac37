"""
TLS towards the web app backend: which certificates the handover trusts.

The server side needs nothing here: ``--port ssl:PORT:privateKey=...``
is Twisted's TLS endpoint and serves the API, ``incoming.js`` and ``wss:``
uploads.  The handover POST to an ``https`` ``signalFinishURL`` verifies the
backend's certificate and host name like a browser does: against the
system's trust store, or against a private CA bundle (``--backend-ca``).
"""

from __future__ import annotations

import re


class CertificateError(ValueError):
    """A CA bundle cannot be read; the text names the file and why."""


_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL
)


def load_ca_bundle(path: str) -> list:
    """Every certificate of a PEM file, as twisted.internet.ssl Certificates."""
    from twisted.internet.ssl import Certificate

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CertificateError(f"cannot read {path!r}: {e.strerror}") from None
    certificates = []
    for block in _PEM_CERTIFICATE.findall(data):
        try:
            certificates.append(Certificate.loadPEM(block))
        except Exception as e:
            raise CertificateError(
                f"{path!r} holds a certificate that cannot be read: {e}"
            ) from None
    if not certificates:
        raise CertificateError(f"{path!r} holds no PEM certificate")
    return certificates


def backend_tls_policy(ca_path: str = ""):
    """The Agent contextFactory for handover calls: browser-like verification,
    against ``ca_path``'s certificates if given, else the system's trust store."""
    from twisted.internet.ssl import trustRootFromCertificates
    from twisted.web.client import BrowserLikePolicyForHTTPS

    if not ca_path:
        return BrowserLikePolicyForHTTPS()
    return BrowserLikePolicyForHTTPS(trustRoot=trustRootFromCertificates(load_ca_bundle(ca_path)))
