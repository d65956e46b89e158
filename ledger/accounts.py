"""Accounts after launch (docs/PROTOCOL.md §10, docs/decisions/0016-accounts.md): the
operator's `register`, `fund`, `payout` and `retire`, and a household's `rotate`, as the
part of ledger.draft.Draft that reads and collects them.

Like the rest of a Draft it writes nothing into the committed state: what a block does to
accounts is an AccountChanges that LedgerState.commit and LedgerStore.commit apply. Money
enters only by a `fund` and leaves only by a `payout`, so the money invariant becomes
balances + holds = genesis + funded − withdrawn, checked at every commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ledger.genesis import MAX_UNITS, NO_SOURCE, MeterEntry
from wire.messages import Fund, Opened, Payout, Register, Retire, Rotate
from wire.reasons import Reject

if TYPE_CHECKING:
    from collections.abc import Callable

    from ledger.draft import Draft

FUND, PAYOUT = "fund", "payout"
ACCOUNT_TYPES = frozenset({"register", FUND, PAYOUT, "retire", "rotate"})


@dataclass(frozen=True, slots=True)
class MoneyOp:
    """A `fund` or `payout` a block applied: what a statement lists and the invariant counts."""

    typ: str  # FUND or PAYOUT
    account: bytes  # the account's key when it was applied
    amount: int
    ref: str  # the external payment reference, taken once per typ
    hash: bytes  # the message's hash


@dataclass(frozen=True, slots=True)
class AccountChanges:
    """What one block does to accounts besides moving money between them."""

    ops: tuple[MoneyOp, ...] = ()
    opened: tuple[bytes, ...] = ()  # accounts the block opened (registered, or a rotation's new key)
    meters: tuple[MeterEntry, ...] = ()  # meters the block registered, with their account then
    retired: tuple[bytes, ...] = ()
    rotated: tuple[tuple[bytes, bytes], ...] = ()  # (old key, new key), in order

    @property
    def funded(self) -> int:
        return sum(op.amount for op in self.ops if op.typ == FUND)

    @property
    def withdrawn(self) -> int:
        return sum(op.amount for op in self.ops if op.typ == PAYOUT)

    def __bool__(self) -> bool:
        return bool(self.ops or self.opened or self.meters or self.retired or self.rotated)


NO_ACCOUNT_CHANGES = AccountChanges()


@dataclass(frozen=True, slots=True)
class AccountHistory:
    """What a restart reads back of §10's history (ledger.store): small, operator-paced."""

    funded: int = 0
    withdrawn: int = 0
    refs: tuple[tuple[str, str], ...] = ()  # (typ, ref) of every fund and payout
    retired: tuple[tuple[bytes, int], ...] = ()  # (account, height)
    rotated: tuple[tuple[bytes, bytes], ...] = ()  # (old, new), in the order applied
    meters: tuple[MeterEntry, ...] = ()  # registered after the genesis, in the order registered


