"""Command-line argument types shared by spb-meter and spb-ledger.

argparse calls each with the text; a bad value raises ArgumentTypeError, which argparse
reports as a usage error (exit 2).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import NamedTuple

BROKER_HELP = (
    "the broker: mqtts://HOST:PORT for TLS with the state dir's certificate "
    "(mqtt.crt, mqtt.key, ca.crt), or HOST:PORT for plain MQTT (development)"
)


class BrokerUrl(NamedTuple):
    host: str
    port: int
    tls: bool


def positive_seconds(text: str) -> float:
    """A duration argument: a number of seconds above 0 (a timeout, a period)."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def tcp_port(text: str) -> int:
    """A TCP port, 1..65535."""
    if not text.isdecimal() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port")
    return int(text)


def listen_port(text: str) -> int:
    """A TCP port to serve on, 0..65535: 0 lets the system choose a free one (the server then
    says which it bound)."""
    if not text.isdecimal() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text[:80]!r} is not a port number from 0 to 65535")
    return int(text)


def broker_url(text: str) -> BrokerUrl:
    """mqtts://HOST:PORT, mqtt://HOST:PORT or HOST:PORT (plain) of a broker."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "mqtt", text
    host, sep, port = rest.rpartition(":")
    try:
        if scheme not in ("mqtt", "mqtts") or not sep or not host:
            raise argparse.ArgumentTypeError(text)
        return BrokerUrl(host.strip("[]"), tcp_port(port), scheme == "mqtts")
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not mqtts://HOST:PORT or HOST:PORT") from None


def tls_broker(text: str) -> BrokerUrl:
    """HOST:PORT or mqtts://HOST:PORT of a broker's TLS listener (mqtt:// is refused)."""
    url = broker_url(text)
    if "://" in text and not url.tls:
        raise argparse.ArgumentTypeError(f"{text!r}: this needs a TLS listener; give HOST:PORT or mqtts://HOST:PORT")
    return url


def parse_hex(text: object, size: int, what: str) -> bytes:
    """`size` bytes from hex; ValueError naming `what` for anything else."""
    try:
        value = bytes.fromhex(text) if isinstance(text, str) else b""
    except ValueError:
        value = b""
    if len(value) != size:
        raise ValueError(f"{str(text)[:80]!r} is not a {what} in hex")
    return value


def hex_bytes(size: int, what: str) -> Callable[[str], bytes]:
    """An argument type for `size` bytes in hex, e.g. hex_bytes(16, "16-byte CTP id")."""

    def parse(text: str) -> bytes:
        try:
            return parse_hex(text, size, what)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse
