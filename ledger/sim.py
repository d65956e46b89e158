"""Deterministic simulation of the validators' consensus: `python -m ledger.sim --seed N`.

Four ledger.replica.Replica cores run in one simulated network driven by a seeded random
generator: transactions reach each validator after random delays, consensus messages are
delayed, dropped, duplicated and reordered, validators crash and restart from what they
persisted, the network splits into partitions, clocks are skewed, and one validator is
Byzantine: Twins (two instances with one key, each talking to some of the others), forged
or replayed seals and messages, or silence; with `--flood N`, one account also publishes N
signed CTPs within 100 ms (issue 13); with `--market`, the chain has a market and the
validators also order three intervals of market traffic (ledger.sim_market: orders, sealed
bids, withdrawals, export records, the ERCs of fills, oversold attempts) and, its genesis
listing an operator, accounts after launch (ledger.sim_accounts: households registered,
funded and paid out, one retired, two keys rotated, by the household and by the
operator). After every step
the honest validators must agree on every height they both committed, keep balances +
holds constant and settle no trade twice; once the faults stop, every submitted transaction
must be decided everywhere (junk refused at the door, a flooded CTP decided or refused as
`busy`), and every honest validator must know it is caught up (Replica.caught_up). With a
market, the honest validators end with the same market and accounts state, which keeps the
market's and the accounts' invariants, is what a replay of their blocks into a fresh state
gives, and passes `spb-ledger audit` written to a validator's database.
The same seed replays the same run exactly: nothing here reads a clock or the OS' randomness.
"""

from __future__ import annotations

import argparse
import heapq
import random
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from hashlib import sha256

from ledger import consensus as c
from ledger.audit import AuditFailure
from ledger.block import Block, parse_trade, quorum
from ledger.draft import replay
from ledger.fill import trade_ctp
from ledger.genesis import Genesis
from ledger.replica import Decided, Persist, Refused, Replica, Send, Timing
from ledger.sim_accounts import accepted_account_messages, account_problems, accounts_traffic, audited, held
from ledger.sim_hostile import MODES, replica_class
from ledger.sim_market import SOURCES, market_problems, market_traffic, replayed
from ledger.state import LedgerState
from ledger.store import StoreError
from ledger.workload import SimCommunity
from wire.cose import encode, load, message_hash
from wire.reasons import BUSY

NOW = 1_800_000_000_000
N = 4
BYZANTINE = ("none", "twins", "forge", "silent")
FLOODER = 5  # the household whose account floods the ledger (with --flood)
TIMING = Timing(block_ms=200, round_ms=1000, forward_ms=2000, sync_ms=500)


class Violation(AssertionError):
    """A safety or liveness property failed: the message names the seed's step."""


@dataclass(frozen=True)
class Workload:
    genesis: Genesis
    keys: tuple  # validator signing keys
    txs: tuple[tuple[str, bytes], ...]  # each sent at a random time in the first 10 s
    timed: tuple[tuple[int, str, bytes], ...] = ()  # (ms after NOW to send it, typ, raw)

    def all_txs(self) -> tuple[tuple[str, bytes], ...]:
        return self.txs + tuple((typ, raw) for _, typ, raw in self.timed)


@lru_cache(maxsize=2)
def workload(market: bool = False) -> Workload:
    """The same signed traffic for every seed (signing is the slow part): trades that
    settle, one that expires, one cancelled, one short of funds, duplicates, junk (refused
    at the door), a cancel of an unknown CTP and a forged ERC (rejected in blocks). With
    `market`, on a market chain with an operator (where a CTP settles only against its
    payee's proved export, so most of these are refunded), and the market's and the
    operator's traffic besides."""
    sim = SimCommunity(  # the flooder trades nothing here
        FLOODER + 1, NOW, seed=b"spb-energy consensus simulation", sources=SOURCES if market else ()
    )
    txs: list[tuple[str, bytes]] = []
    for i in range(6):
        ctp = sim.ctp(i % 5, (i + 1) % 5, 10 + i, 100 + i, exp=NOW + 25_000)
        txs += [("ctp", ctp), ("erc", sim.erc(ctp))]
    expiring = sim.ctp(1, 3, 40, 50, exp=NOW + 3_000)
    cancelled = sim.ctp(2, 4, 30, 60, exp=NOW + 2_000)
    poor = sim.ctp(3, 0, 5_000, 10, exp=NOW + 25_000)
    forged = sim.erc(sim.ctp(0, 1, 1, 1, exp=NOW + 25_000))
    twice = txs[0][1]
    txs += [
        ("ctp", expiring),
        ("ctp", cancelled),
        ("cancel", sim.cancel(cancelled, t=NOW + 2_500)),
        ("ctp", poor),
        ("erc", sim.erc(twice, by=2)),
        ("erc", twice),
        ("cancel", b"\x00not cbor"),
        ("cancel", sim.cancel(sim.ctp(4, 0, 1, 1, exp=NOW + 25_000))),  # of a CTP never sent
        ("erc", forged[:-1] + bytes([forged[-1] ^ 1])),  # its block decides the signature
    ]
    keys = tuple(sim.validator_keys[:N])
    if market:
        traffic = market_traffic(sim, NOW, operator=True)
        timed = sorted((*traffic.timed, *accounts_traffic(sim, NOW, traffic.timed)), key=lambda x: x[0])
        return Workload(traffic.genesis, keys, tuple(txs), tuple(timed))
    return Workload(sim.genesis(1_000, validators=N), keys, tuple(txs))


