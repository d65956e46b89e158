"""ledger.statuses: what a restore must cover, read back from the broker, and when a
validator's statuses may go out so that none ever goes back."""

from __future__ import annotations

import pytest

from ledger.node import LedgerNode
from ledger.statuses import (
    LATE_MS,
    Gate,
    account_of,
    ctp_of,
    is_status,
    lost_since,
    open_to_change,
    order_of,
    result_of,
    superseded,
)
from ledger.validator import ValidatorIdentity
from ledger.workload import SimCommunity
from tests.support.ledger import NOW, Chain
from tests.support.market import REVEAL_S, I, K, Market, MarketChain, order_id
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


def test_what_a_status_topic_is_about():
    some_id = bytes(range(16))
    ctp, order, result = topics.status(some_id), topics.market_order(42, some_id), topics.market_result(42)
    assert (ctp_of(ctp), order_of(ctp), result_of(ctp)) == (some_id, None, None)
    assert (ctp_of(order), order_of(order), result_of(order)) == (None, some_id, None)
    assert (ctp_of(result), order_of(result), result_of(result)) == (None, None, 42)
    assert is_status(ctp) and is_status(order) and is_status(result)
    others = (topics.LEDGER_BLOCKS, topics.REJECTS, topics.ledger_state(0), topics.TX_ASK, topics.consensus_to(1))
    for topic in others:
        assert not is_status(topic), topic
        assert (ctp_of(topic), order_of(topic), result_of(topic)) == (None, None, None), topic


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
    topic = topics.status(open_message(ctp, "ctp").body.id)
    stranger = topics.status(bytes(16))
    assert not superseded(chain.state, stranger, 0) and open_to_change(chain.state, stranger)  # may be held later
    chain.block(NOW, ("ctp", ctp))
    held_at = chain.state.height
    assert superseded(chain.state, topic, 0), "a `rejected` of this id is older than its `held`"
    assert not superseded(chain.state, topic, held_at) and open_to_change(chain.state, topic)
    chain.block(NOW + 1, ("erc", community.erc(ctp)))
    assert superseded(chain.state, topic, held_at)
    assert not superseded(chain.state, topic, chain.state.height) and not open_to_change(chain.state, topic)
    for other in (topics.REJECTS, topics.LEDGER_BLOCKS, topics.market_order(1, bytes(16)), topics.market_result(1)):
        assert not superseded(chain.state, other, 0) and not open_to_change(chain.state, other), other


def test_current_statuses_of_some_ctps(tmp_path):
    community = SimCommunity(3, NOW)
    chain = Chain(tmp_path, community)
    held, settled = (community.ctp(0, 1, amount=5, wh=1, exp=NOW + 600_000) for _ in range(2))
    poor = community.ctp(1, 2, amount=5_000, wh=1, exp=NOW + 600_000)
    chain.block(NOW, ("ctp", held), ("ctp", settled), ("ctp", poor))
    chain.block(NOW + 1, ("erc", community.erc(settled)))
    ids = [open_message(m, "ctp").body.id for m in (held, settled, poor)]
    wanted = [topics.status(i) for i in (*ids, bytes(16))] + [topics.market_order(1, ids[0]), topics.market_result(1)]
    rows = {ctp_of(r.topic): r for r in chain.node.current_statuses(of=wanted)}
    assert set(rows) == set(ids)
    got = {i: (open_message(r.payload, "status").body.state, r.height) for i, r in rows.items()}
    assert got == {ids[0]: ("held", 1), ids[1]: ("settled", 2), ids[2]: ("rejected", 0)}
    assert {r.topic: r.payload for r in chain.node.current_statuses(0)} == {r.topic: r.payload for r in rows.values()}
    # A restore stops at the block time of its connect: later changes go out with their blocks.
    assert {ctp_of(r.topic) for r in chain.node.current_statuses(0, until=NOW)} == {ids[0], ids[2]}
    assert {ctp_of(r.topic) for r in chain.node.current_statuses(NOW + 1)} == {ids[1]}


# -- the market's retained topics: order statuses and interval results --


