"""The ledger's account statuses (docs/PROTOCOL.md §9.6, decision 0010): one per account whose
money a block changed, every account's in a market chain's first block, none on a v1 chain;
exact balances; restored, superseded and kept open to change like the other statuses."""

from __future__ import annotations

import sqlite3

import pytest

from ledger.node import LedgerNode
from ledger.statuses import account_of, current, open_to_change, superseded
from ledger.store import LedgerOutboxRow
from ledger.validator import ValidatorIdentity
from ledger.workload import SimCommunity
from tests.support.ledger import NOW, Chain
from tests.support.market import BALANCE, I, K, Market, MarketChain
from wire import topics
from wire.messages import AccountStatus
from wire.verify import Verifier

GATE = K * I
EXPIRED = (K + 2) * I + 1  # after the fill's exp, (K + 1 + grace) * I


@pytest.fixture
def m() -> Market:
    return Market(SimCommunity(4, NOW))


@pytest.fixture
def chain(tmp_path, m):
    made = MarketChain(tmp_path, m.c)
    yield made
    made.node.close()


def accounts(rows: list[LedgerOutboxRow], node: LedgerNode) -> dict[bytes, tuple[int, int, int, int]]:
    """Account key -> (balance, held, t, h) of the account statuses among rows, each checked to
    be retained, on its account's topic and signed by the validator."""
    verifier = Verifier(node.identity.genesis.cas, node.identity.genesis.validators)
    out = {}
    for row in rows:
        if account_of(row.topic) is None:
            continue
        body = verifier.verify(row.payload, NOW, expect=AccountStatus).body
        assert row.retain and row.topic == topics.account(body.account) and body.account not in out
        out[body.account] = (body.balance, body.held, body.t, body.h)
    return out


def decide(chain: MarketChain, t: int, *messages: tuple[str, bytes]) -> dict[bytes, tuple[int, int, int, int]]:
    decision = chain.node.decide(list(messages), t)
    assert decision.block is not None and decision.reasons == [None] * len(messages)
    return accounts(decision.queued, chain.node)


def test_first_block_tells_every_account_then_each_block_only_those_it_changed(chain, m):
    buyer, seller = m.account(3), m.account(0)
    first = decide(chain, NOW, ("bid", m.bid(3, 8, 7)))  # escrows 8 x 7
    assert first == {m.account(h): (BALANCE, 0, NOW, 1) for h in range(3)} | {buyer: (BALANCE - 56, 56, NOW, 1)}
    assert decide(chain, NOW + 1, ("ask", m.ask(0, 10, 5))) == {}, "an ask holds nothing"
    # The clearing fills 8 Wh at floor((7 + 5) / 2) = 6: 48 stay held, 8 of the escrow come back.
    assert decide(chain, GATE) == {buyer: (BALANCE - 48, 48, GATE, 3)}
    assert decide(chain, EXPIRED) == {buyer: (BALANCE, 0, EXPIRED, 4)}, "the unconfirmed fill refunded"
    assert seller not in chain.state.held or chain.state.held[seller] == 0
    for h in range(4):
        record = chain.state.account(m.account(h))
        assert record is not None and (record.balance + record.held) == BALANCE


def test_money_that_moves_and_comes_back_within_a_block_is_no_news(chain, m):
    decide(chain, NOW, ("ask", m.ask(0, 10, 5)))
    gone, kept = m.bid(2, 1, 1), m.bid(3, 2, 4)
    assert decide(chain, NOW + 1, ("bid", gone), ("withdraw", m.withdraw(2, gone)), ("bid", kept)) == {
        m.account(3): (BALANCE - 8, 8, NOW + 1, 2)
    }
    assert chain.state.moved_at[m.account(2)] == (1, NOW), "its status is still block 1's"


def test_a_rejected_order_changes_no_account(chain, m):
    decide(chain, NOW, ("ask", m.ask(0, 10, 5)))
    decision = chain.node.decide([("bid", m.bid(3, 1_000, 7))], NOW + 1)
    assert decision.reasons == ["insufficient-funds"] and accounts(decision.queued, chain.node) == {}


def test_a_v1_chain_publishes_no_account_status(tmp_path):
    c = SimCommunity(3, NOW)
    v1 = Chain(tmp_path, c)
    decision = v1.node.decide([("ctp", c.ctp(0, 1, amount=5, wh=1, exp=NOW + 600_000))], NOW)
    assert decision.reasons == [None] and accounts(decision.queued, v1.node) == {}
    assert current(v1.state, topics.account(bytes(32))) is None
    assert v1.node.current_statuses(0) and not [r for r in v1.node.current_statuses(0) if account_of(r.topic)]
    v1.node.close()


def test_an_account_status_is_superseded_by_a_later_change_and_always_open_to_change(chain, m):
    bid = m.bid(3, 8, 7)
    decide(chain, NOW, ("bid", bid))
    decide(chain, NOW + 1, ("withdraw", m.withdraw(3, bid)))
    buyer, other = topics.account(m.account(3)), topics.account(m.account(1))
    assert superseded(chain.state, buyer, 1) and not superseded(chain.state, buyer, 2)
    assert not superseded(chain.state, other, 1)
    assert open_to_change(chain.state, buyer) and open_to_change(chain.state, other)
    stranger = topics.account(bytes(32))
    assert not superseded(chain.state, stranger, 0) and not open_to_change(chain.state, stranger)


def test_a_restore_carries_each_accounts_current_status_as_published_also_after_a_restart(chain, m):
    published: dict[str, bytes] = {}
    for t, messages in ((NOW, [("bid", m.bid(3, 8, 7))]), (NOW + 1, [("ask", m.ask(0, 10, 5))]), (GATE, [])):
        published |= {r.topic: r.payload for r in chain.node.decide(messages, t).queued if account_of(r.topic)}
    assert len(published) == 4

    def restored(node: LedgerNode, since: int = 0) -> dict[str, bytes]:
        return {r.topic: r.payload for r in node.current_statuses(since) if account_of(r.topic)}

    assert restored(chain.node) == published, "byte for byte: the same body, deterministic signatures"
    assert restored(chain.node, NOW + 1) == {topics.account(m.account(3)): published[topics.account(m.account(3))]}
    heights = {r.topic: r.height for r in chain.node.current_statuses(0) if account_of(r.topic)}
    assert heights == dict.fromkeys(published, 1) | {topics.account(m.account(3)): 3}
    chain.node.close()
    restarted = LedgerNode(ValidatorIdentity.load(chain.root, 0))
    chain.node = restarted
    assert restored(restarted) == published
    assert restarted.state.moved_at == chain.state.moved_at


def test_a_database_from_before_account_statuses_dates_them_at_its_tip(chain, m):
    decide(chain, NOW, ("bid", m.bid(3, 8, 7)))
    decide(chain, NOW + 1, ("ask", m.ask(0, 10, 5)))
    chain.node.close()
    with sqlite3.connect(chain.store.path) as db:
        db.execute("ALTER TABLE accounts DROP COLUMN height")
    chain.node = LedgerNode(ValidatorIdentity.load(chain.root, 0))
    assert set(chain.node.state.moved_at.values()) == {(2, NOW + 1)}
    rows = [r for r in chain.node.current_statuses(0) if account_of(r.topic)]
    assert {body[3] for body in accounts(rows, chain.node).values()} == {2} and len(rows) == 4
