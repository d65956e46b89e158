"""The monitor's one connection to the bus: every message on spb/v1/# into a CommunityView.

The MQTT adapter around the pure view. A monitoring identity (DIR/monitoring/NAME, read
only) over TLS, or the anonymous read-only listener on loopback; the mirror connects with
its own identity, which may also write the JSON tree. Handlers run on paho's network
thread: `lock` guards the view, and listeners (the mirror, the dashboard's stream) are
called with each message's verdict while it is held, so they see messages in bus order.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from broker import secure
from broker.args import BrokerUrl
from broker.client import BusClient, TlsFiles
from broker.clock import wall_ms
from ledger.genesis import read_genesis
from monitor.view import CommunityView, Seen
from wire import topics

Listener = Callable[[Seen], None]
DEFAULT_IDENTITY = "monitor"  # deploy.bus makes DIR/monitoring/monitor at the first provisioning


def identity_dir(root: Path, name: str) -> Path:
    """Where a monitoring identity's certificate is: DIR/monitoring/NAME (DIR/mirror for the mirror)."""
    return secure.mirror_dir(root) if name == secure.MIRROR else secure.monitor_dir(root, name)


@dataclass
class Feed:
    view: CommunityView
    listeners: list[Listener] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    changed: threading.Condition = field(init=False)
    messages: int = 0  # every message handed to the view, for a waiting caller

    def __post_init__(self) -> None:
        self.changed = threading.Condition(self.lock)

    @classmethod
    def of_community(cls, root: Path) -> Feed:
        return cls(CommunityView(read_genesis(root)))

    def on_message(self, topic: str, payload: bytes, _retained: bool) -> None:
        with self.lock:
            seen = self.view.apply(topic, payload, wall_ms())
            self.messages += 1
            for listener in self.listeners:
                listener(seen)
            self.changed.notify_all()

    def snapshot(self) -> dict:
        with self.lock:
            return self.view.snapshot()


def connect(
    feed: Feed,
    root: Path,
    url: BrokerUrl,
    identity: str = DEFAULT_IDENTITY,
    will: tuple[str, bytes, bool] | None = None,
    client_id: str | None = None,
) -> BusClient:
    """A clean-session subscription to the whole protocol tree: retained values first (the
    current state of every meter, trade, order and validator), then everything live."""
    tls = TlsFiles.in_dir(identity_dir(root, identity)) if url.tls else None
    cn = identity if url.tls else (client_id or f"spb-monitor-{os.getpid()}")
    client = BusClient(url.host, url.port, cn, clean_session=True, tls=tls, will=will)
    client.subscribe(f"{topics.ROOT}/#", feed.on_message)
    client.connect()
    return client
