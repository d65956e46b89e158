"""The ledger on the bus: the adapter around Draft, LedgerState and LedgerStore.

Messages from spb/v1/tx/{ctp,erc,cancel} are acknowledged (PUBACK) only after the block
that decided them is on disk, so the broker keeps anything the ledger has not made durable
and sends it again after a crash: nothing is lost, and since the database holds all of a
block or none of it, nothing is applied twice. The one clock is read here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Callable, NamedTuple

from broker import topics
from broker.client import BusClient
from broker.clock import wall_ms
from broker.cose import message_hash
from broker.verify import Verifier
from ledger.block import quorum
from ledger.draft import Draft
from ledger.genesis import GenesisError
from ledger.store import LedgerStore, Outgoing
from ledger.validator import ValidatorIdentity

log = logging.getLogger("spb.ledger")


class Delivery(NamedTuple):
    typ: str
    raw: bytes
    ack: Callable[[], None]


class LedgerService:
    """One validator that is the whole ledger: a block is final when it is written."""

    def __init__(self, identity: ValidatorIdentity, host: str, port: int, clock: Callable[[], int] = wall_ms):
        genesis = identity.genesis
        if quorum(len(genesis.validators)) > 1:
            raise GenesisError(f"this genesis has {len(genesis.validators)} validators, which need BFT "
                               "consensus to make a block final; this ledger runs a single validator")
        self.identity, self.clock = identity, clock
        self.block_ms = genesis.block_ms
        self.store = LedgerStore(identity.db_path, genesis)
        self.state = self.store.load()
        self.verifier = Verifier(cas=genesis.cas, validators=genesis.validators)
        self._inbox: deque[Delivery] = deque()
        self._wake = threading.Event()  # something arrived, or stop() was called
        self._stopping = threading.Event()
        self._delivered: deque[int] = deque()  # outbox seqs the broker acknowledged
        self.bus = BusClient(host, port, f"ledger-v{identity.index}", manual_ack=True,
                             will=(topics.LEDGER_STATE, topics.OFFLINE, True), max_inflight=1000)
        self.bus.on_connect.append(self._announce)
        for topic, typ in topics.TX_TYPES.items():
            self.bus.subscribe_deferred(topic, self._receiver(typ))

    def stop(self) -> None:
        """Ask run() to finish the block in hand and shut down (safe from a signal handler)."""
        self._stopping.set()
        self._wake.set()

    def run(self) -> None:
        """Make blocks until stop(), then say `offline` and disconnect."""
        log.info("validator %d at height %d, %d CTPs, %d messages to re-announce", self.identity.index,
                 self.state.height, len(self.state.ctps), len(self.store.outbox()))
        self._publish(self.store.outbox())  # what a crash left unacknowledged, first and in order
        self.bus.connect()
        last_block = 0.0
        while not self._stopping.is_set():
            pause = last_block + self.block_ms / 1000 - time.monotonic()
            if pause > 0:
                self._stopping.wait(pause)
            elif self._inbox or self._expiry_due():
                last_block = time.monotonic()  # the interval runs from block start to block start
                self.step()
            else:
                self._wake.clear()
                self._forget_delivered()
                if not self._inbox and not self._stopping.is_set():
                    self._wake.wait(self._until_expiry())
        self.shutdown()

    def step(self) -> None:
        """Decide everything received so far in one block at block time max(now, tip + 1)."""
        batch = [self._inbox.popleft() for _ in range(len(self._inbox))]
        draft = Draft(self.state, self.verifier, max(self.clock(), self.state.t + 1))
        decided: set[bytes] = set()
        for delivery in batch:
            digest = message_hash(delivery.raw)
            if digest not in decided:  # the same message twice in a batch: a redelivery
                decided.add(digest)
                draft.add(delivery.typ, delivery.raw)
        block = draft.finish()
        key = self.identity.key
        if block is not None:
            block = block.sealed(self.identity.index, key)
        queued = self.store.commit(draft, block, draft.signed_outputs(key), self._take_delivered())
        if block is not None:
            self.state.commit(draft)
            log.info("block %d at %d: %d inputs, %d trades", block.header.height, block.header.t,
                     len(block.inputs), len(block.trades))
        for delivery in batch:  # in arrival order, as MQTT asks
            delivery.ack()
        self._publish(queued)
        if block is not None:
            self._announce()

    def shutdown(self, timeout_s: float = 5.0) -> None:
        info = self.bus.publish(topics.LEDGER_STATE, f"offline {self.state.height}".encode(), retain=True)
        if not self.bus.wait_acked(info, timeout_s):
            log.warning("broker did not acknowledge offline within %.0f s", timeout_s)
        self.bus.close()
        self._forget_delivered()
        self.store.close()

    def _receiver(self, typ: str):
        def receive(topic: str, payload: bytes, retained: bool, ack: Callable[[], None]) -> None:
            self._inbox.append(Delivery(typ, payload, ack))
            self._wake.set()
        return receive

    def _announce(self) -> None:
        self.bus.publish(topics.LEDGER_STATE, f"online {self.state.height}".encode(), retain=True)

    def _publish(self, rows: list[Outgoing]) -> None:
        for row in rows:
            self.bus.publish(row.topic, row.payload, retain=row.retain,
                             on_ack=lambda _mid, seq=row.seq: self._delivered.append(seq))

    def _take_delivered(self) -> list[int]:
        return [self._delivered.popleft() for _ in range(len(self._delivered))]

    def _forget_delivered(self) -> None:
        self.store.forget(self._take_delivered())

    def _expiry_due(self) -> bool:
        exp = self.state.next_expiry()
        return exp is not None and self.clock() > exp

    def _until_expiry(self) -> float:
        """Seconds to sleep when idle: until the next CTP expires (at most a minute)."""
        exp = self.state.next_expiry()
        if exp is None:
            return 60.0
        return min(60.0, max(0.0, (exp + 1 - self.clock()) / 1000))
