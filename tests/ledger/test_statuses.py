"""ledger.statuses: what a restore must cover, read back from the broker, and when a
validator's statuses may go out so that none ever goes back."""

from __future__ import annotations

import pytest

from ledger.statuses import LATE_MS, Gate, ctp_of, lost_since, open_to_change, superseded
from ledger.workload import SimCommunity
from tests.support.ledger import NOW, Chain
from wire import topics
from wire.messages import open_message

TIMES = {0: 0, 5: NOW, 9: NOW + 4_000}


@pytest.mark.parametrize(
    ("session", "stored", "tip", "since"),
    [
        (False, b"offline", 9, 0),  # no session: the broker lost everything
        (True, None, 9, 0),  # nothing retained for us: the same
        (True, b"offline", 9, None),  # our will: taken after all we sent, kept only with it
        (True, b"offline 9", 9, None),  # a clean stop at our tip: nothing sent since
        (True, b"offline 5", 9, NOW - LATE_MS),  # we ran since that stop: the broker lost that run
        (True, b"online 5", 9, NOW - LATE_MS),  # a broker that crashed and reloaded its last save
        (True, b"online 9", 9, NOW + 4_000 - LATE_MS),  # ...with late statuses of blocks before 9
        (True, b"online 0", 9, 0),
        (True, b"online 12", 9, 0),  # a height this database never had: not ours
        (True, b"hello", 9, 0),  # written by someone else (the payload is not signed)
        (True, b"online x", 9, 0),
    ],
)
def test_what_a_restore_covers(session, stored, tip, since):
    assert lost_since(session, stored, tip, TIMES.__getitem__) == since


def test_ctp_of_a_status_topic():
    ctp_id = bytes(range(16))
    assert ctp_of(topics.status(ctp_id)) == ctp_id
    assert ctp_of(topics.LEDGER_BLOCKS) is None and ctp_of(topics.REJECTS) is None


def test_one_validator_waits_only_for_its_backlog():
    gate = Gate(1)
    assert not gate.open(3, 2, caught_up=True)  # its connection's backlog is not read yet
    gate.reading = False
    gate.decided(3)
    assert gate.open(3, 3, caught_up=True) and gate.open(4, 3, caught_up=True)


def test_statuses_go_out_in_block_order():
    gate = Gate(4)
    gate.reading = False
    gate.decided(7)
    gate.decided(8)
    assert gate.open(7, 8, caught_up=True)
    assert not gate.open(8, 8, caught_up=True), "block 7's announcement, sent after its statuses, not seen yet"
    assert gate.open(8, 8, caught_up=True, overdue=True)
    gate.announced_block(7)
    assert gate.open(8, 8, caught_up=True)
    assert not gate.open(9, 8, caught_up=True), "a restore waits for every block we decided to be announced"
    gate.announced_block(8)
    assert gate.open(9, 8, caught_up=True)


def test_nothing_goes_out_while_behind():
    gate = Gate(4)
    gate.reading = False
    assert not gate.open(3, 3, caught_up=False)
    gate.announced_block(5)  # someone published block 5's statuses: ours from before it may be old
    assert not gate.open(3, 4, caught_up=True) and not gate.open(3, 4, caught_up=True, overdue=True)
    assert gate.open(3, 5, caught_up=True)
    gate.decided(4)  # caught up: block 4 came before the announced 5, so it was announced
    assert gate.unannounced == set()
    gate.reading = True  # a new connection
    assert not gate.open(3, 5, caught_up=True)


def test_superseded_and_final_statuses(tmp_path):
    community = SimCommunity(3, NOW)
    chain = Chain(tmp_path, community)
    ctp = community.ctp(0, 1, amount=5, wh=1, exp=NOW + 600_000)
    ctp_id = open_message(ctp, "ctp").body.id
    stranger = bytes(16)
    assert not superseded(chain.state, stranger, 0) and open_to_change(chain.state, stranger)  # may be held later
    chain.block(NOW, ("ctp", ctp))
    held_at = chain.state.height
    assert superseded(chain.state, ctp_id, 0), "a `rejected` of this id is older than its `held`"
    assert not superseded(chain.state, ctp_id, held_at) and open_to_change(chain.state, ctp_id)
    chain.block(NOW + 1, ("erc", community.erc(ctp)))
    assert superseded(chain.state, ctp_id, held_at)
    assert not superseded(chain.state, ctp_id, chain.state.height) and not open_to_change(chain.state, ctp_id)


def test_current_statuses_of_some_ctps(tmp_path):
    community = SimCommunity(3, NOW)
    chain = Chain(tmp_path, community)
    held, settled = (community.ctp(0, 1, amount=5, wh=1, exp=NOW + 600_000) for _ in range(2))
    poor = community.ctp(1, 2, amount=5_000, wh=1, exp=NOW + 600_000)
    chain.block(NOW, ("ctp", held), ("ctp", settled), ("ctp", poor))
    chain.block(NOW + 1, ("erc", community.erc(settled)))
    ids = [open_message(m, "ctp").body.id for m in (held, settled, poor)]
    rows = {ctp_of(r.topic): r for r in chain.node.current_statuses(ids=[*ids, bytes(16)])}
    assert set(rows) == set(ids)
    got = {i: (open_message(r.payload, "status").body.state, r.height) for i, r in rows.items()}
    assert got == {ids[0]: ("held", 1), ids[1]: ("settled", 2), ids[2]: ("rejected", 0)}
    assert {r.topic: r.payload for r in chain.node.current_statuses(0)} == {r.topic: r.payload for r in rows.values()}
    # A restore stops at the block time of its connect: later changes go out with their blocks.
    assert {ctp_of(r.topic) for r in chain.node.current_statuses(0, until=NOW)} == {ids[0], ids[2]}
    assert {ctp_of(r.topic) for r in chain.node.current_statuses(NOW + 1)} == {ids[1]}
