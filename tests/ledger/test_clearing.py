"""The clearing rule (ledger/clearing.py): held against a reference that reads the rule one Wh
at a time, against properties that any correct clearing has, and against worked examples."""

from __future__ import annotations

import math
from fractions import Fraction
from functools import cmp_to_key

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.clearing import (
    RENEWABLE,
    SOURCES,
    BookAsk,
    BookBid,
    Clearing,
    Product,
    book_from_json,
    clear,
    clearing_lines,
)
from tests.support.clearing import EXAMPLE_BOOK, EXAMPLE_LINES


def _ascending(x: bytes, y: bytes) -> int:
    return -1 if x < y else (1 if x > y else 0)


def reference(bids: list[BookBid], asks: list[BookAsk]) -> tuple[list[tuple], list[tuple]]:
    """The rule as the issue words it, with nothing clever: every order is cut into 1-Wh
    units, the bid units and ask units are paired off in priority order while the bid's price
    reaches the ask's, and consecutive units of the same pair are one fill. Returns
    ([(product, price, wh)], [(product, bid id, ask id, wh, amount)])."""

    def bids_by_priority(orders):  # price descending, then id ascending
        return sorted(orders, key=cmp_to_key(lambda x, y: (y.price - x.price) or _ascending(x.id, y.id)))

    def asks_by_priority(orders):  # price ascending, then id ascending
        return sorted(orders, key=cmp_to_key(lambda x, y: (x.price - y.price) or _ascending(x.id, y.id)))

    unsold = {ask.id: ask.wh for ask in asks}
    products, fills = [], []
    for product, its_bids, its_asks in (
        ("green", [b for b in bids if b.green], [a for a in asks if a.source in ("solar", "wind", "hydro")]),
        ("open", [b for b in bids if not b.green], list(asks)),
    ):
        bid_units = [bid for bid in bids_by_priority(its_bids) for _ in range(bid.wh)]
        ask_units = [ask for ask in asks_by_priority(its_asks) for _ in range(unsold[ask.id])]
        pairs = []
        while len(pairs) < min(len(bid_units), len(ask_units)):
            bid, ask = bid_units[len(pairs)], ask_units[len(pairs)]
            if bid.price < ask.price:
                break
            pairs.append((bid, ask))
            unsold[ask.id] -= 1
        if not pairs:
            products.append((product, None, 0))
            continue
        price = math.floor(Fraction(pairs[-1][0].price + pairs[-1][1].price, 2))
        runs: list[list] = []
        for bid, ask in pairs:
            if runs and runs[-1][0] == bid.id and runs[-1][1] == ask.id:
                runs[-1][2] += 1
            else:
                runs.append([bid.id, ask.id, 1])
        products.append((product, price, len(pairs)))
        fills += [(product, b, a, wh, wh * price) for b, a, wh in runs]
    return products, fills


def as_tuples(result: Clearing) -> tuple[list[tuple], list[tuple]]:
    return (
        [(p.name, p.price, p.wh) for p in result.products],
        [(f.product, f.bid, f.ask, f.wh, f.amount) for f in result.fills],
    )


@st.composite
def books(draw, max_orders: int = 14, max_wh: int = 8) -> tuple[list[BookBid], list[BookAsk]]:
    """Small books. Ids of 1-2 bytes (b"\\x01" and b"\\x01\\x00" both occur: byte order, not
    length); prices up to 1, 3 or a million per book, so ties are common in most books."""
    ids = draw(st.lists(st.binary(min_size=1, max_size=2), unique=True, max_size=max_orders))
    top = draw(st.sampled_from([1, 3, 10**6]))
    prices, whs = st.integers(0, top), st.integers(1, max_wh)
    n = draw(st.integers(0, len(ids)))
    bids = [BookBid(i, draw(whs), draw(prices), draw(st.booleans())) for i in ids[:n]]
    asks = [BookAsk(i, draw(whs), draw(prices), draw(st.sampled_from(SOURCES))) for i in ids[n:]]
    return bids, asks


