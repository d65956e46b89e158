"""The ledger on the bus: the MQTT adapter around a LedgerNode.

Messages from spb/v1/tx/{ctp,erc,cancel} are acknowledged (PUBACK) only after the block
that decided them is on disk, so the broker keeps anything the ledger has not made durable
and sends it again after a crash: nothing is lost, and since the database holds all of a
block or none of it, nothing is applied twice. The one clock is read here.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from typing import Callable, NamedTuple

from broker import topics
from broker.client import BusClient, TlsFiles
from broker.runtime import AUTOSAVE_S
from broker.clock import wall_ms
from ledger.block import quorum
from ledger.genesis import GenesisError
from ledger.node import LedgerNode
from ledger.store import Outgoing
from ledger.validator import ValidatorIdentity

log = logging.getLogger("spb.ledger")
WINDOW = 20_000  # unacknowledged publishes at most
RESTORE = "restore-statuses"  # store flag: a full status restore is not yet acknowledged


class Delivery(NamedTuple):
    typ: str
    raw: bytes
    ack: Callable[[], None]


class LedgerService:
    """One validator that is the whole ledger: a block is final when it is written."""

    def __init__(self, identity: ValidatorIdentity, host: str, port: int, clock: Callable[[], int] = wall_ms,
                 tls: TlsFiles | None = None):
        genesis = identity.genesis
        if quorum(len(genesis.validators)) > 1:
            raise GenesisError(f"this genesis has {len(genesis.validators)} validators, which need BFT "
                               "consensus to make a block final; this ledger runs a single validator")
        self.identity, self.clock = identity, clock
        self.block_ms = genesis.block_ms
        self.node = LedgerNode(identity)
        self._inbox: deque[Delivery] = deque()
        self._wake = threading.Event()  # something arrived, or stop() was called
        self._stopping = threading.Event()
        # session_present of each (re)connect, for the main loop, which owns the database
        # and announces in order with its blocks.
        self._connects: deque[bool] = deque()
        self._restored = threading.Event()  # the broker acknowledged a full status restore
        self._restore_round = 0
        self._delivered: deque[int] = deque()  # outbox seqs the broker acknowledged
        # Publishes wait here until fewer than WINDOW are unacknowledged: paho numbers them
        # with 16-bit ids and refuses more (an outbox or status restore can be far larger).
        self._outgoing: deque[tuple[str, bytes, bool, Callable[[int], None] | None]] = deque()
        self._unacked = 0
        self._unacked_lock = threading.Lock()
        self.bus = BusClient(host, port, f"ledger-v{identity.index}", manual_ack=True,
                             will=(topics.LEDGER_STATE, topics.OFFLINE, True), max_inflight=0, tls=tls)
        self.bus.on_connect.append(self._on_connect)
        for topic, typ in topics.TX_TYPES.items():
            self.bus.subscribe_deferred(topic, self._receiver(typ))

    def stop(self) -> None:
        """Ask run() to finish the block in hand and shut down (safe from a signal handler)."""
        self._stopping.set()
        self._wake.set()

    def run(self) -> None:
        """Make blocks until stop(), then say `offline` and disconnect."""
        log.info("validator %d at height %d, %d CTPs, %d messages to re-announce", self.identity.index,
                 self.node.state.height, len(self.node.state.ctps), len(self.node.store.outbox()))
        self._publish(self.node.store.outbox())  # what a crash left unacknowledged, first and in order
        self.bus.connect()
        last_block = 0.0
        while not self._stopping.is_set():
            while self._connects:
                self._reconnected(self._connects.popleft())
            self._pump()
            if self._restored.is_set():
                self._restored.clear()
                self.node.store.set_flag(RESTORE, False)
            pause = last_block + self.block_ms / 1000 - time.monotonic()
            if pause > 0:
                self._stopping.wait(pause)
            elif self._inbox or self._expiry_due():
                last_block = time.monotonic()  # the interval runs from block start to block start
                self.step()
            else:
                self._wake.clear()
                self._forget_delivered()
                if not (self._inbox or self._connects or self._restored.is_set() or self._stopping.is_set()
                        or self._can_pump()):
                    self._wake.wait(self._until_expiry())
        self.shutdown()

    def step(self) -> None:
        """Decide everything received so far in one block."""
        batch = [self._inbox.popleft() for _ in range(len(self._inbox))]
        block, queued, _ = self.node.decide([(d.typ, d.raw) for d in batch], self.clock(), self._take_delivered())
        if block is not None:
            log.info("block %d at %d: %d inputs, %d trades", block.header.height, block.header.t,
                     len(block.inputs), len(block.trades))
        for delivery in batch:  # in arrival order, as MQTT asks
            delivery.ack()
        self._publish(queued)
        if block is not None:
            self._announce()

    def shutdown(self, timeout_s: float = 5.0) -> None:
        info = self.bus.publish(topics.LEDGER_STATE, f"offline {self.node.state.height}".encode(), retain=True)
        if not self.bus.wait_acked(info, timeout_s):
            log.warning("broker did not acknowledge offline within %.0f s", timeout_s)
        self.bus.close()
        self._forget_delivered()
        self.node.close()

    def _receiver(self, typ: str):
        def receive(topic: str, payload: bytes, retained: bool, ack: Callable[[], None]) -> None:
            self._inbox.append(Delivery(typ, payload, ack))
            self._wake.set()
        return receive

    def _announce(self) -> None:
        self._send(topics.LEDGER_STATE, f"online {self.node.state.height}".encode(), True)

    def _send(self, topic: str, payload: bytes, retain: bool, on_ack: Callable[[int], None] | None = None) -> None:
        """Queue a publish, in order after everything queued before it."""
        self._outgoing.append((topic, payload, retain, on_ack))
        self._pump()

    def _can_pump(self) -> bool:
        return bool(self._outgoing) and self._unacked < WINDOW

    def _pump(self) -> None:
        """Hand queued publishes to paho while fewer than WINDOW are unacknowledged."""
        while self._can_pump():
            topic, payload, retain, on_ack = self._outgoing.popleft()
            with self._unacked_lock:
                self._unacked += 1
            self.bus.publish(topic, payload, retain=retain, on_ack=functools.partial(self._acked, on_ack))

    def _acked(self, on_ack: Callable[[int], None] | None, mid: int) -> None:
        with self._unacked_lock:
            self._unacked -= 1
        if on_ack is not None:
            on_ack(mid)
        if self._outgoing:  # the main loop has more to hand over now
            self._wake.set()

    def _on_connect(self) -> None:
        self._connects.append(self.bus.session_present)
        self._wake.set()

    def _reconnected(self, session_present: bool) -> None:
        """Say `online`, and publish statuses the broker may have lost again.

        A broker without our session has lost everything it retained: all of them, and a
        durable flag says so until the broker acknowledged the last one, so a ledger that
        dies meanwhile starts over. One that kept our session may still have crashed and
        reloaded its last save (Mosquitto saves every autosave_interval): those changed
        since then, with a margin.
        """
        store = self.node.store
        full = not session_present or store.flag(RESTORE)
        if full:
            store.set_flag(RESTORE, True)
        statuses = self.node.current_statuses(0 if full else self.clock() - 2 * AUTOSAVE_S * 1000)
        if statuses:
            log.info("publishing %d statuses again (%s)", len(statuses), "all" if full else "recent")
        self._restore_round += 1
        remaining, round_ = [len(statuses)], self._restore_round

        def acked(_mid: int) -> None:  # on the network thread, the only one that counts down
            remaining[0] -= 1
            if remaining[0] == 0 and round_ == self._restore_round:
                self._restored.set()
                self._wake.set()
        for topic, payload in statuses:
            self._send(topic, payload, True, acked if full else None)
        if full and not statuses:
            store.set_flag(RESTORE, False)
        self._announce()

    def _publish(self, rows: list[Outgoing]) -> None:
        for row in rows:
            self._send(row.topic, row.payload, row.retain, lambda _mid, seq=row.seq: self._delivered.append(seq))

    def _take_delivered(self) -> list[int]:
        return [self._delivered.popleft() for _ in range(len(self._delivered))]

    def _forget_delivered(self) -> None:
        self.node.store.forget(self._take_delivered())

    def _expiry_due(self) -> bool:
        exp = self.node.state.next_expiry()
        return exp is not None and self.clock() > exp

    def _until_expiry(self) -> float:
        """Seconds to sleep when idle: until the next CTP expires (at most a minute)."""
        exp = self.node.state.next_expiry()
        if exp is None:
            return 60.0
        return min(60.0, max(0.0, (exp + 1 - self.clock()) / 1000))
