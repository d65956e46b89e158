"""A meter started again after `spb-meter rotate-key` (docs/PROTOCOL.md §10.3): trades and
orders of before name the old key, and the ledger pays them from or to the new one, so the
meter keeps them as its own; its money is the new key's status, never the old key's 0/0; a
message the old key signed and the ledger refuses `rotated` is signed again by the new key.

MeterNode with a real store and no broker, statuses signed by the genesis validator handed to
its handlers as paho would; the rotation on disk is edge.rotation's, as the command does it
once the ledger applied it. On the bus: tests/system/test_meter_rotation.py."""

from __future__ import annotations

import hashlib
import sqlite3
from contextlib import closing

import pytest
from nacl.signing import SigningKey

from broker.clock import wall_ms
from broker.keys import load_key
from deploy.provision import provision
from edge import market, orders, rotation, trades, tx
from edge.config import MeterConfig
from edge.meter import MeterNode
from edge.state_dir import MeterIdentity
from edge.store import AccountRow, MeterStore, OrderRow, TradeRow
from tests.support.meter import add_witnessed_batch
from wire import topics
from wire.messages import (
    AccountStatus,
    Cancel,
    CtpState,
    Order,
    OrderState,
    Rejection,
    Reveal,
    Side,
    Status,
    Withdraw,
    open_message,
)

IMS = 10_000


@pytest.fixture
def community(tmp_path):
    """m0001 with a witnessed key batch, and the key of the genesis's only validator."""
    now = wall_ms()
    made = provision(tmp_path / "c", meters=2, accounts=None, validators=1, now_ms=now - 60_000)
    m1, m2 = (MeterIdentity.load(made.root / "meters" / m) for m in ("m0001", "m0002"))
    with closing(MeterStore(m1.db_path)) as store:
        add_witnessed_batch(store, m1, m2, now)
    return m1, load_key(made.root / "validators" / "v0" / "validator.key")


