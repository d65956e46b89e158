"""Publishing in order with at most a window of messages unacknowledged by the broker.

paho numbers the QoS 1 messages it holds with 16-bit ids, refuses more than it can number,
and holds them only in memory. So the meter (edge.outbox, from its SQLite outbox) and a
validator (ledger.service, from its queue of announcements) hand paho at most a window of
messages and keep the rest until PUBACKs make room: one PublishWindow each, counting what
was handed over and what the broker acknowledged.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable

from broker.client import BusClient

OnAck = Callable[[int], None]  # on_ack(mid), as BusClient.publish calls it


class PublishWindow:
    """The publishes handed to paho and not yet acknowledged (PUBACK), at most `size` of them
    if the caller publishes only while `room` is positive.

    One thread publishes; PUBACKs come on paho's thread (or on the publishing thread, for
    one that came before publish() returned). Each is counted under a lock that is never
    held while calling paho: paho's thread holds paho's own lock while it reports a PUBACK,
    so a lock held around a publish could deadlock against it.
    """

    def __init__(self, bus: BusClient, size: int, on_ack: Callable[[], None] | None = None):
        self.bus, self.size = bus, size
        self._on_ack = on_ack  # after every PUBACK, on the thread that reports it: e.g. wake the publisher
        self._handed = 0  # written by the publishing thread only
        self._acked = 0
        self._lock = threading.Lock()  # for _acked: PUBACKs may be reported on two threads

    @property
    def in_flight(self) -> int:
        return self._handed - self._acked

    @property
    def room(self) -> int:
        return self.size - self.in_flight

    def publish(self, topic: str, payload: bytes, retain: bool = False, on_ack: OnAck | None = None) -> None:
        """Hand one message to paho; on_ack(mid) runs once the broker acknowledged it."""
        self._handed += 1
        self.bus.publish(topic, payload, retain=retain, on_ack=functools.partial(self._settled, on_ack))

    def _settled(self, on_ack: OnAck | None, mid: int) -> None:
        with self._lock:
            self._acked += 1
        if on_ack is not None:
            on_ack(mid)
        if self._on_ack is not None:
            self._on_ack()
