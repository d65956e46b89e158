"""The ledger service's late copies of market statuses (decision 0007, docs/CONSENSUS.md
"Statuses only move forward"), without a broker: an order's `open` that went out late (a
stand-in, an outbox replay, a restore) is followed by the order's next status when another
validator's block changes it, a late copy a later block superseded is dropped, and a
restore or a reconnect carries orders and results. The service's publishes are recorded,
not sent: its main loop and MQTT are tested in tests/system."""

from __future__ import annotations

import pytest

from ledger.draft import Draft
from ledger.replica import Decided
from ledger.service import LedgerService
from ledger.statuses import account_of, ctp_of, is_status
from ledger.validator import ValidatorIdentity
from ledger.workload import SimCommunity
from tests.support.ledger import NOW
from tests.support.market import I, K, Market, market_dir, order_id
from wire import topics
from wire.messages import AccountStatus, open_message


class Recorded:
    """A validator's service whose publishes are kept in `sent` (topic, body) and not sent."""

    def __init__(self, root, monkeypatch):
        self.service = LedgerService(ValidatorIdentity.load(root, 0), "127.0.0.1", 1, clock=lambda: NOW)
        self.node = self.service.node
        self.sent: list[tuple[str, object]] = []
        self.accounts: dict[str, tuple[int, int, int]] = {}
        monkeypatch.setattr(self.service, "_send", lambda topic, payload, *_: self._record(topic, payload))
        self.service.gate.reading = False  # its connection's backlog is read

    def _record(self, topic: str, payload: bytes) -> None:
        if is_status(topic):
            self.sent.append((topic, open_message(payload).body))

    def take(self) -> list[tuple[str, str]]:
        """(topic, state) of the order, result and CTP statuses sent since the last take (and
        the account statuses into `accounts`: topic -> (balance, held, h))."""
        out = [(topic, getattr(body, "state", "cleared")) for topic, body in self.sent if account_of(topic) is None]
        self.accounts = {t: (b.balance, b.held, b.h) for t, b in self.sent if isinstance(b, AccountStatus)}
        self.sent.clear()
        return out

    def late(self) -> dict[str, int]:
        """The service's late copies that a block may supersede, but for accounts'."""
        return {topic: h for topic, h in self.service._late.items() if account_of(topic) is None}

    def decided_by_another(self, t: int, *messages: tuple[str, bytes]) -> None:
        """A block of another validator's proposal, caught up: it announces nothing here."""
        node = self.node
        draft = Draft(node.state, node.verifier, t)
        for message in messages:
            assert draft.add(*message) is None
        block = draft.finish()
        assert block is not None
        block = block.sealed(0, node.key)
        node.write(draft, block, None)
        node.state.commit(draft.changes)
        self.service._supersede_late(Decided(block, draft, None))
        self.service._release()

    def close(self) -> None:
        self.service.bus.close()
        self.node.close()


@pytest.fixture
def m() -> Market:
    return Market(SimCommunity(4, NOW))


@pytest.fixture
def v(tmp_path, m, monkeypatch):
    recorded = Recorded(market_dir(tmp_path, m.c), monkeypatch)
    yield recorded
    recorded.close()


GATE = K * I


def test_a_late_open_order_is_followed_by_each_next_status(v, m):
    ask, bid = m.ask(0, 10, 5), m.bid(3, 8, 7)
    rows = v.node.decide([("ask", ask), ("bid", bid)], NOW).queued
    asked, bade = topics.market_order(K, order_id(ask)), topics.market_order(K, order_id(bid))
    v.service._queue(rows, late=True)  # as a stand-in, or the outbox a crash left
    assert v.take() == [(asked, "open"), (bade, "open")]
    assert v.late() == {asked: 1, bade: 1}, "an open order can still change"
    v.decided_by_another(NOW + 1, ("withdraw", m.withdraw(3, bid)))
    assert v.take() == [(bade, "withdrawn")] and v.late() == {asked: 1}
    v.decided_by_another(GATE)  # the clearing: the ask found no bid
    assert v.take() == [(asked, "unfilled")], "the result was never sent late: its proposer sends it"
    assert v.late() == {}


