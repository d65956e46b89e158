"""The ledger's state: balances, holds, the off-chain CTP database and its Merkle tree,
and the revoked device keys.

Pure data. It changes only in `commit(changes)`, with the Changes of a block that
ledger.draft built and consensus decided; a draft reads the state and writes nothing into
it, so a block that is never decided is dropped with nothing to undo, and every replica
that commits the same blocks holds the same state. The money invariant of
docs/PROTOCOL.md §5 is checked on every commit, before anything changes.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, replace

from ledger.accounts import NO_ACCOUNT_CHANGES, AccountChanges, AccountHistory
from ledger.archive import FINAL, Archive, CtpView, MemoryArchive, UsedKeys
from ledger.block import Header
from ledger.fill import FillDoc
from ledger.genesis import Genesis, MeterEntry
from ledger.market import MarketChanges, MarketState
from wire.cose import encode
from wire.merkle import PrunedTree, TreeChange
from wire.messages import AccountStatus, Ctp, CtpState, Status


@dataclass(frozen=True, slots=True)
class CtpRecord:
    """One CTP in the off-chain database (docs/PROTOCOL.md §5)."""

    ctp: Ctp
    raw: bytes  # the payer's signed message
    hash: bytes  # H(raw)
    index: int  # its leaf in the CTP-database tree: CTPs in the order they were first held
    state: CtpState
    height: int  # block of the last change
    by: bytes  # hash of the message that caused the last change; b"" for a refund at expiry
    erc_pk: bytes | None = None  # one-time key of the ERC that settled it
    # The time of block `height`: while held, when it was held, where a CTP's delivery
    # window starts (§9.4). Not in the leaf: a v1 record is what it was.
    t: int = 0
    fill: FillDoc | None = None  # a market fill's document (its `raw`), None for a CTP

    def leaf(self) -> bytes:
        """The leaf data: what replicas agree on about this CTP."""
        return encode([self.ctp.id, self.hash, self.state, self.height, self.by])

    def moved(self, state: CtpState, height: int, t: int, by: bytes, erc_pk: bytes | None = None) -> CtpRecord:
        return replace(self, state=state, height=height, t=t, by=by, erc_pk=erc_pk)

    def status(self, t: int, market: bool) -> Status:
        """Its retained status, published at block time t. In a market chain every status of a
        held trade names the parties, the Wh and the expiry (§9): the seller's meter learns of
        its sale and the buyer's of a fill, which it never signed a CTP for, and how it ended
        even when the `held` status never went out (a block's status is not published once a
        later block superseded it, decision 0007: a clearing late enough for its fills to be
        refunded in the next block)."""
        status = Status(ctp=self.ctp.id, state=self.state, t=t, h=self.height, msg=self.by or None)
        if not market:
            return status
        ctp = self.ctp
        return replace(status, payer=ctp.payer, payee=ctp.payee, wh=ctp.wh, exp=ctp.exp)


@dataclass(frozen=True, slots=True)
class AccountRecord:
    """One account's money as its retained `account` status tells it (docs/PROTOCOL.md §9.6)."""

    pk: bytes
    balance: int  # free units
    held: int  # units in holds
    height: int  # block of its last status (0: none yet)
    t: int  # that block's time

    def status(self) -> AccountStatus:
        return AccountStatus(account=self.pk, balance=self.balance, held=self.held, t=self.t, h=self.height)


class BrokenInvariant(AssertionError):
    """Committing these changes would break a ledger invariant: a bug, never bad input."""


@dataclass(frozen=True, slots=True)
class Changes:
    """What one block does to the committed state: made by Draft.finish without touching the
    state, applied by LedgerState.commit (in memory) and LedgerStore.commit (on disk).
    Its dicts are not to be changed once made."""

    header: Header  # the block's; it applies on the state whose tip is header.prev
    balances: dict[bytes, int]  # new balance of every account the block touched
    held: dict[bytes, int]  # new holds of the same accounts
    records: dict[bytes, CtpRecord]  # CTP id -> its new or changed record (and the ERC key that settled it)
    known: int  # records below this leaf existed before the block: only their state changed
    revoked: dict[bytes, int]  # device key -> revocation time
    refused: dict[bytes, int]  # hash -> exp of the payer-signed CTPs the block rejected
    ctp_rejects: dict[bytes, tuple[str, bytes]]  # CTP id no one holds -> (reason, msg hash) of its `rejected` status
    settled: tuple[bytes, ...]  # the CTP id of each of the block's trades, in order
    tree: TreeChange  # the CTP-database tree's new leaves and nodes; tree.root == header.ctps
    market: MarketChanges | None = None  # None on a v1 chain
    # Accounts whose `account` status this block publishes (docs/PROTOCOL.md §9.6): their
    # (balance, held) changed, or, in a market chain's first block, all of them.
    moved: frozenset[bytes] = frozenset()
    # Tree nodes (level, index) no later block needs once this block's finished CTPs are final
    # (PrunedTree.sealing): dropped from RAM and from the stored snapshot alike.
    pruned: tuple[tuple[int, int], ...] = ()
    # Registers, funds, payouts, retirements and rotations (docs/PROTOCOL.md §10).
    accounts: AccountChanges = NO_ACCOUNT_CHANGES


