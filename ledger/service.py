"""A validator on the bus: the MQTT and SQLite adapter around a consensus Replica.

Transactions from spb/v1/tx/{ctp,erc,cancel,revoke} go to the replica's pool and are
acknowledged (PUBACK) only after the block that decided them is on disk, so the broker
keeps anything the validators have not made durable and sends it again after a crash:
nothing is lost, and since the database holds all of a block or none of it, nothing is
applied twice. Consensus messages go out on spb/v1/consensus/..., after the votes they
carry are on disk. The one clock is read here, through a ClockGuard (ledger.clock_guard)
that holds off a wall clock jumping away from the monotonic one.

Statuses are published once per change: by the validator whose proposal the block was.
Every validator writes the block's statuses to its outbox, the others as stand-ins ranked
by their distance from the proposer in rotation; a stand-in publishes unless, within
rank x TAKEOVER_S, the block has appeared on spb/v1/ledger/blocks (which its publisher sends
after the statuses) and a sample of its statuses read back from the broker is there
(ledger.stand_in): so a proposer that dies before publishing, or withholds, loses nothing.

Whoever publishes, a retained status (a CTP's, an order's, an interval's result) only moves
forward: a block's statuses wait for the earlier blocks' announcements, nothing goes out
while the validator is behind, late copies (stand-ins, an outbox left by a crash, restores)
are current statuses only, and a restore covers only what the broker may have lost, read
back from it on each connect (ledger.statuses, decision 0007).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable

from broker.client import BusClient, TlsFiles
from broker.clock import wall_ms
from broker.pacing import OnAck, PublishWindow
from ledger.block import Block, BlockError
from ledger.clock_guard import ClockGuard
from ledger.events import BlockAnnounced, ConsensusMessage, Event, ReadBack, StatusSeen, Transaction
from ledger.metrics import Health, LedgerMetrics
from ledger.node import VOTES, LedgerNode
from ledger.replica import Ack, Decided, Persist, Refused, Send, Timing
from ledger.stand_in import PublishedCheck
from ledger.statement_service import StatementService
from ledger.statuses import ANNOUNCE_WAIT_S, Gate, is_status, lost_since, open_to_change, superseded
from ledger.store import LedgerOutboxRow
from ledger.validator import ValidatorIdentity
from wire import topics
from wire.cose import message_hash
from wire.messages import Rejection

log = logging.getLogger("spb.ledger")
WINDOW = 20_000  # unacknowledged publishes at most
RESTORE = "restore-statuses"  # store flag, older ledgers: a full status restore is not yet acknowledged
RESTORE_SINCE = "restore-since"  # store value: block time from which a status restore is not yet acknowledged
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
        guard: ClockGuard | None = None,
    ):
        genesis = identity.genesis
        # The real wall clock always goes through a guard; a test's clock, which it freezes
        # and moves at will, only through one it is given.
        self.guard = guard if guard is not None or clock is not wall_ms else ClockGuard()
        self._wall, self.identity = clock, identity
        self.index = identity.index
        self.node = LedgerNode(identity)
        self.replica = self.node.replica(timing or Timing(block_ms=genesis.block_ms), self.clock(), _mono())
        self._events: deque[Transaction] = deque()  # from the network thread
        # Consensus messages, announcements and read-backs: handled before any transaction
        # waiting in _events, so a burst of transactions does not hold a proposal back until
        # its round has timed out.
        self._messages: deque[Event] = deque()
        self._acks: dict[tuple[str, bytes], list[Callable[[], None]]] = {}  # pool key -> its deliveries' acks
        self._wake = threading.Event()  # something arrived, or stop() was called
        self._stopping = threading.Event()
        self.gate = Gate(len(genesis.validators))
        self._connection = 0  # connects so far; the current one is read back with _probe
        self._probe: bytes | None = None  # sent to ourselves on connect: its echo ends the read-back
        self._session = False  # session_present of that connect
        self._stored: bytes | None = None  # what the broker retained on our state topic then
        self._resent: list[str] = []  # status topics with publishes in flight then: paho sends them again
        self._rows: deque[tuple[LedgerOutboxRow, bool, float]] = deque()  # (row, late, when queued) for the gate
        self._late: dict[str, int] = {}  # status topic -> height of a late copy we sent that a block may supersede
        # (from, to) block times of the statuses to publish again once the gate opens: what the
        # broker may have lost; later ones go out with their own blocks.
        self._restore: tuple[int, int] | None = None
        self._restored = threading.Event()  # the broker acknowledged every status of the last restore
        self._restore_round = 0
        self._delivered: deque[int] = deque()  # outbox seqs the broker acknowledged
        self._standby: dict[int, tuple[float, list[LedgerOutboxRow]]] = {}  # height -> (when due, its rows)
        self._seen: deque[int] = deque(maxlen=1024)  # heights announced on ledger/blocks, maybe before we decided them
        self._published = PublishedCheck()  # stand-ins reading back announced blocks' statuses (decision 0015)
        # Publishes wait here until fewer than WINDOW are unacknowledged: paho numbers them
        # with 16-bit ids and refuses more (an outbox or status restore can be far larger).
        self._outgoing: deque[tuple[str, bytes, bool, OnAck | None]] = deque()
        self._in_flight: dict[str, int] = {}  # status topic -> its unacknowledged publishes
        self._in_flight_lock = threading.Lock()  # never held while calling paho (see PublishWindow)
        self.state_topic = topics.ledger_state(self.index)
        self.retained_ignored = 0  # retained copies on transaction topics: junk, not transactions
        self.bus = BusClient(
            host,
            port,
            f"ledger-v{self.index}",
            manual_ack=True,
            will=(self.state_topic, topics.OFFLINE, True),
            max_inflight=0,
            tls=tls,
        )
        self._window = PublishWindow(self.bus, WINDOW, on_ack=self._room)
        self.metrics: LedgerMetrics | None = None  # serve_metrics() sets it
        self._blocks = {True: 0, False: 0}  # blocks decided since start: caught up (True) or not
        self._last_t = self.node.state.t  # block time of the tip, for the seconds between blocks
        self.bus.on_connect.append(self._on_connect)
        for topic, typ in topics.TX_TYPES.items():
            self.bus.subscribe_deferred(topic, self._receiver(typ))
        self.bus.subscribe_deferred(topics.consensus_to(self.index), self._consensus)  # and our probe
        if len(genesis.validators) > 1:
            self.bus.subscribe_deferred(topics.CONSENSUS_ALL, self._consensus)
            self.bus.subscribe_deferred(topics.LEDGER_BLOCKS, self._block_seen)
        # Households' statement requests, answered off the main loop (decision 0017).
        self.statements = StatementService(identity, self.bus, clock)
        self.bus.subscribe_deferred(topics.STATEMENT_REQUESTS, self.statements.receive)

    def clock(self) -> int:
        """The wall clock, ms since the epoch, as the guard lets it through: every read."""
        wall = self._wall()
        return wall if self.guard is None else self.guard.read(wall, _mono())

    def serve_metrics(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve this validator's Prometheus metrics on host:port (0: a free one), before
        run(); the port bound. Needs the `metrics` extra (ledger.metrics.available)."""
        self.metrics = LedgerMetrics(self.health, self.index, self.identity.genesis.hash.hex())
        self.metrics.time_verify(self.node.verifier)
        return self.metrics.serve(port, host)

    def health(self) -> Health:
        """The numbers behind the metrics' gauges and counters. Called on the metrics server's
        thread: each is a read of an int or a length that the main loop writes whole."""
        state, replica, guard = self.node.state, self.replica, self.guard
        return Health(
            height=state.height,
            block_t_ms=state.t,
            blocks_proposed=self._blocks[False],
            blocks_caught_up=self._blocks[True],
            round_changes=replica.round_changes,
            catch_ups=replica.catch_ups,
            pending=len(replica.pool),
            outbox=len(self._rows) + len(self._outgoing) + self._window.in_flight,
            retained_ignored=self.retained_ignored,
            throttled=replica.throttled,
            clock_jumps=0 if guard is None else guard.jumps,
            clock_offset_ms=0 if guard is None else guard.offset_ms,
            funded=state.funded,
            withdrawn=state.withdrawn,
            in_ledger=state.expected_total(),  # balances + holds, as every commit checks
            accounts=len(state.balances),
            retired=len(state.retired),
            replaced=len(state.rotated),
        )

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
        self._queue(self.node.store.outbox(), late=True)  # what a crash left unacknowledged, first and in order
        self.bus.connect()
        while not self._stopping.is_set():
            self._pump()
            if self._restored.is_set():
                self._restored.clear()
                if self._restore is None:
                    self._pending_restore(None)
            self._wake.clear()
            worked = self._drain()
            now, mono = self.clock(), _mono()
            deadline = self.replica.deadline(now, mono)
            if deadline is not None and deadline <= mono:
                self._carry(self.replica.tick(now, mono))
                worked = True
            self._stand_in()
            self._release()
            if worked:
                continue
            self._forget_delivered()
            if not (
                self._events or self._messages or self._restored.is_set() or self._stopping.is_set() or self._can_pump()
            ):
                self._wake.wait(self._idle_s(deadline))
        self.shutdown()

    def shutdown(self, timeout_s: float = 5.0) -> None:
        info = self.bus.publish(self.state_topic, f"offline {self.node.state.height}".encode(), retain=True)
        if not self.bus.wait_acked(info, timeout_s):
            log.warning("broker did not acknowledge offline within %.0f s", timeout_s)
        self.statements.close()
        self.bus.close()
        self._forget_delivered()
        self.node.close()
        if self.metrics is not None:
            self.metrics.close()

    # -- from the network thread --

    def _receiver(self, typ: str):
        def receive(topic: str, payload: bytes, retained: bool, ack: Callable[[], None]) -> None:
            if retained:
                self._ignore_retained(topic, payload, ack)
                return
            self._events.append(Transaction(typ, payload, ack))
            self._wake.set()

        return receive

    def _ignore_retained(self, topic: str, payload: bytes, ack: Callable[[], None]) -> None:
        """A retained copy on a transaction topic: never a transaction (§7: not retained). The
        broker keeps whatever a client published with the retain flag and delivers it again on
        every subscribe, so deciding it would give one more block and reject after each
        reconnect, forever. Its sender's live publish, if there was one, came to us as such."""
        ack()
        self.retained_ignored += 1
        if self.retained_ignored == 1 or self.retained_ignored % 1000 == 0:
            log.warning(
                "ignored a retained message on %s (%s, %d in all): transactions are never retained; "
                "clear it with an empty retained publish",
                topic,
                message_hash(payload).hex()[:16],
                self.retained_ignored,
            )

    def _consensus(self, topic: str, payload: bytes, retained: bool, ack: Callable[[], None]) -> None:
        ack()  # a lost consensus message costs a round at most; the votes are on disk already
        if payload == self._probe:  # after everything the broker had queued for us, and our retained state
            self._messages.append(ReadBack(self._connection, self._session, self._stored, self._resent))
            self._probe = None
            self.bus.unsubscribe(self.state_topic)  # or each `online` we say would come back to us
        elif len(self.replica.validators) > 1:
            self._messages.append(ConsensusMessage(payload))
        self._wake.set()

    def _state_seen(self, topic: str, payload: bytes, retained: bool, ack: Callable[[], None]) -> None:
        ack()
        if retained and self._probe is not None:  # resent by the broker on each connect's subscribe
            self._stored = payload

    def _block_seen(self, topic: str, payload: bytes, retained: bool, ack: Callable[[], None]) -> None:
        ack()
        self._messages.append(BlockAnnounced(payload))
        self._wake.set()

    def _status_seen(self, topic: str, payload: bytes, retained: bool, ack: Callable[[], None]) -> None:
        ack()
        self._messages.append(StatusSeen(topic, payload))
        self._wake.set()

    def _on_connect(self) -> None:
        """Subscribed again: read back what the broker kept before publishing anything it may
        have lost. We subscribe to our own state topic, then send a probe to ourselves: the
        broker handles them in that order, so its retained copy of our state comes before
        the probe's echo, which also comes after every message it had queued for us (so what
        we learn after it is news)."""
        self.gate.reading = True
        self._connection += 1
        self._session, self._stored = self.bus.session_present, None
        with self._in_flight_lock:  # paho has just sent these again, maybe after newer ones from others
            self._resent = list(self._in_flight)
        self._probe = f"probe {self._connection} {os.urandom(8).hex()}".encode()
        self.bus.subscribe_deferred(self.state_topic, self._state_seen)
        self.bus.publish(topics.consensus_to(self.index), self._probe)
        self._wake.set()

    # -- the main loop --

    def _drain(self) -> bool:
        """Hand everything that arrived to the replica and carry out what it says: consensus
        messages first, and again before each transaction."""
        if not (self._events or self._messages):
            return False
        self._drain_messages()
        for _ in range(len(self._events)):
            transaction = self._events.popleft()
            self._acks.setdefault((transaction.typ, message_hash(transaction.raw)), []).append(transaction.ack)
            self._carry(self.replica.submit(transaction.typ, transaction.raw, self.clock(), _mono()))
            self._drain_messages()
        return True

    def _drain_messages(self) -> None:
        while self._messages:
            match self._messages.popleft():
                case ConsensusMessage(raw):
                    self._carry(self.replica.receive(raw, self.clock(), _mono()))
                case BlockAnnounced(raw):
                    self._announced(raw)
                case StatusSeen(topic, raw):
                    self._check_seen(topic, raw)
                case ReadBack(connection, session, stored, resent):
                    self._read_back(connection, session, stored, resent)

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
        self.gate.decided(block.header.height)
        self._blocks[decided.proposer is None] += 1
        if self.metrics is not None and block.header.height > 1:  # not since the genesis' t of 0
            self.metrics.block_interval(block.header.t - self._last_t)
        self._last_t = block.header.t
        self._supersede_late(decided)
        self._check_seen(None)
        self._queue(rows)
        self._say_online()

    def _say_online(self) -> None:
        self._send(self.state_topic, f"online {self.node.state.height}".encode(), True)

    def _queue(self, rows: list[LedgerOutboxRow], late: bool = False) -> None:
        """Publish rank-0 rows when the gate lets them; keep stand-in rows until they are due.
        Late rows carry only each topic's last status of their block, and none that a later
        block superseded here: the others are old news, and a retained status never goes
        back (a read-back stand-in publishes after later blocks' statuses went out)."""
        now = time.monotonic()
        announced = {h for h in {row.height for row in rows if row.rank > 0} if h in self._seen}
        for h in announced:
            self._check_published(h, [row for row in rows if row.height == h and row.rank > 0], now)
        last = {(row.height, row.topic): row.seq for row in rows} if late else {}
        for row in rows:
            if row.height in announced:
                continue
            if row.rank > 0:
                _, waiting = self._standby.setdefault(row.height, (now + row.rank * TAKEOVER_S, []))
                waiting.append(row)
            elif (
                late
                and is_status(row.topic)
                and (last[row.height, row.topic] != row.seq or superseded(self.node.state, row.topic, row.height))
            ):
                self._delivered.append(row.seq)
            else:
                self._rows.append((row, late, now))
        self._release()

    def _release(self) -> None:
        """Publish waiting rows in order while the gate allows, then a pending restore."""
        tip, caught_up, now = self.node.state.height, self.replica.caught_up, time.monotonic()
        while self._rows:
            row, late, queued = self._rows[0]
            if not self.gate.open(row.height, tip, caught_up, now > queued + ANNOUNCE_WAIT_S):
                break
            self._rows.popleft()
            if superseded(self.node.state, row.topic, row.height):
                if row.seq:
                    self._delivered.append(row.seq)  # its successor goes out with the block that made it
                continue
            self._send(row.topic, row.payload, row.retain, self._on_ack(row.seq) if row.seq else None)
            self._sent(row.topic, row.height, late)
        if self._restore is not None and not self._rows and self.gate.open(tip + 1, tip, caught_up):
            self._publish_restore()

    def _on_ack(self, seq: int) -> Callable[[int], None]:
        """The PUBACK handler of outbox row `seq`: the next commit forgets the row."""
        return lambda _mid: self._delivered.append(seq)

    def _sent(self, topic: str, height: int, late: bool) -> None:
        """Remember a late status that a later block may supersede; one from its own block, or
        a final one, is the newest we will have sent on its topic."""
        if not is_status(topic):
            return
        if late and open_to_change(self.node.state, topic):
            self._late[topic] = height
        else:
            self._late.pop(topic, None)

    def _supersede_late(self, decided: Decided) -> None:
        """A late copy we sent may reach the broker after the status this block gives its topic
        (a CTP, an order, an interval), published by someone else: send that status too, after
        ours on our connection. Every change a block makes goes out on its retained topic."""
        if not self._late or decided.proposer == self.index:
            return  # ours are in this block's rows
        changed = {out.topic for out in decided.draft.outputs if out.retain and out.topic in self._late}
        if changed:
            now = time.monotonic()
            self._rows.extend((row, True, now) for row in self.node.current_statuses(of=changed))

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
        self.gate.announced_block(height)
        standby = self._standby.pop(height, None)
        if standby is not None:
            self._check_published(height, standby[1], time.monotonic())

    def _check_published(self, height: int, rows: list[LedgerOutboxRow], now: float) -> None:
        """Block `height` was announced: stand in no more once a sample of its statuses shows
        on the broker (a proposer may announce a block and withhold its statuses)."""
        sample = self._published.start(height, rows, now + rows[0].rank * TAKEOVER_S)
        if sample is None:
            self.node.store.drop_standby(height)
        for topic in sample or ():
            self.bus.subscribe_deferred(topic, self._status_seen)

    def _check_seen(self, topic: str | None, payload: bytes = b"") -> None:
        """A status read back (None: a block decided here, which may have changed one)."""
        newer = functools.partial(superseded, self.node.state)
        check = self._published
        done, unwatched = check.recheck(newer) if topic is None else check.seen(topic, payload, newer)
        for height in done:
            self.node.store.drop_standby(height)
        for t in unwatched:
            self.bus.unsubscribe(t)

    def _stand_in(self) -> None:
        """Publish the outputs of blocks whose publisher has been silent too long."""
        now = time.monotonic()
        tip, caught_up = self.node.state.height, self.replica.caught_up
        for height in sorted(h for h, (due, _) in self._standby.items() if due <= now):
            _, rows = self._standby.pop(height)
            if not self.gate.open(height, tip, caught_up):  # its publisher is held back too: wait from when it can go
                self._standby[height] = (now + rows[0].rank * TAKEOVER_S, rows)
                continue
            log.warning(
                "block %d was not announced: publishing its %d messages in its proposer's place", height, len(rows)
            )
            self._queue([row._replace(rank=0) for row in rows], late=True)
        withheld, unwatched = self._published.overdue(now)
        for t in unwatched:
            self.bus.unsubscribe(t)
        for height, rows in withheld:
            log.warning("block %d was announced without its statuses: publishing its %d messages", height, len(rows))
            self._queue([row._replace(rank=0) for row in rows], late=True)

    def _idle_s(self, deadline: int | None) -> float:
        """Seconds to sleep: until the replica's next deadline or a stand-in is due (at most a minute)."""
        waits = [60.0]
        if deadline is not None:
            waits.append((deadline - _mono()) / 1000)
        overdue = self._rows[0][2] + ANNOUNCE_WAIT_S - time.monotonic() if self._rows else 0
        if overdue > 0:
            waits.append(overdue)
        if self._standby:
            waits.append(min(due for due, _ in self._standby.values()) - time.monotonic())
        checked = self._published.next_due()
        if checked is not None:
            waits.append(checked - time.monotonic())
        return max(0.0, min(waits))

    # -- publishing --

    def _send(self, topic: str, payload: bytes, retain: bool, on_ack: OnAck | None = None) -> None:
        """Queue a publish, in order after everything queued before it."""
        self._outgoing.append((topic, payload, retain, on_ack))
        self._pump()

    def _can_pump(self) -> bool:
        return bool(self._outgoing) and self._window.room > 0

    def _pump(self) -> None:
        """Hand queued publishes to paho while fewer than WINDOW are unacknowledged; count the
        status topics in flight (see _read_back)."""
        while self._can_pump():
            topic, payload, retain, on_ack = self._outgoing.popleft()
            if is_status(topic):
                with self._in_flight_lock:
                    self._in_flight[topic] = self._in_flight.get(topic, 0) + 1
                on_ack = functools.partial(self._status_acked, topic, on_ack)
            if self.metrics is not None:
                on_ack = self.metrics.timed_ack(on_ack)
            self._window.publish(topic, payload, retain, on_ack)

    def _status_acked(self, topic: str, on_ack: OnAck | None, mid: int) -> None:
        with self._in_flight_lock:
            left = self._in_flight.pop(topic) - 1
            if left:
                self._in_flight[topic] = left
        if on_ack is not None:
            on_ack(mid)

    def _room(self) -> None:
        """After each PUBACK, on paho's thread: the main loop may have more to hand over now."""
        if self._outgoing:
            self._wake.set()

    def _read_back(self, connection: int, session: bool, stored: bytes | None, resent: list[str]) -> None:
        """The broker's backlog for this connection is read: catch up afresh, and restore
        what the broker may have lost (lost_since), or what a restore cut short by a crash
        had not yet seen acknowledged (durable). `online` now, and again after a restore.

        Statuses that were in flight when the connection dropped were sent again by paho on
        this one, maybe after newer statuses on their topics from other validators (QoS 1 does
        not deduplicate): their current statuses follow them, as late copies."""
        if connection != self._connection:
            return  # a later connect is being read back
        self.gate.reading = False
        self._carry(self.replica.rejoin(self.clock(), _mono()))
        if resent:
            now = time.monotonic()
            self._rows.extend((row, True, now) for row in self.node.current_statuses(of=resent))
        store = self.node.store
        since = lost_since(session, stored, self.node.state.height, store.block_time)
        pending = 0 if store.flag(RESTORE) else int(store.value(RESTORE_SINCE) or -1)
        for start in (pending, self._restore[0] if self._restore else None):
            if start is not None and start >= 0:
                since = start if since is None else min(since, start)
        log.info(
            "connected; the broker kept %r: %s",
            stored,
            "nothing to restore" if since is None else f"restore from t={since}",
        )
        if since is not None:
            self._pending_restore(since)
            # Blocks decided after this connect are announced on it: up to now, or our tip.
            until = max(self.clock(), self.node.state.t, self._restore[1] if self._restore else 0)
            self._restore = (since, until)
            self._release()
        if since is None or self._restore is not None:
            self._say_online()  # else the restore just said it, after its statuses

    def _pending_restore(self, since: int | None) -> None:
        """Durably note a restore from block time `since` until the broker acknowledged it all."""
        self.node.store.set_value(RESTORE_SINCE, b"" if since is None else str(since).encode())
        if since is None:
            self.node.store.set_flag(RESTORE, False)

    def _publish_restore(self) -> None:
        """Publish the current status of every CTP, order and result changed since the
        restore's block time: the gate is open, so this validator is caught up and nothing
        newer is announced."""
        (since, until), self._restore = self._restore or (0, 0), None
        statuses = self.node.current_statuses(since, until=until)
        log.info("publishing %d statuses again (block times %d to %d)", len(statuses), since, until)
        self._restore_round += 1
        remaining, round_ = [len(statuses)], self._restore_round

        def acked(_mid: int) -> None:  # on the network thread, the only one that counts down
            remaining[0] -= 1
            if remaining[0] == 0 and round_ == self._restore_round:
                self._restored.set()
                self._wake.set()

        for row in statuses:
            self._send(row.topic, row.payload, True, acked)
            self._sent(row.topic, row.height, True)
        if not statuses:
            self._pending_restore(None)
        self._say_online()

    def _take_delivered(self) -> list[int]:
        return [self._delivered.popleft() for _ in range(len(self._delivered))]

    def _forget_delivered(self) -> None:
        self.node.store.forget(self._take_delivered())
