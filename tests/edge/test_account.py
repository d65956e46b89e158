"""The household's account status on the meter (docs/PROTOCOL.md §9.6, decision 0010): checked
like every ledger status, the newest kept in the store across restarts, and shown by
MarketNode.balance(); what the agent may still spend."""

from __future__ import annotations

import pytest
from nacl.signing import SigningKey

from broker.clock import wall_ms
from broker.keys import load_key
from deploy.provision import provision
from edge.account import accept, spendable
from edge.config import MeterConfig
from edge.market_node import MarketNode
from edge.meter import MeterNode
from edge.state_dir import MeterIdentity
from edge.store import SENT, AccountRow, OrderRow
from tests.support.wire import reason
from wire import topics
from wire.messages import AccountStatus, OrderState, Side, Status


@pytest.fixture
def setup(tmp_path):
    """m0001's MeterNode (never connected: port 9) and the key of the genesis's only validator."""
    community = provision(tmp_path / "c", meters=2, accounts=None, validators=1, now_ms=wall_ms() - 60_000)
    m1 = MeterIdentity.load(community.root / "meters" / "m0001")
    node = MeterNode(m1, MeterConfig(interval_s=10, resend_s=1), "127.0.0.1", 9, sense=lambda _e: (0, 0))
    validator = load_key(community.root / "validators" / "v0" / "validator.key")
    yield node, validator
    node.store.close()


def status(key: SigningKey, account: bytes, balance: int, held: int, h: int, t: int = 1_000) -> bytes:
    return AccountStatus(account=account, balance=balance, held=held, t=t, h=h).sign(key)


def mine(node: MeterNode) -> tuple[bytes, str]:
    return node.market.account_pk, topics.account(node.market.account_pk)


def test_the_meter_keeps_the_newest_status_and_knows_it_after_a_restart(setup):
    node, validator = setup
    me, topic = mine(node)
    market = node.market
    assert market.balance() is None, "no status yet"
    assert topic in node.bus._subscriptions, "subscribed to its own account's status (and no other)"
    assert not [t for t in node.bus._subscriptions if t.startswith(topics.ACCOUNT) and t != topic]
    market._on_account(topic, status(validator, me, 900, 100, h=5), True)
    assert market.balance() == 900
    market._on_account(topic, status(validator, me, 1000, 0, h=4, t=9_999), False)  # older block: a late copy
    assert market.balance() == 900
    market._on_account(topic, status(validator, me, 1000, 0, h=5, t=999), False)  # same block, earlier time
    assert market.balance() == 900
    newer = status(validator, me, 850, 150, h=5, t=1_001)
    market._on_account(topic, newer, False)
    assert market.balance() == 850 and node.store.account() == AccountRow(850, 150, 1_001, 5, newer, me)
    restarted = MarketNode(node.id, node.config, node.store, node.bus, node.verifier, node._dirty)
    assert restarted.balance() == 850, "from the store, before the bus is back"


@pytest.mark.parametrize("case", ["stranger signed", "another account", "another topic", "not an account status"])
def test_a_status_that_is_not_the_ledgers_word_on_our_account_changes_nothing(setup, case):
    node, validator = setup
    me, topic = mine(node)
    node.market._on_account(topic, status(validator, me, 500, 0, h=1), False)
    raw = {
        "stranger signed": status(SigningKey.generate(), me, 7, 0, h=9),
        "another account": status(validator, b"n" * 32, 7, 0, h=9),
        "another topic": status(validator, me, 7, 0, h=9),
        "not an account status": Status(ctp=bytes(16), state="held", t=1, h=9).sign(validator),
    }[case]
    on = topics.account(b"n" * 32) if case == "another topic" else topic
    node.market._on_account(on, raw, False)
    assert node.market.balance() == 500 and node.store.account().h == 1


def test_accept_names_the_reason(setup):
    node, validator = setup
    me, topic = mine(node)
    check = lambda raw, on=topic: accept(node.verifier, on, raw, wall_ms(), me)  # noqa: E731
    assert check(status(validator, me, 3, 4, h=2)) == AccountRow(3, 4, 1_000, 2, status(validator, me, 3, 4, h=2), me)
    assert reason(check, status(SigningKey.generate(), me, 3, 4, h=2)) == "signature"
    assert reason(check, status(validator, b"n" * 32, 3, 4, h=2)) == "type"
    assert reason(check, status(validator, me, 3, 4, h=2), topics.account(b"n" * 32)) == "type"
    assert reason(check, b"\x80") == "decode"


def test_a_meter_without_an_account_has_no_balance(setup):
    node, _ = setup
    (node.id.root / "account.key").unlink()
    bare = MarketNode(node.id, node.config, node.store, node.bus, node.verifier, node._dirty)
    assert bare.account is None and bare.balance() is None


def order(side: Side, state: str, wh: int = 10, price: int = 3) -> OrderRow:
    return OrderRow(b"i" * 16, side, 1, wh, price, 0, b"m", None, None, None, None, None, state, "", 0, 0, 0, 0, 0)


def test_spendable_is_the_balance_less_the_escrow_of_bids_the_ledger_has_not_answered():
    rows = [
        order(Side.BID, SENT),  # 30 not yet in any status
        order(Side.BID, OrderState.OPEN),  # its escrow is in the status's `held` already
        order(Side.ASK, SENT),  # an ask holds nothing
        order(Side.BID, "rejected"),
    ]
    assert spendable(100, rows) == 70
    assert spendable(20, rows) == 0, "never below nothing"
    assert spendable(100, []) == 100
