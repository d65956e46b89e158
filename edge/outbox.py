"""Publishing the durable outbox (edge.store) in order, a window at a time.

A row leaves the outbox only after the broker acknowledged it (PUBACK). Only `window`
messages are handed to paho at a time (broker.pacing.PublishWindow, shared with the
ledger): while the broker is unreachable the rest wait in SQLite, not in memory, however
long the outage. paho itself sends its unacknowledged messages again after a reconnect,
in order; after a restart the whole outbox is sent again from its first row, so a message
can arrive twice but is never lost. Receivers dedupe: readings by seq, the ledger by
message hash.

Rows go to paho only while connected, i.e. after this connection's birth was published:
a peer seeing a reading before any birth of ours could not verify it. (What paho still
holds from before a disconnect it sends again at the reconnect, before the new birth;
peers know our key from the earlier birth by then.) One thread (the meter's loop) calls
`kick`. PUBACKs arrive on paho's thread, which holds paho's message lock while it reports
them, so the rows they free are only queued there and deleted by the next `kick`: the
store's lock, taken there, could deadlock against a publish made under it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from broker.client import BusClient
from broker.pacing import PublishWindow
from edge.store import MeterStore

WINDOW = 50


class OutboxPump:
    def __init__(self, store: MeterStore, bus: BusClient, window: int = WINDOW):
        self.store, self.bus = store, bus
        self.window = PublishWindow(bus, window)
        self._cursor = 0  # highest outbox seq handed to paho
        self._acked: deque[int] = deque()  # appended on paho's thread, drained by kick

    def kick(self) -> None:
        """Forget what the broker acknowledged, then hand paho the next rows, up to the window."""
        self.forget_acked()
        if not self.bus.connected.is_set():
            return  # not before this connection's birth: a reading must not reach anyone before it
        room = self.window.room
        for row in self.store.outbox_after(self._cursor, room) if room > 0 else ():
            self._cursor = row.seq
            self.window.publish(row.topic, row.payload, on_ack=self._on_ack(row.seq))

    def _on_ack(self, seq: int) -> Callable[[int], None]:
        """The PUBACK handler of outbox row `seq`: it only queues the seq (see above)."""
        return lambda _mid: self._acked.append(seq)

    def forget_acked(self) -> None:
        """Delete the rows the broker acknowledged since the last call."""
        done = []
        while self._acked:
            done.append(self._acked.popleft())
        if done:
            self.store.delivered(done)

    @property
    def in_flight(self) -> int:
        return self.window.in_flight
