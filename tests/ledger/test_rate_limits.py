"""A rate per identity at the door (issue 17, item 2; decision 0014): a sender flooding the
ledger pools `rate_burst` transactions at once and `rate_per_s` a second after that; the
rest are refused `busy`, counted, and cost no signature check. Pure, as ledger.sim drives
replicas."""

from __future__ import annotations

import pytest

from ledger import door
from ledger.replica import Decided, Timing
from ledger.workload import SimCommunity, pk
from tests.ledger.test_bounded_inputs import NOW, ctps, refused, replicas
from wire.reasons import BUSY

TIMING = Timing(rate_per_s=10, rate_burst=20, pool_per_sender=10_000, max_inputs=100)


@pytest.fixture(scope="module")
def community() -> SimCommunity:
    return SimCommunity(4, NOW, seed=b"rate limits")


def test_a_bucket_holds_its_burst_and_refills_at_its_rate_in_whole_thousandths():
    rates = door.Rates(per_s=10, burst=3, senders=8)
    for _ in range(3):
        assert rates.allows(b"a", 0)
        rates.take(b"a", 0)
    assert not rates.allows(b"a", 0) and rates.allows(b"b", 0), "one sender's bucket, not another's"
    assert not rates.allows(b"a", 99) and rates.allows(b"a", 100), "one transaction per 100 ms at 10/s"
    assert rates._level(b"a", 10**9) == 3000, "never more than its burst"


def test_refilled_buckets_are_forgotten_beyond_the_bound():
    rates = door.Rates(per_s=1, burst=1, senders=2)
    for sender, at in ((b"a", 0), (b"b", 1000), (b"c", 1500)):
        rates.take(sender, at)
    assert set(rates.levels) == {b"b", b"c"}, "a refilled after 1 s and is forgotten; b and c still owe"


def test_a_flooding_sender_is_throttled_and_a_quiet_one_is_in_the_next_block(community):
    r = replicas(community, TIMING, n=1)[0]
    flood = ctps(community, 200, payer=0)
    answers = [refused(r.submit("ctp", raw, NOW)) for raw in flood]
    assert [bool(a) for a in answers] == [False] * 20 + [True] * 180
    assert {a[0].reason for a in answers if a} == {BUSY} and r.throttled == 180
    quiet = ctps(community, 1, payer=1)[0]
    assert refused(r.submit("ctp", quiet, NOW)) == []
    decided = [a for a in r.tick(NOW + TIMING.block_ms) if isinstance(a, Decided)]
    assert len(decided) == 1 and quiet in [raw for _, raw in decided[0].block.inputs]
    # A second later the flooder has ten more places, not more.
    later = NOW + 1000
    more = [refused(r.submit("ctp", raw, later)) for raw in ctps(community, 15, payer=0)]
    assert [bool(a) for a in more] == [False] * 10 + [True] * 5


def test_a_throttled_burst_costs_no_signature_check(community, monkeypatch):
    r = replicas(community, TIMING)[0]
    for raw in ctps(community, 20):
        r.submit("ctp", raw, NOW)
    checks = []
    monkeypatch.setattr(door, "check", lambda *args: checks.append(args))
    assert {a.reason for raw in ctps(community, 50) for a in refused(r.submit("ctp", raw, NOW))} == {BUSY}
    assert checks == []


def test_forgeries_do_not_spend_another_senders_rate(community):
    r = replicas(community, TIMING)[0]
    forged = [raw[:-1] + bytes([raw[-1] ^ 1]) for raw in ctps(community, 50)]
    assert {a.reason for raw in forged for a in refused(r.submit("ctp", raw, NOW))} == {"signature"}
    assert [refused(r.submit("ctp", raw, NOW)) for raw in ctps(community, 20)] == [[]] * 20
    assert r.pooled_by == {pk(community.households[0].account): 20}


def test_pruning_is_amortized_when_no_bucket_has_refilled():
    """Many senders, none refilled: the buckets are looked over again only once they doubled."""
    rates = door.Rates(per_s=1, burst=1, senders=4)
    for i in range(5):
        rates.take(bytes([i]), 0)
    assert len(rates.levels) == 5 and rates.prune_at == 10
    for i in range(5, 10):
        rates.take(bytes([i]), 0)
    assert len(rates.levels) == 10 and rates.prune_at == 10
