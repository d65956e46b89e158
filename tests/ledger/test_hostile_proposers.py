"""What a Byzantine validator that sends nothing malformed can do (issue 17, decision 0015,
docs/CONSENSUS.md "Hostile proposers"): grow a replica's per-round votes (bounded per
sender), choose its blocks' times (bounded by the skew rule: measured in the simulation),
leave transactions out of its blocks (bounded by rotation: measured in the simulation).
Pure: replicas are driven directly, as ledger.sim drives them."""

from __future__ import annotations

import os

import pytest

from ledger import consensus as c
from ledger import sim
from ledger.replica import ROUNDS_KEPT, Replica
from ledger.workload import SimCommunity
from tests.ledger.test_bounded_inputs import NOW, N, ctps, prepares, proposal, replicas

SEEDS = range(int(os.environ.get("HOSTILE_SEEDS", "12")))


@pytest.fixture(scope="module")
def community() -> SimCommunity:
    return SimCommunity(4, NOW, seed=b"hostile proposers")


def fresh_block(group: list[Replica], community: SimCommunity, t: int) -> tuple[bytes, bytes]:
    """(digest, block bytes) of a valid block at height 1 and time t, as validator 1 proposes it."""
    payload = proposal(group, (("ctp", ctps(community, 1)[0]),), t)
    m = c.open_signed(payload, group[0].validators)
    return m.d, m.attachments["block"]


def test_one_validators_rounds_and_digests_do_not_grow_a_replicas_votes(community):
    """Validator 1 sends prepares, commits and round changes for 3000 rounds, several digests
    in each, and proposals (which are kept as candidates before any other check) in 300 of
    the rounds it proposes in: the replica keeps ROUNDS_KEPT rounds of each per sender."""
    group = replicas(community)
    r0, bad = group[0], group[1]
    t = NOW + 1
    for r in range(1, 3000):
        for d in (os.urandom(32), os.urandom(32)):
            r0.receive(c.wire(c.make(bad.key, 1, c.PREPARE, 1, r, d)), t)
            r0.receive(c.wire(c.make(bad.key, 1, c.COMMIT, 1, r, d, seal=bytes(64))), t)
        r0.receive(c.wire(c.make(bad.key, 1, c.ROUND_CHANGE, 1, r, b"", pr=-1)), t)
    for r in range(0, 1200, N):  # validator 1 proposes height 1 in rounds 0, 4, 8, ...
        d, block = fresh_block(group, community, NOW + 1 + r)
        r0.receive(c.wire(c.make(bad.key, 1, c.PROPOSAL, 1, r, d, block=block)), t)
    assert ROUNDS_KEPT == 8
    assert len(r0.prepares) <= 8 + 1  # and its own PREPARE of the round-0 block
    assert len(r0.commits) <= 8
    assert len(r0.rcs) <= 8
    assert len(r0.candidates) <= 8 + 1  # and the round-0 block it accepted
    assert r0.round == 0  # one validator alone moves no one's round (the f + 1 rule)


def test_bounded_votes_still_decide(community):
    """After a flood of one validator's votes, the honest round 0 still prepares and decides."""
    group = replicas(community)
    r0, bad = group[0], group[1]
    for r in range(1, 200):
        r0.receive(c.wire(c.make(bad.key, 1, c.PREPARE, 1, r, os.urandom(32))), NOW + 1)
    assert prepares(r0, proposal(group, (("ctp", ctps(community, 1)[0]),), NOW + 1), NOW + 1)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_proposer_choosing_times_ahead_moves_block_time_at_most_max_skew(seed):
    """The skew rule (step 6 of accepting a proposal) is the bound: a quorum prepares a fresh
    block only if its time is at most max_skew_ms ahead of their clocks. The time-ahead
    proposer asks for that much at even heights and ten times it at odd ones."""
    s = sim.Sim(seed, byzantine="time-ahead")
    s.run()
    s.final_checks()
    assert s.lead <= sim.TIMING.max_skew_ms, f"a block {s.lead} ms ahead of every honest clock ({s.describe()})"


def test_the_time_ahead_proposer_does_move_block_time():
    """The bound above is reached: some seed decides a block well ahead of the honest clocks."""
    leads = []
    for seed in SEEDS:
        s = sim.Sim(seed, byzantine="time-ahead")
        s.run()
        leads.append(s.lead)
    assert max(leads) > sim.TIMING.max_skew_ms // 2, leads


@pytest.mark.parametrize("seed", SEEDS)
def test_a_censoring_proposer_delays_a_transaction_by_f_plus_one_heights(seed):
    """Rotation is the bound: the proposer of the next height is another validator, and an
    honest one proposes everything it holds (up to the caps). With f = 1 of 4, a transaction
    the censor left out is decided at most f + 1 heights after the first block it was left
    out of: one more because the next honest proposer may not hold it yet (the bus or a
    crash delays it at that validator) when it proposes."""
    s = sim.Sim(seed, byzantine="censor")
    s.run()
    s.final_checks()
    waits = s.censored_waits()
    assert max(waits.values(), default=0) <= 2, f"{waits} ({s.describe()})"


def test_the_censor_does_leave_transactions_out():
    """The bound above is measured on real omissions: the censor's blocks leave some out."""
    left_out = 0
    for seed in SEEDS:
        s = sim.Sim(seed, byzantine="censor")
        s.run()
        left_out += len(s.censored_waits())
    assert left_out > 0
