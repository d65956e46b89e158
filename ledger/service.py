"""A validator on the bus: the MQTT and SQLite adapter around a consensus Replica.

Transactions from spb/v1/tx/{ctp,erc,cancel,revoke} go to the replica's pool and are
acknowledged (PUBACK) only after the block that decided them is on disk, so the broker
keeps anything the validators have not made durable and sends it again after a crash:
nothing is lost, and since the database holds all of a block or none of it, nothing is
applied twice. Consensus messages go out on spb/v1/consensus/..., after the votes they
carry are on disk. The one clock is read here.

Statuses are published once per change: by the validator whose proposal the block was.
Every validator writes the block's statuses to its outbox, the others as stand-ins ranked
by their distance from the proposer in rotation; a stand-in publishes only if the block has
not appeared on spb/v1/ledger/blocks (which its publisher sends after the statuses) within
rank x TAKEOVER_S, so a proposer that dies before publishing loses nothing.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from broker.client import BusClient, TlsFiles
from broker.clock import wall_ms
from broker.runtime import AUTOSAVE_S
from ledger.block import Block, BlockError
from ledger.node import VOTES, LedgerNode
from ledger.replica import Ack, Decided, Persist, Refused, Send, Timing
from ledger.store import Outgoing
from ledger.validator import ValidatorIdentity
from wire import topics
from wire.cose import message_hash
from wire.messages import Rejection

log = logging.getLogger("spb.ledger")
WINDOW = 20_000  # unacknowledged publishes at most
RESTORE = "restore-statuses"  # store flag: a full status restore is not yet acknowledged
TAKEOVER_S = 3.0  # a stand-in of rank k publishes a block's statuses after k times this


def _mono() -> int:
    return time.monotonic_ns() // 1_000_000


class LedgerService:
    """One validator of the ledger; with a one-validator genesis, the whole ledger."""

    def __init__(
        self,
        identity: ValidatorIdentity,
        host: str,
        port: int,
        clock: Callable[[], int] = wall_ms,
        tls: TlsFiles | None = None,
        timing: Timing | None = None,
    ):
        genesis = identity.genesis
        self.identity, self.clock = identity, clock
        self.index = identity.index
        self.node = LedgerNode(identity)
        self.replica = self.node.replica(timing or Timing(block_ms=genesis.block_ms), clock(), _mono())
        self._events: deque[tuple] = deque()  # from the network thread: ("tx", typ, raw, ack)
        # ("msg", raw) | ("block", raw): handled before any transaction waiting in _events, so
        # a burst of transactions does not hold a proposal back until its round has timed out.
        self._messages: deque[tuple] = deque()
        self._acks: dict[tuple[str, bytes], list[Callable[[], None]]] = {}  # pool key -> its deliveries' acks
        self._wake = threading.Event()  # something arrived, or stop() was called
        self._stopping = threading.Event()
        # session_present of each (re)connect, for the main loop, which owns the database
        # and announces in order with its blocks.
        self._connects: deque[bool] = deque()
        self._restored = threading.Event()  # the broker acknowledged a full status restore
        self._restore_round = 0
        self._delivered: deque[int] = deque()  # outbox seqs the broker acknowledged
        self._standby: dict[int, tuple[float, list[Outgoing]]] = {}  # height -> (when due, its rows)
        self._seen: deque[int] = deque(maxlen=1024)  # heights announced on ledger/blocks, maybe before we decided them
        # Publishes wait here until fewer than WINDOW are unacknowledged: paho numbers them
        # with 16-bit ids and refuses more (an outbox or status restore can be far larger).
        self._outgoing: deque[tuple[str, bytes, bool, Callable[[int], None] | None]] = deque()
        self._unacked = 0
        self._unacked_lock = threading.Lock()
        self.state_topic = topics.ledger_state(self.index)
        self.bus = BusClient(
            host,
            port,
            f"ledger-v{self.index}",
            manual_ack=True,
            will=(self.state_topic, topics.OFFLINE, True),
            max_inflight=0,
            tls=tls,
        )
        self.bus.on_connect.append(self._on_connect)
        for topic, typ in topics.TX_TYPES.items():
            self.bus.subscribe_deferred(topic, self._receiver(typ))
        if len(genesis.validators) > 1:
            for topic in (topics.CONSENSUS_ALL, topics.consensus_to(self.index)):
                self.bus.subscribe_deferred(topic, self._consensus)
            self.bus.subscribe_deferred(topics.LEDGER_BLOCKS, self._block_seen)

    def stop(self) -> None:
        """Ask run() to finish what it is doing and shut down (safe from a signal handler)."""
        self._stopping.set()
        self._wake.set()

    def run(self) -> None:
        """Take part in consensus until stop(), then say `offline` and disconnect."""
        log.info(
            "validator %d at height %d, %d CTPs, %d messages to re-announce",
            self.index,
            self.node.state.height,
            len(self.node.state.ctps),
            len(self.node.store.outbox()),
        )
        self._queue(self.node.store.outbox())  # what a crash left unacknowledged, first and in order
        self.bus.connect()
        while not self._stopping.is_set():
            while self._connects:
                self._reconnected(self._connects.popleft())
            self._pump()
            if self._restored.is_set():
                self._restored.clear()
                self.node.store.set_flag(RESTORE, False)
            self._wake.clear()
            worked = self._drain()
            now, mono = self.clock(), _mono()
            deadline = self.replica.deadline(now, mono)
            if deadline is not None and deadline <= mono:
                self._carry(self.replica.tick(now, mono))
                worked = True
            self._stand_in()
            if worked:
                continue
            self._forget_delivered()
            if not (
                self._events
                or self._messages
                or self._connects
                or self._restored.is_set()
                or self._stopping.is_set()
                or self._can_pump()
            ):
                self._wake.wait(self._idle_s(deadline))
        self.shutdown()

    def shutdown(self, timeout_s: float = 5.0) -> None:
        info = self.bus.publish(self.state_topic, f"offline {self.node.state.height}".encode(), retain=True)
        if not self.bus.wait_acked(info, timeout_s):
            log.warning("broker did not acknowledge offline within %.0f s", timeout_s)
        self.bus.close()
        self._forget_delivered()
        self.node.close()

    # -- from the network thread --

    def _receiver(self, typ: str):
        def receive(topic: str, payload: bytes, retained: bool, ack: Callable[[], None]) -> None:
            self._events.append(("tx", typ, payload, ack))
            self._wake.set()

        return receive

    def _consensus(self, topic: str, payload: bytes, retained: bool, ack: Callable[[], None]) -> None:
        ack()  # a lost consensus message costs a round at most; the votes are on disk already
        self._messages.append(("msg", payload))
        self._wake.set()

    def _block_seen(self, topic: str, payload: bytes, retained: bool, ack: Callable[[], None]) -> None:
        ack()
        self._messages.append(("block", payload))
        self._wake.set()

    def _on_connect(self) -> None:
        self._connects.append(self.bus.session_present)
        self._wake.set()

    # -- the main loop --

    def _drain(self) -> bool:
        """Hand everything that arrived to the replica and carry out what it says: consensus
        messages first, and again before each transaction."""
        if not (self._events or self._messages):
            return False
        self._drain_messages()
        for _ in range(len(self._events)):
            _, typ, raw, ack = self._events.popleft()
            self._acks.setdefault((typ, message_hash(raw)), []).append(ack)
            self._carry(self.replica.submit(typ, raw, self.clock(), _mono()))
            self._drain_messages()
        return True

    def _drain_messages(self) -> None:
        while self._messages:
            kind, payload = self._messages.popleft()
            if kind == "msg":
                self._carry(self.replica.receive(payload, self.clock(), _mono()))
            else:
                self._announced(payload)

    def _carry(self, actions: list) -> None:
        """Persist votes before the messages that carry them; write a block before
        acknowledging its inputs."""
        for action in actions:
            if isinstance(action, Send):
                topic = topics.CONSENSUS_ALL if action.to is None else topics.consensus_to(action.to)
                self._send(topic, action.payload, False)
            elif isinstance(action, Persist):
                self.node.store.set_value(VOTES, action.votes)
            elif isinstance(action, Decided):
                self._decided(action)
            elif isinstance(action, Refused):
                self._refused(action)
            else:
                assert isinstance(action, Ack)
                for key in action.keys:
                    for ack in self._acks.pop(key, ()):
                        ack()

    def _refused(self, refused: Refused) -> None:
        """A transaction turned away before any block: its announcer publishes the reject and
        acknowledges the transaction once the broker has the reject (after a crash the broker
        delivers the transaction again, and it is refused again); the others acknowledge now."""
        acks = self._acks.pop(refused.key, [])
        if not refused.announce:
            for ack in acks:
                ack()
            return

        def published(_mid: int) -> None:
            for ack in acks:
                ack()

        key = self.identity.key
        assert key is not None, "a validator runs with its key"
        reject = Rejection(msg=refused.key[1], reason=refused.reason, t=self.clock()).sign(key)
        self._send(topics.REJECTS, reject, False, published)

    def _decided(self, decided: Decided) -> None:
        block = decided.block
        rows = self.node.write(decided.draft, block, decided.proposer, self._take_delivered())
        log.info(
            "block %d at %d: %d inputs, %d trades%s",
            block.header.height,
            block.header.t,
            len(block.inputs),
            len(block.trades),
            "" if decided.proposer is not None else " (caught up)",
        )
        self._queue(rows)
        self._say_online()

    def _say_online(self) -> None:
        self._send(self.state_topic, f"online {self.node.state.height}".encode(), True)

    def _queue(self, rows: list[Outgoing]) -> None:
        """Publish rank-0 rows now; keep stand-in rows until they are due."""
        now = time.monotonic()
        announced = {h for h in {row.height for row in rows if row.rank > 0} if h in self._seen}
        for h in announced:
            self.node.store.drop_standby(h)
        for row in rows:
            if row.height in announced:
                continue
            if row.rank == 0:
                self._send(row.topic, row.payload, row.retain, lambda _mid, seq=row.seq: self._delivered.append(seq))
            else:
                due, waiting = self._standby.setdefault(row.height, (now + row.rank * TAKEOVER_S, []))
                waiting.append(row)

    def _announced(self, payload: bytes) -> None:
        """A block on spb/v1/ledger/blocks: its publisher has announced it, stand in no more."""
        try:
            block = Block.from_chain_bytes(payload)
        except BlockError:
            return
        height = block.header.height
        if height in self._seen or block.valid_seals(self.replica.validators) < self.replica.q:
            return
        self._seen.append(height)
        if self._standby.pop(height, None) is not None:
            self.node.store.drop_standby(height)

    def _stand_in(self) -> None:
        """Publish the outputs of blocks whose publisher has been silent too long."""
        now = time.monotonic()
        for height in sorted(h for h, (due, _) in self._standby.items() if due <= now):
            _, rows = self._standby.pop(height)
            log.warning(
                "block %d was not announced: publishing its %d messages in its proposer's place", height, len(rows)
            )
            self._queue([row._replace(rank=0) for row in rows])

    def _idle_s(self, deadline: int | None) -> float:
        """Seconds to sleep: until the replica's next deadline or a stand-in is due (at most a minute)."""
        waits = [60.0]
        if deadline is not None:
            waits.append((deadline - _mono()) / 1000)
        if self._standby:
            waits.append(min(due for due, _ in self._standby.values()) - time.monotonic())
        return max(0.0, min(waits))

    # -- publishing --

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

    def _reconnected(self, session_present: bool) -> None:
        """Say `online`, and publish statuses the broker may have lost again.

        A broker without our session has lost everything it retained: all of them, and a
        durable flag says so until the broker acknowledged the last one, so a validator
        that dies meanwhile starts over. One that kept our session may still have crashed
        and reloaded its last save (Mosquitto saves every autosave_interval): those changed
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
        self._say_online()

    def _take_delivered(self) -> list[int]:
        return [self._delivered.popleft() for _ in range(len(self._delivered))]

    def _forget_delivered(self) -> None:
        self.node.store.forget(self._take_delivered())
