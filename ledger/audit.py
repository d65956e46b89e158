"""`spb-ledger audit`: replay a validator's block log from the genesis and check everything.

Each block is rebuilt from its stored inputs by the same replay a validator uses on a
proposal, at the block's own time, so the audit re-verifies every signature (the settled
CTPs and the ERCs whose hashes are on chain), reaches the same rejections, and recomputes
every root. Then the invariants of docs/PROTOCOL.md §5 are checked, and finally the replayed
state must equal the stored tables.
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger.accounts_audit import AccountsLog, accounts_faults
from ledger.block import Block, BlockError, parse_trade, quorum
from ledger.draft import replay
from ledger.fill import trade_ctp
from ledger.market_audit import escrow, market_faults
from ledger.state import BrokenInvariant, Changes, LedgerState
from ledger.store import LedgerStore
from wire.messages import CtpState
from wire.reasons import Reject
from wire.verify import Verifier


class AuditFailure(Exception):
    def __init__(self, height: int, what: str):
        super().__init__(f"height {height}: {what}")
        self.height = height
        self.what = what


@dataclass(frozen=True, slots=True)
class AuditReport:
    height: int
    trades: int
    ctps: int


def audit(store: LedgerStore) -> AuditReport:
    """Raise AuditFailure naming the first bad height, else report what was checked."""
    genesis = store.genesis
    state = LedgerState(genesis)
    verifier = genesis.verifier()
    settled: dict[bytes, tuple[int, int]] = {}  # CTP id -> (height, index among the block's trades)
    log = AccountsLog()
    with store.snapshot():
        blocks = store.blocks()
        while True:
            try:
                row = next(blocks, None)
            except (BlockError, Reject) as exc:  # a row that does not even decode
                raise AuditFailure(state.height + 1, f"stored block does not decode: {exc}") from None
            if row is None:
                break
            columns, block = row
            if columns != (block.header.height, block.hash, block.header.t):
                raise AuditFailure(block.header.height, "the block row's height, hash or time differ from its header")
            log.add(_replay(state, verifier, block, settled))
        _compare_tables(state, store, settled, log)
    return AuditReport(state.height, len(settled), len(state.ctps))


def _replay(state: LedgerState, verifier: Verifier, block: Block, settled: dict[bytes, tuple[int, int]]) -> Changes:
    """Replay and commit one block, checking it against the stored one; its changes."""
    h = block.header
    fail = lambda what: AuditFailure(h.height, what)  # noqa: E731
    if h.height != state.height + 1:
        raise fail(f"follows height {state.height}")
    if h.prev != state.tip:
        raise fail("previous hash does not match the block before it")
    if h.t <= state.t:
        raise fail("block time does not increase")
    if block.valid_seals(state.genesis.validators) < quorum(len(state.genesis.validators)):
        raise fail("not sealed by a quorum of the genesis validators")
    try:
        draft = replay(state, verifier, h.t, block.inputs)
    except (BlockError, ValueError) as exc:
        raise fail(str(exc)) from None
    rebuilt = draft.block
    if rebuilt is None:
        raise fail("the block changes nothing")
    for name in ("inputs", "txs", "ctps"):
        if getattr(rebuilt.header, name) != getattr(h, name):
            raise fail(f"{name} root differs from the replay")
    if rebuilt.trades != block.trades:
        raise fail("trades differ from the replay")
    for i, trade in enumerate(block.trades):
        try:
            ctp_id = trade_ctp(parse_trade(trade)[0])[0].id
        except (BlockError, Reject, ValueError) as exc:
            raise fail(f"trade {i} holds no CTP or fill: {exc}") from None
        if ctp_id in settled:
            raise fail(f"CTP {ctp_id.hex()} settles twice")
        settled[ctp_id] = (h.height, i)
    try:
        state.commit(draft.changes)
    except BrokenInvariant as exc:  # a broken money invariant; the others are checked below
        raise fail(str(exc)) from None
    if state.total() != state.expected_total():
        raise fail(
            f"balances + holds are {state.total()}, the genesis total + funded - withdrawn is {state.expected_total()}"
        )
    if any(units < 0 for units in (*state.balances.values(), *state.held.values())):
        raise fail("a balance or hold is negative")
    return draft.changes


def _compare_tables(
    state: LedgerState, store: LedgerStore, settled: dict[bytes, tuple[int, int]], log: AccountsLog
) -> None:
    # A rotation moved a payer's or owner's holds to the key that replaced it (§10).
    held: dict[bytes, int] = dict.fromkeys(state.balances, 0) | escrow(state.market, state.current)
    keys: set[bytes] = set()
    for record in state.ctps.values():
        if record.state == CtpState.HELD:
            held[state.current(record.ctp.payer)] += record.ctp.amount
        if record.erc_pk is not None:
            if record.erc_pk in keys:
                raise AuditFailure(record.height, "a one-time key confirmed two CTPs")
            keys.add(record.erc_pk)
    if held != state.held:
        raise AuditFailure(state.height, "holds differ from the held CTPs and the escrow of open orders")
    replayed = {pk: (state.balances[pk], state.held[pk]) for pk in state.balances}
    if replayed != store.accounts():
        raise AuditFailure(state.height, "stored balances differ from the replay")
    records = {r.ctp.id: (r.index, r.raw, r.hash, r.state, r.height, r.by, r.erc_pk) for r in state.ctps.values()}
    if records != store.records():
        raise AuditFailure(state.height, "stored CTP database differs from the replay")
    if state.refused != store.refusals():
        raise AuditFailure(state.height, "stored refused CTPs differ from the replay")
    if state.revoked != store.revocations():
        raise AuditFailure(state.height, "stored revocations differ from the replay")
    if settled != store.trades():
        raise AuditFailure(state.height, "stored trade index (used by proofs) differs from the chain")
    fault = market_faults(state, store) or accounts_faults(state, store, log)
    if fault is not None:
        raise AuditFailure(state.height, fault)
