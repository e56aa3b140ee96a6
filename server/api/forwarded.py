"""Who the client is and which scheme it used, when a proxy may stand in between.

By default the peer of the TCP connection is the client and `X-Forwarded-For` /
`X-Forwarded-Proto` are ignored: anyone can send them. Only when the peer is one of the
`trusted_proxies` are they believed, and then only as far as the chain of trusted hops
goes: the client is the right-most `X-Forwarded-For` entry that is not itself a trusted
proxy (entries further left were written by the client and prove nothing).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

SCHEMES = ("http", "https")


@dataclass(frozen=True, slots=True)
class Origin:
    """The client's address (as text) and the scheme it reached us with."""

    ip: str
    scheme: str


class TrustedProxies:
    """The `trusted_proxies` setting, parsed once."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.networks: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(entry) for entry in entries
        )

    def trusts(self, address: str) -> bool:
        parsed = _parse_ip(address)
        if parsed is None:
            return False
        return any(parsed in network for network in self.networks)

    def origin(
        self, peer: str | None, scheme: str, forwarded_for: list[str], forwarded_proto: list[str]
    ) -> Origin:
        """The client behind `peer` (the connection's remote address) and its scheme.

        `forwarded_for` / `forwarded_proto` are the values of every such header line, in
        order. Unparsable entries end the walk: the last trusted hop's word stands.
        """
        client = peer or "unknown"
        if not self.networks or not self.trusts(client):
            return Origin(client, scheme)
        proto = [p.strip().lower() for line in forwarded_proto for p in line.split(",")]
        if proto and proto[-1] in SCHEMES:
            scheme = proto[-1]
        hops = [h.strip() for line in forwarded_for for h in line.split(",")]
        for hop in reversed(hops):
            if not self.trusts(client):
                break
            parsed = _parse_ip(hop)
            if parsed is None:
                break
            client = str(parsed)
        return Origin(client, scheme)


def _parse_ip(text: str) -> IPAddress | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]:443"
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "192.0.2.1:443"
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None