@settings(max_examples=1000, deadline=None)
@given(books())
def test_clear_equals_the_rule_read_one_wh_at_a_time(book):
    assert as_tuples(clear(*book)) == reference(*book)


@settings(max_examples=300, deadline=None)
@given(st.data(), books())
def test_the_order_the_book_comes_in_changes_nothing(data, book):
    bids, asks = book
    shuffled = data.draw(st.permutations(bids)), data.draw(st.permutations(asks))
    assert clear(*shuffled) == clear(bids, asks)


@settings(max_examples=500, deadline=None)
@given(books())
def test_pay_as_clear_within_every_limit_and_nothing_filled_twice(book):
    bids, asks = book
    result = clear(bids, asks)
    bid_of, ask_of = {b.id: b for b in bids}, {a.id: a for a in asks}
    for fill in result.fills:
        bid, ask = bid_of[fill.bid], ask_of[fill.ask]
        assert ask.price <= fill.price <= bid.price
        assert fill.amount == fill.wh * result.price_of(fill.product) and fill.wh > 0
        assert fill.product == ("green" if bid.green else "open")
        if bid.green:
            assert ask.source in RENEWABLE
    for order in [*bids, *asks]:
        filled = sum(f.wh for f in result.fills if order.id in (f.bid, f.ask))
        assert result.filled_wh(order.id) == filled <= order.wh
    for product in result.products:
        assert product.wh == sum(f.wh for f in result.fills if f.product == product.name)
        assert (product.price is None) == (product.wh == 0)
    assert [p.name for p in result.products] == ["green", "open"]
    assert [f.product for f in result.fills] == sorted(f.product for f in result.fills)  # green's first
    # A fill's trade id is derived from its bid and ask (PROTOCOL §9.3): one fill per pair.
    assert len({(f.bid, f.ask) for f in result.fills}) == len(result.fills)


@settings(max_examples=500, deadline=None)
@given(books())
def test_each_product_stops_where_its_best_bid_left_no_longer_reaches_its_best_ask_left(book):
    bids, asks = book
    result = clear(bids, asks)

    def sold(order_id: bytes, products: tuple[str, ...]) -> int:
        return sum(f.wh for f in result.fills if order_id in (f.bid, f.ask) and f.product in products)

    for product, green, ask_ok in (("green", True, RENEWABLE), ("open", False, SOURCES)):
        upto = ("green",) if green else ("green", "open")  # the open product sees the green leftovers
        bids_left = [b.price for b in bids if b.green == green and sold(b.id, upto) < b.wh]
        asks_left = [a.price for a in asks if a.source in ask_ok and sold(a.id, upto) < a.wh]
        assert not bids_left or not asks_left or max(bids_left) < min(asks_left), product


# Worked examples: lines checked by hand against the rule.

G1, O1, O2 = b"\x01", b"\x02", b"\x03"
SOLAR, GRID, FOSSIL = b"\x10", b"\x11", b"\x12"


def test_green_leftovers_are_sold_in_the_open_product_at_its_own_price():
    result = clear(*book_from_json(EXAMPLE_BOOK))  # the arithmetic is in tests/support/clearing.py
    assert clearing_lines(result) == EXAMPLE_LINES
    assert result.price_of("green") == 7 and result.price_of("open") == 5
    assert [result.filled_wh(i) for i in (G1, O1, O2, SOLAR, GRID, FOSSIL)] == [30, 50, 40, 90, 30, 0]


def test_the_price_is_the_midpoint_rounded_down_and_set_by_the_last_pair():
    # 9 and 4 make 6.5: everyone pays 6.
    assert clearing_lines(clear([BookBid(O1, 10, 9, False)], [BookAsk(GRID, 10, 4, "grid")])) == [
        "product green price - wh 0",
        "product open price 6 wh 10",
        "fill open 02 11 10 60",
    ]
    # The bid crosses the ask at 2 and then the ask at 8: the price is between 9 and 8, and
    # the seller who asked 2 gets 8 too.
    assert clearing_lines(
        clear([BookBid(O1, 15, 9, False)], [BookAsk(GRID, 10, 2, "grid"), BookAsk(FOSSIL, 10, 8, "fossil")])
    )[1:] == ["product open price 8 wh 15", "fill open 02 11 10 80", "fill open 02 12 5 40"]
    # A price of 0 is a price: 1 and 0 make 0.
    assert clear([BookBid(O1, 3, 1, False)], [BookAsk(GRID, 3, 0, "grid")]).price_of("open") == 0


