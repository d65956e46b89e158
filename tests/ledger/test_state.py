"""LedgerState and Draft details the invariant tests do not single out: a draft that is
never committed leaves no trace, a restored state equals the live one, and a commit
refuses changes that break the money invariant."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ledger.draft import Draft
from ledger.state import BrokenInvariant
from ledger.workload import SimCommunity, pk
from tests.support.ledger import NOW, Chain
from wire.merkle import MerkleTree


def test_a_discarded_draft_leaves_the_state_as_it_was(tmp_path):
    """Consensus may build a block it never commits (issue 6): building it must not move the
    committed state, its CTP tree included."""
    community = SimCommunity(3, NOW)
    chain = Chain(tmp_path, community)
    held = community.ctp(0, 1, amount=10, wh=1, exp=NOW + 1_000)
    assert chain.block(NOW, ("ctp", held)) == [None]
    before = (chain.state.root(), dict(chain.state.balances), dict(chain.state.held), chain.state.tree.size)
    draft = Draft(chain.state, chain.verifier, NOW + 5)
    assert draft.add("erc", community.erc(held)) is None
    assert draft.add("ctp", community.ctp(1, 2, amount=5, wh=1, exp=NOW + 1_000)) is None
    assert draft.finish() is not None and draft.changes.tree.root != before[0]
    assert (chain.state.root(), chain.state.balances, chain.state.held, chain.state.tree.size) == before
    # The state goes on as if the draft never existed.
    again = Draft(chain.state, chain.verifier, NOW + 6)
    assert again.add("ctp", community.ctp(2, 0, amount=1, wh=1, exp=NOW + 1_000)) is None
    header = again.finish().header
    records = sorted({**chain.state.ctps, **again.changes.records}.values(), key=lambda r: r.index)
    assert [r.index for r in records] == [0, 1]  # the first draft's CTP took no leaf
    assert header.ctps == MerkleTree([r.leaf() for r in records]).root() != chain.state.root()
    chain.state.commit(again.changes)
    assert chain.state.root() == header.ctps


def test_restored_state_equals_the_live_state(tmp_path):
    community = SimCommunity(4, NOW)
    chain = Chain(tmp_path, community)
    ctps = [community.ctp(i % 4, (i + 1) % 4, amount=3, wh=1, exp=NOW + 100 * i) for i in range(1, 30)]
    chain.block(NOW, *(("ctp", c) for c in ctps))
    chain.block(NOW + 1, *(("erc", community.erc(c)) for c in ctps[::3]))
    chain.block(NOW + 1_500)  # expiries refund some
    restored = chain.store.load()
    live = chain.state
    assert (restored.root(), restored.balances, restored.held, restored.height, restored.tip, restored.t) == (
        live.root(),
        live.balances,
        live.held,
        live.height,
        live.tip,
        live.t,
    )
    assert restored.ctps == live.ctps and restored.used_keys == live.used_keys
    assert restored.next_expiry() == live.next_expiry()


def test_a_rejected_ctp_stays_rejected_until_it_expires(tmp_path):
    """A copy of a rejected CTP (a broker redelivery, a replay) must not hold money the payer
    was told is free once funds arrive; after its expiry it would be `expired` anyway."""
    community = SimCommunity(3, NOW)
    chain = Chain(tmp_path, community, balance=10)
    greedy = community.ctp(0, 1, amount=15, wh=1, exp=NOW + 1_000)
    assert chain.block(NOW, ("ctp", greedy)) == ["insufficient-funds"]
    income = community.ctp(2, 0, amount=10, wh=1, exp=NOW + 5_000)
    assert chain.block(NOW + 1, ("ctp", income)) == [None]
    assert chain.block(NOW + 2, ("erc", community.erc(income))) == [None]  # now 20 units: enough
    assert chain.block(NOW + 3, ("ctp", greedy)) == ["duplicate"]
    assert chain.store.load().refused == chain.state.refused != {}  # remembered across restarts
    assert chain.block(NOW + 1_001, ("ctp", greedy)) == ["expired"]
    assert chain.state.refused == {}  # forgotten once expired: the memory stays bounded


def test_the_same_bytes_on_another_topic_do_not_hide_the_real_delivery(tmp_path):
    community = SimCommunity(2, NOW)
    chain = Chain(tmp_path, community)
    ctp = community.ctp(0, 1, amount=1, wh=1, exp=NOW + 1_000)
    assert chain.block(NOW, ("erc", ctp), ("ctp", ctp), ("ctp", ctp)) == ["type", None, None]
    assert len(chain.state.ctps) == 1


def test_settled_ctps_leave_the_expiry_heap(tmp_path):
    """Otherwise every later block walks every CTP that was ever held (and audits slow down)."""
    community = SimCommunity(2, NOW)
    chain = Chain(tmp_path, community)
    ctps = [community.ctp(0, 1, amount=1, wh=1, exp=NOW + 10) for _ in range(20)]
    chain.block(NOW, *(("ctp", c) for c in ctps))
    chain.block(NOW + 1, *(("erc", community.erc(c)) for c in ctps))
    assert chain.state.next_expiry() is None and chain.state._expiry == []


@pytest.mark.parametrize("corruption", ["minted", "burnt", "negative", "stranger"])
def test_a_commit_refuses_changes_that_break_the_money_invariant(tmp_path, corruption):
    """The check where state is committed is live: changes that make or lose units, leave an
    account negative or pay a key outside the genesis are refused before anything moves."""
    community = SimCommunity(3, NOW)
    chain = Chain(tmp_path, community)
    draft = Draft(chain.state, chain.verifier, NOW)
    assert draft.add("ctp", community.ctp(0, 1, amount=10, wh=1, exp=NOW + 1_000)) is None
    assert draft.finish() is not None
    changes, payer = draft.changes, pk(community.households[0].account)
    balance, held = changes.balances[payer], changes.held[payer]
    balances, holds = {
        "minted": ({payer: balance + 1}, {}),
        "burnt": ({}, {payer: held - 1}),
        "negative": ({payer: -1}, {payer: held + balance + 1}),
        "stranger": ({payer: balance - 1, bytes(32): 1}, {}),
    }[corruption]
    corrupted = replace(changes, balances={**changes.balances, **balances}, held={**changes.held, **holds})
    before = (chain.state.height, chain.state.root(), dict(chain.state.balances), dict(chain.state.held))
    with pytest.raises(BrokenInvariant):
        chain.state.commit(corrupted)
    assert (chain.state.height, chain.state.root(), chain.state.balances, chain.state.held) == before
    chain.state.commit(changes)  # the same block, uncorrupted, commits
    assert chain.state.height == 1 and chain.state.total() == chain.state.genesis.total