@pytest.fixture
def market(tmp_path):
    """A market chain: an ask, a bid, a seal never revealed and a bid withdrawn (blocks 1, 2),
    then the clearing after the reveal window (block 3): partial, filled, void, one fill."""
    c = SimCommunity(4, NOW)
    chain, m = MarketChain(tmp_path, c), Market(c)
    ask, bid, gone = m.ask(0, 10, 5), m.bid(3, 8, 7), m.bid(2, 1, 1)
    silent, _ = m.seal(1, m.bid(1, 1, 9), deposit=9)
    assert chain.block(NOW, ("ask", ask), ("bid", bid), ("bid", gone), ("seal", silent)) == [None] * 4
    assert chain.block(NOW + 1, ("withdraw", m.withdraw(2, gone))) == [None]
    orders = {name: topics.market_order(K, order_id(raw)) for name, raw in (("ask", ask), ("bid", bid), ("gone", gone))}
    orders["silent"] = topics.market_order(K, order_id(silent))
    yield chain, orders
    chain.store.close()


def clear(chain: MarketChain) -> None:
    chain.block(K * I + REVEAL_S * 1000)  # nothing to decide: the clearing alone makes block 3
    assert chain.state.height == 3


def retained(outputs: list[tuple[str, bytes, bool]]) -> dict[str, bytes]:
    """The last payload on each retained topic: what the broker keeps."""
    return {topic: payload for topic, payload, retain in outputs if retain}


def market_topics(rows) -> set[str]:
    """The topics of rows, but for account statuses (tests/ledger/test_account_statuses.py)."""
    return {r.topic for r in rows if account_of(r.topic) is None}


def test_orders_are_open_to_change_until_final_and_results_are_final(market):
    chain, orders = market
    state, result = chain.state, topics.market_result(K)
    assert [open_to_change(state, orders[o]) for o in ("ask", "bid", "silent", "gone")] == [True, True, True, False]
    assert superseded(state, orders["gone"], 1), "`open` of block 1 is older than `withdrawn` of block 2"
    assert not superseded(state, orders["gone"], 2) and not superseded(state, orders["ask"], 1)
    assert not superseded(state, result, 0) and not open_to_change(state, result)  # no result: none was sent
    clear(chain)
    for name in ("ask", "bid", "silent"):  # partial, filled, void
        assert superseded(state, orders[name], 1) and not superseded(state, orders[name], 3), name
        assert not open_to_change(state, orders[name]), name
    assert superseded(state, result, 2) and not superseded(state, result, 3) and not open_to_change(state, result)
    stranger = topics.market_order(K, bytes(16))
    assert not superseded(state, stranger, 0) and not open_to_change(state, stranger)


def test_current_statuses_of_the_market_are_those_published(market, tmp_path):
    """A restore and a late copy carry what the blocks published, byte for byte (the same
    body, deterministic Ed25519), also from a validator restarted on its database."""
    chain, orders = market
    result = topics.market_result(K)
    assert market_topics(chain.node.current_statuses(NOW + 1, until=NOW + 1)) == {orders["gone"]}
    assert {r.topic: r.payload for r in chain.node.current_statuses(0)} == retained(chain.outputs)
    clear(chain)
    rows = chain.node.current_statuses(0)
    assert {r.topic: r.payload for r in rows} == retained(chain.outputs)
    [fill] = [topic for topic in retained(chain.outputs) if ctp_of(topic) is not None]
    heights = {r.topic: r.height for r in rows if account_of(r.topic) is None}
    assert heights == {**dict.fromkeys(orders.values(), 3), orders["gone"]: 2, result: 3, fill: 3}
    cleared = market_topics(chain.node.current_statuses(K * I))
    assert cleared == {orders["ask"], orders["bid"], orders["silent"], result, fill}, "changed at the clearing"
    wanted = [orders["ask"], result, topics.market_order(K, bytes(16)), topics.market_result(K + 1), fill]
    some = {r.topic: r.payload for r in chain.node.current_statuses(of=wanted)}
    assert some == {t: p for t, p in retained(chain.outputs).items() if t in (orders["ask"], result, fill)}
    chain.node.close()
    restarted = LedgerNode(ValidatorIdentity.load(chain.root, 0))
    assert {r.topic: r.payload for r in restarted.current_statuses(0)} == retained(chain.outputs)
    restarted.close()
