"""The meter's side of the market: edge.market's pure decisions (orders, reveals, sales and
fills), the oversold retry of edge.trades, the "sold" frame, and edge.orders signing into a
real store."""

from __future__ import annotations

import hashlib

import pytest

from broker.clock import wall_ms
from deploy.provision import provision
from edge import market, orders
from edge.display import DIM_YELLOW, SOLD, YELLOW, View, render
from edge.energy import WMS_PER_WH
from edge.market import BOUGHT, REVEAL
from edge.market import SOLD as SOLD_ROLE
from edge.state_dir import MeterIdentity
from edge.store import SENT, MeterStore, OrderRow, SaleRow, TradeRow
from edge.trades import OVERSOLD, RECORD_MS, next_step, on_reject, retry_after_oversold
from edge.tx import TradeError
from tests.support.meter import add_witnessed_batch
from wire import topics
from wire.messages import Bid, CtpState, Order, OrderState, Reveal, Seal, Side, Status, open_message

IMS = 10_000  # interval, ms
REVEAL_MS = 5_000
RESEND = 1_000
K = 180_000_000  # an interval
GATE = K * IMS
ME, OTHER = b"m" * 32, b"o" * 32


def order(state: str = SENT, *, side: str = Side.BID, sealed: bool = False, filled: int = 0, **kw) -> OrderRow:
    fields = {
        "id": b"o" * 16,
        "side": side,
        "k": K,
        "wh": 10,
        "price": 3,
        "green": 0,
        "msg": b"the bid or ask",
        "bid": b"the sealed bid" if sealed else None,
        "nonce": b"n" * 32 if sealed else None,
        "reveal": None,
        "withdraw": None,
        "root": b"r" * 32,
        "state": state,
        "reason": "",
        "filled": filled,
        "status_t": 0,
        "sent": GATE - 5 * IMS,
        "created": GATE - 5 * IMS,
        "changed": GATE - 5 * IMS,
    }
    fields.update(kw)
    return OrderRow(**fields)


def order_status(state: str, filled: int = 0, id: bytes = b"o" * 16, t: int = GATE + 100) -> Order:
    return Order(id=id, k=K, side=Side.BID, state=state, filled=filled, t=t, h=7)


# ---- orders ------------------------------------------------------------------------------


def test_order_states_only_move_forward():
    opened = market.on_order(order(), order_status(OrderState.OPEN), GATE - IMS)
    assert opened.state == OrderState.OPEN
    filled = market.on_order(opened, order_status(OrderState.PARTIAL, 4), GATE)
    assert (filled.state, filled.filled, filled.status_t) == (OrderState.PARTIAL, 4, GATE + 100)
    assert market.on_order(filled, order_status(OrderState.OPEN), GATE) is None  # a late status
    assert market.on_order(filled, order_status(OrderState.PARTIAL, 4), GATE) is None  # nothing new
    assert market.on_order(order(), order_status(OrderState.OPEN, id=b"x" * 16), GATE) is None  # not ours


def test_a_sealed_bid_is_known_under_its_seal_and_then_its_bid():
    sealed = order(sealed=True)
    bid_id = hashlib.sha256(b"the sealed bid").digest()[:16]
    assert sealed.bid_id == bid_id
    assert market.order_topics(sealed) == {topics.market_order(K, sealed.id), topics.market_order(K, bid_id)}
    assert market.on_order(sealed, order_status(OrderState.FILLED, 10, id=bid_id), GATE).state == OrderState.FILLED


def test_a_sealed_bid_is_revealed_after_the_gate_within_the_window():
    sealed = order(OrderState.SEALED, sealed=True)
    margin = REVEAL_MS // 10
    assert market.next_step(sealed, GATE + margin - 1, RESEND, IMS, REVEAL_MS) is None
    assert market.next_step(sealed, GATE + margin, RESEND, IMS, REVEAL_MS) == REVEAL
    assert market.next_step(sealed, GATE + REVEAL_MS, RESEND, IMS, REVEAL_MS) is None  # the window closed
    revealed = sealed._replace(reveal=b"reveal", sent=GATE + margin)
    assert market.next_step(revealed, GATE + margin + RESEND - 1, RESEND, IMS, REVEAL_MS) is None
    assert market.next_step(revealed, GATE + margin + RESEND, RESEND, IMS, REVEAL_MS) == topics.TX_REVEAL
    assert market.next_step(revealed._replace(state=OrderState.OPEN), GATE + 2 * margin, RESEND, IMS, REVEAL_MS) is None


