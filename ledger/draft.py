"""Building one block: docs/PROTOCOL.md §4's stateful checks and §5's life cycle, as a pure function.

A Draft sits on a committed LedgerState and collects what a block would change, without
changing the state: (state, messages, block time) -> (block, its Changes, signed outputs),
and LedgerState.commit applies the Changes once consensus decided the block. The block time
is the clock for every check, stateless or stateful, so replaying a block from the log
(audit, another validator) reaches the same verdicts. The order of the checks per message
type is in docs/decisions/0002-ledger-v1.md, with revocations in 0004-revocation.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from nacl.signing import SigningKey

from ledger.accounts import ACCOUNT_TYPES, NO_ACCOUNT_CHANGES, AccountsDraft
from ledger.archive import FINAL
from ledger.block import Block, BlockError, Header, Input, input_hash, merkle_root, trade_bytes, trade_hash
from ledger.fill import FillDoc, fill_ctp
from ledger.genesis import MAX_UNITS
from ledger.market import MARKET_TYPES
from ledger.market_draft import MarketDraft
from ledger.state import AccountRecord, Changes, CtpRecord, LedgerState
from wire import topics
from wire.cose import message_hash
from wire.messages import Ask, Bid, Body, Cancel, Ctp, CtpState, Erc, Opened, Rejection, Revoke, Seal, Status, shown
from wire.reasons import FAR_EXPIRY, NOT_FINAL, STATEFUL, Reject
from wire.verify import Verifier

TX_KINDS = frozenset(topics.TX_TYPES.values())
# A CTP may hold its payer's money for at most this long after the block that takes it
# (docs/PROTOCOL.md §4, docs/decisions/0013-bounded-memory.md): what bounds how long a
# held CTP and a rejected one's hash stay in a validator's memory.
MAX_HOLD_MS = 86_400_000


def replay(base: LedgerState, verifier: Verifier, t: int, inputs: tuple[Input, ...]) -> Draft:
    """Decide a block's inputs again at its time t, as its proposer did, and finish it:
    how a validator checks a proposal and how an audit checks the log."""
    draft = Draft(base, verifier, t)
    for i, (typ, raw) in enumerate(inputs):
        if typ not in TX_KINDS:
            raise BlockError(f"input {i} came on no transaction topic ({typ!r})")
        draft.add(typ, raw)
    draft.finish()
    return draft


class Output(NamedTuple):
    """A message for the bus: a status (retained) or a reject."""

    topic: str
    body: Body
    retain: bool


class Draft:
    """The next block on top of `base`, at block time `t`."""

    def __init__(self, base: LedgerState, verifier: Verifier, t: int):
        if t <= base.t:
            raise ValueError(f"block time {t} is not after the tip's {base.t}")
        self.base, self.verifier, self.t = base, verifier, t
        self.height = base.height + 1
        self.balances: dict[bytes, int] = {}
        self.held: dict[bytes, int] = {}
        self.ctps: dict[bytes, CtpRecord] = {}  # new or changed records
        self.used_keys: dict[bytes, bytes] = {}
        self.revoked: dict[bytes, int] = {}  # device keys revoked by this draft -> revocation time
        self.inputs: list[Input] = []  # decided messages, applied or rejected, in order
        self.reasons: list[str | None] = []  # per input: its reject reason, or None
        self.known = base.tree.size  # records below this leaf exist before the draft
        self.trades: list[bytes] = []
        self.settled: list[bytes] = []  # the CTP id of each trade
        self.outputs: list[Output] = []
        self.ctp_rejects: dict[bytes, tuple[str, bytes]] = {}  # unknown CTP id -> (reason, msg hash)
        self.refused: dict[bytes, int] = {}  # hash -> exp of payer-signed CTPs rejected here
        self.block: Block | None = None
        self._changes: Changes | None = None
        self._new = 0  # records appended to the tree by this draft
        self.market = MarketDraft(self, base.market) if base.market is not None else None
        self.accounts = AccountsDraft(self) if base.genesis.operators else None

    # -- reads through the draft to the committed state --

    def record(self, ctp_id: bytes) -> CtpRecord | None:
        record = self.ctps.get(ctp_id)
        return record if record is not None else self.base.record(ctp_id)

    def balance(self, pk: bytes) -> int:
        return self.balances.get(pk, self.base.balances.get(pk, 0))

    def holding(self, pk: bytes) -> int:
        return self.held.get(pk, self.base.held.get(pk, 0))

    def key_used(self, pk: bytes) -> bool:
        return pk in self.used_keys or self.base.key_used(pk)

    def revoked_at(self, pk: bytes) -> int | None:
        return self.revoked.get(pk, self.base.revoked.get(pk))

    # -- inputs --

    def add(self, typ: str, raw: bytes) -> str | None:
        """Decide one message from spb/v1/tx/{typ} as the block's next input; returns the
        reject reason or None. Rejected messages are inputs too, so every validator
        replaying the block reaches (and announces) the same rejections."""
        digest = message_hash(raw)
        opened = reason = None
        try:
            if typ in MARKET_TYPES and self.market is None:
                raise Reject("type", f"{typ}: this chain has no market (its genesis has none)")
            if typ in ACCOUNT_TYPES and self.accounts is None:
                raise Reject("type", f"{typ}: this chain has no operators (its genesis lists none)")
            opened = self.verifier.verify(raw, self.t, expect=typ)
            # verify(expect=typ) opened a body of typ's class, the one its handler takes
            handlers: dict[str, Callable[[Opened[Any], bytes], None]] = {
                "ctp": self._ctp,
                "erc": self._erc,
                "cancel": self._cancel,
                "revoke": self._revoke,
            }
            if self.market is not None:
                handlers |= self.market.handlers()
            if self.accounts is not None:
                handlers |= self.accounts.handlers()
            handlers[typ](opened, digest)
        except Reject as exc:
            self._reject(digest, exc.reason, opened.body if opened is not None else None)
            reason = exc.reason
        self.inputs.append((typ, raw))
        self.reasons.append(reason)
        return reason

    def _ctp(self, opened: Opened[Ctp], digest: bytes) -> None:
        ctp: Ctp = opened.body
        record = self.record(ctp.id)
        if record is not None and record.hash == digest:
            raise Reject("duplicate", "this CTP was applied before")
        for role, pk in (("payer", ctp.payer), ("payee", ctp.payee)):
            self.check_account(pk, role)
        if record is not None:
            raise Reject("duplicate", "another CTP already has this id")
        if ctp.exp < self.t:
            raise Reject("expired", f"CTP expired at {ctp.exp}, block time {self.t}")
        if ctp.exp > self.t + MAX_HOLD_MS:
            raise Reject(FAR_EXPIRY, f"CTP expires at {ctp.exp}, more than {MAX_HOLD_MS} ms after block time {self.t}")
        if digest in self.refused or digest in self.base.refused:
            raise Reject("duplicate", "this CTP was rejected before: a rejection is final")
        if self.balance(ctp.payer) < ctp.amount:
            raise Reject("insufficient-funds", f"{ctp.amount} asked, {self.balance(ctp.payer)} free")
        self._move(ctp.payer, -ctp.amount, +ctp.amount)
        index = self.known + self._new
        self._new += 1
        self._put(CtpRecord(ctp, opened.raw, digest, index, CtpState.HELD, self.height, digest, t=self.t))

    def hold_fill(self, doc: FillDoc) -> None:
        """A market fill becomes a held trade (§9.3): its amount stays held from the bid's escrow."""
        raw = doc.encode()
        digest = message_hash(raw)
        index = self.known + self._new
        self._new += 1
        self._put(CtpRecord(fill_ctp(doc), raw, digest, index, CtpState.HELD, self.height, digest, t=self.t, fill=doc))

    def _erc(self, opened: Opened[Erc], digest: bytes) -> None:
        erc: Erc = opened.body
        coe, witness = self.verifier.coe_and_witness(erc)
        revoked = self.revoked_at(witness.pk)
        if revoked is not None and coe.t >= revoked:
            raise Reject("cert", f"witness {shown(witness.meter)} revoked at {revoked}, CoE issued at {coe.t}")
        record = self._known(erc.ctp)
        if record.state == CtpState.SETTLED and record.by == digest:
            raise Reject("duplicate", "this ERC settled the CTP already")
        if record.state != CtpState.HELD:
            raise Reject("not-held", f"CTP is {record.state}")
        if self.key_used(erc.pk):
            raise Reject("replay", "this one-time key confirmed another CTP")
        if coe.root != record.ctp.meter:
            raise Reject("meter-mismatch", "the ERC's CoE root is not the meter the CTP names")
        if erc.wh < record.ctp.wh:
            raise Reject("energy-short", f"{erc.wh} Wh received, {record.ctp.wh} Wh paid for")
        if self.t > record.ctp.exp:
            raise Reject("expired", f"CTP expired at {record.ctp.exp}, block time {self.t}")
        if self.market is not None:
            self.market.deliver(record)  # §9.4: oversold unless the payee proved the export
        ctp = record.ctp
        self._move(ctp.payer, 0, -ctp.amount)
        self._move(ctp.payee, +ctp.amount, 0)
        self.used_keys[erc.pk] = ctp.id
        self.trades.append(trade_bytes(record.raw, digest))
        self.settled.append(ctp.id)
        self._put(record.moved(CtpState.SETTLED, self.height, self.t, digest, erc.pk))

    def _cancel(self, opened: Opened[Cancel], digest: bytes) -> None:
        cancel: Cancel = opened.body
        record = self._known(cancel.ctp)
        if record.by == digest:
            raise Reject("duplicate", "this cancel refunded the CTP already")
        if self.accounts is not None and self.accounts.is_rotated(cancel.payer):
            raise Reject("rotated", "the payer's key was replaced by a rotation")
        if self.current(record.ctp.payer) != cancel.payer:
            raise Reject("not-payer", "only the CTP's payer (or the key that replaced it) may cancel it")
        if record.state != CtpState.HELD:
            raise Reject("not-held", f"CTP is {record.state}")
        if self.t <= record.ctp.exp:
            raise Reject("too-early", f"CTP holds until {record.ctp.exp}, block time {self.t}")
        self._refund(record, digest)

    def _revoke(self, opened: Opened[Revoke], digest: bytes) -> None:
        revoke: Revoke = opened.body
        if self.revoked_at(revoke.pk) is not None:
            raise Reject("duplicate", "this device key is revoked already")
        self.revoked[revoke.pk] = revoke.t

    def _known(self, ctp_id: bytes) -> CtpRecord:
        record = self.record(ctp_id)
        if record is None:
            raise Reject("unknown-ctp", f"no CTP {ctp_id.hex()}")
        return record

    def _refund(self, record: CtpRecord, by: bytes) -> None:
        self._move(record.ctp.payer, +record.ctp.amount, -record.ctp.amount)
        self._put(record.moved(CtpState.REFUNDED, self.height, self.t, by))

    def check_account(self, pk: bytes, role: str) -> None:
        """`unknown-account` for a key that is no account of this ledger; with operators also
        `rotated` for a replaced key and `retired` for a closed account (§10)."""
        if self.accounts is not None:
            self.accounts.check(pk, role)
        elif pk not in self.base.balances:
            raise Reject("unknown-account", f"{role} is not an account of this ledger")

    def check_signer(self, signer: bytes, owner: bytes, why: str) -> None:
        """`rotated` for a signer whose key was replaced, `not-owner` unless the signer holds
        the owner's account now (a rotation's new key takes over the old key's orders, §10)."""
        if self.accounts is not None and self.accounts.is_rotated(signer):
            raise Reject("rotated", "the signer's key was replaced by a rotation")
        if self.current(owner) != signer:
            raise Reject("not-owner", why)

    def has_account(self, pk: bytes) -> bool:
        """Whether pk is an account key of this ledger, one this block opened included (§10)."""
        return self.accounts.exists(pk) if self.accounts is not None else pk in self.base.balances

    def current(self, pk: bytes) -> bytes:
        """The key that holds account pk's money now (a rotation moves it, §10)."""
        return self.accounts.current(pk) if self.accounts is not None else pk

    def _move(self, pk: bytes, balance: int, held: int) -> None:
        """Move units of account pk (through any rotation: a trade signed by an old key pays
        and is paid by the key that replaced it)."""
        pk = self.current(pk)
        self.balances[pk] = self.balance(pk) + balance
        self.held[pk] = self.holding(pk) + held

    def _put(self, record: CtpRecord) -> None:
        """Record a change and announce it: only an applied message changes a status (§7)."""
        self.ctps[record.ctp.id] = record
        self.outputs.append(self.output(topics.status(record.ctp.id), record.status(self.t, self.market is not None)))

    def output(self, topic: str, body: Body) -> Output:
        """A retained status of this block."""
        return Output(topic, body, True)

    def _reject(self, msg: bytes, reason: str, body: Body | None) -> None:
        """Every rejection goes to spb/v1/rejects.

        A CTP that an account of this ledger signed, rejected for a stateful reason, is
        remembered until its expiry (a copy the broker redelivers later must not hold money
        the payer was told is free) and, if no CTP holds its id, gets a retained `rejected`
        status. Forged CTPs and strangers' CTPs get neither, so no one without an account
        key writes on a CTP's topic (§7) or fills the broker with retained statuses. Nor does
        a `far-expiry`: not final, it is decided again when sent again. A CTP whose exp is
        more than MAX_HOLD_MS ahead is not remembered either: it failed a check that no later
        block passes (an unknown payee, a taken id) or it is `far-expiry` again. So every hash
        remembered leaves memory within MAX_HOLD_MS (decision 0013).
        """
        self.outputs.append(Output(topics.REJECTS, Rejection(msg=msg, reason=reason, t=self.t), False))
        if isinstance(body, (Ask, Bid, Seal)) and self.market is not None:
            owner = body.seller if isinstance(body, Ask) else body.buyer
            if reason != "duplicate" and reason in STATEFUL and self.has_account(owner):
                # §9.2: final until the gate (capped: a too-far k's gate may not fit a 64-bit column)
                self.refused[msg] = min(self.market.terms.gate(body.k), MAX_UNITS)
            return
        signed_ctp = body if isinstance(body, Ctp) else None
        if signed_ctp is None or reason in ("duplicate", *NOT_FINAL) or not self.has_account(signed_ctp.payer):
            return  # a `far-expiry` is not final: the same bytes are decided again, so not remembered
        if signed_ctp.exp <= self.t + MAX_HOLD_MS:
            self.refused[msg] = signed_ctp.exp
        if self.record(signed_ctp.id) is None:
            ctp_id = signed_ctp.id
            self.ctp_rejects[ctp_id] = (reason, msg)
            status = Status(ctp=ctp_id, state=CtpState.REJECTED, t=self.t, reason=reason, msg=msg)
            self.outputs.append(Output(topics.status(ctp_id), status, True))

    # -- the block --

    def finish(self) -> Block | None:
        """Refund what expired by the block time, then build the block (unsealed) and its
        `changes`, leaving the committed state as it was.

        None when nothing was decided and nothing expired.
        """
        if self.market is not None:
            self.market.clear_due()  # before expiries: a fill is a trade of this block
        for record in self.base.expiring(self.t):
            current = self.record(record.ctp.id)
            assert current is not None, "an expiring record is in the base state"
            if current.state == CtpState.HELD:
                self._refund(record, b"")
        market = self.market.changes() if self.market is not None else None
        if not (self.inputs or self.ctps or market):  # an input decides every account change
            return None
        tree = self.base.tree.change({record.index: record.leaf() for record in self.ctps.values()})
        header = Header(
            self.height,
            self.base.tip,
            self.t,
            txs=merkle_root([trade_hash(trade) for trade in self.trades]),
            ctps=tree.root,
            inputs=merkle_root([input_hash(*i) for i in self.inputs]),
        )
        self.block = Block(header, tuple(self.trades), (), tuple(self.inputs))
        account_changes = self.accounts.changes() if self.accounts is not None else NO_ACCOUNT_CHANGES
        accounts = self.balances.keys() | self.held.keys() | set(account_changes.opened)
        moved = self._moved(accounts) | frozenset(account_changes.opened)
        self._changes = Changes(
            header,
            balances={pk: self.balance(pk) for pk in accounts},
            held={pk: self.holding(pk) for pk in accounts},
            records=dict(self.ctps),
            known=self.known,
            revoked=dict(self.revoked),
            refused=dict(self.refused),
            ctp_rejects=dict(self.ctp_rejects),
            settled=tuple(self.settled),
            tree=tree,
            market=market,
            moved=moved,
            accounts=account_changes,
            pruned=self.base.tree.sealing(tree, [r.index for r in self.ctps.values() if r.state in FINAL]),
        )
        for pk in sorted(moved):
            money = AccountRecord(pk, self.balance(pk), self.holding(pk), self.height, self.t)
            self.outputs.append(self.output(topics.account(pk), money.status()))
        return self.block

    def _moved(self, touched: Iterable[bytes]) -> frozenset[bytes]:
        """The accounts whose `account` status this block publishes (docs/PROTOCOL.md §9.6): in
        a market chain, those whose (balance, held) it changes, and in its first block all of
        them, so every account has a retained status from then on. A v1 chain publishes none."""
        if self.market is None:
            return frozenset()
        if self.height == 1:
            return frozenset(self.base.balances)
        base = self.base
        return frozenset(
            pk
            for pk in touched
            if (self.balance(pk), self.holding(pk)) != (base.balances.get(pk, 0), base.held.get(pk, 0))
        )

    @property
    def changes(self) -> Changes:
        """What committing the finished block changes (LedgerState.commit, LedgerStore.commit)."""
        if self._changes is None:
            raise ValueError("no block: the draft is not finished, or finished with nothing to decide")
        return self._changes

    def signed_outputs(self, key: SigningKey) -> list[tuple[str, bytes, bool]]:
        """(topic, payload, retain) for each status and reject, signed by this validator."""
        return [(out.topic, out.body.sign(key), out.retain) for out in self.outputs]
