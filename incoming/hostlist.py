"""
Which hosts the server may send handovers to (``--finish-url-hosts``).

Without a list, a backend API caller can make the server POST to any host
it can reach, internal ones included.  The list is matched against the host
of a ``signalFinishURL`` as written: names as names (never resolved, so
what a name resolves to does not matter), IP literals against addresses and
CIDR ranges.  Ports are not restricted.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

# One label: letters, digits, '_' and '-', not starting or ending in '-'.
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?"
_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


class HostList:
    """Host names (exact, any case), ``*.example.com`` (any subdomain, not
    the bare domain), IP addresses and CIDR ranges.  Empty allows any host."""

    def __init__(self, entries: Iterable[str] = ()):
        self._names: set[str] = set()
        self._suffixes: list[str] = []
        self._networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in entries:
            self._add(entry.strip())

    def _add(self, entry: str) -> None:
        """Raise ValueError, naming the entry, if it is none of the forms."""
        text = entry.lower()
        try:
            self._networks.append(ipaddress.ip_network(text, strict=False))
            return
        except ValueError:
            pass
        wildcard = text.startswith("*.")
        name = text.removeprefix("*.").removesuffix(".")
        # A numeric last label is a mistyped address (10.0.0), not a name.
        if not _NAME.fullmatch(name) or name.rpartition(".")[2].isdigit():
            raise ValueError(
                f"{entry!r} is not a host name, *.domain wildcard, IP address or CIDR "
                "range (without a port)"
            )
        if wildcard:
            self._suffixes.append("." + name)
        else:
            self._names.add(name)

    def __bool__(self) -> bool:
        return bool(self._names or self._suffixes or self._networks)

    def allows(self, host: str) -> bool:
        """Whether a URL's host (as urlsplit gives it) may be sent to."""
        if not self:
            return True
        host = host.lower().removesuffix(".")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return host in self._names or host.endswith(tuple(self._suffixes))
        return any(address in network for network in self._networks)
