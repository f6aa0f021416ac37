"""
POST a form through a Twisted ``Agent``, and nothing else.

The handover sends one small form per upload and reads the first bytes of
the answer.  treq's ``HTTPClient.post`` wraps every request in a cookie
agent, a content-decoding agent and a buffered response, parses the URL
and IDNA-encodes its host each time: about half a millisecond of CPU per
POST, more than the POST itself.  A handover needs none of it (no cookies
are kept, no redirects are followed, the answer is read as it comes), so
this client does only what is left: the URL encoded once per backend URL
(as treq encodes it), the form urlencoded as treq does, and the request
made by the agent, whose pool keeps the connections.  It answers what
``treq.testing.StubTreq`` answers, so tests use either, and
``treq.collect`` reads its responses.
"""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import urlencode

from hyperlink import EncodedURL
from twisted.internet.defer import Deferred, succeed
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

FORM = b"application/x-www-form-urlencoded"
URLS_KEPT = 256  # backend URLs whose encoded form is remembered


@lru_cache(maxsize=URLS_KEPT)
def encoded_url(url: str) -> bytes:
    """The URL as treq sends it: IDNA host, percent-encoded path and query."""
    return EncodedURL.from_text(url).to_uri().to_text().encode("ascii")


@implementer(IBodyProducer)
class BytesBody:
    """A request body that is already in memory: written at once."""

    def __init__(self, body: bytes) -> None:
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer) -> Deferred:
        consumer.write(self._body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class FormClient:
    """``post(url, data=fields)``: a urlencoded form through ``agent``;
    fires with the agent's response (``.code``, ``deliverBody``).  Redirects
    are never followed (``allow_redirects`` may only be false) and cookies
    are neither sent nor kept."""

    def __init__(self, agent) -> None:
        self._agent = agent

    def post(self, url: str, data: dict, allow_redirects: bool = False) -> Deferred:
        if allow_redirects:
            raise ValueError("FormClient follows no redirects")
        body = urlencode(data, doseq=True).encode("ascii")
        headers = Headers({b"Content-Type": [FORM]})
        return self._agent.request(b"POST", encoded_url(url), headers, BytesBody(body))
