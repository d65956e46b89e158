"""Property tests of the pure ledger core (docs/PROTOCOL.md §4-§5): Draft over LedgerState, the
SQLite block log, audit and replay. No broker.

Hypothesis plays a community's traffic over simulated time: blocks whose times strictly
increase, each with a batch of valid, invalid, duplicated, reordered, late and damaged
CTPs, ERCs and cancels. A dict-based oracle predicts every verdict, announcement and the
state after every block; the §5 invariants are also checked on the live state alone. At
the end the block log must audit, reload and replay to the same state.

§4 leaves the order of the stateful checks open; where several fail at once the oracle
expects the first in the order of docs/decisions/0002-ledger-v1.md.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from ledger.audit import AuditReport, audit
from ledger.block import Block, parse_trade, trade_bytes
from ledger.draft import Draft, replay
from ledger.genesis import Genesis
from ledger.state import LedgerState
from ledger.store import LedgerStore
from ledger.workload import SimCommunity, pk
from tests.support.ledger import NOW
from tests.support.wire import flip_bit
from wire import topics
from wire.cose import message_hash
from wire.messages import Ctp, CtpState, Erc, Rejection, Status, open_message
from wire.reasons import STATELESS
from wire.verify import Verifier

HELD, SETTLED, REFUNDED = CtpState.HELD, CtpState.SETTLED, CtpState.REFUNDED
N = 3  # households with an account; household N is a stranger the genesis does not know
BALANCE = 500
ANY_STATELESS = "*"  # a corruption whose exact §4 reason depends on where the bit landed


# ---- messages ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Msg:
    """What is added to a draft: the topic's typ, the bytes, and the stateless reason those
    bytes must fail with (None: they pass §4 steps 1-6)."""

    typ: str
    raw: bytes
    stateless: str | None = None

    @property
    def hash(self) -> bytes:
        return message_hash(self.raw)


def body(raw: bytes, typ: str | None = None):
    return open_message(raw, typ).body


def ctp_id(raw: bytes) -> bytes:
    return body(raw, "ctp").id


def coe_root(erc: Erc) -> bytes:
    return body(erc.coe, "coe").root


def community_and_genesis(households: int = N, balance: int = BALANCE) -> tuple[SimCommunity, Genesis]:
    """A community with one more household than the genesis has accounts (a stranger)."""
    c = SimCommunity(households + 1, NOW)
    accounts = {pk(h.account): balance for h in c.households[:households]}
    return c, Genesis.build([pk(c.ca)], accounts, [pk(c.validator_keys[0])])


def erc_with_key(c: SimCommunity, ctp_raw: bytes, erc_raw: bytes) -> bytes:
    """An ERC for ctp_raw, signed with the one-time key another ERC already used."""
    used: Erc = body(erc_raw, "erc")
    batch = next(b for h in c.households for b in h.batches if b.coe == used.coe)
    ctp: Ctp = body(ctp_raw, "ctp")
    return Erc(ctp=ctp.id, wh=ctp.wh, t=NOW, pk=used.pk, idx=used.idx, path=used.path, coe=used.coe).sign(
        batch.keys[used.idx]
    )


def erc_bad_proof(c: SimCommunity, erc_raw: bytes) -> bytes:
    """The same ERC, re-signed by its key, claiming the neighbouring leaf index: `proof`."""
    e: Erc = body(erc_raw, "erc")
    batch = next(b for h in c.households for b in h.batches if b.coe == e.coe)
    return replace(e, idx=e.idx ^ 1).sign(batch.keys[e.idx])


OTHER_TOPIC = {"ctp": "erc", "erc": "cancel", "cancel": "ctp"}
CORRUPTIONS = ("truncate", "trailing", "tag", "signature", "topic", "proof", "bitflip")


def corrupt(c: SimCommunity, base: Msg, how: str, n: int) -> Msg:
    """A damaged copy of a valid message, with the §4 reason it must get."""
    raw = base.raw
    if how == "truncate":  # any proper prefix of a definite-length CBOR item
        return Msg(base.typ, raw[: n % len(raw)], "decode")
    if how == "trailing":  # bytes after the one CBOR item
        return Msg(base.typ, raw + bytes([n % 256]), "noncanonical")
    if how == "tag":  # a tag 18 around the COSE_Sign1: the one byte form is untagged
        return Msg(base.typ, b"\xd2" + raw, "noncanonical")
    if how == "signature":  # the last 64 bytes are the Ed25519 signature
        return Msg(base.typ, flip_bit(raw, 8 * len(raw) - 512 + n % 512), "signature")
    if how == "topic":
        return Msg(OTHER_TOPIC[base.typ], raw, "type")
    if how == "proof" and base.typ == "erc":
        return Msg("erc", erc_bad_proof(c, raw), "proof")
    return Msg(base.typ, flip_bit(raw, n % (8 * len(raw))), ANY_STATELESS)


def pick(made: list, ref: int):
    """The ref-th newest thing made (modulo how many): small refs answer recent messages."""
    return made[-1 - ref % len(made)]


class Traffic:
    """Turns Hypothesis's abstract operations into signed messages, remembering them all so
    later operations can answer, reuse, resend (late, reordered, duplicated) or damage them."""

    def __init__(self, c: SimCommunity, used_keys: dict[bytes, bytes]):
        self.c = c
        self.used_keys = used_keys  # the oracle's: aim key reuse at keys that did confirm
        self.ctps: list[bytes] = []  # every CTP made, sent or held back
        self.ercs: list[bytes] = []  # every well-formed ERC made
        self.made: list[Msg] = []  # everything made, sent or not: `resend` picks from these
        self.valid: list[Msg] = []  # those passing the stateless checks: `corrupt` damages these

    def _keep(self, msg: Msg) -> Msg:
        self.made.append(msg)
        if msg.stateless is None:
            self.valid.append(msg)
        return msg

    def make(self, op: tuple, t: int) -> list[Msg]:
        """The messages an operation sends at block time t (none when it has nothing to act on)."""
        c, kind = self.c, op[0]
        if kind == "ctp":
            _, payer, payee, amount, wh, exp_off, send, reuse = op
            same_id = ctp_id(pick(self.ctps, reuse)) if reuse is not None and self.ctps else None
            raw = c.ctp(payer, payee, amount, wh, t + exp_off, ctp_id=same_id)
            self.ctps.append(raw)
            msg = self._keep(Msg("ctp", raw))
            return [msg] if send else []  # held back: a later `resend` delivers it late
        if kind == "erc" and self.ctps:
            _, ref, wh_delta, by = op
            ctp_raw = pick(self.ctps, ref)
            raw = c.erc(ctp_raw, wh=max(0, body(ctp_raw).wh + wh_delta), by=by)
            self.ercs.append(raw)
            return [self._keep(Msg("erc", raw))]
        if kind == "reuse" and self.ctps and self.ercs:
            _, ref, key_ref = op
            # a key that confirmed a CTP if there is one, aimed at another CTP its meter could confirm
            keys = [x for x in self.ercs if body(x, "erc").pk in self.used_keys] or self.ercs
            key_erc: Erc = body(pick(keys, key_ref), "erc")
            targets = [x for x in self.ctps if body(x).meter == coe_root(key_erc) and ctp_id(x) != key_erc.ctp]
            raw = erc_with_key(c, pick(targets or self.ctps, ref), pick(keys, key_ref))
            self.ercs.append(raw)
            return [self._keep(Msg("erc", raw))]
        if kind == "cancel" and self.ctps:
            _, ref, by = op
            return [self._keep(Msg("cancel", c.cancel(pick(self.ctps, ref), by=by)))]
        if kind == "resend" and self.made:
            return [pick(self.made, op[1])]
        if kind == "corrupt" and self.valid:
            _, ref, how, n = op
            return [self._keep(corrupt(c, pick(self.valid, ref), how, n))]
        return []


# ---- the oracle --------------------------------------------------------------------------


@dataclass
class Rec:
    ctp: Ctp
    raw: bytes
    hash: bytes
    index: int
    state: str
    height: int
    by: bytes
    erc_pk: bytes | None = None


class Oracle:
    """docs/PROTOCOL.md §4-§5 as plain dicts: what each message's verdict and each block's state
    must be."""

    def __init__(self, genesis: Genesis):
        self.balances = dict(genesis.accounts)
        self.held = dict.fromkeys(self.balances, 0)
        self.ctps: dict[bytes, Rec] = {}
        self.used: dict[bytes, bytes] = {}  # one-time key -> CTP id
        self.height = 0
        self.applied: list[Msg] = []  # every message ever applied
        self.block_inputs: list[tuple[str, bytes]] = []  # every message decided, applied or rejected
        self.block_trades: list[bytes] = []
        self.changed: set[bytes] = set()
        self.expired: list[Rec] = []  # refunded at expiry in this block
        self.refused: dict[bytes, int] = {}  # hash -> exp of payer-signed CTPs rejected (final until exp)

    def add(self, msg: Msg, t: int) -> str | None:
        """The expected reason (ANY_STATELESS for a bit flip), applying the message if None.
        Every message decided is an input of the block, rejected ones too (decision 0006)."""
        self.block_inputs.append((msg.typ, msg.raw))
        if msg.stateless is not None:
            return msg.stateless
        opened = open_message(msg.raw, msg.typ)
        reason = getattr(self, "_" + msg.typ)(opened.body, opened.hash, msg.raw, t)
        if reason is None:
            self.applied.append(msg)
        elif self.announces(msg, reason):
            self.refused[opened.hash] = opened.body.exp
        return reason

    def announces(self, msg: Msg, reason: str) -> bool:
        """Whether a rejected message is a CTP an account signed, rejected for a stateful
        reason other than `duplicate`: one the ledger remembers until its exp and, if no
        one holds its id, announces as `rejected` (decision 0002)."""
        return (
            msg.typ == "ctp"
            and reason not in STATELESS
            and reason != "duplicate"
            and body(msg.raw, "ctp").payer in self.balances
        )

    def _ctp(self, ctp: Ctp, h: bytes, raw: bytes, t: int) -> str | None:
        rec = self.ctps.get(ctp.id)
        if rec is not None and rec.hash == h:
            return "duplicate"
        if ctp.payer not in self.balances or ctp.payee not in self.balances:
            return "unknown-account"
        if rec is not None:
            return "duplicate"
        if ctp.exp < t:
            return "expired"
        if h in self.refused:  # a rejection is final (until the CTP's exp)
            return "duplicate"
        if self.balances[ctp.payer] < ctp.amount:
            return "insufficient-funds"
        self.balances[ctp.payer] -= ctp.amount
        self.held[ctp.payer] += ctp.amount
        self.ctps[ctp.id] = Rec(ctp, raw, h, len(self.ctps), HELD, self.height + 1, h)
        self.changed.add(ctp.id)
        return None

    def _erc(self, erc: Erc, h: bytes, raw: bytes, t: int) -> str | None:
        rec = self.ctps.get(erc.ctp)
        if rec is None:
            return "unknown-ctp"
        if rec.state == SETTLED and rec.by == h:
            return "duplicate"
        if rec.state != HELD:
            return "not-held"
        if erc.pk in self.used:
            return "replay"
        if coe_root(erc) != rec.ctp.meter:
            return "meter-mismatch"
        if erc.wh < rec.ctp.wh:
            return "energy-short"
        if t > rec.ctp.exp:
            return "expired"
        self.held[rec.ctp.payer] -= rec.ctp.amount
        self.balances[rec.ctp.payee] += rec.ctp.amount
        self.used[erc.pk] = erc.ctp
        rec.state, rec.height, rec.by, rec.erc_pk = SETTLED, self.height + 1, h, erc.pk
        self.block_trades.append(trade_bytes(rec.raw, h))
        self.changed.add(erc.ctp)
        return None

    def _cancel(self, cancel, h: bytes, raw: bytes, t: int) -> str | None:
        rec = self.ctps.get(cancel.ctp)
        if rec is None:
            return "unknown-ctp"
        if rec.by == h:
            return "duplicate"
        if cancel.payer != rec.ctp.payer:
            return "not-payer"
        if rec.state != HELD:
            return "not-held"
        if t <= rec.ctp.exp:
            return "too-early"
        self._refund(rec, h)
        return None

    def _refund(self, rec: Rec, by: bytes) -> None:
        self.balances[rec.ctp.payer] += rec.ctp.amount
        self.held[rec.ctp.payer] -= rec.ctp.amount
        rec.state, rec.height, rec.by = REFUNDED, self.height + 1, by
        self.changed.add(rec.ctp.id)

    def finish(self, t: int) -> bool:
        """Refund what expired before t; True if there is a block: one that decided any
        message, applied or rejected, or refunded anything."""
        for rec in self.ctps.values():
            if rec.state == HELD and rec.ctp.exp < t:
                self._refund(rec, b"")
                self.expired.append(rec)
        made = bool(self.changed or self.block_inputs)
        self.height += made
        return made

    def forget_refused(self, t: int) -> None:
        """After each block: a refused CTP past its exp would be `expired` anyway."""
        self.refused = {h: exp for h, exp in self.refused.items() if exp >= t}

    def start_block(self) -> None:
        self.block_inputs, self.block_trades, self.changed, self.expired = [], [], set(), []


# ---- checks ------------------------------------------------------------------------------


def draft_view(d: Draft) -> tuple:
    """What a draft would change; its inputs (every message decided) are checked apart."""
    return (dict(d.balances), dict(d.held), dict(d.ctps), dict(d.used_keys), dict(d.revoked), list(d.trades))


def state_view(s: LedgerState) -> tuple:
    """Everything a replica must agree on, and the derived indexes that must match it."""
    return (
        s.height,
        s.tip,
        s.t,
        s.root(),
        s.tree.size,
        dict(s.balances),
        dict(s.held),
        dict(s.ctps),
        dict(s.used_keys),
        s.next_expiry(),
    )


def check_invariants(
    state: LedgerState,
    block: Block,
    settled_ever: set[bytes],
    by_hash: dict[bytes, Msg],
    times: dict[int, int],
    verifier: Verifier,
) -> None:
    """docs/PROTOCOL.md §5 after a block, on the live state alone (no oracle)."""
    h, t = block.header, block.header.t
    assert state.total() == state.genesis.total
    assert all(units >= 0 for units in (*state.balances.values(), *state.held.values()))
    assert h.ctps == state.root() and h.t == state.t == t and h.height == state.height
    # no CTP settles twice: each trade's CTP appears once across the whole chain
    settled_here = []
    for trade in block.trades:
        ctp_raw, erc_hash = parse_trade(trade)
        cid = ctp_id(ctp_raw)
        assert cid not in settled_ever, f"CTP {cid.hex()} settled twice"
        settled_ever.add(cid)
        settled_here.append(cid)
        assert state.ctps[cid].by == erc_hash
    records = state.ctps.values()
    assert sorted(settled_here) == sorted(r.ctp.id for r in records if r.state == SETTLED and r.height == h.height)
    # no one-time key confirms twice, and every used key is the key of one settled CTP
    settled = [r for r in records if r.state == SETTLED]
    assert len({r.erc_pk for r in settled}) == len(settled)
    assert state.used_keys == {r.erc_pk: r.ctp.id for r in settled}
    # every settled CTP has exactly one valid ERC, the one its record names (checked as it
    # settles: the oracle comparison shows a settled record never changes again)
    for r in (r for r in settled if r.height == h.height):
        erc_msg = by_hash[r.by]
        opened = verifier.verify(erc_msg.raw, times[r.height], expect="erc")
        erc: Erc = opened.body
        assert (erc.ctp, erc.pk) == (r.ctp.id, r.erc_pk)
        assert erc.wh >= r.ctp.wh and coe_root(erc) == r.ctp.meter
        assert times[r.height] <= r.ctp.exp
    # refunds only after expiry, and nothing held past its expiry
    for r in records:
        if r.state == REFUNDED and r.height == h.height:
            assert t > r.ctp.exp, f"refunded at {t}, expires {r.ctp.exp}"
        if r.state == HELD:
            assert r.ctp.exp >= t, f"still held at {t}, expired {r.ctp.exp}"
    held = dict.fromkeys(state.balances, 0)
    for r in records:
        if r.state == HELD:
            held[r.ctp.payer] += r.ctp.amount
    assert held == state.held
    assert state.next_expiry() == min((r.ctp.exp for r in records if r.state == HELD), default=None)


def check_against_oracle(state: LedgerState, oracle: Oracle) -> None:
    assert state.balances == oracle.balances
    assert state.held == oracle.held
    assert state.used_keys == oracle.used
    assert state.height == oracle.height
    assert set(state.ctps) == set(oracle.ctps)
    for cid, rec in oracle.ctps.items():
        r = state.ctps[cid]
        assert (r.ctp, r.raw, r.hash, r.index, r.state, r.height, r.by, r.erc_pk) == (
            rec.ctp,
            rec.raw,
            rec.hash,
            rec.index,
            rec.state,
            rec.height,
            rec.by,
            rec.erc_pk,
        ), cid.hex()


def check_message_outputs(draft: Draft, new: list, msg: Msg, reason: str | None, t: int, announced: bool) -> None:
    """What one add announces (§7, decision 0002): an applied message one retained status
    naming it; a rejected one a reject, plus a `rejected` status only for a CTP an account
    signed (`announced`) whose id no one holds: a forger, a stranger, or a CTP under
    someone else's id never writes on that id's topic."""
    bodies = [o.body for o in new]
    for o in new:
        assert (o.topic, o.retain) == (
            (topics.REJECTS, False) if isinstance(o.body, Rejection) else (topics.status(o.body.ctp), True)
        )
    if reason is None:
        opened = open_message(msg.raw, msg.typ).body
        r = draft.ctps[opened.id if msg.typ == "ctp" else opened.ctp]
        assert bodies == [Status(ctp=r.ctp.id, state=r.state, t=t, h=draft.height, msg=msg.hash)]
        assert r.by == msg.hash and r.height == draft.height
        return
    assert bodies[0] == Rejection(msg=msg.hash, reason=reason, t=t)
    cid = ctp_id(msg.raw) if announced else None
    if cid is not None and draft.record(cid) is None:
        assert bodies[1:] == [Status(ctp=cid, state="rejected", t=t, reason=reason, msg=msg.hash)]
        assert draft.ctp_rejects[cid] == (reason, msg.hash)
    else:
        assert bodies[1:] == []


def check_refund_outputs(draft: Draft, new: list, expired: list, t: int) -> None:
    """finish() announces each refund at expiry, in (exp, id) order, with no `msg`."""
    assert [o.body for o in new] == [
        Status(ctp=r.ctp.id, state=REFUNDED, t=t, h=draft.height)
        for r in sorted(expired, key=lambda r: (r.ctp.exp, r.ctp.id))
    ]
    assert all((o.topic, o.retain) == (topics.status(o.body.ctp), True) for o in new)


# ---- the property ------------------------------------------------------------------------

who = st.integers(0, 3 * N).map(lambda i: N if i == 3 * N else i % N)  # the stranger 1 time in 10
ref = st.integers(0, 2) | st.integers(0, 1000)  # index from the newest of what was made so far, modulo its length
exp_off = st.integers(-2, 6) | st.integers(0, 400)  # ms after the block time the CTP is made in
ctp_op = st.tuples(
    st.just("ctp"),
    who,
    who,
    st.integers(0, 300) | st.integers(200, 600),
    st.integers(0, 20),
    exp_off,
    st.integers(0, 5).map(bool),
    st.none() | st.none() | st.none() | ref,
)
op = st.one_of(
    ctp_op,
    ctp_op,
    st.tuples(st.just("erc"), ref, st.integers(-1, 2), st.none() | st.none() | who),
    st.tuples(st.just("reuse"), ref, ref),
    st.tuples(st.just("cancel"), ref, st.none() | st.none() | who),
    st.tuples(st.just("resend"), ref),
    st.tuples(st.just("corrupt"), ref, st.sampled_from(CORRUPTIONS), st.integers(0, 10**6)),
)
# ms to the next block, or "exp" / "exp+1": exactly at / just after the next expiry of a held CTP
dt = st.integers(1, 4) | st.integers(1, 200) | st.sampled_from(["exp", "exp+1"])
# "discard": build the block once and throw it away first; "restart": reopen the store after it
mode = st.sampled_from([None, None, "discard", "restart"])
plan_st = st.lists(st.tuples(dt, st.lists(op, max_size=8), mode), min_size=1, max_size=8)


def next_time(t: int, step: int | str, oracle: Oracle) -> int:
    """The next block time: t + step ms, or right at / after the next expiry (the edges)."""
    if isinstance(step, int):
        return t + step
    exps = [r.ctp.exp for r in oracle.ctps.values() if r.state == HELD and r.ctp.exp >= t]
    if step == "exp":
        return min((e for e in exps if e > t), default=t + 1)
    return min(exps, default=t) + 1


def run_plan(plan: list) -> None:
    c, genesis = community_and_genesis()
    oracle = Oracle(genesis)
    traffic = Traffic(c, oracle.used)
    state, verifier, key = LedgerState(genesis), Verifier(genesis.cas, genesis.validators), c.validator_keys[0]
    settled_ever: set[bytes] = set()
    by_hash: dict[bytes, Msg] = {}
    times: dict[int, int] = {}  # height -> block time
    trades: dict[bytes, tuple[int, int]] = {}  # settled CTP id -> (height, index in the block's trades)
    verdicts: dict[int, list[str | None]] = {}  # height -> the reason of each of its inputs
    t = NOW
    with tempfile.TemporaryDirectory() as tmp:
        store = LedgerStore(Path(tmp) / "ledger.db", genesis)
        try:
            for step, ops, mode in plan:
                t = next_time(t, step, oracle)
                msgs = [m for o in ops for m in traffic.make(o, t)]
                by_hash.update((m.hash, m) for m in msgs)
                before = state_view(state)
                if mode == "discard":  # a block built but not committed leaves no trace
                    d0 = Draft(state, verifier, t)
                    reasons0 = [d0.add(m.typ, m.raw) for m in msgs]
                    block0 = d0.finish()  # and dropped
                    assert state_view(state) == before
                oracle.start_block()
                draft = Draft(state, verifier, t)
                reasons = []
                for m in msgs:
                    expected = oracle.add(m, t)
                    seen, n_out = draft_view(draft), len(draft.outputs)
                    reason = draft.add(m.typ, m.raw)
                    reasons.append(reason)
                    # every message is decided into the block, applied or rejected, with its topic
                    assert draft.inputs == oracle.block_inputs and draft.reasons == reasons
                    check_message_outputs(
                        draft,
                        draft.outputs[n_out:],
                        m,
                        reason,
                        t,
                        reason is not None and m.stateless is None and oracle.announces(m, reason),
                    )
                    event(f"{m.typ}: {reason or 'applied'}")
                    if expected == ANY_STATELESS:
                        assert reason in STATELESS, (m, reason)
                    else:
                        assert reason == expected, (m.typ, reason, expected, body(m.raw) if not m.stateless else m)
                    if reason is not None:  # a rejected message changes nothing
                        assert draft_view(draft) == seen
                made, n_out = oracle.finish(t), len(draft.outputs)
                block = draft.finish()
                assert (block is not None) == made
                check_refund_outputs(draft, draft.outputs[n_out:], oracle.expired, t)
                after = state_view(state)
                assert after == before  # finish moves nothing in the committed state, its tree included
                if mode == "discard":
                    assert reasons0 == reasons and (block0 and block0.header) == (block and block.header)
                if block is None:  # nothing decided, nothing expired: nothing to commit
                    assert msgs == [] and draft.outputs == [] and draft.refused == {}
                    assert state_view(state) == before and state.refused == oracle.refused
                else:
                    store.commit(draft.changes, block.sealed(0, key), draft.signed_outputs(key))
                    for cid, (reason, msg_hash) in draft.ctp_rejects.items():  # what `spb-ledger show` reports
                        assert store.rejection(cid) == (reason, msg_hash, t)
                    state.commit(draft.changes)  # the block's rejections are consensus state too
                    oracle.forget_refused(t)
                    assert state.refused == oracle.refused
                    assert block.inputs == tuple(oracle.block_inputs)
                    verdicts[state.height] = reasons
                    assert block.trades == tuple(oracle.block_trades)
                    assert block.header.prev == before[1] and block.header.height == before[0] + 1
                    times[state.height] = t
                    trades.update((ctp_id(parse_trade(x)[0]), (state.height, i)) for i, x in enumerate(block.trades))
                    for r in state.ctps.values():
                        if r.height == state.height and r.state == REFUNDED:
                            event("refund at expiry" if r.by == b"" else "refund by cancel")
                    check_invariants(state, block, settled_ever, by_hash, times, verifier)
                    check_against_oracle(state, oracle)
                if mode == "restart":  # a restarted validator goes on from its tables, not the chain
                    view = state_view(state)  # read before its store (it may be the archive) closes
                    store.close()
                    store = LedgerStore(Path(tmp) / "ledger.db", genesis)
                    loaded = store.load()
                    assert state_view(loaded) == view and loaded.refused == state.refused
                    state = loaded
            check_end(state, oracle, store, verifier, trades, verdicts)
        finally:
            store.close()


def check_end(
    state: LedgerState,
    oracle: Oracle,
    store: LedgerStore,
    verifier: Verifier,
    trades: dict[bytes, tuple[int, int]],
    verdicts: dict[int, list[str | None]],
) -> None:
    # a message applied once is never applied again, however late it comes back
    d = Draft(state, verifier, state.t + 1)
    for m in oracle.applied:
        assert d.add(m.typ, m.raw) == "duplicate", m.typ
    assert draft_view(d) == ({}, {}, {}, {}, {}, [])
    assert d.inputs == [(m.typ, m.raw) for m in oracle.applied] and d.reasons == ["duplicate"] * len(oracle.applied)
    # the log audits, reloads and replays to the live state; proofs find every trade
    assert audit(store) == AuditReport(state.height, len(trades), len(state.ctps))
    assert store.trades() == trades
    loaded = store.load()
    assert state_view(loaded) == state_view(state) and loaded.refused == state.refused
    fresh = LedgerState(state.genesis)
    replayer = Verifier(state.genesis.cas, state.genesis.validators)
    heights = []
    for _, stored in store.blocks():
        d = replay(fresh, replayer, stored.header.t, stored.inputs)  # rejections are re-derived too
        assert d.reasons == verdicts[stored.header.height]
        rebuilt = d.block
        assert rebuilt is not None and rebuilt.header == stored.header and rebuilt.trades == stored.trades
        assert rebuilt.inputs == stored.inputs
        fresh.commit(d.changes)
        heights.append(stored.header.height)
    assert heights == sorted(verdicts)
    # refused CTPs are chain state now: the replay remembers the same ones
    assert state_view(fresh) == state_view(state) and fresh.refused == state.refused


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan_st)
@example(
    [  # the expiry edges. x1, x2 expire at +3, x3 at +301 (refs count from the newest)
        (
            1,
            [
                ("ctp", 0, 1, 100, 5, 2, True, None),
                ("ctp", 1, 2, 50, 5, 2, True, None),
                ("ctp", 0, 2, 10, 5, 300, True, None),
            ],
            None,
        ),
        (2, [("erc", 2, 0, None), ("cancel", 1, None)], None),  # t = exp: x1 settles, x2's cancel too-early
        (1, [("erc", 1, 0, None), ("cancel", 1, 2), ("resend", 3)], "discard"),  # exp + 1: expired, not-payer,
        # duplicate, then x2 refunds at expiry; the block is built and discarded once first
        (1, [("reuse", 0, 1), ("corrupt", 0, "proof", 0), ("cancel", 0, None)], "restart"),  # x1's key on x3:
        # replay; a bad proof; too-early; then a restart, which must still refund x3 when it expires
        ("exp+1", [("erc", 0, 0, None)], None),  # x3: expired, refunded at expiry
    ]
)
@example(
    [  # reordered and late: an ERC before its CTP, the CTP held back, both delivered later
        (1, [("ctp", 0, 1, 10, 0, 300, False, None), ("erc", 0, 0, None)], None),  # unknown-ctp
        (5, [("resend", 1), ("resend", 0), ("resend", 0), ("cancel", 0, 1)], None),  # held, settled,
        # duplicate, not-payer
        ("exp", [("resend", 2), ("ctp", 1, 0, 5, 0, 10, True, 0)], None),  # duplicate; id taken: duplicate
    ]
)
def test_ledger_invariants_hold_for_any_traffic(plan):
    """Any mix of good, bad, repeated, reordered, late and damaged messages over any block
    times: every verdict is the oracle's, every §5 invariant holds after every block, and
    the stored log audits and replays to the same state."""
    run_plan(plan)


# ---- examples ----------------------------------------------------------------------------


class Ledger:
    """One validator's core on a real SQLite file, driven as ledger.service drives it."""

    def __init__(self, root: Path, households: int = N, balance: int = 1000):
        self.c, self.genesis = community_and_genesis(households, balance)
        self.state = LedgerState(self.genesis)
        self.verifier = Verifier(self.genesis.cas, self.genesis.validators)
        self.key = self.c.validator_keys[0]
        self.store = LedgerStore(root / "ledger.db", self.genesis)

    def block(self, t: int, messages: list[tuple[str, bytes]]) -> list[str | None]:
        """Reasons per message; commits the block if there is one (there is one whenever a
        message was decided, applied or rejected: all are its inputs)."""
        self.draft = Draft(self.state, self.verifier, t)
        reasons = [self.draft.add(typ, raw) for typ, raw in messages]
        self.last = self.draft.finish()
        assert (self.last is None) == (not messages and not self.draft.ctps)
        if self.last is not None:
            assert self.last.inputs == tuple(messages) and self.draft.reasons == reasons
            sealed = self.last.sealed(0, self.key)
            outputs = [*self.draft.signed_outputs(self.key), (topics.LEDGER_BLOCKS, sealed.chain_bytes(), False)]
            self.store.commit(self.draft.changes, sealed, outputs)
            self.state.commit(self.draft.changes)
        return reasons

    def record(self, raw: bytes):
        return self.state.record(ctp_id(raw))

    def only_rejected(self, before: tuple, messages: list[tuple[str, bytes]]) -> bool:
        """The last block decided `messages` and changed nothing but the tip: a block of
        rejections alone (decision 0006), with no trade and no status."""
        after = state_view(self.state)
        return (
            self.last is not None
            and self.last.inputs == tuple(messages)
            and self.last.trades == ()
            and after[0] == before[0] + 1
            and after[3:] == before[3:]
            and not any(isinstance(o.body, Status) for o in self.draft.outputs)
        )

    def account(self, i: int) -> tuple[int, int]:
        a = pk(self.c.households[i].account)
        return self.state.balances[a], self.state.held[a]

    def audited(self) -> None:
        audit(self.store)
        loaded = self.store.load()
        assert state_view(loaded) == state_view(self.state) and loaded.refused == self.state.refused


