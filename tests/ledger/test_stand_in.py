"""A stand-in's read-back of an announced block's statuses (ledger.stand_in, decision 0015):
which topics it reads, when a block's statuses count as out, and when it must publish them."""

from __future__ import annotations

from nacl.signing import SigningKey

from ledger.stand_in import SAMPLE, PublishedCheck
from ledger.store import LedgerOutboxRow
from wire import topics
from wire.cose import encode, sign1

PROPOSER, STAND_IN = SigningKey(b"\x01" * 32), SigningKey(b"\x02" * 32)


def status(ctp: int, state: str, key: SigningKey = STAND_IN) -> bytes:
    return sign1(encode({"ctp": ctp, "state": state}), key)


def rows(height: int, count: int, rank: int = 1) -> list[LedgerOutboxRow]:
    """A block's outbox rows at a stand-in: `count` CTP statuses, a reject, the block."""
    out = [
        LedgerOutboxRow(i, topics.status(bytes([i]) * 16), status(i, "held"), True, height, rank)
        for i in range(1, count + 1)
    ]
    out.append(LedgerOutboxRow(count + 1, topics.REJECTS, b"reject", False, height, rank))
    out.append(LedgerOutboxRow(count + 2, topics.LEDGER_BLOCKS, b"block", False, height, rank))
    return out


def never_newer(topic: str, height: int) -> bool:
    return False


def test_it_reads_a_sample_of_the_retained_statuses_only():
    check = PublishedCheck()
    sample = check.start(7, rows(7, 10), due=3.0)
    assert sample is not None and len(sample) == SAMPLE
    assert all(t.startswith("spb/v1/status/") for t in sample)
    assert check.start(8, rows(8, 0), due=3.0) is None  # nothing to read back: drop its rows


def test_the_proposers_copy_of_each_sampled_status_ends_the_check():
    check = PublishedCheck()
    block = rows(7, 10)
    sample = check.start(7, block, due=3.0)
    assert sample is not None
    by_topic = {row.topic: row for row in block}
    for topic in sample[:-1]:
        assert check.seen(topic, status(by_topic[topic].seq, "held", PROPOSER), never_newer) == ([], [])
    assert check.seen(sample[-1], status(0, "held", PROPOSER), never_newer) == ([], [])  # another status
    done, unwatched = check.seen(sample[-1], status(by_topic[sample[-1]].seq, "held", PROPOSER), never_newer)
    assert done == [7] and sorted(unwatched) == sorted(sample)
    assert check.overdue(10.0) == ([], [])


def test_withheld_statuses_are_due_for_publishing_after_the_wait():
    check = PublishedCheck()
    block = rows(7, 3)
    sample = check.start(7, block, due=3.0)
    assert sample is not None
    assert check.seen(sample[0], b"junk someone retained", never_newer) == ([], [])
    assert check.overdue(2.9) == ([], [])
    late, unwatched = check.overdue(3.0)
    assert late == [(7, block)] and sorted(unwatched) == sorted(sample)


def test_a_newer_status_counts_and_a_topic_two_checks_read_stays_subscribed():
    check = PublishedCheck()
    first, second = rows(7, 1), rows(8, 1)
    assert check.start(7, first, due=3.0) == check.start(8, second, due=6.0) == [first[0].topic]
    done, unwatched = check.recheck(lambda topic, height: height < 8)  # block 8 changed it
    assert done == [7] and unwatched == []  # check 8 still reads it
    done, unwatched = check.seen(first[0].topic, second[0].payload, never_newer)
    assert done == [8] and unwatched == [first[0].topic]