@lru_cache(maxsize=2)
def flood(count: int) -> tuple[tuple[str, bytes], ...]:
    """`count` well-formed, signed CTPs of one account (1 unit each, far-future expiry): more
    than its share of a pool holds, and more than its balance covers."""
    sim = SimCommunity(FLOODER + 1, NOW, seed=b"spb-energy consensus simulation")  # the workload's accounts
    return tuple(
        ("ctp", sim.ctp(FLOODER, i % FLOODER, 1, 1, exp=NOW + 600_000, ctp_id=sha256(b"flood%d" % i).digest()[:16]))
        for i in range(count)
    )


@dataclass
class Node:
    """One validator process: its replica (None while crashed) and what it persisted."""

    index: int
    skew: int
    byzantine: bool = False
    replica: Replica | None = None
    chain: list[Block] = field(default_factory=list)
    votes: bytes | None = None
    tick_at: int | None = None
    peers: frozenset[int] | None = None  # a twin talks only to these
    checked: int = 0  # heights compared with the other honest validators'
    settled: set = field(default_factory=set)  # trade ids (CTPs and fills) its chain settled
    reasons: dict = field(default_factory=dict)  # (typ, reject reason or None) -> inputs its blocks decided so
    unacked: dict = field(default_factory=dict)  # the broker's copy of its unacknowledged transactions
    refused: dict = field(default_factory=dict)  # transaction key -> the reason it was last turned away
    accounts: list = field(default_factory=list)  # the §10 messages its blocks accepted, in order