@pytest.fixture
def ledger(tmp_path):
    ledger = Ledger(tmp_path)
    yield ledger
    ledger.store.close()


def test_refund_comes_in_the_first_block_after_expiry(ledger):
    """exp is the last ms a CTP holds: no refund in a block at t == exp, one at exp + 1,
    caused by no message (by == b"")."""
    c = ledger.c
    x = c.ctp(0, 1, 100, 5, NOW + 100)
    assert ledger.block(NOW, [("ctp", x)]) == [None]
    assert ledger.account(0) == (900, 100)
    assert ledger.state.next_expiry() == NOW + 100
    assert Draft(ledger.state, ledger.verifier, NOW + 100).finish() is None  # nothing due at t == exp
    y = c.ctp(1, 0, 10, 5, NOW + 1000)
    assert ledger.block(NOW + 100, [("ctp", y)]) == [None]
    assert ledger.record(x).state == HELD
    assert ledger.state.expiring(NOW + 100) == []
    assert [r.ctp.id for r in ledger.state.expiring(NOW + 101)] == [ctp_id(x)]
    assert ledger.block(NOW + 101, []) == [] and ledger.last is not None  # a block for the refund alone
    r = ledger.record(x)
    assert (r.state, r.height, r.by) == (REFUNDED, 3, b"")
    assert ledger.last.inputs == () and ledger.last.trades == ()
    assert ledger.account(0) == (1000, 0)
    assert ledger.state.next_expiry() == NOW + 1000
    ledger.audited()


