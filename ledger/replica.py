"""One validator's consensus, sans-IO: QBFT rounds over the ledger's blocks (docs/CONSENSUS.md).

A Replica is a pure function of (its state, a message or a tick, the time given): `submit`
takes a transaction from the bus, `receive` a consensus message from a peer, `tick` lets
timers fire, and each returns the actions for its adapter to carry out in order: persist
the votes, send messages, write a decided block and acknowledge its inputs. No socket,
thread, file or clock in here: ledger.service puts it on MQTT and SQLite, ledger.sim runs
four of them in a simulated network from a seed.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

from nacl.signing import SigningKey

from ledger import consensus as c
from ledger import door
from ledger.block import Block, BlockError, Header, Input, decode_inputs, encode_inputs, quorum, seal, seal_valid
from ledger.draft import TX_KINDS, Draft, replay
from ledger.round_votes import RoundVotes
from ledger.state import LedgerState
from wire.cose import MAX_MESSAGE, encode, load, message_hash
from wire.reasons import BUSY, NOT_FINAL, Reject
from wire.verify import Verifier

MAX_BACKOFF = 5  # round timeouts (and forwarding intervals) double up to 32 times the first
Key = tuple[str, bytes]  # (typ, message hash): what a transaction is, whoever forwarded it
INPUT_OVERHEAD = 16  # CBOR bytes around one input in a block's inputs, at most ([typ, raw] heads, typ)
BLOCK_OVERHEAD = 1024  # a proposed block's header and array heads, at most
# Rounds of each kind of vote (and proposed blocks) kept per sender at one height: its highest
# (ledger.round_votes). Honest rounds only go up, so older ones no longer matter.
ROUNDS_KEPT = 8


@dataclass(frozen=True)
class Timing:
    """Consensus timing, ms. Not consensus state: validators may differ in these."""

    block_ms: int = 200  # shortest time from one proposal to the next (the genesis' block_ms)
    round_ms: int = 1000  # round 0's timeout after the block interval; round r waits round_ms * 2^r
    max_skew_ms: int = 5000  # a fresh proposal's time may be this far ahead of ours
    forward_ms: int = 2000  # a transaction pending this long is sent to the other validators
    replay_us: int = 1000  # per input of an accepted proposal: added to its round's timeout for the replay
    sync_ms: int = 500  # at most one catch-up request (and one answer per peer) this often
    recent_ms: int = 120_000  # a decided transaction arriving again this soon is a broker copy
    max_inputs: int = 1000  # per block: its replay must fit in a round's timeout on a loaded validator
    block_bytes: int = 512 * 1024  # per proposed block (header and inputs), so a proposal fits the broker's limit
    sync_blocks: int = 64  # per answer to a catch-up request
    sync_bytes: int = 1024 * 1024  # per answer to a catch-up request, unless one block alone is more
    forward_max: int = 512  # transactions per forwarding message
    forward_bytes: int = 256 * 1024  # per forwarding message, unless one transaction alone is more
    pool_per_sender: int = 1024  # pending transactions of one sender (the key that signed them)
    pool_max: int = 8192  # pending transactions in all: below the broker's in-flight window (broker.runtime)
    pool_bytes: int = 32 * 1024 * 1024  # their bytes in all
    rate_per_s: int = 100  # transactions one sender may pool per second after its burst (ledger.door.Rates)
    rate_burst: int = 1000  # transactions one sender may pool at once: about its share of the pool

    def __post_init__(self) -> None:
        if self.block_bytes < BLOCK_OVERHEAD + INPUT_OVERHEAD + MAX_MESSAGE:
            raise ValueError(f"block_bytes {self.block_bytes}: a block must have room for any one transaction")


class Send(NamedTuple):
    payload: bytes
    to: int | None = None  # None: every validator


class Persist(NamedTuple):
    votes: bytes  # write before the sends that follow it


class Decided(NamedTuple):
    block: Block  # sealed by a quorum
    draft: Draft  # what it changed, already committed to the replica's state
    proposer: int | None  # whose proposal it was; None for a block caught up from a peer


class Ack(NamedTuple):
    keys: list[Key]  # transactions decided (or already decided): acknowledge them


class Refused(NamedTuple):
    """A transaction turned away before any block: rejected at the door for a reason its
    bytes decide, or `busy` when the pool had no room. Acknowledge it; if `announce`, first
    publish its reject (and acknowledge once the broker has it, so a crash loses nothing)."""

    key: Key
    reason: str
    announce: bool  # this validator is the message's announcer: the one that publishes its reject


Action = Send | Persist | Decided | Ack | Refused


class _Pending:
    """A pooled transaction: its bytes, whose share of the pool it takes, and when it is next
    due to be forwarded (after `forwards` forwards of it seen, ours or a peer's)."""

    __slots__ = ("due", "forwards", "raw", "sender", "typ")

    def __init__(self, typ: str, raw: bytes, sender: bytes, due: int, forwards: int):
        self.typ, self.raw, self.sender, self.due, self.forwards = typ, raw, sender, due, forwards


@dataclass
class _Candidate:
    header: Header
    inputs: tuple[Input, ...]
    raw: bytes  # c.block_bytes(...)

    @classmethod
    def of(cls, header: Header, inputs: tuple[Input, ...]) -> _Candidate:
        return cls(header, inputs, c.block_bytes(header, inputs))

    @classmethod
    def parse(cls, raw: object) -> _Candidate:
        """A proposed block's bytes; ConsensusError if they are not one."""
        header, inputs = c.parse_block(raw)
        assert type(raw) is bytes, "parse_block opened it"
        return cls(header, inputs, raw)


class Replica:
    def __init__(
        self,
        state: LedgerState,
        verifier: Verifier,
        index: int,
        key: SigningKey,
        chain: Callable[[int], Block | None],
        timing: Timing = Timing(),
        votes: bytes | None = None,
        now: int = 0,
        mono: int | None = None,
    ):
        self.state, self.verifier, self.index, self.key, self.chain = state, verifier, index, key, chain
        self.timing = timing
        self.validators = state.genesis.validators
        self.n = len(self.validators)
        self.q = quorum(self.n)
        self.f = (self.n - 1) // 3
        self.pool: OrderedDict[Key, _Pending] = OrderedDict()  # in arrival order
        self.pooled_by: dict[bytes, int] = {}  # sender -> its transactions in the pool
        self.pooled_bytes = 0
        self.rates = door.Rates(timing.rate_per_s, timing.rate_burst, timing.pool_max)
        self.throttled = 0  # transactions refused `busy` beyond their sender's rate, for the adapter's metrics
        self.next_forward: int | None = None  # the earliest forward time at the pool's head
        self.recent: OrderedDict[Key, int] = OrderedDict()  # decided key -> when
        self.future: list[c.Signed] = []  # messages for the next heights, kept for when we get there
        self.last_proposal = -timing.block_ms  # when the last proposal was made or seen
        self.sync_asked = -timing.sync_ms
        self.sync_answered: dict[int, int] = {}
        self.tail: dict[int, Block] = {}  # the last blocks decided, by height
        # Whether it knows it reached the network's head since the adapter last called
        # rejoin(): f + 1 peers answered a catch-up request up to their tips (see rejoin).
        self.caught_up = self.n == 1
        self.heads: set[int] | None = None  # peers that did; None until the first rejoin()
        self.round_changes = 0  # rounds left (ROUND_CHANGE sent), for the adapter's metrics
        self.catch_ups = 0  # catch-up answers that brought at least one block, likewise
        self.out: list[Action] = []
        now = self._clocks(now, mono)
        self._height()
        if votes:
            saved = load(votes)
            assert isinstance(saved, dict), "votes() wrote a map"
            self._restore(saved, now)
        if self.n > 1:
            self._send(c.make(key, index, c.SYNC, self.h), None)  # a restarted validator asks what it missed

    # -- the height's state --

    def _height(self) -> None:
        self.h = self.state.height + 1
        self.round = 0
        self.timer: int | None = None
        self.accepted: tuple[int, bytes] | None = None  # (round, digest) we sent a PREPARE for
        self.prepared: tuple[int, bytes, list[bytes]] | None = None  # (round, digest, its PREPAREs)
        self.committed_in: set[int] = set()
        self.proposed_in: set[int] = set()
        self.candidates: dict[bytes, _Candidate] = {}
        self.live: tuple[bytes, Draft] | None = None  # the last candidate replayed, to decide it without a replay
        # Each bounded per sender, so a Byzantine validator's rounds and digests cannot fill memory.
        self.prepares: RoundVotes[bytes] = RoundVotes(ROUNDS_KEPT)
        self.commits: RoundVotes[bytes] = RoundVotes(ROUNDS_KEPT)  # seals
        self.rcs: RoundVotes[c.Signed] = RoundVotes(ROUNDS_KEPT)  # by round only (digest b"")
        self.proposals: RoundVotes[None] = RoundVotes(ROUNDS_KEPT)  # which candidates proposers sent
        self.behind_since: int | None = None  # when a message for the next height arrived

    def votes(self) -> bytes:
        """What must survive a crash so this validator never contradicts itself."""
        accepted, prepared = self.accepted, self.prepared
        block = self.candidates[prepared[1]].raw if prepared else b""
        return encode(
            {
                "h": self.h,
                "r": self.round,
                "acc": list(accepted) if accepted else [],
                "prep": [prepared[0], prepared[1], block, prepared[2]] if prepared else [],
                "prop": sorted(self.proposed_in),
            }
        )

    def _restore(self, v: dict, now: int) -> None:
        if v["h"] != self.h:
            return  # about a height decided since
        self.round, self.accepted = v["r"], tuple(v["acc"]) or None
        self.proposed_in = set(v["prop"])
        if v["prep"]:
            pr, d, block, cert = v["prep"]
            self.candidates[d] = _Candidate.parse(block)
            self.prepared = (pr, d, cert)
        self._enter(self.round, now)

    # -- inputs --

    def submit(self, typ: str, raw: bytes, now: int, mono: int | None = None) -> list[Action]:
        """A transaction from spb/v1/tx/{typ}.

        Every entry point takes `now`, the wall clock in ms (block times, expiries), and
        `mono`, a monotonic clock in ms for timers (default: `now`), so a clock that jumps or
        a test's frozen clock moves no timer.
        """
        now = self._clocks(now, mono)
        key = (typ, message_hash(raw))
        if key in self.recent:
            self.out.append(Ack([key]))
        elif key not in self.pool:  # a second delivery of a pooled one waits with the first
            reason = self._admit(typ, raw, key, now, 0)
            if reason is not None:
                self.out.append(Refused(key, reason, door.announcer(key[1], self.n) == self.index))
        return self._progress(now)

    def _admit(self, typ: str, raw: bytes, key: Key, now: int, forwards: int) -> str | None:
        """Pool a transaction that passes the door (ledger.door) if its sender's share of
        the pool has room; else the reason it is turned away. Its signature is checked only
        if there is room, so a burst beyond a sender's share costs no more than decoding."""
        claimed = door.claim(self.verifier, typ, raw, market=self.state.market is not None)
        if claimed.reason is not None:
            return claimed.reason
        if not self._room(claimed.sender, len(raw), now):
            return BUSY
        checked = door.check(self.verifier, typ, raw, self.wall)
        if checked.reason is not None:
            return checked.reason
        if checked.sender != claimed.sender and not self._room(checked.sender, len(raw), now):
            return BUSY
        self.rates.take(checked.sender, now)
        self._pool(typ, raw, key, checked.sender, now, forwards)
        return None

    def _room(self, sender: bytes, size: int, now: int) -> bool:
        t = self.timing
        if not self.rates.allows(sender, now):
            self.throttled += 1
            return False
        return (
            self.pooled_by.get(sender, 0) < t.pool_per_sender
            and len(self.pool) < t.pool_max
            and self.pooled_bytes + size <= t.pool_bytes
        )

    def _pool(self, typ: str, raw: bytes, key: Key, sender: bytes, now: int, forwards: int) -> None:
        entry = _Pending(typ, raw, sender, 0, forwards)
        self.pool[key] = entry
        self.pooled_by[sender] = self.pooled_by.get(sender, 0) + 1
        self.pooled_bytes += len(raw)
        if self.n > 1:
            self._schedule(key, entry, now)
            if len(self.pool) <= self.timing.max_inputs:  # at the head: it may be the next one due
                self.next_forward = entry.due if self.next_forward is None else min(entry.due, self.next_forward)

    def _unpool(self, key: Key) -> None:
        entry = self.pool.pop(key, None)
        if entry is None:
            return
        left = self.pooled_by.pop(entry.sender) - 1
        if left:
            self.pooled_by[entry.sender] = left
        self.pooled_bytes -= len(entry.raw)

    def _schedule(self, key: Key, entry: _Pending, now: int) -> None:
        """When to forward a pooled transaction next: forward_ms after it arrived, doubling
        after each forward of it seen (ours or a peer's: one reaches every validator), and
        forward_ms later per place after its announcer, so that one validator forwards it
        and the others see that before their turn comes."""
        f = self.timing.forward_ms
        rank = (self.index - door.announcer(key[1], self.n)) % self.n
        entry.due = now + (f << min(entry.forwards, MAX_BACKOFF)) + rank * f

    def receive(self, payload: bytes, now: int, mono: int | None = None) -> list[Action]:
        """A message from spb/v1/consensus/...; malformed or forged ones change nothing."""
        now = self._clocks(now, mono)
        try:
            message = c.open_signed(payload, self.validators)
        except c.ConsensusError:
            return self._progress(now)
        self._handle(message, now)
        return self._progress(now)

    def tick(self, now: int, mono: int | None = None) -> list[Action]:
        return self._progress(self._clocks(now, mono))

    def rejoin(self, now: int, mono: int | None = None) -> list[Action]:
        """The adapter sees the network afresh (a start, or a reconnect whose queued backlog
        it has handed over): no longer caught up until f + 1 peers answer a catch-up request
        sent from now on with blocks up to their tips (a sync answer that is not full, maybe
        empty). One of them is honest, and none is trusted for the blocks. Asked again every
        sync_ms until then, so a lost answer costs only time."""
        now = self._clocks(now, mono)
        if self.n > 1:
            self.caught_up, self.heads = False, set()
            self.sync_asked = now - self.timing.sync_ms
        return self._progress(now)

    def _clocks(self, now: int, mono: int | None) -> int:
        """Keep the wall clock for block times; the rest of the replica runs on `mono`."""
        self.wall = now
        return now if mono is None else mono

    def deadline(self, now: int, mono: int | None = None) -> int | None:
        """When (on `mono`) `tick` has something to do, if nothing arrives first."""
        now = self._clocks(now, mono)
        times = [t for t in (self.timer, self._propose_at(now)) if t is not None]
        if self.next_forward is not None:
            times.append(self.next_forward)
        if self.behind_since is not None:
            times.append(self.behind_since + self.timing.sync_ms)
        if not self.caught_up and self.heads is not None:
            times.append(self.sync_asked + self.timing.sync_ms)
        due = self.state.next_due()
        if due is not None and self.timer is None:
            times.append(now + max(due - self.wall, 0))
        return min(times) if times else None

    # -- the rounds --

    def _progress(self, now: int) -> list[Action]:
        if self.timer is not None and now >= self.timer:
            self._round_change(self.round + 1, now)
        if self.timer is None and self._work(now):
            self.timer = max(now, self.last_proposal + self.timing.block_ms) + self._timeout(0)
        at = self._propose_at(now)
        if at is not None and now >= at:
            self._propose(now)
        if self.next_forward is not None and now >= self.next_forward:
            self._forward(now)
        if self.behind_since is not None and now >= self.behind_since + self.timing.sync_ms:
            self.behind_since = now
            self._ask_sync(now)
        if not self.caught_up and self.heads is not None:
            self._ask_sync(now)  # at most every sync_ms
        out, self.out = self.out, []
        return out

    def _work(self, now: int) -> bool:
        due = self.state.next_due()
        # An expiry or a clearing is work once the wall clock has reached its time, not
        # merely the next block time (tip + 1 ms when the clock stands still or lags a
        # proposer's block time).
        return bool(self.pool) or (due is not None and self.wall >= due)

    def _block_time(self) -> int:
        """The time of a block we would propose now: the wall clock, after the tip's."""
        return max(self.wall, self.state.t + 1)

    def _timeout(self, r: int) -> int:
        return self.timing.round_ms << min(r, MAX_BACKOFF)

    def proposer(self, h: int, r: int) -> int:
        return (h + r) % self.n

    def _propose_at(self, now: int) -> int | None:
        r = self.round
        if self.proposer(self.h, r) != self.index or r in self.proposed_in:
            return None
        if r == 0:
            return max(now, self.last_proposal + self.timing.block_ms) if self._work(now) else None
        rcs = self.rcs.in_round(r)
        if len(rcs) < self.q or not (self._work(now) or any(m.pr >= 0 for m in rcs.values())):
            return None
        return now

    def _propose(self, now: int) -> None:
        r = self.round
        justification = {}
        if r > 0:
            rcs = sorted(self.rcs.in_round(r).values(), key=lambda m: m.pr, reverse=True)[: self.q]
            justification["rcs"] = [m.signed for m in rcs]
            best = rcs[0]
            if best.pr >= 0:  # a block may have been committed in an earlier round: propose it again
                candidate = self.candidates[best.d]
                justification["prepares"] = best.attachments["prepares"]
                self._send_proposal(r, best.d, candidate, now, justification)
                return
        self._live_draft(None)
        draft = Draft(self.state, self.verifier, self._block_time())
        size = BLOCK_OVERHEAD
        for count, entry in enumerate(self._proposable()):
            size += len(entry.raw) + INPUT_OVERHEAD
            if count == self.timing.max_inputs or size > self.timing.block_bytes:
                break  # the rest waits for the next block, in arrival order
            draft.add(entry.typ, entry.raw)
        block = draft.finish()
        if block is None:
            return  # nothing to decide yet (an expiry not passed at t)
        candidate = _Candidate.of(block.header, block.inputs)
        self.candidates[block.hash] = candidate
        self.live = (block.hash, draft)
        self._send_proposal(r, block.hash, candidate, now, justification)

    def _proposable(self) -> Iterable[_Pending]:
        """What a fresh proposal takes, in order: the pool (ledger.sim's censor takes less)."""
        return self.pool.values()

    def _send_proposal(self, r: int, d: bytes, candidate: _Candidate, now: int, justification: dict) -> None:
        self.proposed_in.add(r)
        self._persist()
        self._broadcast(
            c.make(self.key, self.index, c.PROPOSAL, self.h, r, d, block=candidate.raw, **justification), now
        )

    def _round_change(self, r: int, now: int) -> None:
        """Leave for round r: tell everyone, with what we prepared so a committed block survives."""
        self.round_changes += 1
        self._enter(r, now)
        self._persist()
        attachments: dict = {}
        pr, d = -1, b""
        if self.prepared:
            pr, d, cert = self.prepared
            attachments = {"block": self.candidates[d].raw, "prepares": cert}
        self._broadcast(c.make(self.key, self.index, c.ROUND_CHANGE, self.h, r, d, pr=pr, **attachments), now)

    def _persist(self) -> None:
        if self.n > 1:  # a lone validator has no one to contradict itself to
            self.out.append(Persist(self.votes()))

    def _broadcast(self, message: c.Signed, now: int) -> None:
        self._send(message, None)
        self._handle(message, now)

    def _send(self, message: c.Signed, to: int | None) -> None:
        if self.n > 1:
            self.out.append(Send(c.wire(message), to))

    # -- messages --

    def _handle(self, m: c.Signed, now: int) -> None:
        if m.kind in (c.TXS, c.SYNC, c.BLOCKS):
            {c.TXS: self._on_txs, c.SYNC: self._on_sync, c.BLOCKS: self._on_blocks}[m.kind](m, now)
            return
        if m.h > self.h:
            if m.h > self.h + 1:
                self._ask_sync(now)  # missed a whole height
            elif self.behind_since is None:
                self.behind_since = now  # ask if we are still here after sync_ms
            if m.h <= self.h + 2 and len(self.future) < 64 * self.n:
                self.future.append(m)
            return
        if m.h < self.h:
            if m.kind == c.ROUND_CHANGE:
                self._answer_sync(m.sender, m.h, now)  # timing out on a height we decided: it is behind
            return
        if self.timer is None:
            self.timer = now + self.timing.block_ms + self._timeout(self.round)  # someone has work
        {
            c.PROPOSAL: self._on_proposal,
            c.PREPARE: self._on_prepare,
            c.COMMIT: self._on_commit,
            c.ROUND_CHANGE: self._on_round_change,
        }[m.kind](m, now)

    def _on_proposal(self, m: c.Signed, now: int) -> None:
        if m.sender != self.proposer(m.h, m.r):
            return
        try:
            candidate = _Candidate.parse(m.attachments.get("block"))
        except c.ConsensusError:
            return
        header = candidate.header
        if (
            header.hash != m.d
            or len(candidate.inputs) > self.timing.max_inputs
            or len(candidate.raw) > self.timing.block_bytes
        ):
            return
        kept = self.proposals.add(m.sender, m.r, m.d, None)
        if kept is False:
            return  # a round far below the proposer's latest ones
        if kept is not None:
            self._forget_candidate(kept[1])
        if m.d not in self.candidates:
            self.candidates[m.d] = candidate
            self._check_decided(now)  # its commits may have come first
            if m.h != self.h:
                return
        if m.r < self.round:
            return
        reproposed: bool | None = False
        if m.r > 0:
            reproposed = self._justified(m)
            if reproposed is None:
                return
        if m.r > self.round:
            self._enter(m.r, now)
        if self.accepted is not None and self.accepted[0] == m.r:
            return  # one proposal per round
        if not reproposed and header.t > self.wall + self.timing.max_skew_ms:
            return  # a block time from the future would expire CTPs early
        draft = self._live_draft(m.d)
        if draft is None or (not reproposed and _holds_junk(draft)):
            return
        self.accepted = (m.r, m.d)
        self.last_proposal = now
        # Replaying the block took part of the round, and the others replay it too: the
        # round's timeout grows with the block, so no cap on the pool's size is needed here.
        self.timer = (self.timer or now) + len(candidate.inputs) * self.timing.replay_us // 1000
        self._persist()
        self._broadcast(c.make(self.key, self.index, c.PREPARE, self.h, m.r, m.d), now)
        self._check_decided(now)

    def _justified(self, m: c.Signed) -> bool | None:
        """For a proposal in round r > 0: a quorum of round changes to r, and if any of them
        prepared, the block of the highest one with a quorum of PREPAREs. True when the
        proposal is such a prepared block, False when it may be any block, None if unjustified."""
        try:
            rcs = {
                x.sender: x
                for x in c.signed_list(m.attachments.get("rcs"), self.validators, self.n)
                if x.kind == c.ROUND_CHANGE and x.h == m.h and x.r == m.r
            }
        except c.ConsensusError:
            return None
        if len(rcs) < self.q:
            return None
        best = max(rcs.values(), key=lambda x: x.pr)
        if best.pr < 0:
            return False
        if best.d != m.d or not self._prepare_certificate(m.attachments.get("prepares"), m.h, best.pr, m.d):
            return None
        return True

    def _prepare_certificate(self, raw: object, h: int, r: int, d: bytes) -> bool:
        try:
            prepares = c.signed_list(raw, self.validators, self.n)
        except c.ConsensusError:
            return False
        return len({p.sender for p in prepares if (p.kind, p.h, p.r, p.d) == (c.PREPARE, h, r, d)}) >= self.q

    def _live_draft(self, d: bytes | None) -> Draft | None:
        """The replay of candidate d, made the live one (None: drop the live one). None if
        the block is not valid on our state."""
        if self.live is not None:
            if self.live[0] == d:
                return self.live[1]
            self.live = None
        if d is None:
            return None
        candidate = self.candidates[d]
        header = candidate.header
        if header.height != self.h or header.prev != self.state.tip or header.t <= self.state.t:
            return None
        try:
            draft = replay(self.state, self.verifier, header.t, candidate.inputs)
        except (BlockError, Reject, ValueError):
            return None
        if draft.block is None or draft.block.header != header:
            return None
        self.live = (d, draft)
        return draft

    def _on_prepare(self, m: c.Signed, now: int) -> None:
        self.prepares.add(m.sender, m.r, m.d, m.signed)
        self._check_prepared(now)

    def _check_prepared(self, now: int) -> None:
        if self.accepted is None:
            return
        r, d = self.accepted
        votes = self.prepares.get((r, d), {})
        if r != self.round or r in self.committed_in or len(votes) < self.q or d not in self.candidates:
            return  # a round we left: our round change said we had not prepared in it
        self.committed_in.add(r)
        self.prepared = (r, d, list(votes.values())[: self.n])
        self._persist()
        commit_seal = seal(self.candidates[d].header.encode(), self.key)
        self._broadcast(c.make(self.key, self.index, c.COMMIT, self.h, r, d, seal=commit_seal), now)

    def _on_commit(self, m: c.Signed, now: int) -> None:
        self.commits.add(m.sender, m.r, m.d, m.seal)
        self._check_decided(now)

    def _check_decided(self, now: int) -> None:
        for (r, d), seals in self.commits.items():
            candidate = self.candidates.get(d)
            if candidate is None or len(seals) < self.q:
                continue
            header = candidate.header.encode()
            good = {(i, s) for i, s in seals.items() if seal_valid(header, i, s, self.validators)}
            for i, _ in set(seals.items()) - good:
                self.commits.drop(i, r, d)  # a forged seal: that validator's real one may still come
            if len(good) >= self.q:
                self._decide(d, good, self.proposer(self.h, r), now)
                return

    def _decide(self, d: bytes, seals: set, proposer: int | None, now: int) -> None:
        draft = self._live_draft(d)
        if draft is None:
            return  # sealed by a quorum yet not valid here: more than f are faulty; stay put
        self.live = None
        self.state.commit(draft.changes)
        assert draft.block is not None, "_live_draft gives only a finished draft"
        block = draft.block.with_seals(seals)
        keys = [(typ, message_hash(raw)) for typ, raw in block.inputs]
        for key, reason in zip(keys, draft.reasons, strict=True):
            self._unpool(key)
            if reason not in NOT_FINAL:  # e.g. an `oversold` ERC sent again is decided again (§9.4)
                self.recent[key] = now
        head = itertools.islice(self.pool.values(), self.timing.max_inputs)
        self.next_forward = min((entry.due for entry in head), default=None) if self.n > 1 else None
        while self.recent and next(iter(self.recent.values())) < now - self.timing.recent_ms:
            self.recent.popitem(last=False)
        self.out += [Decided(block, draft, proposer), Ack(keys)]
        self.tail[block.header.height] = block  # until the adapter has written it
        self.tail.pop(block.header.height - self.timing.sync_blocks, None)
        self._height()
        future, self.future = self.future, []
        for m in future:
            self._handle(m, now)

    def _enter(self, r: int, now: int) -> None:
        self.round, self.timer = r, now + self._timeout(r)

    def _on_round_change(self, m: c.Signed, now: int) -> None:
        if m.r == 0:
            return
        if m.pr < 0:
            if m.d != b"":
                return
        else:
            candidate = self._prepared_block(m)
            if candidate is None:
                return
            self.candidates.setdefault(m.d, candidate)
        self.rcs.add(m.sender, m.r, b"", m)
        # f+1 validators are past our round: one of them is honest, so follow them
        ahead = sorted((r for r in self.rcs.highest().values() if r > self.round), reverse=True)
        if len(ahead) > self.f:
            self._round_change(ahead[self.f], now)

    def _forget_candidate(self, d: bytes) -> None:
        """Drop a block a proposer sent in a round it has since proposed ROUNDS_KEPT rounds
        above, unless something still needs it: our votes, a round change that carries it, or
        another proposal of it. A quorum's commits for a dropped block are no loss: the
        decided block comes back with its seals through catch-up."""
        needed = {x[1] for x in (self.accepted, self.prepared, self.live) if x is not None}
        needed |= self.proposals.digests()
        needed |= {rc.d for _, by in self.rcs.items() for rc in by.values()}
        if d not in needed:
            self.candidates.pop(d, None)

    def _prepared_block(self, m: c.Signed) -> _Candidate | None:
        """The block a round change says its sender prepared, if it hashes to the digest and
        a quorum of PREPAREs comes with it."""
        try:
            candidate = _Candidate.parse(m.attachments.get("block"))
        except c.ConsensusError:
            return None
        if candidate.header.hash != m.d or not self._prepare_certificate(m.attachments.get("prepares"), m.h, m.pr, m.d):
            return None
        return candidate

    # -- transactions between validators, and catching up --

    def _forward(self, now: int) -> None:
        """Send the due transactions at the head of the pool (see _schedule) to everyone: the
        next proposer may lack them. Deeper ones wait behind a backlog, not for a validator
        that lacks them; they are forwarded when they reach the head, if still due."""
        t = self.timing
        batches: list[list[Input]] = [[]]
        size, upcoming = 0, []
        for key, entry in itertools.islice(self.pool.items(), t.max_inputs):
            if entry.due <= now:
                entry.forwards += 1
                self._schedule(key, entry, now)
                batch = batches[-1]
                if batch and (len(batch) == t.forward_max or size + len(entry.raw) > t.forward_bytes):
                    batches.append(batch := [])
                    size = 0
                batch.append((entry.typ, entry.raw))
                size += len(entry.raw) + INPUT_OVERHEAD
            upcoming.append(entry.due)
        # Not again for a while: transactions falling due meanwhile go in the next batch.
        self.next_forward = max(min(upcoming), now + t.forward_ms // 4) if upcoming else None
        for batch in batches:
            if batch:
                raw = encode_inputs(tuple(batch))
                self._send(c.make(self.key, self.index, c.TXS, self.h, d=c.digest(raw), txs=raw), None)

    def _on_txs(self, m: c.Signed, now: int) -> None:
        """Transactions a peer forwarded: a forward of one we hold postpones ours (everyone
        has it now); one we lack goes through the door like a transaction from the bus, but
        is not refused if turned away: its sender heard from the validators it reached."""
        if m.sender == self.index:
            return
        try:
            txs = decode_inputs(c.bulk(m, "txs"))
        except (c.ConsensusError, BlockError):
            return
        for typ, msg in txs[: 8 * self.timing.forward_max]:
            key = (typ, message_hash(msg))
            if typ not in TX_KINDS or key in self.recent:
                continue
            entry = self.pool.get(key)
            if entry is not None:
                entry.forwards += 1
                self._schedule(key, entry, now)
                continue
            self._admit(typ, msg, key, now, 1)

    def _ask_sync(self, now: int) -> None:
        if now - self.sync_asked >= self.timing.sync_ms:
            self.sync_asked = now
            self._send(c.make(self.key, self.index, c.SYNC, self.h), None)

    def _on_sync(self, m: c.Signed, now: int) -> None:
        if m.sender != self.index:
            self._answer_sync(m.sender, m.h, now)

    def _answer_sync(self, peer: int, h: int, now: int) -> None:
        """Blocks h up to our tip, at most sync_blocks; none when we have none from h, which
        tells the peer it is at our head (see rejoin)."""
        if h < 1 or now - self.sync_answered.get(peer, -self.timing.sync_ms) < self.timing.sync_ms:
            return
        self.sync_answered[peer] = now
        blocks: list[list[bytes]] = []
        size = 0
        for height in range(h, min(self.state.height, h + self.timing.sync_blocks - 1) + 1):
            block = self.tail.get(height) or self.chain(height)
            if block is None:
                break  # decided, not yet written: the peer asks again
            item = [block.chain_bytes(), encode_inputs(block.inputs)]
            size += len(item[0]) + len(item[1]) + INPUT_OVERHEAD
            if blocks and size > self.timing.sync_bytes:
                break  # the peer asks for the rest
            blocks.append(item)
        raw = encode(blocks)
        self._send(c.make(self.key, self.index, c.BLOCKS, h, d=c.digest(raw), blocks=raw), peer)

    def _on_blocks(self, m: c.Signed, now: int) -> None:
        """Blocks from a peer: each must follow our tip, carry a quorum of valid seals and
        replay to its own header; the sender is not trusted for any of it."""
        try:
            items = c.load_list(c.bulk(m, "blocks"), "blocks")
        except c.ConsensusError:
            return
        first = self.h
        for item in items[: self.timing.sync_blocks]:
            try:
                chain, inputs = item
                block = Block.from_chain_bytes(chain, decode_inputs(inputs))
            except (BlockError, TypeError, ValueError):
                return
            if block.header.height < self.h:
                continue
            seals = block.good_seals(self.validators)
            if block.header.height > self.h or len({i for i, _ in seals}) < self.q:
                return
            self.candidates[block.hash] = _Candidate.of(block.header, block.inputs)
            before = self.h
            self._decide(block.hash, seals, None, now)
            if self.h == before:
                return
        if self.h > first:
            self.catch_ups += 1
            self.sync_asked = now - self.timing.sync_ms
            self._ask_sync(now)  # there may be more than one answer holds (in blocks or in bytes)
        elif not items and self.heads is not None and m.sender != self.index and not self.caught_up:
            # No block from the height we asked for: the peer's tip was below it, so we hold
            # every block it had. (An answer with blocks may have been cut short by
            # sync_blocks or sync_bytes, so only an empty one says where its tip is.)
            self.heads.add(m.sender)
            self.caught_up = len(self.heads) > self.f


def _holds_junk(draft: Draft) -> bool:
    """Whether a block rejects an input its bytes alone reject: an honest proposer pools no
    such input (ledger.door), so a block with one is not to be stored by every validator."""
    return any(door.decided_by_bytes(typ, reason) for (typ, _), reason in zip(draft.inputs, draft.reasons, strict=True))
