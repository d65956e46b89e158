"""The market story of tests/data/vectors-ext.json is what ledger.clearing.clear makes of its
book: the `cleared` vector's products and fill count, and the fill document's Wh and amount.
So the vectors a second implementation checks against agree with the ledger's rule."""

from __future__ import annotations

import cbor2

from ledger.clearing import BookAsk, BookBid, clear
from tests.support.ext import EXT, EXT_VALID
from tests.support.wire import body_map
from wire.market import order_id_of


def _bid(name: str) -> BookBid:
    b = body_map(EXT_VALID[name])
    return BookBid(id=order_id_of(EXT_VALID[name]), wh=b["wh"], price=b["price"], green=b["green"])


def test_the_vector_book_clears_to_the_cleared_vector_and_the_fill_document():
    """The book at clearing: bob's ask, alice's green bid and her revealed sealed bid (her
    bid at 10 was withdrawn)."""
    a = body_map(EXT_VALID["ask_m0002"])
    ask = BookAsk(id=order_id_of(EXT_VALID["ask_m0002"]), wh=a["wh"], price=a["price"], source=a["src"])
    result = clear([_bid("bid_green"), _bid("bid_sealed")], [ask])
    cleared = body_map(EXT_VALID["cleared"])
    assert [[p.price, p.wh] for p in result.products] == [cleared["green"], cleared["open"]]
    assert len(result.fills) == cleared["fills"]
    doc = cbor2.loads(bytes.fromhex(EXT["market"]["fill"]["document"]))
    green = result.fills[0]
    assert (green.product, green.bid, green.ask) == ("green", doc["bid"][:16], doc["ask"][:16])
    assert (green.wh, green.amount) == (doc["wh"], doc["amount"])
    assert result.filled_wh(ask.id) == body_map(EXT_VALID["order_filled_ask"])["filled"]