def test_erc_at_exp_settles_and_one_ms_later_is_expired(ledger):
    """An ERC in the block at t == exp settles; at exp + 1 it is `expired`, and the same
    block refunds the CTP."""
    c = ledger.c
    x1, x2 = c.ctp(0, 1, 100, 5, NOW + 50), c.ctp(0, 2, 30, 5, NOW + 50)
    assert ledger.block(NOW, [("ctp", x1), ("ctp", x2)]) == [None, None]
    assert ledger.block(NOW + 50, [("erc", c.erc(x1))]) == [None]
    assert ledger.record(x1).state == SETTLED
    assert ledger.block(NOW + 51, [("erc", c.erc(x2))]) == ["expired"]
    assert (ledger.record(x2).state, ledger.record(x2).by) == (REFUNDED, b"")
    assert ledger.account(0) == (900, 0) and ledger.account(1) == (1100, 0) and ledger.account(2) == (1000, 0)
    ledger.audited()


def test_cancel_only_after_expiry_only_by_the_payer_only_once(ledger):
    """Cancel at t == exp is `too-early`; at exp + 1 a stranger's is `not-payer`, the payer's
    refunds (by = its hash), the same bytes again are `duplicate`, an ERC then `not-held`."""
    c = ledger.c
    x = c.ctp(0, 1, 100, 5, NOW + 50)
    ledger.block(NOW, [("ctp", x)])
    cancel = c.cancel(x)
    before = state_view(ledger.state)
    assert ledger.block(NOW + 50, [("cancel", cancel)]) == ["too-early"]
    assert ledger.only_rejected(before, [("cancel", cancel)])
    assert ledger.block(
        NOW + 51, [("cancel", c.cancel(x, by=1)), ("cancel", cancel), ("cancel", cancel), ("erc", c.erc(x))]
    ) == ["not-payer", None, "duplicate", "not-held"]
    assert (ledger.record(x).state, ledger.record(x).by) == (REFUNDED, message_hash(cancel))
    before = state_view(ledger.state)
    assert ledger.block(NOW + 52, [("cancel", cancel)]) == ["duplicate"]
    assert ledger.only_rejected(before, [("cancel", cancel)])
    assert ledger.account(0) == (1000, 0)
    ledger.audited()


