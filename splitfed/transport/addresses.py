"""Which addresses may carry plaintext: loopback only."""

from __future__ import annotations

import ipaddress


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) -> (host, port), with a clear error otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"address {address!r} must look like host:port")
    return host.strip("[]"), int(port)


def is_loopback(address: str) -> bool:
    """Whether ``address`` (``host:port``) is on this machine's loopback interface."""
    host, _ = split_address(address)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_plaintext_allowed(address: str, allow_insecure_loopback: bool) -> None:
    """Refuse plaintext unless the address is loopback and the caller asked for it explicitly."""
    if not allow_insecure_loopback:
        raise ValueError(f"{address}: no TLS certificate given; plaintext needs --insecure-loopback")
    if not is_loopback(address):
        raise ValueError(f"{address} is not a loopback address: plaintext transport is refused, use TLS")
