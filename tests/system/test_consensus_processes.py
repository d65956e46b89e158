"""Four `spb-ledger run --validator I` processes over a real Mosquitto: the consensus under
a load, with a validator killed, with two stopped, and with the broker restarted."""

from __future__ import annotations

import pytest

from tests.support.bus import wait_for
from tests.support.consensus import Validators, stood_in_for


@pytest.fixture
def validators(tmp_path, mosquitto, make_client):
    made = []

    def make(trades: int) -> Validators:
        made.append(Validators(tmp_path, mosquitto.port, make_client, trades))
        return made[-1]

    yield make
    for v in made:
        v.close()


def test_statuses_and_blocks_are_published_once_by_four_validators(validators):
    v = validators(200)
    for i in range(4):
        v.start(i)
    v.publish(v.trades)
    v.wait_settled(200)
    height = v.wait_heads_agree()[0]
    wait_for(lambda: len(v.blocks_published()) >= height, 10, "every block announced")
    assert set(v.status_counts().values()) == {1}, "one status per CTP change, not one per validator"
    assert sorted(b.header.height for b in v.blocks_published()) == list(range(1, height + 1))
    proposers = {b.header.height % 4 for b in v.blocks_published()}
    assert len(proposers) > 1, "the proposer rotates"
    v.stop_all()
    v.check_everywhere()


def test_kill_9_of_one_validator_mid_load(validators):
    """Commits go on with three; the killed one comes back, catches up from its peers'
    blocks, and all four agree. The load goes out a third at a time, so that whatever the
    machine's speed, blocks are committed while it is down (the second third) and after it
    is back (the last third, published only then)."""
    v = validators(900)
    first, second, last = v.trades[:300], v.trades[300:600], v.trades[600:]
    for i in range(4):
        v.start(i)
    v.publish(first)
    v.wait_settled(150)  # half-way through the first third, as far as the watcher saw
    v.kill(1)
    v.publish(second)
    v.wait_settled(450)  # at most 300 had settled at the kill: 150 or more since, by three
    v.start(1)
    v.publish(last)
    v.wait_settled(len(v.trades))
    v.wait_heads_agree()
    v.stop_all()
    v.check_everywhere()


def test_two_of_four_stopped_commit_nothing_and_fork_nothing(validators):
    v = validators(120)
    for i in range(4):
        v.start(i)
    first, rest = v.trades[:60], v.trades[60:]
    v.publish(first)
    v.wait_settled(60)
    before = v.wait_heads_agree()
    v.stop(2)
    v.stop(3)
    mark = len(v.inbox.messages)
    v.publish(rest)
    # Both survivors try, time out and change rounds, twice: they had the transactions and no quorum.
    wait_for(
        lambda: {(s, r) for s, h, r in v.round_changes(mark) if h == before[0] + 1} >= {(0, 2), (1, 2)},
        30,
        lambda: f"round changes to round 2 from v0 and v1; have {sorted(v.round_changes(mark))}",
    )
    assert v.heads(range(2)) == [before, before], "two of four committed a block"
    assert len(v.settled()) == 60 and v.blocks_published(mark) == []
    v.start(2)  # a quorum again
    v.wait_settled(len(v.trades))
    v.wait_heads_agree(range(3))
    v.start(3)
    v.wait_heads_agree()
    v.stop_all()
    v.check_everywhere()


def test_broker_restarts_mid_load_lose_nothing_and_settle_nothing_twice(validators, mosquitto):
    """Two broker restarts, each with work left by construction rather than by timing. The
    first comes with a third of the load published while the validators were paused
    (SIGSTOP) and acknowledged by the broker: owed to them, queued or unacknowledged, when
    it goes down. The second comes while they run, half-way through a third, and the last
    third is published only after it."""
    v = validators(900)
    first, second, last = v.trades[:300], v.trades[300:600], v.trades[600:]
    for i in range(4):
        v.start(i)
    v.publish(first)
    v.wait_settled(150)
    v.pause_all()
    v.publish(second, acked=True)
    mosquitto.restart()
    v.resume_all()
    v.wait_settled(450)
    mosquitto.restart()
    v.publish(last)
    v.wait_settled(len(v.trades))
    v.wait_heads_agree()
    v.stop_all()
    v.check_everywhere()


def test_a_proposer_that_never_publishes_is_stood_in_for(tmp_path, mosquitto, make_client):
    """Validator 0 commits its blocks but publishes none of their statuses (as if it died
    right after writing them): the next validator in rotation publishes them, signed by
    itself, after TAKEOVER_S; no CTP is left without its statuses."""
    v = Validators(tmp_path, mosquitto.port, make_client, 40)
    with stood_in_for(v, keep=lambda row: row.rank > 0) as signers_by_height:  # none of its own blocks' rows
        assert any(h % 4 == 0 for h in signers_by_height), "validator 0 proposed no block: the test proved nothing"
        assert all(0 not in signers for signers in signers_by_height.values()), "the muted validator published"
        assert set(v.status_counts().values()) == {1}