def test_ctp_reasons(ledger):
    """Each CTP reason for the case that has only that fault."""
    c = ledger.c
    x = c.ctp(0, 1, 100, 5, NOW + 50)
    assert ledger.block(
        NOW,
        [
            ("ctp", x),
            ("ctp", x),  # same bytes again
            ("ctp", c.ctp(0, 2, 1, 5, NOW + 50, ctp_id=ctp_id(x))),  # another CTP with a taken id
            ("ctp", c.ctp(0, N, 1, 5, NOW + 50)),  # payee not in the genesis
            ("ctp", c.ctp(N, 0, 1, 5, NOW + 50)),  # payer not in the genesis
            ("ctp", c.ctp(0, 1, 901, 5, NOW + 50)),  # 900 left after x
            ("ctp", c.ctp(0, 1, 900, 5, NOW - 1)),  # expired before this block
            ("ctp", c.ctp(0, 1, 900, 5, NOW)),  # exp == t: still valid, takes the rest
        ],
    ) == [None, "duplicate", "duplicate", "unknown-account", "unknown-account", "insufficient-funds", "expired", None]
    assert ledger.account(0) == (0, 1000)
    assert ledger.block(NOW + 1, [("ctp", x)]) == ["duplicate"]
    ledger.audited()


def test_erc_reasons(ledger):
    """Each ERC reason for the case that has only that fault."""
    c = ledger.c
    x, y, z = (c.ctp(0, 1, 10, 5, NOW + 50) for _ in range(3))
    unsent = c.ctp(0, 1, 10, 5, NOW + 50)
    ledger.block(NOW, [("ctp", x), ("ctp", y), ("ctp", z)])
    good = c.erc(x)
    assert ledger.block(
        NOW + 1,
        [
            ("erc", c.erc(unsent)),  # its CTP never arrived
            ("erc", c.erc(x, wh=4)),  # one Wh short (another key of the same meter)
            ("erc", c.erc(x, by=2)),  # another household's meter
            ("erc", good),
            ("erc", good),  # same bytes again
            ("erc", c.erc(x, wh=9)),  # a second, different ERC for a settled CTP
            ("erc", erc_with_key(c, y, good)),  # the key that confirmed x
        ],
    ) == ["unknown-ctp", "energy-short", "meter-mismatch", None, "duplicate", "not-held", "replay"]
    assert ledger.block(NOW + 50, [("erc", c.erc(y, wh=100))]) == [None]  # more than paid for is fine
    assert ledger.block(NOW + 51, [("erc", c.erc(z))]) == ["expired"]
    ledger.audited()