def test_an_unanswered_order_goes_again_until_its_gate():
    waiting = order(sent=GATE - 3 * RESEND)
    assert market.next_step(waiting, GATE - 1, RESEND, IMS, REVEAL_MS) == topics.TX_BID
    assert market.next_step(order(sealed=True, sent=0), GATE - 1, RESEND, IMS, REVEAL_MS) == topics.TX_SEAL
    assert market.next_step(order(side=Side.ASK, sent=0), GATE - 1, RESEND, IMS, REVEAL_MS) == topics.TX_ASK
    assert market.next_step(waiting, GATE, RESEND, IMS, REVEAL_MS) is None


def test_order_rejects():
    assert market.on_reject(order(), "order", "duplicate", GATE) is None
    assert market.on_reject(order(), "order", "insufficient-funds", GATE)[12:14] == ("rejected", "insufficient-funds")
    busy = market.on_reject(order(), "order", "busy", GATE)
    assert (busy.state, busy.reason) == (SENT, "order busy")  # decided nothing: it goes again
    early = market.on_reject(order(OrderState.SEALED, sealed=True), REVEAL, "too-early", GATE)
    assert (early.state, early.reason) == (OrderState.SEALED, "reveal too-early")


# ---- sales and fills ----------------------------------------------------------------------


def held(payer: bytes, payee: bytes, t: int = GATE + 100, ctp: bytes = b"f" * 16) -> Status:
    return Status(ctp=ctp, state=CtpState.HELD, t=t, h=9, msg=b"d" * 32, payer=payer, payee=payee)


def test_a_held_status_naming_us_is_a_sale_or_a_fill():
    topic = topics.status(b"f" * 16)
    assert market.sale_of(held(OTHER, ME), topic, (ME,), GATE).role == SOLD_ROLE
    assert market.sale_of(held(ME, OTHER), topic, (ME,), GATE).role == BOUGHT
    assert market.sale_of(held(OTHER, b"x" * 32), topic, (ME,), GATE) is None
    assert market.sale_of(held(OTHER, ME), topics.status(b"g" * 16), (ME,), GATE) is None  # on another id's topic


def test_a_final_status_naming_us_is_a_sale_known_at_its_end():
    """A held status superseded before it was published never is (decision 0007): the seller
    learns of the sale from its settled or refunded status, which names the parties (§9)."""
    topic = topics.status(b"f" * 16)
    ended = Status(ctp=b"f" * 16, state=CtpState.REFUNDED, t=GATE + 900, h=12, payer=OTHER, payee=ME, wh=3, exp=GATE)
    sale = market.sale_of(ended, topic, (ME,), GATE + 901)
    assert sale is not None and (sale.role, sale.state, sale.wh, sale.t) == (
        SOLD_ROLE,
        CtpState.REFUNDED,
        3,
        GATE + 900,
    )
    rejected = Status(ctp=b"f" * 16, state=CtpState.REJECTED, t=GATE, reason="insufficient-funds")
    assert market.sale_of(rejected, topic, (ME,), GATE) is None
    v1 = Status(ctp=b"f" * 16, state=CtpState.SETTLED, t=GATE, h=12)  # a v1 chain's: names nobody
    assert market.sale_of(v1, topic, (ME,), GATE) is None


def test_a_status_naming_a_key_we_replaced_is_still_ours():
    """After a rotation (§10.3) a trade of before names the old key, and the ledger pays it to
    or from the new one: a sale to the old key, a fill of its bid, are ours."""
    topic, new = topics.status(b"f" * 16), b"n" * 32
    ours = (new, ME)  # the current key first, then the one it replaced
    assert market.sale_of(held(OTHER, ME), topic, ours, GATE).role == SOLD_ROLE
    assert market.sale_of(held(ME, OTHER), topic, ours, GATE).role == BOUGHT
    assert market.sale_of(held(OTHER, new), topic, ours, GATE).role == SOLD_ROLE
    assert market.sale_of(held(OTHER, b"x" * 32), topic, ours, GATE) is None
    assert market.sale_of(held(OTHER, ME), topic, (new,), GATE) is None  # a meter that forgot its old key


