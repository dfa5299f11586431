"""Which addresses a shared link may reach: the request-forgery guard.

A link in a chat message makes the bot send a request from inside its own network. Unless an
operator allows them (`LINKS_ALLOW_HOSTS`: host names or CIDR ranges), loopback, private,
link-local (the cloud metadata service at 169.254.169.254), shared, reserved, multicast and
unspecified addresses are refused: every address a name resolves to must be public, and the
check is repeated for every redirect. The fetcher then connects to exactly the addresses
checked here, so a name cannot resolve to a public address for the check and a private one for
the connection.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Refused(Exception):
    """The link points somewhere the bot may not go; the message says why, for the user."""


@dataclass(frozen=True, slots=True)
class AllowList:
    """`LINKS_ALLOW_HOSTS`: names allowed whatever they resolve to, and allowed ranges."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        """Parse host names and CIDR ranges (a bare address is a range of one).

        Raises:
            ValueError: an entry is neither a host name nor an address or range.
        """
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip().lower().strip("[]")
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            if not all(part and all(c.isalnum() or c == "-" for c in part)
                       for part in entry.rstrip(".").split(".")):
                raise ValueError(entry)
            hosts.add(entry.rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def allows_host(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def allows_address(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)


def why_not_public(address: IPAddress) -> str | None:
    """Why `address` is not a public internet address, or None when it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_unspecified:
        return "not a public address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_private:
        return "a private address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_reserved or not address.is_global:
        return "not a public address"
    return None


def check(host: str, addresses: Iterable[str], allow: AllowList) -> None:
    """Raise `Refused` unless every one of `host`'s addresses may be reached."""
    if allow.allows_host(host):
        return
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        reason = why_not_public(address)
        if reason is not None and not allow.allows_address(address):
            shown = host if host == text else f"{host} ({text})"
            raise Refused(f"it points to {shown}, {reason}, which I don't fetch")