def test_stateless_reasons_of_damaged_bytes(ledger):
    """Damaged copies of a valid CTP, ERC and cancel get their §4 reason and change nothing."""
    c = ledger.c
    x = c.ctp(0, 1, 10, 5, NOW + 50)
    ledger.block(NOW, [("ctp", x)])
    e, k = Msg("erc", c.erc(x)), Msg("cancel", c.cancel(x))
    cases = [
        corrupt(c, m, how, 77)
        for m in (Msg("ctp", x), e, k)
        for how in CORRUPTIONS
        if how != "bitflip" and (how != "proof" or m.typ == "erc")
    ]
    before = state_view(ledger.state)
    reasons = ledger.block(NOW + 1, [(m.typ, m.raw) for m in cases])
    assert reasons == [m.stateless for m in cases]
    assert ledger.only_rejected(before, [(m.typ, m.raw) for m in cases])
    assert {m.stateless for m in cases} == {"decode", "noncanonical", "signature", "type", "proof"}


def test_discarded_block_leaves_the_state_as_it_was(ledger):
    """A finished draft computes its CTP root without moving the committed tree, so a block
    that is dropped can be rebuilt to the same hash."""
    c = ledger.c
    x, y = c.ctp(0, 1, 10, 5, NOW + 50), c.ctp(1, 0, 10, 5, NOW + 50)
    ledger.block(NOW, [("ctp", x)])
    before = state_view(ledger.state)
    msgs = [("erc", c.erc(x)), ("ctp", y)]
    d = Draft(ledger.state, ledger.verifier, NOW + 1)
    assert [d.add(*m) for m in msgs] == [None, None]
    first = d.finish()
    assert first.header.ctps != before[3]
    assert state_view(ledger.state) == before
    assert ledger.block(NOW + 1, msgs) == [None, None] and ledger.last.header == first.header
    ledger.audited()