def start(identity: MeterIdentity) -> MeterNode:
    return MeterNode(identity, MeterConfig(interval_s=IMS // 1000, resend_s=1), "127.0.0.1", 9, sense=lambda _e: (0, 0))


def rotate(node: MeterNode) -> tuple[bytes, bytes]:
    """Stop the meter, rotate its key as `spb-meter rotate-key` does once applied, start it again."""
    node.store.close()
    change = rotation.prepare(node.id.root, wall_ms())
    rotation.switch(node.id.root, change)
    return change.old_pk, change.new_pk


def held(validator, ctp: bytes, payer: bytes, payee: bytes, t: int) -> bytes:
    return Status(ctp=ctp, state=CtpState.HELD, t=t, h=5, msg=b"d" * 32, payer=payer, payee=payee).sign(validator)


def account_status(validator, account: bytes, balance: int, held: int, h: int, t: int) -> bytes:
    return AccountStatus(account=account, balance=balance, held=held, t=t, h=h).sign(validator)


def test_a_fill_of_a_bid_and_a_sale_naming_the_old_key_are_ours_after_the_restart(community):
    identity, validator = community
    node = start(identity)
    now = wall_ms()
    k = now // IMS + 1
    bid = orders.new_bid(node.store, node.market.account, 4, 5, k, False, False, (k + 2) * IMS, now)
    node.housekeeping(now)
    old, new = rotate(node)
    node = start(identity)
    try:
        assert (node.market.account_pk, node.market.account_pks) == (new, (new, old))
        assert node.store.account_keys() == [old, new], "rotate-key recorded the old key, the start the new"
        clearing_t = k * IMS + 50
        filled = Order(id=bid.id, k=k, side=Side.BID, state=OrderState.FILLED, filled=4, t=clearing_t, h=5)
        node.housekeeping(now + 1)
        node.market._on_order(topics.market_order(k, bid.id), filled.sign(validator), False)
        fill_id, sale_id = b"F" * 16, b"S" * 16
        node.market._on_any_status(topics.status(fill_id), held(validator, fill_id, old, b"s" * 32, clearing_t), False)
        node.market._on_any_status(topics.status(sale_id), held(validator, sale_id, b"b" * 32, old, 1000), False)
        node.housekeeping(now + 2)
        (trade,) = node.store.trades()
        assert (trade.id, trade.state, trade.wh) == (fill_id, CtpState.HELD, 4), "the old key's fill, to confirm"
        roles = {s.id: (s.role, s.order_id) for s in node.store.sales()}
        assert roles == {fill_id: (market.BOUGHT, bid.id), sale_id: (market.SOLD, None)}
        assert node.view(now + 3).phase == CtpState.HELD  # the fill shows first, the sale after
    finally:
        node.store.close()


def test_the_money_is_the_new_keys_status_and_the_old_keys_0_0_is_ignored(community):
    identity, validator = community
    node = start(identity)
    old = node.market.account_pk
    node.market._on_account(topics.account(old), account_status(validator, old, 700, 300, h=8, t=8_000), False)
    # The rotation's block, h 9: the old key emptied (a meter that ran with the old key, say after
    # a rotate-key that timed out, keeps that 0/0), the new key at once with the money.
    node.market._on_account(topics.account(old), account_status(validator, old, 0, 0, h=9, t=9_000), False)
    assert node.market.balance() == 0
    _, new = rotate(node)
    node = start(identity)
    try:
        subscribed = [t for t in node.bus._subscriptions if t.startswith(topics.ACCOUNT)]
        assert subscribed == [topics.account(new)], "the new account's topic, not the old"
        assert node.market.balance() == 0, "the stored status until the new key's comes"
        node.market._on_account(topics.account(old), account_status(validator, old, 0, 0, h=10, t=10_000), False)
        assert node.store.account().account == old and node.store.account().h == 9, "not ours any more"
        first = account_status(validator, new, 700, 300, h=9, t=9_000)  # the same block and time as the 0/0
        node.market._on_account(topics.account(new), first, False)
        assert node.market.balance() == 700
        assert node.store.account() == AccountRow(700, 300, 9_000, 9, first, new)
        node.market._on_account(topics.account(new), account_status(validator, new, 1, 0, h=8, t=1), False)
        assert node.market.balance() == 700, "an older status of the new key does not replace its newer one"
    finally:
        node.store.close()


def test_messages_the_old_key_signed_are_signed_again_by_the_new_key_when_refused_rotated(community):
    identity, validator = community
    node = start(identity)
    now = wall_ms()
    k = now // IMS + 3
    account = node.market.account
    assert account is not None
    bid = orders.new_bid(node.store, account, 4, 5, k, False, False, (k + 2) * IMS, now)
    bid = node.store.update_order(bid.id, lambda r: r._replace(state=OrderState.OPEN))
    withdrawn = orders.withdraw(node.store, account, bid.id, IMS, now)
    ctp = tx.new_ctp(node.store, account, b"s" * 32, 10, 2, now - 5_000, now - 10_000)
    node.store.update_trade(ctp.id, lambda r: r._replace(state=CtpState.HELD))
    cancelled = tx.cancel(node.store, account, ctp.id, now)
    _, new = rotate(node)
    node = start(identity)
    try:
        node.housekeeping(now)  # follows what the old key signed, as a start after the rotation does
        for raw in (withdrawn.withdraw, cancelled.cancel):
            assert raw is not None
            refused = Rejection(msg=hashlib.sha256(raw).digest(), reason="rotated", t=now).sign(validator)
            node._on_reject(topics.REJECTS, refused, False)
        node.housekeeping(now + 1)
        (row,) = node.store.orders()
        assert row.withdraw is not None and open_message(row.withdraw, Withdraw).body.by == new
        (trade,) = node.store.trades()
        assert trade.cancel is not None and open_message(trade.cancel, Cancel).body.payer == new
        assert [r.topic for r in node.store.outbox_after(0, 10)][-2:] == [topics.TX_WITHDRAW, topics.TX_CANCEL]
        for raw in (row.withdraw, trade.cancel):  # the new key's refused `rotated` too: not signed again and again
            refused = Rejection(msg=hashlib.sha256(raw).digest(), reason="rotated", t=now).sign(validator)
            node._on_reject(topics.REJECTS, refused, False)
        node.housekeeping(now + 2)
        assert (node.store.orders()[0].withdraw, node.store.trades()[0].cancel) == (row.withdraw, trade.cancel)
    finally:
        node.store.close()


# ---- the pure rules --------------------------------------------------------------------------

OLD, NEW = b"o" * 32, b"n" * 32


def sealed(reveal_by: bytes | None = None, withdraw_by: bytes | None = None) -> OrderRow:
    """A sealed bid of ours with a reveal or withdraw that `reveal_by` / `withdraw_by` signed
    (the rules read who signed, not the signature: any key signs here)."""
    key = SigningKey.generate()
    reveal = None if reveal_by is None else Reveal(buyer=reveal_by, seal=b"s" * 16, bid=b"b", nonce=b"n" * 32, t=1)
    withdraw = None if withdraw_by is None else Withdraw(by=withdraw_by, order=b"s" * 16, t=1)
    return OrderRow(
        b"s" * 16, Side.BID, 10, 4, 5, 0, b"m", b"b", b"n" * 32,
        None if reveal is None else reveal.sign(key), None if withdraw is None else withdraw.sign(key),
        None, OrderState.SEALED, "", 0, 0, 0, 0, 0,
    )  # fmt: skip


def test_a_reveal_or_withdraw_of_a_replaced_key_refused_rotated_is_dropped_to_sign_again():
    gate = 10 * IMS
    reveal = market.on_reject(sealed(reveal_by=OLD), market.REVEAL, "rotated", gate, NEW)
    assert reveal is not None and reveal.reveal is None and reveal.reason == "reveal rotated"
    assert market.next_step(reveal, gate + 1_000, 1_000, IMS, 5_000) == market.REVEAL
    withdraw = market.on_reject(sealed(withdraw_by=OLD), "withdraw", "rotated", gate - 5_000, NEW)
    assert withdraw is not None and withdraw.withdraw is None
    assert market.next_step(withdraw, gate - 4_999, 1_000, IMS, 5_000) == market.WITHDRAW
    assert market.next_step(withdraw, gate, 1_000, IMS, 5_000) is None, "too late: the interval has begun"
    ours = market.on_reject(sealed(withdraw_by=NEW), "withdraw", "rotated", gate - 5_000, NEW)
    assert ours is not None and ours.withdraw is not None, "our current key replaced: nothing to sign again"
    assert market.next_step(ours, gate - 4_999, 1_000, IMS, 5_000) != market.WITHDRAW


def test_a_cancel_of_a_replaced_key_refused_rotated_is_dropped_to_sign_again():
    def trade(cancel_by: bytes) -> TradeRow:
        cancel = Cancel(ctp=b"c" * 16, payer=cancel_by, t=1).sign(SigningKey.generate())
        return TradeRow(b"c" * 16, b"ctp", 1, 0, 2, 1_000, CtpState.HELD, "", 0, None, cancel, 0, 0, 0)

    dropped = trades.on_reject(trade(OLD), "cancel", "rotated", 5_000, NEW)
    assert dropped is not None and dropped.cancel is None and dropped.reason == trades.CANCEL_ROTATED
    assert trades.next_step(dropped, 0, 5_000, 1_000) == trades.CANCEL
    ours = trades.on_reject(trade(NEW), "cancel", "rotated", 5_000, NEW)
    assert ours is not None and ours.cancel is not None and ours.reason == "cancel rotated"
    assert trades.next_step(ours, 0, 5_000, 1_000) != trades.CANCEL


def test_the_store_remembers_account_keys_and_takes_an_account_table_from_before(tmp_path):
    path = tmp_path / "meter.db"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE account (one INTEGER PRIMARY KEY CHECK (one = 0), balance INTEGER NOT NULL, "
        "held INTEGER NOT NULL, t INTEGER NOT NULL, h INTEGER NOT NULL, raw BLOB NOT NULL)"
    )
    db.execute("INSERT INTO account VALUES (0, 5, 1, 100, 3, x'aa')")
    db.commit()
    db.close()
    with closing(MeterStore(path)) as store:
        assert store.account() == AccountRow(5, 1, 100, 3, b"\xaa", b"")
        for pk, since in ((NEW, 20), (OLD, 10), (NEW, 30)):
            store.remember_account_key(pk, since)
        assert store.account_keys() == [OLD, NEW]
        assert store.save_account(AccountRow(6, 0, 100, 3, b"\xbb", NEW)), "of a key: replaces the keyless one"
        assert not store.save_account(AccountRow(7, 0, 99, 3, b"\xcc", NEW))
    with closing(MeterStore(path)) as store:  # opened again: migrated once
        assert store.account() == AccountRow(6, 0, 100, 3, b"\xbb", NEW)


def test_a_meter_started_with_a_rotation_pending_says_so(community, caplog):
    identity, _ = community
    rotation.prepare(identity.root, wall_ms())  # `spb-meter rotate-key` got no answer in time
    node = start(identity)
    try:
        assert "run `spb-meter rotate-key` again" in caplog.text
        assert node.market.account_pks == (node.market.account_pk,), "the key is not switched yet"
    finally:
        node.store.close()