def sale(role: str, id: bytes = b"f" * 16, t: int = GATE + 100, wh: int | None = None, order_id=None) -> SaleRow:
    return SaleRow(id, role, ME, OTHER, wh, t, CtpState.HELD, order_id, 0, t)


def test_a_fill_belongs_to_our_bid_filled_in_its_block_and_takes_the_wh_not_yet_given():
    bid = order(OrderState.PARTIAL, filled=6, status_t=GATE + 100)
    older = order(OrderState.FILLED, filled=5, status_t=GATE - IMS + 100, id=b"p" * 16)
    assert market.match(sale(BOUGHT), [older, bid], []) == (bid, 6)
    first = sale(BOUGHT, id=b"a" * 16, wh=4, order_id=bid.id)
    assert market.match(sale(BOUGHT), [bid], [first]) == (bid, 2)
    assert market.match(sale(BOUGHT), [bid], [first._replace(wh=6)]) is None  # nothing left of it


def test_a_sale_without_an_ask_filled_in_its_block_is_a_direct_ctp():
    ask = order(OrderState.FILLED, side=Side.ASK, filled=5, status_t=GATE + 100)
    assert market.match(sale(SOLD_ROLE), [ask], []) == (ask, 5)
    assert market.match(sale(SOLD_ROLE, t=GATE + 5 * IMS), [ask], []) is None


def test_export_is_counted_against_held_sales_oldest_first():
    a, b = sale(SOLD_ROLE, id=b"a" * 16, wh=2), sale(SOLD_ROLE, id=b"b" * 16, wh=3)
    unknown = sale(SOLD_ROLE, id=b"c" * 16)
    progress: dict[bytes, int] = {}
    market.allocate_export([unknown, a, b], progress, 3 * WMS_PER_WH)
    assert progress == {a.id: 2 * WMS_PER_WH, b.id: WMS_PER_WH}
    view = market.sale_view([a, b], progress, True, -500)
    assert (view.phase, view.delivered_wh, view.promised_wh) == (SOLD, 2, 2)


def test_sold_rises_in_yellow_from_the_bottom():
    frame = render(View(online=True, phase=SOLD, delivered_wh=1, promised_wh=4), 0)
    assert frame == (DIM_YELLOW,) * 48 + (YELLOW,) * 16
    assert render(View(online=True, phase=SOLD), 0) == (DIM_YELLOW,) * 64


# ---- oversold ----------------------------------------------------------------------------


def test_an_oversold_erc_goes_again_once_per_interval_after_its_end_until_expiry():
    """The seller's export for the interval is proved at its end: the same ERC goes again a
    tenth of an interval after it, once per interval (not every resend_s), until expiry."""
    refused_at = GATE + 3_000
    t = TradeRow(b"i" * 16, b"ctp", 1, 0, 5, GATE + 5 * IMS, "held", "", 0, b"erc", None, GATE + 2_000, GATE, GATE)
    after = on_reject(t, "erc", "oversold", refused_at)
    assert (after.state, after.reason, after.sent) == ("held", OVERSOLD, refused_at)
    retry = retry_after_oversold(refused_at, IMS)
    assert retry == GATE + IMS + IMS // 10
    assert next_step(after, 5 * WMS_PER_WH, retry - 1, RESEND, IMS) is None  # resend_s alone is not enough
    assert next_step(after, 5 * WMS_PER_WH, retry, RESEND, IMS) == topics.TX_ERC
    again = after._replace(sent=retry)
    assert next_step(again, 5 * WMS_PER_WH, retry + IMS - 1, RESEND, IMS) is None
    assert next_step(again, 5 * WMS_PER_WH, retry + IMS, RESEND, IMS) == topics.TX_ERC
    assert next_step(again._replace(sent=GATE + 5 * IMS - 1), 0, GATE + 7 * IMS, RESEND, IMS) == "cancel"  # expired


