"""What every spb-monitor command does around its own work: listen on a port, connect the
feed to the bus, and run until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from broker.args import listen_port
from broker.client import BusClient
from monitor.feed import Feed, connect

CONNECT_TIMEOUT_S = 30


def port_arguments(p: argparse.ArgumentParser, default_host: str = "127.0.0.1") -> None:
    """--port and --host of an HTTP listener (port 0: any free one, printed on stdout)."""
    p.add_argument("--port", type=listen_port, required=True, metavar="P", help="TCP port to serve on (0: any free)")
    p.add_argument("--host", default=default_host, help=f"address to listen on (default {default_host})")


def until_signalled() -> threading.Event:
    """An event set by SIGINT or SIGTERM: a monitor stops cleanly on either."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


@contextmanager
def connected_feed(args: argparse.Namespace, feed: Feed | None = None, **options) -> Iterator[tuple[Feed, BusClient]]:
    """The community's feed, subscribed to the whole tree; closed on the way out. Waits for the
    first connection (the broker's retained values follow it), so a typo in the URL fails fast.

    A caller whose listeners must see every message passes its own `feed` with them attached:
    the retained values arrive before this returns, too early for a listener added after."""
    feed = Feed.of_community(args.dir) if feed is None else feed
    client = connect(feed, args.dir, args.broker, args.identity, **options)
    try:
        if not client.wait_connected(CONNECT_TIMEOUT_S):
            raise OSError(f"cannot connect to {args.broker.host}:{args.broker.port} within {CONNECT_TIMEOUT_S} s")
        yield feed, client
    finally:
        client.close()


def say(text: str) -> None:
    """One line on stdout at once: tests and the demo read the bound port from it."""
    print(text, flush=True)