class LedgerState:
    """Everything a validator knows after its last committed block."""

    def __init__(self, genesis: Genesis, archive: Archive | None = None):
        self.genesis = genesis
        self.height = 0
        self.tip = genesis.hash  # hash of the last header (the genesis hash before block 1)
        self.t = 0  # time of the last block
        self.balances: dict[bytes, int] = dict(genesis.accounts)
        self.held: dict[bytes, int] = dict.fromkeys(self.balances, 0)  # per payer
        # Per account, (height, time) of the block its last `account` status came from (§9.6);
        # (0, 0): none yet. What keeps that retained status moving forward (ledger.statuses).
        self.moved_at: dict[bytes, tuple[int, int]] = dict.fromkeys(self.balances, (0, 0))
        # Held CTPs, the only ones a block can change; finished ones are in the archive
        # (docs/decisions/0013-bounded-memory.md). record.index is its leaf.
        self.open: dict[bytes, CtpRecord] = {}
        self.archive: Archive = archive if archive is not None else MemoryArchive()
        self.revoked: dict[bytes, int] = {}  # device key -> revocation time (decision 0004)
        self.tree = PrunedTree()  # only open leaves' paths: finished subtrees are their hash
        self._expiry: list[tuple[int, bytes]] = []  # (exp, id) of CTPs that were held; lazily cleaned
        # Hashes of rejected payer-signed CTPs -> their exp: a copy is `duplicate` until then.
        # Consensus state: rejected messages are block inputs too (decision 0006).
        # Orders rejected are kept here too, until their gate (docs/PROTOCOL.md §9.2).
        self.refused: dict[bytes, int] = {}
        self.market = MarketState(genesis.market, self.archive) if genesis.market is not None else None
        # Accounts after launch (§10): money in and out, closed accounts, replaced keys.
        self.funded = 0  # units that entered by `fund` since the genesis
        self.withdrawn = 0  # units that left by `payout`
        self.refs: set[tuple[str, str]] = set()  # (typ, ref) of every fund and payout applied
        self.retired: dict[bytes, int] = {}  # account key -> height of the block that retired it
        self.rotated: dict[bytes, bytes] = {}  # replaced key -> the key holding its account now
        self._leading: dict[bytes, list[bytes]] = {}  # a current key -> the replaced keys it holds
        self.registered: list[MeterEntry] = []  # meters registered after the genesis (account then)

    @property
    def ctps(self) -> CtpView:
        """Every CTP ever held (CTP id -> record), open ones from RAM, finished ones read from
        the archive: for tools and tests that read history, not for a block's decisions."""
        return CtpView(self.open, self.archive, lambda: self.tree.size)

    @property
    def used_keys(self) -> UsedKeys:
        """One-time ERC key -> the CTP it settled (from the archive: only finished CTPs have one)."""
        return UsedKeys(self.archive)

    @classmethod
    def restore(
        cls,
        genesis: Genesis,
        height: int,
        tip: bytes,
        t: int,
        accounts: Iterable[tuple[bytes, int, int, int, int]],
        open_records: Iterable[CtpRecord],
        tree: PrunedTree,
        refused: dict[bytes, int],
        revoked: dict[bytes, int],
        market: MarketState | None = None,
        archive: Archive | None = None,
        history: AccountHistory | None = None,
    ) -> LedgerState:
        """A state from its stored tables (ledger.store): the open CTP records, the pruned
        tree's nodes (the snapshot, whose root must be the tip's), `accounts` as (key,
        balance, held, height and time of its last account status). Reads nothing of the
        finished history: that stays in `archive`."""
        state = cls(genesis, archive)
        if (market is None) != (genesis.market is None):
            raise ValueError("a market state is restored exactly when the genesis has a market")
        state.market = market
        state.height, state.tip, state.t = height, tip, t
        state.refused, state.revoked = dict(refused), dict(revoked)
        for pk, balance, held, moved_h, moved_t in accounts:
            state.balances[pk], state.held[pk], state.moved_at[pk] = balance, held, (moved_h, moved_t)
        if history is not None:
            state._take_history(history)
        state.tree = tree
        for record in open_records:
            if record.state in FINAL or not 0 <= record.index < tree.size:
                raise ValueError(f"CTP {record.ctp.id.hex()} is not open or has no leaf in the tree")
            state._put(record)
        if sorted(r.index for r in state.open.values()) != tree.open:
            raise ValueError("the tree's open leaves are not the open CTP records")
        if state.total() != state.expected_total():
            raise BrokenInvariant(
                f"balances + holds are {state.total()}, not the genesis total + funded - withdrawn "
                f"({state.expected_total()})"
            )
        return state

    def _take_history(self, history: AccountHistory) -> None:
        """The stored §10 history: sums and references of funds and payouts, retirements,
        rotations (in order) and registered meters."""
        self.funded, self.withdrawn = history.funded, history.withdrawn
        self.refs = set(history.refs)
        self.retired = dict(history.retired)
        for old, new in history.rotated:
            self._rotate(old, new)
        self.registered = list(history.meters)
        self._grow_terms()

    def _grow_terms(self) -> None:
        """The market reads meters registered after the genesis, under their accounts' current keys."""
        if self.market is not None and self.genesis.market is not None and (self.registered or self.rotated):
            self.market.terms = self.genesis.market.grown(self.registered, self.rotated)

    def record(self, ctp_id: bytes) -> CtpRecord | None:
        record = self.open.get(ctp_id)
        return record if record is not None else self.archive.record(ctp_id)

    def key_used(self, pk: bytes) -> bool:
        """Whether an ERC with this one-time key settled a CTP already."""
        return self.archive.ctp_for_key(pk) is not None

    def account(self, pk: bytes) -> AccountRecord | None:
        """An account's money and the block of its last status; None for no account of this ledger."""
        if pk not in self.balances:
            return None
        return AccountRecord(pk, self.balances[pk], self.held[pk], *self.moved_at[pk])

    def root(self) -> bytes:
        return self.tree.root()

    def next_expiry(self) -> int | None:
        """The earliest `exp` of a CTP that may still be held: a block is due after it."""
        while self._expiry and self._expiry[0][1] not in self.open:
            heapq.heappop(self._expiry)
        return self._expiry[0][0] if self._expiry else None

    def next_due(self) -> int | None:
        """The earliest block time at which a block has work without any input: the first
        after a held CTP's expiry, or an interval's clearing time (§9.3). An idle ledger
        makes a block then, so trades refund and intervals clear at their time."""
        exp = self.next_expiry()
        times = [exp + 1] if exp is not None else []
        if self.market is not None and self.market.pending:
            times.append(min(self.market.pending.values()))
        return min(times, default=None)

    def expiring(self, t: int) -> list[CtpRecord]:
        """Held CTPs whose expiry has passed at block time t, in (exp, id) order. Read-only."""
        found, stack = [], [0] if self._expiry else []
        while stack:  # walk the heap without popping: only entries below t and their parents
            i = stack.pop()
            exp, ctp_id = self._expiry[i]
            if exp < t:
                if ctp_id in self.open:
                    found.append((exp, ctp_id))
                stack += [c for c in (2 * i + 1, 2 * i + 2) if c < len(self._expiry)]
        return [self.open[ctp_id] for _, ctp_id in sorted(found)]

    def total(self) -> int:
        """Balances + holds: equal to expected_total() after every block (§5, §10)."""
        return sum(self.balances.values()) + sum(self.held.values())

    def expected_total(self) -> int:
        """What balances + holds add up to: the genesis total, plus what `fund`s brought in,
        less what `payout`s took out (§10)."""
        return self.genesis.total + self.funded - self.withdrawn

    def current(self, pk: bytes) -> bytes:
        """The key that holds account pk's money now: pk unless a rotation replaced it."""
        return self.rotated.get(pk, pk)

    def _rotate(self, old: bytes, new: bytes) -> None:
        """Record old -> new, keeping every replaced key one step from its current key: O(keys
        this account had), not O(every rotation)."""
        replaced = [*self._leading.pop(old, ()), old]
        self.rotated.update(dict.fromkeys(replaced, new))
        self._leading[new] = replaced

    def commit(self, changes: Changes) -> None:
        """Take a decided block's changes (made on this state: the block follows the tip),
        after checking that they keep the money invariant and lead to the header's CTP root."""
        header = changes.header
        if header.prev != self.tip or changes.tree.base != self.tree.size:
            raise ValueError(f"changes for the block after {header.prev.hex()[:16]}, not this state's tip")
        self._check_money(changes)
        if changes.tree.root != header.ctps:
            raise BrokenInvariant(f"block {header.height}: its CTP-database changes do not lead to its header's root")
        if (changes.market is not None) != (self.market is not None):
            raise ValueError("market changes on a chain without a market, or none on one with it")
        if self.market is not None and changes.market is not None:
            broken = self.market.check(changes.market)
            if broken is not None:
                raise BrokenInvariant(f"block {header.height}: {broken}")
        self.refused.update(changes.refused)
        for digest in [d for d, exp in self.refused.items() if exp < header.t]:
            del self.refused[digest]  # expired: a copy would be rejected `expired` anyway
        self.balances.update(changes.balances)
        self.held.update(changes.held)
        self.moved_at.update(dict.fromkeys(changes.moved, (header.height, header.t)))
        self.revoked.update(changes.revoked)
        self._commit_accounts(changes.accounts, header.height)
        self.tree.apply(changes.tree)
        if self.tree.root() != header.ctps:  # a tree that took the change wrongly: a bug
            raise BrokenInvariant(f"block {header.height}: the CTP-database root is not the header's")
        finished = [r for r in changes.records.values() if r.state in FINAL]
        for record in changes.records.values():
            self._put(record)
        self.archive.put(finished)
        self.tree.seal((r.index for r in finished), changes.pruned)
        if self.market is not None and changes.market is not None:
            self.market.commit(changes.market, header.t)
        self.height, self.tip, self.t = header.height, header.hash, header.t
        self.next_expiry()  # drop settled and refunded CTPs from the heap's top

    def _commit_accounts(self, changes: AccountChanges, height: int) -> None:
        if not changes:
            return
        self.funded += changes.funded
        self.withdrawn += changes.withdrawn
        self.refs.update((op.typ, op.ref) for op in changes.ops)
        self.retired.update(dict.fromkeys(changes.retired, height))
        for old, new in changes.rotated:
            self._rotate(old, new)
        for pk in changes.opened:
            self.balances.setdefault(pk, 0)
            self.held.setdefault(pk, 0)
        self.registered += changes.meters
        if changes.meters or changes.rotated:
            self._grow_terms()

    def _check_money(self, changes: Changes) -> None:
        """§5 and §10: balances + holds stay genesis + funded − withdrawn (they are at the
        genesis and at a restore, so a block changes their sum by exactly its funds less its
        payouts), no account goes negative or is made up, and a key a rotation replaced holds
        nothing (its money moved to the new key). O(accounts the block touched),
        on every block of every validator."""
        accounts = changes.balances.keys() | changes.held.keys()
        opened = set(changes.accounts.opened)
        if not accounts <= self.balances.keys() | opened or opened & self.balances.keys():
            raise BrokenInvariant("a block moves money of an account that was never opened, or opens one twice")
        before = sum(self.balances.get(pk, 0) + self.held.get(pk, 0) for pk in accounts)
        after = sum(
            changes.balances.get(pk, self.balances.get(pk, 0)) + changes.held.get(pk, self.held.get(pk, 0))
            for pk in accounts
        )
        delta = changes.accounts.funded - changes.accounts.withdrawn
        if after - before != delta:
            raise BrokenInvariant(
                f"block {changes.header.height} makes balances + holds {after - before:+} units, "
                f"its funds and payouts {delta:+}"
            )
        if any(units < 0 for units in (*changes.balances.values(), *changes.held.values())):
            raise BrokenInvariant(f"block {changes.header.height} leaves a balance or hold negative")
        replaced = {old for old, _ in changes.accounts.rotated}
        for pk in (pk for pk in accounts if pk in replaced or pk in self.rotated):
            if changes.balances.get(pk, 0) or changes.held.get(pk, 0):
                raise BrokenInvariant(f"block {changes.header.height} leaves money on a key a rotation replaced")

    def _put(self, record: CtpRecord) -> None:
        """Take a record whose leaf is in self.tree: an open one stays in RAM, a finished one
        leaves it (the caller gives it to the archive)."""
        ctp_id = record.ctp.id
        if record.state in FINAL:
            self.open.pop(ctp_id, None)
            return
        if ctp_id not in self.open:
            heapq.heappush(self._expiry, (record.ctp.exp, ctp_id))
        self.open[ctp_id] = record
