"""One validator's durable half: its state, database and verifier, and how a decided block
is written. LedgerService puts it on MQTT around a consensus Replica; `decide` makes a
block alone, without consensus, for tests and the core benchmark of a single validator."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

from nacl.signing import SigningKey

from ledger.block import Block
from ledger.draft import Draft
from ledger.market import OrderRecord, Result
from ledger.replica import Replica, Timing
from ledger.state import AccountRecord, CtpRecord
from ledger.statuses import ctp_of, current
from ledger.store import LedgerOutboxRow, LedgerStore
from ledger.validator import ValidatorIdentity
from wire import topics
from wire.messages import Body, CtpState, Status

VOTES = "votes"  # store value: the replica's votes at its current height


class SoloDecision(NamedTuple):
    """What LedgerNode.decide made alone, without consensus (the replica's action is
    ledger.replica.Decided)."""

    block: Block | None  # None when nothing changed
    queued: list[LedgerOutboxRow]  # the new outbox rows, to publish in order
    reasons: list[str | None]  # per message of the batch: its reject reason, or None


class LedgerNode:
    def __init__(self, identity: ValidatorIdentity):
        genesis = identity.genesis
        if identity.key is None:
            raise ValueError(f"validator {identity.index}: a ledger node signs, so it needs its key")
        self.key: SigningKey = identity.key
        self.identity = identity
        self.store = LedgerStore(identity.db_path, genesis)
        self.state = self.store.load()
        self.verifier = genesis.verifier()

    def replica(self, timing: Timing, now: int, mono: int) -> Replica:
        """This validator's consensus, on its state, from the votes it persisted."""
        return Replica(
            self.state,
            self.verifier,
            self.identity.index,
            self.key,
            self.store.block,
            timing,
            self.store.value(VOTES),
            now,
            mono,
        )

    def write(
        self, draft: Draft, block: Block, proposer: int | None, delivered: Sequence[int] = ()
    ) -> list[LedgerOutboxRow]:
        """Persist a decided block with what it announces: its statuses, rejects and the block
        itself, ranked by how far this validator is after the proposer in rotation (rank 0
        publishes; the others stand in, see ledger.service). A block caught up from a peer
        was announced by others: it announces nothing here."""
        outputs, rank = [], 0
        if proposer is not None:
            outputs = [*draft.signed_outputs(self.key), (topics.LEDGER_BLOCKS, block.chain_bytes(), False)]
            rank = (self.identity.index - proposer) % len(self.identity.genesis.validators)
        return self.store.commit(draft.changes, block, outputs, rank, delivered)

    def decide(self, batch: list[tuple[str, bytes]], now: int, delivered: Sequence[int] = ()) -> SoloDecision:
        """One block at time max(now, tip + 1) from (typ, message bytes) pairs, made and
        sealed by this validator alone (a one-validator genesis), written to disk.

        A message that is in the batch twice on one topic is a redelivery: decided once,
        silently.
        """
        draft = Draft(self.state, self.verifier, max(now, self.state.t + 1))
        seen: set[tuple[str, bytes]] = set()  # the same bytes on another topic are another message
        reasons = []
        for delivery in batch:
            reasons.append(draft.add(*delivery) if delivery not in seen else None)
            seen.add(delivery)
        block = draft.finish()
        if block is None:
            return SoloDecision(None, [], reasons)
        block = block.sealed(self.identity.index, self.key)
        queued = self.write(draft, block, self.identity.index, list(delivered))
        self.state.commit(draft.changes)
        return SoloDecision(block, queued, reasons)

    def current_statuses(
        self, since: int = 0, of: Iterable[str] | None = None, until: int | None = None
    ) -> list[LedgerOutboxRow]:
        """The retained status of every CTP, order, interval result and account that changed at a block
        time from `since` to `until` (or of the status topics `of`), with the body it was first
        published with (time and height of the last change), signed by this validator: the
        same bytes when it published it, the same body under another signature otherwise. As
        outbox-like rows (seq 0: in no outbox) whose height is the block of that change (0 for
        a CTP's `rejected`, which carries none), for the publishing rules of ledger.statuses."""
        last = self.state.t if until is None else until
        market = self.state.market
        rejected: list[tuple[bytes, tuple[str, bytes, int]]]
        if of is None:
            times = self.store.block_times()
            rejected = list(self.store.rejections().items())
            records = list(self.state.ctps.values())
            orders = list(market.orders.values()) if market is not None else []
            results = list(market.results.values()) if market is not None else []
            accounts = [] if market is None else [self.state.account(pk) for pk in self.state.balances]
        else:
            wanted = set(of)
            found = [r for topic in wanted if (r := current(self.state, topic)) is not None]
            records = [r for r in found if isinstance(r, CtpRecord)]
            orders = [r for r in found if isinstance(r, OrderRecord)]
            results = [r for r in found if isinstance(r, Result)]
            accounts = [r for r in found if isinstance(r, AccountRecord)]
            times = {r.height: self.store.block_time(r.height) for r in records}
            ids = {i for topic in wanted if (i := ctp_of(topic)) is not None and i not in self.state.ctps}
            rejected = [(i, why) for i in ids if (why := self.store.rejection(i))]
        out: list[tuple[str, Body, int]] = [
            (topics.status(ctp_id), Status(ctp=ctp_id, state=CtpState.REJECTED, t=t, reason=reason, msg=msg), 0)
            for ctp_id, (reason, msg, t) in rejected
            if since <= t <= last and ctp_id not in self.state.ctps
        ]
        out += [
            (topics.status(r.ctp.id), r.status(times[r.height], market is not None), r.height)
            for r in records
            if since <= times[r.height] <= last
        ]
        out += [(topics.market_order(o.k, o.id), o.status(), o.height) for o in orders if since <= o.t <= last]
        out += [(topics.market_result(r.k), r.status(), r.height) for r in results if since <= r.t <= last]
        out += [
            (topics.account(a.pk), a.status(), a.height) for a in accounts if a and a.height and since <= a.t <= last
        ]
        return [LedgerOutboxRow(0, topic, body.sign(self.key), True, height) for topic, body, height in out]

    def close(self) -> None:
        self.store.close()