def test_store_finds_the_trade_of_a_settled_ctp(ledger):
    """trade_at(id) is (height, index among the block's trades) for a settled CTP: the trade
    index is keyed by CTP id, not by the CTP's bytes (a bug fixed in 0ed4d54), and only
    settled CTPs are in it."""
    c = ledger.c
    x = c.ctp(0, 1, 10, 5, NOW + 50)
    ledger.block(NOW, [("ctp", x)])
    y = c.ctp(1, 0, 10, 5, NOW + 50)
    ledger.block(NOW + 1, [("ctp", y), ("erc", c.erc(x))])
    assert ledger.store.trade_at(ctp_id(x)) == (2, 0)
    assert ledger.store.trade_at(ctp_id(y)) is None
    ledger.block(NOW + 2, [("erc", c.erc(y))])
    assert ledger.store.trade_at(ctp_id(y)) == (3, 0)
    ledger.audited()


def test_only_a_payer_signed_ctp_gets_a_rejected_status(ledger):
    """A forged CTP (bad signature) under an unheld id gets a reject but no status, so no one
    can write on the topic of a CTP its payer is about to send; a payer-signed one rejected
    for a stateful reason gets a retained `rejected` status, and its later valid CTP wins."""
    c = ledger.c
    poor = c.ctp(0, 1, 5000, 5, NOW + 50)
    forged = flip_bit(poor, 8 * len(poor) - 1)
    assert ledger.block(NOW, [("ctp", forged), ("ctp", poor)]) == ["signature", "insufficient-funds"]
    statuses = [o.body for o in ledger.draft.outputs if isinstance(o.body, Status)]
    assert statuses == [
        Status(ctp=ctp_id(poor), state="rejected", t=NOW, reason="insufficient-funds", msg=message_hash(poor))
    ]
    assert ledger.store.rejection(ctp_id(poor)) == ("insufficient-funds", message_hash(poor), NOW)
    stranger = c.ctp(N, 0, 1, 5, NOW + 50)  # signed, but by no account of this ledger
    assert ledger.block(NOW + 1, [("ctp", stranger)]) == ["unknown-account"]
    assert [o.body for o in ledger.draft.outputs if isinstance(o.body, Status)] == []
    fine = c.ctp(0, 1, 10, 5, NOW + 50, ctp_id=ctp_id(poor))
    assert ledger.block(NOW + 2, [("ctp", fine), ("ctp", poor)]) == [None, "duplicate"]
    assert [o.body.state for o in ledger.draft.outputs if isinstance(o.body, Status)] == [HELD]