def test_with_short_intervals_the_oversold_retry_still_leaves_a_block_round_for_the_records():
    """A tenth of a 3 s interval is 300 ms, less than a record takes into a block: at least RECORD_MS."""
    assert retry_after_oversold(GATE + 1_100, 3_000) == GATE + 3_000 + RECORD_MS
    assert retry_after_oversold(GATE + 100, 3_000) == GATE + RECORD_MS  # the end's records may be on their way
    assert retry_after_oversold(GATE + 100, 300_000) == GATE + 30_000
    assert retry_after_oversold(GATE + 30_000, 300_000) == GATE + 300_000 + 30_000


# ---- signing orders into a store ----------------------------------------------------------


@pytest.fixture
def meter(tmp_path):
    now = wall_ms()
    community = provision(tmp_path / "c", meters=2, accounts=None, validators=1, now_ms=now - 60_000)
    m1, m2 = (MeterIdentity.load(community.root / "meters" / m) for m in ("m0001", "m0002"))
    store = MeterStore(m1.db_path)
    add_witnessed_batch(store, m1, m2, now)
    yield m1, store
    store.close()


def test_a_sealed_bid_commits_to_its_bid_and_the_reveal_opens_it(meter):
    identity, store = meter
    now, key = wall_ms(), identity.account_key()
    k = now // IMS + 1
    row = orders.new_bid(store, key, 4, 5, k, True, True, (k + 2) * IMS, now)
    seal = open_message(row.msg, Seal).body
    bid = open_message(row.bid, Bid).body
    assert (seal.k, seal.deposit, seal.c) == (k, 20, hashlib.sha256(row.bid + row.nonce).digest())
    assert (bid.wh, bid.price, bid.green, bid.meter) == (4, 5, True, store.batches()[0].root)
    assert [r.topic for r in store.outbox_after(0, 10)] == [topics.TX_SEAL]  # the bid itself stays here
    revealed = orders.reveal(store, key, row.id, k * IMS + 1)
    body = open_message(revealed.reveal, Reveal).body
    assert (body.seal, body.bid, body.nonce) == (row.id, row.bid, row.nonce)
    assert orders.reveal(store, key, row.id, k * IMS + 2) is None  # once
    assert [r.topic for r in store.outbox_after(0, 10)][-1] == topics.TX_REVEAL


def test_an_order_is_withdrawn_before_its_gate_only(meter):
    identity, store = meter
    now, key = wall_ms(), identity.account_key()
    k = now // IMS + 1
    row = orders.new_bid(store, key, 4, 5, k, False, False, (k + 2) * IMS, now)
    with pytest.raises(TradeError, match="has begun"):
        orders.withdraw(store, key, row.id, IMS, k * IMS)
    assert orders.withdraw(store, key, row.id, IMS, now).withdraw is not None
    with pytest.raises(TradeError, match="no order"):
        orders.withdraw(store, key, b"x" * 16, IMS, now)


def test_an_ask_needs_a_registered_source(meter):
    identity, store = meter
    with pytest.raises(TradeError, match="no registered source"):
        orders.new_ask(store, identity.account_key(), identity.meter, "", 3, 2, 10, wall_ms())
    row = orders.new_ask(store, identity.account_key(), identity.meter, "solar", 3, 2, 10, wall_ms())
    assert row.id == hashlib.sha256(row.msg).digest()[:16]


def test_an_order_is_watched_until_the_ledger_ended_it_however_late():
    """An answer after the fills' expiry (a broker outage across the gate) still ends it."""
    late = market.fill_exp(K, IMS, 1) + 1
    for state in (SENT, OrderState.SEALED, OrderState.OPEN):
        assert market.watched(order(state), late, IMS, 1), state
    for state in (OrderState.FILLED, OrderState.UNFILLED, "rejected"):
        assert not market.watched(order(state), late, IMS, 1), state
    assert market.watched(order(OrderState.FILLED), late - 1, IMS, 1)