class Sim:
    def __init__(
        self, seed: int, steps: int = 20_000, flood_size: int = 0, market: bool = False, byzantine: str | None = None
    ):
        self.seed, self.rng = seed, random.Random(seed)
        rng = self.rng
        self.market = market
        self.w = workload(market)
        self.flood = flood(flood_size) if flood_size else ()
        self.t = NOW
        self.events: list = []
        self.seq = 0
        # A flood is that many more deliveries and messages; a market a minute of blocks more.
        self.steps_left = steps + 8 * flood_size + (20_000 if market else 0)
        self.heal_at = NOW + rng.randint(5_000, 25_000)
        self.byzantine = rng.choice(BYZANTINE)
        if byzantine is not None:  # a mode chosen, not drawn: the other seeds draw as they did
            self.byzantine = byzantine
        self.bad = rng.randrange(N) if self.byzantine != "none" else None
        self.drop = rng.choice((0.0, 0.05, 0.2))
        self.dup = rng.choice((0.0, 0.05, 0.2))
        self.max_delay = rng.choice((5, 50, 400))
        self.crashes = rng.randint(0, 3)
        self.partitioned = rng.random() < 0.4
        self.nodes = [Node(i, rng.randint(-1_000, 1_000)) for i in range(N)]
        if self.bad is not None:
            self.nodes[self.bad].byzantine = True
            if self.byzantine == "twins":
                twin = Node(self.bad, rng.randint(-1_000, 1_000), byzantine=True)
                self.nodes.append(twin)
                others = [i for i in range(N) if i != self.bad]
                rng.shuffle(others)
                cut = rng.randint(1, len(others) - 1)
                self.nodes[self.bad].peers, twin.peers = frozenset(others[:cut]), frozenset(others[cut - 1 :])
        self.committed: dict[int, bytes] = {}  # height -> the block hash honest validators committed
        self.captured: list[bytes] = []  # consensus traffic a forger replays
        self.groups: list[frozenset[int]] | None = None  # the partition in force
        self.lead = 0  # ms: how far a decided block's time was ahead of every honest clock, at most
        self.decided_at: dict[tuple[str, bytes], int] = {}  # transaction -> the height honest chains decided it
        for node in self.nodes:
            if not (self.byzantine == "silent" and node.byzantine):
                self._start(node)
        for typ, raw in self.w.txs:
            at = NOW + rng.randint(0, 10_000)
            for node in self.nodes:
                self._at(at + rng.randint(0, self.max_delay), ("tx", node, typ, raw))
        for i, (typ, raw) in enumerate(self.flood):  # within 100 ms, in order, as one connection sends them
            at = NOW + 1_000 + 100 * i // len(self.flood)
            for node in self.nodes:
                self._at(at + rng.randint(0, self.max_delay), ("tx", node, typ, raw))
        for _ in range(self.crashes):
            node = rng.choice(self.nodes)
            down = NOW + rng.randint(0, 20_000)
            self._at(down, ("crash", node))
            self._at(down + rng.randint(100, 8_000), ("restart", node))
        if self.partitioned:
            self._at(rng.randint(NOW, self.heal_at), ("partition", self._split()))
            self._at(self.heal_at, ("partition", None))
        for after, typ, raw in self.w.timed:  # when its household or meter sends it
            for node in self.nodes:
                self._at(NOW + after + rng.randint(0, self.max_delay), ("tx", node, typ, raw))

    # -- the run --

    def run(self, limit_ms: int = 300_000) -> int:
        """Run until every honest validator decided every transaction; the steps taken."""
        steps = 0
        while self.events:
            steps += 1
            if steps > self.steps_left or self.t > NOW + limit_ms:
                break
            t, _, event = heapq.heappop(self.events)
            self.t = max(self.t, t)
            try:
                self._step(event)
            except Exception as exc:  # an honest validator that raises has crashed for good
                raise Violation(
                    f"seed {self.seed}: step {steps} ({event[0]}) raised {exc!r} ({self.describe()})"
                ) from exc
            self._check_safety()
            if (self.t > self.heal_at or not self.events) and self._done():
                return steps
        raise Violation(
            f"seed {self.seed}: liveness: after {steps} steps and {(self.t - NOW) / 1000:.1f} s "
            f"({self.describe()}) not every transaction is decided: {self._progress()}"
        )

    def describe(self) -> str:
        return (
            f"byzantine {self.byzantine} v{self.bad}, drop {self.drop}, dup {self.dup}, delay <= "
            f"{self.max_delay} ms, {self.crashes} crashes, partition {self.partitioned}, heal at "
            f"{(self.heal_at - NOW) / 1000:.1f} s"
            + (f", flood of {len(self.flood)} CTPs" if self.flood else "")
            + (", market" if self.market else "")
        )

    def _step(self, event: tuple) -> None:
        kind, node = event[0], event[1]
        if kind == "partition":
            self.groups = node
            return
        if kind == "crash":
            node.replica = None
            return
        if kind == "restart":
            if node.replica is None and not (self.byzantine == "silent" and node.byzantine):
                self._start(node)
            return
        if kind == "tx":
            node.unacked[(event[2], message_hash(event[3]))] = event[3]
        replica = node.replica
        if replica is None:
            return
        now = self.t + node.skew  # its wall clock; its monotonic clock is the simulation's
        if kind == "tx":
            actions = replica.submit(event[2], event[3], now, self.t)
        elif kind == "msg":
            actions = replica.receive(event[2], now, self.t)
        else:  # tick
            if node.tick_at != event[2]:
                return
            node.tick_at = None
            actions = replica.tick(now, self.t)
        self._act(node, actions)

    def _start(self, node: Node) -> None:
        """A (re)started validator: its state rebuilt from its persisted chain and votes."""
        w = self.w
        state, verifier = LedgerState(w.genesis), w.genesis.verifier()
        for block in node.chain:
            state.commit(replay(state, verifier, block.header.t, block.inputs).changes)
        chain = node.chain
        node.replica = (replica_class(self.byzantine) if node.byzantine else Replica)(
            state,
            verifier,
            node.index,
            w.keys[node.index],
            lambda h: chain[h - 1] if 0 < h <= len(chain) else None,
            TIMING,
            node.votes,
            self.t + node.skew,
            self.t,
        )
        node.tick_at = None
        self._act(node, node.replica.tick(self.t + node.skew, self.t))
        self._act(node, node.replica.rejoin(self.t + node.skew, self.t))  # its adapter is connected
        for (typ, _), raw in list(node.unacked.items()):  # the broker sends what was never acknowledged
            self._at(self.t + self.rng.randint(1, self.max_delay), ("tx", node, typ, raw))

    def _act(self, node: Node, actions: list) -> None:
        for action in actions:
            if isinstance(action, Persist):
                node.votes = action.votes
            elif isinstance(action, Decided):
                node.chain.append(action.block)
                assert action.block.header.height == len(node.chain)
                if not node.byzantine:
                    self._measure(action.block)
                for (typ, _), reason in zip(action.block.inputs, action.draft.reasons, strict=True):
                    node.reasons[typ, reason] = node.reasons.get((typ, reason), 0) + 1
                node.accounts += accepted_account_messages(action.block.inputs, action.draft.reasons)
            elif isinstance(action, Send):
                self._send(node, action)
            elif isinstance(action, Refused):
                node.unacked.pop(action.key, None)
                node.refused[action.key] = action.reason
            else:
                for key in action.keys:
                    node.unacked.pop(key, None)
        deadline = node.replica.deadline(self.t + node.skew, self.t) if node.replica else None
        if deadline is not None:
            at = max(self.t, deadline)
            if node.tick_at is None or at < node.tick_at:
                node.tick_at = at
                self._at(at, ("tick", node, at))

    def _measure(self, block: Block) -> None:
        """What hostile proposers cost (ledger.sim_hostile): the block time's lead over the
        honest clocks, and the height at which each transaction was decided."""
        clocks = [self.t + node.skew for node in self.honest()]
        self.lead = max(self.lead, block.header.t - max(clocks))
        for typ, raw in block.inputs:
            self.decided_at.setdefault((typ, message_hash(raw)), block.header.height)

    def censored_waits(self) -> dict[tuple[str, bytes], int]:
        """For each transaction a censor left out and that was decided: how many heights
        after the first block it was left out of."""
        left_out: dict = {}
        for node in self.nodes:
            if node.byzantine and node.replica is not None:
                for key, h in getattr(node.replica, "left_out", {}).items():
                    left_out[key] = min(h, left_out.get(key, h))
        return {key: self.decided_at[key] - h for key, h in left_out.items() if key in self.decided_at}

    def _send(self, sender: Node, action: Send) -> None:
        payloads = [action.payload]
        if sender.byzantine and self.byzantine == "forge":
            payloads = self._forge(sender, action.payload)
        for payload in payloads:
            for node in self.nodes:
                if node is sender or (action.to is not None and node.index != action.to):
                    continue
                if sender.peers is not None and node.index not in sender.peers:
                    continue
                if self._lost(sender, node):
                    continue
                for _ in range(2 if self.rng.random() < self._faulty(self.dup) else 1):
                    self._at(self.t + self.rng.randint(1, self.max_delay), ("msg", node, payload))

    def _lost(self, a: Node, b: Node) -> bool:
        if self.groups is not None and not any(a.index in g and b.index in g for g in self.groups):
            return True
        return self.rng.random() < self._faulty(self.drop)

    def _faulty(self, p: float) -> float:
        return p if self.t < self.heal_at else 0.0

    def _split(self) -> list[frozenset[int]]:
        order = list(range(N))
        self.rng.shuffle(order)
        cut = self.rng.randint(1, N - 1)
        return [frozenset(order[:cut]), frozenset(order[cut:])]

    def _forge(self, sender: Node, payload: bytes) -> list[bytes]:
        """A Byzantine validator's versions of what it sends: forged seals on its commits,
        foreign seals on the blocks it serves, replays of old traffic, junk."""
        rng, key = self.rng, self.w.keys[sender.index]
        self.captured.append(payload)
        out = [payload]
        m = c.open_signed(payload, self.w.genesis.validators)
        if m.kind == c.COMMIT:
            fake_seal = rng.choice([bytes(64), key.sign(b"another header").signature, m.seal[::-1]])
            out = [c.wire(c.make(key, m.sender, c.COMMIT, m.h, m.r, m.d, seal=fake_seal))]
        elif m.kind == c.BLOCKS:
            items = load(m.attachments["blocks"])
            assert type(items) is list, "an honest validator's BLOCKS: [[chain bytes, inputs]...]"
            forged = []
            for chain, inputs in items:
                block = Block.from_chain_bytes(chain)
                seals = [(i, block.seals[0][1]) for i in range(N)]  # one validator's seal under every index
                forged.append([block.with_seals(seals).chain_bytes(), inputs])
            raw = encode(forged)
            out.append(c.wire(c.make(key, m.sender, c.BLOCKS, m.h, d=c.digest(raw), blocks=raw)))
        if rng.random() < 0.3:
            out.append(self._hostile(sender, m.h))
        if rng.random() < 0.3 and len(self.captured) > 1:
            out.append(rng.choice(self.captured))
        if rng.random() < 0.1:
            out.append(bytes(rng.randrange(256) for _ in range(rng.randint(0, 40))))
        return out

    def _hostile(self, sender: Node, h: int) -> bytes:
        """A signed message no honest validator sends: a forwarded input on no transaction
        topic, a catch-up request for height 0, a proposal without a justification, a
        block with seals that are not even of the right types."""
        rng, key, i = self.rng, self.w.keys[sender.index], sender.index
        kind = rng.randrange(4)
        if kind == 0:
            raw = encode([["status", b""], ["ctp", b"\x00"]])
            return c.wire(c.make(key, i, c.TXS, h, d=c.digest(raw), txs=raw))
        if kind == 1:
            return c.wire(c.make(key, i, c.SYNC, 0))
        r = (i - h) % N or N  # a round this validator proposes in
        if kind == 2:
            junk = rng.choice([None, b"x", [b"x"] * (N + 1), 5])
            return c.wire(c.make(key, i, c.PROPOSAL, h, r, bytes(32), block=b"\x80", rcs=junk))
        block = Block.from_chain_bytes(sender.chain[-1].chain_bytes()) if sender.chain else None
        if block is None:
            return c.wire(c.make(key, i, c.SYNC, h + 5))
        bad = encode(
            {
                "v": 2,
                "typ": "block",
                "header": block.header.encode(),
                "trades": list(block.trades),
                "seals": [*[[j, s] for j, s in block.seals], ["x", b"y"], [0, [1]]],
            }
        )
        raw = encode([[bad, encode([])]])
        return c.wire(c.make(key, i, c.BLOCKS, block.header.height, d=c.digest(raw), blocks=raw))

    def _at(self, t: int, event: tuple) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, event))

    # -- the properties --

    def honest(self) -> list[Node]:
        return [n for n in self.nodes if not n.byzantine]

    def _check_safety(self) -> None:
        for node in self.honest():
            for height in range(node.checked + 1, len(node.chain) + 1):
                block = node.chain[height - 1]
                for trade in block.trades:
                    ctp_id = trade_ctp(parse_trade(trade)[0])[0].id  # a signed CTP or a fill document
                    if ctp_id in node.settled:
                        raise Violation(f"seed {self.seed}: v{node.index} settles trade {ctp_id.hex()} twice")
                    node.settled.add(ctp_id)
                digest = block.hash
                seen = self.committed.setdefault(height, digest)
                if seen != digest:
                    raise Violation(
                        f"seed {self.seed}: fork at height {height}: v{node.index} committed "
                        f"{digest.hex()[:16]}, another honest validator {seen.hex()[:16]}"
                    )
            node.checked = len(node.chain)
            state = node.replica.state if node.replica else None
            if state is not None and state.total() != state.expected_total():
                raise Violation(
                    f"seed {self.seed}: v{node.index} holds {state.total()} units, not {state.expected_total()}"
                )

    def _done(self) -> bool:
        """Every honest validator is up, caught up (else it would hold back its statuses), at one
        height, and has decided every transaction of the workload (junk, refused at the door,
        included); every CTP of a flood is decided or was refused by an honest validator, so
        its sender heard why."""
        honest = self.honest()
        if any(node.replica is None or not node.replica.caught_up for node in honest):
            return False
        if len({len(node.chain) for node in honest}) != 1:
            return False
        refused = {key for node in honest for key in node.refused}
        for node in honest:
            decided = {(typ, message_hash(raw)) for block in node.chain for typ, raw in block.inputs}
            for typ, raw in self.w.all_txs():
                key = (typ, message_hash(raw))
                if key not in decided and node.refused.get(key, BUSY) == BUSY:
                    return False
            if any((typ, message_hash(raw)) not in decided | refused for typ, raw in self.flood):
                return False
        return True

    def _progress(self) -> str:
        return ", ".join(
            f"v{n.index} height {len(n.chain)} round {n.replica.round if n.replica else '-'}" for n in self.honest()
        )

    def final_checks(self) -> None:
        """At the end: each honest chain is sealed by a quorum, as anyone can check offline;
        with a market, the market checks (market_checks)."""
        for node in self.honest():
            for block in node.chain:
                if block.valid_seals(self.w.genesis.validators) < quorum(len(self.w.genesis.validators)):
                    raise Violation(f"seed {self.seed}: v{node.index} block {block.header.height} lacks a quorum")
        if self.market:
            self.market_checks()

    def market_checks(self) -> None:
        """Every honest validator holds the same state, market and accounts included; it keeps
        the market's invariants (ledger.sim_market.market_problems) and each keeps the
        accounts' (ledger.sim_accounts.account_problems: balances + holds = genesis + funded
        - withdrawn, as its blocks funded and paid out); replaying the decided blocks into a
        fresh state from the genesis gives that state again; and so does a validator
        restarted from a database holding those blocks, which `spb-ledger audit` passes."""
        honest, states = self.honest(), self.honest_states()
        first = held(states[0])
        for node, state in zip(honest[1:], states[1:], strict=True):
            differ = ", ".join(name for name, value in held(state).items() if value != first[name])
            if differ:
                raise Violation(f"seed {self.seed}: v{node.index}'s {differ} differ from v{honest[0].index}'s")
        problems = market_problems(states[0])
        if problems:
            raise Violation(f"seed {self.seed}: market invariants: {'; '.join(problems[:5])}")
        for node, state in zip(honest, states, strict=True):
            problems = account_problems(state, node.accounts)
            if problems:
                raise Violation(f"seed {self.seed}: v{node.index}'s accounts: {'; '.join(problems[:5])}")
        again = held(replayed(self.w.genesis, honest[0].chain))
        differ = ", ".join(name for name, value in again.items() if value != first[name])
        if differ:
            raise Violation(f"seed {self.seed}: replaying the blocks gives other {differ}")
        try:
            restarted = audited(self.w.genesis, honest[0].chain)
        except (AuditFailure, StoreError) as exc:
            raise Violation(f"seed {self.seed}: the audit of v{honest[0].index}'s blocks fails: {exc}") from None
        differ = ", ".join(name for name, value in restarted.items() if value != first[name])
        if differ:
            raise Violation(f"seed {self.seed}: a validator restarted from the audited database holds other {differ}")

    def honest_states(self) -> list[LedgerState]:
        """Each honest validator's committed state: all are up when a run is done."""
        states = [n.replica.state for n in self.honest() if n.replica is not None]
        if len(states) != len(self.honest()):
            raise Violation(f"seed {self.seed}: an honest validator is down at the end")
        return states

    def decided(self) -> dict[tuple[str, str | None], int]:
        """(typ, reject reason or None) -> how many inputs an honest validator's blocks decided so."""
        return dict(self.honest()[0].reasons)