def test_a_rejected_ctp_stays_rejected_until_it_expires(ledger):
    """A redelivered copy of a CTP the payer was told failed must not hold money later,
    even once the funds are there: `duplicate` (decision 0002); the memory of it survives
    a restart and is dropped once a draft's time passes its exp."""
    c = ledger.c
    x, y = c.ctp(0, 1, 900, 5, NOW + 50), c.ctp(0, 2, 200, 5, NOW + 50)
    z = c.ctp(1, 0, 500, 5, NOW + 1000)
    assert ledger.block(NOW, [("ctp", x), ("ctp", y), ("ctp", z)]) == [None, "insufficient-funds", None]
    assert ledger.block(NOW + 1, [("erc", c.erc(z))]) == [None]
    assert ledger.account(0) == (600, 900)  # y would fit now
    before = state_view(ledger.state)
    assert ledger.block(NOW + 2, [("ctp", y)]) == ["duplicate"]
    assert ledger.only_rejected(before, [("ctp", y)])
    assert ledger.account(0) == (600, 900)
    ledger.store.close()
    ledger.store = LedgerStore(ledger.store.path, ledger.genesis)
    ledger.state = ledger.store.load()
    assert ledger.block(NOW + 3, [("ctp", y)]) == ["duplicate"]
    ledger.block(NOW + 51, [])  # x refunds at expiry; y is forgotten
    assert message_hash(y) not in ledger.state.refused
    assert ledger.block(NOW + 52, [("ctp", y)]) == ["expired"]
    ledger.audited()