def test_the_walk_stops_at_the_first_bid_below_its_ask():
    result = clear(
        [BookBid(O1, 10, 9, False), BookBid(O2, 10, 3, False)],
        [BookAsk(GRID, 10, 2, "grid"), BookAsk(FOSSIL, 10, 8, "fossil")],
    )
    assert clearing_lines(result)[1:] == ["product open price 5 wh 10", "fill open 02 11 10 50"]


def test_a_green_bid_never_buys_grid_or_fossil_and_is_not_moved_to_open():
    result = clear([BookBid(G1, 10, 100, True)], [BookAsk(GRID, 10, 1, "grid"), BookAsk(FOSSIL, 10, 1, "fossil")])
    assert clearing_lines(result) == ["product green price - wh 0", "product open price - wh 0"]
    assert result.filled_wh(G1) == 0 and result.price_of("green") is None


def test_an_open_bid_buys_from_every_source_cheapest_first():
    asks = [BookAsk(bytes([0x20 + n]), 1, 6 - n, source) for n, source in enumerate(SOURCES)]
    result = clear([BookBid(O1, 5, 6, False)], asks)
    assert [(f.ask, f.wh) for f in result.fills] == [
        (bytes([0x24]), 1),
        (b"\x23", 1),
        (b"\x22", 1),
        (b"\x21", 1),
        (b"\x20", 1),
    ]
    assert result.price_of("open") == 6  # the last pair: 6 and 6


def test_ties_go_to_the_lower_id_compared_as_bytes():
    # b"\x01\x00" < b"\x02" although it is longer; b"\x01" < b"\x01\x00" as its prefix.
    result = clear(
        [BookBid(b"\x02", 5, 5, False), BookBid(b"\x01\x00", 5, 5, False)],
        [BookAsk(b"\x12", 5, 3, "grid"), BookAsk(b"\x11\x00", 5, 3, "wind"), BookAsk(b"\x11", 2, 3, "hydro")],
    )
    assert clearing_lines(result)[2:] == [
        "fill open 0100 11 2 8",
        "fill open 0100 1100 3 12",
        "fill open 02 1100 2 8",
        "fill open 02 12 3 12",
    ]


def test_an_empty_book_clears_to_nothing():
    assert clear([], []) == Clearing((Product("green", None, 0), Product("open", None, 0)), ())
    assert clearing_lines(clear([], [])) == ["product green price - wh 0", "product open price - wh 0"]


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda: BookBid(G1, 0, 5, True), "bid 01: wh must be an integer > 0, not 0"),
        (lambda: BookAsk(SOLAR, -3, 5, "solar"), "ask 10: wh must be an integer > 0, not -3"),
        (lambda: BookBid(G1, 5, -1, True), "bid 01: price must be an integer >= 0, not -1"),
        (lambda: BookBid(G1, True, 5, True), "bid 01: wh must be an integer > 0, not True"),
        (lambda: BookAsk(SOLAR, 5, False, "solar"), "ask 10: price must be an integer >= 0, not False"),
        (lambda: BookAsk(SOLAR, 5.0, 5, "solar"), "ask 10: wh must be an integer > 0, not 5.0"),
        (lambda: BookBid(G1, 5, 5, 1), "bid 01: green must be a bool, not 1"),
        (
            lambda: BookAsk(SOLAR, 5, 5, "coal"),
            "ask 10: unknown source 'coal' (one of solar, wind, hydro, grid, fossil)",
        ),
        (lambda: BookBid(b"", 5, 5, True), "bid b'': the id must be non-empty bytes"),
        (lambda: BookAsk("10", 5, 5, "solar"), "ask '10': the id must be non-empty bytes"),
        (lambda: clear([BookBid(G1, 1, 1, True)], [BookAsk(G1, 1, 1, "solar")]), "order 01: the id appears twice"),
        (lambda: clear([BookBid(G1, 1, 1, True), BookBid(G1, 2, 1, False)], []), "order 01: the id appears twice"),
        (lambda: clear([], []).price_of("blue"), "no product 'blue' (one of green, open)"),
    ],
)
def test_orders_no_walk_can_handle_are_refused_by_name(make, reason):
    with pytest.raises(ValueError, match="^" + reason.replace("(", r"\(").replace(")", r"\)")):
        make()