def test_a_late_copy_a_later_block_superseded_is_dropped(v, m):
    ask, bid = m.ask(0, 10, 5), m.bid(3, 8, 7)
    first = v.node.decide([("ask", ask), ("bid", bid)], NOW).queued
    v.node.decide([("withdraw", m.withdraw(3, bid))], NOW + 1)
    v.service._queue(first, late=True)
    assert v.take() == [(topics.market_order(K, order_id(ask)), "open")], "the bid's `open` is older than `withdrawn`"
    dropped = [r.seq for r in first if r.topic == topics.market_order(K, order_id(bid))]
    assert dropped and set(dropped) <= set(v.service._delivered), "forgotten from the outbox like a sent row"


def test_statuses_of_its_own_blocks_are_not_followed_up(v, m):
    bid = m.bid(3, 8, 7)
    v.service._queue(v.node.decide([("bid", bid)], NOW).queued)
    assert v.take() == [(topics.market_order(K, order_id(bid)), "open")] and v.late() == {}
    v.decided_by_another(NOW + 1, ("withdraw", m.withdraw(3, bid)))
    assert v.take() == []


def test_a_restore_carries_orders_and_results_and_its_open_orders_are_followed_up(v, m):
    ask, bid, other = m.ask(0, 10, 5), m.bid(3, 8, 7), m.ask(1, 3, 9, k=K + 1)
    v.node.decide([("ask", ask), ("bid", bid), ("ask", other)], NOW)
    v.node.decide([], GATE)  # the clearing of K: partial, filled, a fill and K's result
    v.service._restore = (0, GATE)
    v.service._release()
    result, later = topics.market_result(K), topics.market_order(K + 1, order_id(other))
    sent = dict(v.take())
    assert {t: s for t, s in sent.items() if ctp_of(t) is None} == {
        topics.market_order(K, order_id(ask)): "partial",
        topics.market_order(K, order_id(bid)): "filled",
        later: "open",
        result: "cleared",
    }
    [fill] = [t for t in sent if ctp_of(t) is not None]
    assert sent[fill] == "held", "the fill's trade"
    assert v.late() == {later: 1, fill: 2}, "the open order and the held fill can still change"
    v.decided_by_another(GATE + I)  # K + 1 clears: its result is news, its ask is a late copy's successor
    assert v.take() == [(later, "unfilled")]


def test_statuses_in_flight_at_a_reconnect_are_followed_by_their_current_ones(v, m):
    ask = m.ask(0, 10, 5)
    v.node.decide([("ask", ask)], NOW)
    v.node.decide([], GATE)
    asked, result = topics.market_order(K, order_id(ask)), topics.market_result(K)
    v.service._connection = 1
    v.service._read_back(1, True, b"offline", [asked, result])  # the broker kept all else: no restore
    v.service._release()  # as the main loop does next
    assert sorted(v.take()) == sorted([(asked, "unfilled"), (result, "cleared")])


def test_a_late_account_status_is_followed_by_the_next_one(v, m):
    """Any block may move an account's money, so a late copy of its status is always followed
    by the status of the next block that changes it, even when another validator proposed it."""
    bid = m.bid(3, 8, 7)
    v.service._queue(v.node.decide([("bid", bid)], NOW).queued, late=True)
    assert v.take() == [(topics.market_order(K, order_id(bid)), "open")]
    buyer = topics.account(m.account(3))
    assert v.accounts[buyer] == (1000 - 56, 56, 1) and len(v.accounts) == 4, "block 1: every account"
    assert {t for t in v.service._late if account_of(t)} == set(v.accounts)
    v.decided_by_another(NOW + 1, ("withdraw", m.withdraw(3, bid)))
    v.take()
    assert v.accounts == {buyer: (1000, 0, 2)}, "only the account that block changed"
