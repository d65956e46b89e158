"""A validator holds in RAM only what can still change, and starts from its stored snapshot
without reading finished history (docs/decisions/0013-bounded-memory.md)."""

from __future__ import annotations

import sqlite3
from dataclasses import replace

import pytest

from ledger.draft import MAX_HOLD_MS, Draft
from ledger.node import LedgerNode
from ledger.state import BrokenInvariant
from ledger.store import LedgerStore, StoreError
from ledger.validator import ValidatorIdentity
from ledger.workload import SimCommunity, pk
from tests.support.ledger import NOW, Chain, ctp_id
from wire.cose import message_hash
from wire.messages import CtpState


def settled_chain(tmp_path, trades: int = 40) -> tuple[Chain, SimCommunity, list[bytes]]:
    community = SimCommunity(4, NOW)
    chain = Chain(tmp_path, community)
    ctps = [community.ctp(i % 4, (i + 1) % 4, amount=1, wh=1, exp=NOW + 60_000) for i in range(trades)]
    chain.block(NOW, *(("ctp", c) for c in ctps))
    chain.block(NOW + 1, *(("erc", community.erc(c)) for c in ctps[: trades - 2]))
    return chain, community, ctps


def restarted(chain: Chain) -> Chain:
    """The same validator, started again from its database."""
    again = Chain.__new__(Chain)
    again.node = LedgerNode(ValidatorIdentity.load(chain.identity.root, 0))
    again.identity, again.store, again.state = again.node.identity, again.node.store, again.node.state
    return again


def test_finished_trades_leave_ram_and_their_tree_paths_with_them(tmp_path):
    chain, _, ctps = settled_chain(tmp_path)
    state = chain.state
    assert set(state.open) == {ctp_id(c) for c in ctps[-2:]}, "only the two held CTPs stay in RAM"
    assert len(state.ctps) == state.tree.size == 40 and state.ctps[ctp_id(ctps[0])].state == CtpState.SETTLED
    kept = sum(len(level) for level in state.tree.levels)
    assert kept <= 2 * 2 * state.tree.size.bit_length(), "two open paths and the frontier, not every node"
    stored = chain.store.db.execute("SELECT count(*) FROM tree").fetchone()[0]
    assert stored == kept, "the stored snapshot is the tree in RAM"


def test_finished_trades_still_decide_blocks_after_a_restart(tmp_path):
    """Their copies are `duplicate`, their ERCs' keys `replay`/`not-held`, a cancel `not-held`:
    answered by the archive (SQLite), as they were when every record was in RAM."""
    chain, community, ctps = settled_chain(tmp_path)
    first_erc = community.erc(ctps[0])  # the same CTP's ERC under that meter's next key
    chain.node.close()
    chain = restarted(chain)
    assert set(chain.state.open) == {ctp_id(c) for c in ctps[-2:]}
    reasons = chain.block(NOW + 2, ("ctp", ctps[0]), ("erc", first_erc), ("erc", community.erc(ctps[-1])))
    assert reasons == ["duplicate", "not-held", None]
    assert chain.state.root() == chain.node.store.head()[2]


def test_a_restart_rejects_a_snapshot_that_is_not_the_tips_tree(tmp_path):
    chain, _, _ = settled_chain(tmp_path)
    path, genesis = chain.identity.db_path, chain.identity.genesis
    chain.node.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE tree SET hash = zeroblob(32) WHERE (k, j) = (SELECT k, j FROM tree LIMIT 1)")
    with pytest.raises(StoreError, match="tree is not the tip's"):
        LedgerStore(path, genesis).load()


def test_a_database_from_before_snapshots_gets_one_built_once(tmp_path):
    chain, _, _ = settled_chain(tmp_path)
    path, genesis, root = chain.identity.db_path, chain.identity.genesis, chain.state.root()
    kept = sorted(chain.store.db.execute("SELECT k, j, hash FROM tree"))
    chain.node.close()
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM tree")
        db.execute("DELETE FROM meta WHERE key = 'snapshot'")
    store = LedgerStore(path, genesis)
    assert sorted(store.db.execute("SELECT k, j, hash FROM tree")) == kept
    assert store.load().root() == root


def test_a_ctp_may_not_hold_money_for_more_than_a_day(tmp_path):
    """A member signing far-future expiries must not grow what every validator remembers:
    `far-expiry`, not remembered, and the same bytes are held once within a day."""
    community = SimCommunity(2, NOW)
    chain = Chain(tmp_path, community, balance=10)
    far = community.ctp(0, 1, amount=5, wh=1, exp=NOW + MAX_HOLD_MS + 1)
    edge = community.ctp(0, 1, amount=5, wh=1, exp=NOW + 1 + MAX_HOLD_MS)
    assert chain.block(NOW, ("ctp", far)) == ["far-expiry"]
    assert chain.state.refused == {} and chain.store.rejection(ctp_id(far)) is None
    assert chain.state.balances[pk(community.households[0].account)] == 10
    assert chain.block(NOW + 1, ("ctp", edge)) == [None], "exactly a day ahead is allowed"
    assert chain.block(NOW + 2, ("ctp", far)) == [None], "not final: the same bytes hold once within a day"


def test_a_refused_ctp_leaves_memory_within_a_day(tmp_path):
    """The refused memory holds at most a day of rejected intake."""
    community = SimCommunity(2, NOW)
    chain = Chain(tmp_path, community, balance=10)
    poor = community.ctp(0, 1, amount=50, wh=1, exp=NOW + MAX_HOLD_MS)
    assert chain.block(NOW, ("ctp", poor)) == ["insufficient-funds"]
    assert chain.state.refused == {message_hash(poor): NOW + MAX_HOLD_MS}
    assert chain.block(NOW + MAX_HOLD_MS + 1, ("ctp", poor)) == ["expired"]  # any block forgets it
    assert chain.state.refused == {} and chain.store.refusals() == {}


def test_a_commit_refuses_changes_whose_tree_is_not_the_headers(tmp_path):
    """The CTP-database root is an invariant of every commit, like money (§5)."""
    community = SimCommunity(2, NOW)
    chain = Chain(tmp_path, community)
    draft = Draft(chain.state, chain.verifier, NOW)
    draft.add("ctp", community.ctp(0, 1, amount=1, wh=1, exp=NOW + 1_000))
    assert draft.finish() is not None
    header = replace(draft.changes.header, ctps=bytes(32))
    before = (chain.state.root(), dict(chain.state.balances), chain.state.tree.size)
    with pytest.raises(BrokenInvariant, match="root"):
        chain.state.commit(replace(draft.changes, header=header))
    assert (chain.state.root(), chain.state.balances, chain.state.tree.size) == before