class AccountsDraft:
    """The accounts overlay of one Draft (`draft.accounts`): §10's stateful checks, in order,
    first failure wins, and a rejected message changes nothing."""

    def __init__(self, draft: Draft):
        self.draft = draft
        base = draft.base
        self.base_rotated, self.base_retired, self.base_refs = base.rotated, base.retired, base.refs
        self.ops: list[MoneyOp] = []
        self.opened: dict[bytes, None] = {}
        self.meters: dict[str, MeterEntry] = {}
        self.retired: dict[bytes, None] = {}
        # Every key this block replaced -> the key holding its account now: one step, like
        # LedgerState.rotated, however many times the block rotates one account (a household
        # may rotate its new key again in the same block), so `current` is two lookups.
        self.rotated: dict[bytes, bytes] = {}
        self.rotations: list[tuple[bytes, bytes]] = []  # (old, new) in the order applied
        self._leading: dict[bytes, list[bytes]] = {}  # current key -> this block's replaced keys it holds

    def handlers(self) -> dict[str, Callable[[Opened[Any], bytes], None]]:
        return {
            "register": self._register,
            FUND: self._fund,
            PAYOUT: self._payout,
            "retire": self._retire,
            "rotate": self._rotate,
        }

    # -- reads through the overlay --

    def current(self, pk: bytes) -> bytes:
        """The key that holds account `pk`'s money now: pk itself unless it was rotated (the
        base's key for it, then this block's rotation of that key)."""
        at_base = self.base_rotated.get(pk, pk)
        return self.rotated.get(at_base, at_base)

    def is_rotated(self, pk: bytes) -> bool:
        return pk in self.rotated or pk in self.base_rotated

    def is_retired(self, pk: bytes) -> bool:
        return pk in self.retired or pk in self.base_retired

    def exists(self, pk: bytes) -> bool:
        return pk in self.opened or pk in self.draft.base.balances

    def check(self, pk: bytes, role: str, trading: bool = True) -> None:
        """`rotated`, `unknown-account` or (when the message would start something new:
        `trading`) `retired`, for an account key a message names or is signed by."""
        if self.is_rotated(pk):
            raise Reject("rotated", f"the {role}'s key was replaced by a rotation")
        if not self.exists(pk):
            raise Reject("unknown-account", f"{role} is not an account of this ledger")
        if trading and self.is_retired(pk):
            raise Reject("retired", f"the {role}'s account was retired")

    def meter(self, meter_id: str) -> MeterEntry | None:
        """A registered meter, the genesis's or a register's (this block's included)."""
        entry = self.meters.get(meter_id)
        market = self.draft.base.market
        return entry if entry is not None else market.meter(meter_id) if market is not None else None

    # -- handlers --

    def _register(self, opened: Opened[Register], digest: bytes) -> None:
        body: Register = opened.body
        if self.is_rotated(body.account):
            raise Reject("rotated", "the account's key was replaced by a rotation")
        if self.is_retired(body.account):
            raise Reject("retired", "the account was retired")
        entries = []
        for raw, source in body.meters:
            cert = self.draft.verifier.certificate(raw, self.draft.t)
            if self.draft.revoked_at(cert.pk) is not None:
                raise Reject("cert", f"the device key of {cert.meter!r} is revoked")
            entries.append(MeterEntry(cert.meter, body.account, source or NO_SOURCE))
        ids = [e.meter for e in entries]
        if len(set(ids)) != len(ids):
            raise Reject("meter-taken", "a meter is named twice")
        known = [self.meter(i) for i in ids]
        if any(k is not None and self.current(k.account) != body.account for k in known):
            raise Reject("meter-taken", "a meter is registered to another account")
        if self.exists(body.account) and all(k is not None for k in known):
            raise Reject("duplicate", "the account and all these meters are registered already")
        if not self.exists(body.account):
            self.opened[body.account] = None
        for entry, k in zip(entries, known, strict=True):
            if k is None:
                self.meters[entry.meter] = entry

    def _fund(self, opened: Opened[Fund], digest: bytes) -> None:
        body: Fund = opened.body
        self.check(body.account, "account")
        self._new_ref(FUND, body.ref)
        so_far = AccountChanges(ops=tuple(self.ops))
        if self.draft.base.expected_total() + so_far.funded - so_far.withdrawn + body.amount > MAX_UNITS:
            raise Reject("over-limit", f"the ledger holds at most {MAX_UNITS} units")
        self.draft._move(body.account, +body.amount, 0)
        self.ops.append(MoneyOp(FUND, body.account, body.amount, body.ref, digest))

    def _payout(self, opened: Opened[Payout], digest: bytes) -> None:
        body: Payout = opened.body
        self.check(body.account, "account", trading=False)  # a retired account is paid out
        self._new_ref(PAYOUT, body.ref)
        free = self.draft.balance(body.account)
        if body.amount > free:
            raise Reject("insufficient-funds", f"{body.amount} asked, {free} free (held money is not paid out)")
        self.draft._move(body.account, -body.amount, 0)
        self.ops.append(MoneyOp(PAYOUT, body.account, body.amount, body.ref, digest))

    def _retire(self, opened: Opened[Retire], digest: bytes) -> None:
        body: Retire = opened.body
        self.check(body.account, "account", trading=False)
        if self.is_retired(body.account):
            raise Reject("duplicate", "the account was retired already")
        self.retired[body.account] = None

    def _rotate(self, opened: Opened[Rotate], digest: bytes) -> None:
        body: Rotate = opened.body
        old, new = body.account, body.new
        if self.current(old) == new and old != new:
            raise Reject("duplicate", "this rotation was applied already")
        self.check(old, "account")
        if new == old or self.exists(new) or self.is_rotated(new):
            raise Reject("key-taken", "the new key is an account key already")
        draft = self.draft
        balance, held = draft.balance(old), draft.holding(old)
        draft._move(old, -balance, -held)
        self.opened[new] = None
        replaced = [*self._leading.pop(old, ()), old]
        self.rotated.update(dict.fromkeys(replaced, new))
        self._leading[new] = replaced
        self.rotations.append((old, new))
        draft._move(new, +balance, +held)

    def _new_ref(self, typ: str, ref: str) -> None:
        if (typ, ref) in self.base_refs or any(op.typ == typ and op.ref == ref for op in self.ops):
            raise Reject("duplicate", f"a {typ} with reference {ref!r} was applied already")

    def changes(self) -> AccountChanges:
        return AccountChanges(
            ops=tuple(self.ops),
            opened=tuple(self.opened),
            meters=tuple(self.meters.values()),
            retired=tuple(self.retired),
            rotated=tuple(self.rotations),
        )