def bid(**kw) -> dict:
    return {"id": "01", "wh": 10, "price": 5, "green": True, **kw}


def ask(**kw) -> dict:
    return {"id": "10", "wh": 10, "price": 5, "source": "solar", **kw}


def test_book_from_json_reads_orders_in_the_book_order():
    bids, asks = book_from_json({"bids": [bid(), bid(id="0a0b", green=False)], "asks": [ask(source="grid")]})
    assert bids == [BookBid(b"\x01", 10, 5, True), BookBid(b"\x0a\x0b", 10, 5, False)]
    assert asks == [BookAsk(b"\x10", 10, 5, "grid")]


@pytest.mark.parametrize(
    "book, reason",
    [
        ([], "the book: not an object with the keys bids, asks"),
        ({"bids": []}, 'the book: missing key "asks"'),
        ({"bids": [], "asks": [], "fills": []}, "the book: unknown key 'fills' (the keys are bids, asks)"),
        ({"bids": {}, "asks": []}, '"bids" must be a list of orders'),
        ({"bids": [7], "asks": []}, "bids[0]: not an object with the keys id, wh, price, green"),
        ({"bids": [bid()], "asks": [{"id": "10", "wh": 1, "source": "wind"}]}, 'asks[0]: missing key "price"'),
        ({"bids": [bid(gren=True)], "asks": []}, "bids[0]: unknown key 'gren' (the keys are id, wh, price, green)"),
        ({"bids": [bid(wh=True)], "asks": []}, "bids[0]: bid 01: wh must be an integer > 0, not True"),
        ({"bids": [bid(), bid(id="02", wh=0)], "asks": []}, "bids[1]: bid 02: wh must be an integer > 0, not 0"),
        ({"bids": [bid(price="5")], "asks": []}, "bids[0]: bid 01: price must be an integer >= 0, not '5'"),
        ({"bids": [bid(price=5.0)], "asks": []}, "bids[0]: bid 01: price must be an integer >= 0, not 5.0"),
        ({"bids": [bid(green="yes")], "asks": []}, "bids[0]: bid 01: green must be a bool, not 'yes'"),
        ({"bids": [], "asks": [ask(source="coal")]}, "asks[0]: ask 10: unknown source 'coal' (one of solar"),
        ({"bids": [bid(id="zz")], "asks": []}, "bids[0]: id 'zz' is not non-empty lowercase hex"),
        ({"bids": [bid(id="0A")], "asks": []}, "bids[0]: id '0A' is not non-empty lowercase hex"),
        ({"bids": [bid(id="0a 0b")], "asks": []}, "bids[0]: id '0a 0b' is not non-empty lowercase hex"),
        ({"bids": [bid(id="")], "asks": []}, "bids[0]: id '' is not non-empty lowercase hex"),
        ({"bids": [bid(id=1)], "asks": []}, "bids[0]: id 1 is not non-empty lowercase hex"),
        ({"bids": [bid(), bid(id="02")], "asks": [ask(id="02")]}, "asks[0]: id 02 is also the id of bids[1]"),
        ({"bids": [bid(), bid()], "asks": []}, "bids[1]: id 01 is also the id of bids[0]"),
    ],
)
def test_book_from_json_says_what_is_wrong_and_where(book, reason):
    with pytest.raises(ValueError) as raised:
        book_from_json(book)
    assert str(raised.value).startswith(reason), str(raised.value)