def run_seed(seed: int, flood_size: int = 0, market: bool = False, byzantine: str | None = None) -> tuple[int, int]:
    """(steps, final height) of one seed; Violation if a property fails."""
    sim = Sim(seed, flood_size=flood_size, market=market, byzantine=byzantine)
    steps = sim.run()
    sim.final_checks()
    return steps, len(sim.honest()[0].chain)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ledger.sim", description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=None, help="run this seed (default: --seeds from 0)")
    parser.add_argument("--seeds", type=int, default=100, metavar="N")
    parser.add_argument("--first", type=int, default=0, metavar="S")
    parser.add_argument("--flood", type=int, default=0, metavar="N", help="one account also publishes N CTPs")
    parser.add_argument("--market", action="store_true", help="a market chain, with market traffic besides")
    parser.add_argument("--byzantine", choices=BYZANTINE + MODES, help="this Byzantine mode (default: one per seed)")
    args = parser.parse_args(argv)
    seeds = [args.seed] if args.seed is not None else range(args.first, args.first + args.seeds)
    failed = 0
    for seed in seeds:
        try:
            steps, height = run_seed(seed, args.flood, args.market, args.byzantine)
        except Violation as exc:
            failed += 1
            print(f"FAIL {exc}")
            continue
        if args.seed is not None:
            sim = Sim(seed, flood_size=args.flood, market=args.market, byzantine=args.byzantine)
            print(f"seed {seed} ok: {sim.describe()}; {steps} steps, height {height}")
    if args.seed is None:
        print(f"{len(seeds) - failed} of {len(seeds)} seeds ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
