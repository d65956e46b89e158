"""MeterNode on the market with a real store and no broker: statuses signed by the genesis
validator are handed to its handlers as paho would; what it records, signs and queues."""

from __future__ import annotations

import pytest

from broker.clock import wall_ms
from broker.keys import load_key
from deploy.provision import provision
from edge import orders
from edge.cli import main
from edge.config import MeterConfig
from edge.display import SOLD
from edge.meter import MeterNode
from edge.state_dir import MeterIdentity
from edge.store import MeterStore
from tests.support.meter import add_witnessed_batch
from wire import topics
from wire.messages import CtpState, Erc, Order, OrderState, Side, Status, open_message

IMS = 10_000


@pytest.fixture
def setup(tmp_path):
    """m0001 with a witnessed key batch, its MeterNode (never connected: port 9), and the key
    of the genesis's only validator."""
    now = wall_ms()
    community = provision(tmp_path / "c", meters=2, accounts=None, validators=1, now_ms=now - 60_000)
    m1, m2 = (MeterIdentity.load(community.root / "meters" / m) for m in ("m0001", "m0002"))
    store = MeterStore(m1.db_path)
    add_witnessed_batch(store, m1, m2, now)
    store.close()
    node = MeterNode(m1, MeterConfig(interval_s=IMS // 1000, resend_s=1), "127.0.0.1", 9, sense=lambda _e: (0, 0))
    validator = load_key(community.root / "validators" / "v0" / "validator.key")
    yield node, validator
    node.store.close()


def signed_held(validator, ctp: bytes, payer: bytes, payee: bytes, t: int) -> bytes:
    return Status(ctp=ctp, state=CtpState.HELD, t=t, h=5, msg=b"d" * 32, payer=payer, payee=payee).sign(validator)


def test_a_fill_of_our_bid_becomes_our_trade_and_is_confirmed_with_a_key_of_the_batch_it_named(setup):
    node, validator = setup
    now = wall_ms()
    k = now // IMS + 1
    me = bytes(node.id.account_key().verify_key)
    bid = orders.new_bid(node.store, node.id.account_key(), 4, 5, k, False, False, (k + 2) * IMS, now)
    node.housekeeping(now)
    assert topics.market_order(k, bid.id) in node.market._watched
    clearing_t = k * IMS + 50
    filled = Order(id=bid.id, k=k, side=Side.BID, state=OrderState.FILLED, filled=4, t=clearing_t, h=5)
    node.market._on_order(topics.market_order(k, bid.id), filled.sign(validator), False)
    fill_id = b"F" * 16
    node.market._on_any_status(
        topics.status(fill_id), signed_held(validator, fill_id, me, b"s" * 32, clearing_t), False
    )
    node.housekeeping(now + 1)
    (trade,) = node.store.trades()
    assert (trade.id, trade.state, trade.wh, trade.exp) == (fill_id, "held", 4, (k + 2) * IMS)
    assert node.store.batch(trade.batch).root == bid.root
    node.sample(0, 0)
    node.sense = lambda _elapsed: (3600, 0)
    assert [node.sample(ms, ms) for ms in (1, 1_001, 2_001, 3_001, 4_001)] == [False] * 4 + [True]  # 1 Wh a second
    node.housekeeping(now + 2)
    erc_raw = node.store.trades()[0].erc
    erc = open_message(erc_raw, Erc).body
    assert (erc.ctp, erc.wh) == (fill_id, 4)
    assert open_message(erc.coe, "coe").body.root == bid.root  # the ledger's meter-mismatch check


def test_a_sale_is_counted_shown_and_its_export_counted_against_it(setup, capsys):
    node, validator = setup
    me = bytes(node.id.account_key().verify_key)
    sale_id = b"S" * 16
    node.market._on_any_status(topics.status(sale_id), signed_held(validator, sale_id, b"b" * 32, me, 1000), False)
    node.housekeeping(wall_ms())
    (sale,) = node.store.sales()
    assert (sale.role, sale.state, sale.payer) == ("sold", "held", b"b" * 32)
    assert node.view(wall_ms()).phase == SOLD
    node.sample(0, 0)
    node.sense = lambda _elapsed: (0, 7200)  # 2 Wh a second out
    node.sample(1, 1)
    node.sample(1_001, 1_001)
    node.publish_reading()
    settled = Status(ctp=sale_id, state=CtpState.SETTLED, t=2000, h=6, msg=b"e" * 32).sign(validator)
    node.market._on_any_status(topics.status(sale_id), settled, False)  # no key of ours in it: followed by id
    assert node.store.sales()[0].state == "settled"
    assert main(["status", str(node.id.root)]) == 0
    assert f"sale     {sale_id.hex()}  settled  0 Wh exported of ? Wh" in capsys.readouterr().out


def test_statuses_of_other_households_are_dropped_before_any_check(setup):
    """The cheap filter: bytes without our account key are not even decoded."""
    node, validator = setup
    node.market._on_any_status(topics.status(b"x" * 16), b"\xff not cbor", False)
    other = signed_held(validator, b"x" * 16, b"a" * 32, b"b" * 32, 1000)
    node.market._on_any_status(topics.status(b"x" * 16), other, False)
    assert node.store.sales() == []


def test_orders_and_cancel_order_commands(setup, capsys):
    node, _ = setup
    root = node.id.root
    (root / "config.toml").write_text(f"interval_s = {IMS // 1000}\n")
    assert main(["bid", str(root), "4", "5", "--green"]) == 0
    order_id = capsys.readouterr().out.strip()
    assert main(["ask", str(root), "3", "2"]) == 1  # no registered source
    assert "no registered source" in capsys.readouterr().err
    assert main(["orders", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"order    {order_id}" in out and "bid green  4 Wh at 5  sent" in out
    assert main(["cancel-order", str(root), order_id]) == 0
    assert [r.topic for r in node.store.outbox_after(0, 10)] == [topics.TX_BID, topics.TX_WITHDRAW]
    assert main(["bid", str(root), "4", "5", "--interval", "soon"]) == 1


def test_a_sale_ended_before_housekeeping_followed_it_still_ends(setup):
    """After an outage a sale's held and refunded statuses come back to back: the end must
    pass the filter though no housekeeping ran in between (its status does not name us)."""
    node, validator = setup
    me = bytes(node.id.account_key().verify_key)
    sale_id = b"R" * 16
    node.market._on_any_status(topics.status(sale_id), signed_held(validator, sale_id, b"b" * 32, me, 1000), False)
    refunded = Status(ctp=sale_id, state=CtpState.REFUNDED, t=2000, h=6).sign(validator)
    assert me not in refunded
    node.market._on_any_status(topics.status(sale_id), refunded, False)
    assert [(s.id, s.state) for s in node.store.sales()] == [(sale_id, CtpState.REFUNDED)]


def test_a_sale_whose_held_status_never_came_is_known_by_its_end(setup):
    """A clearing late enough that the next block refunds its fills: the held status was
    superseded before it went out, so the seller's meter sees only the refund, which names
    it (§9). It records the sale as ended, once; a copy changes nothing."""
    node, validator = setup
    me = bytes(node.id.account_key().verify_key)
    sale_id = b"L" * 16
    refunded = Status(
        ctp=sale_id, state=CtpState.REFUNDED, t=2000, h=6, payer=b"b" * 32, payee=me, wh=4, exp=1900
    ).sign(validator)
    for _ in range(2):
        node.market._on_any_status(topics.status(sale_id), refunded, False)
    [sale] = node.store.sales()
    assert (sale.id, sale.role, sale.state, sale.wh) == (sale_id, "sold", CtpState.REFUNDED, 4)
    assert node.store.trade(sale_id) is None, "nothing of ours to confirm"


def test_a_restarted_meter_follows_its_held_sales_before_it_connects(setup):
    """An end status queued for the meter while it was down comes before any housekeeping."""
    node, validator = setup
    me = bytes(node.id.account_key().verify_key)
    sale_id = b"Q" * 16
    node.market._on_any_status(topics.status(sale_id), signed_held(validator, sale_id, b"b" * 32, me, 1000), False)
    node.store.close()
    node = MeterNode(node.id, node.config, "127.0.0.1", 9, sense=lambda _e: (0, 0))
    try:
        settled = Status(ctp=sale_id, state=CtpState.SETTLED, t=2000, h=6, msg=b"e" * 32).sign(validator)
        node.market._on_any_status(topics.status(sale_id), settled, False)
        assert [(s.id, s.state) for s in node.store.sales()] == [(sale_id, CtpState.SETTLED)]
    finally:
        node.store.close()
