"""The market's clearing rule: one trading interval's order book in, its fills out.

A pure function, so every validator computes the same fills from the same book, and a test
can compare it with a slow reference written straight from the rule. The rule, in full:

Two products are cleared in order. *green*: bids that asked for green energy against asks
from a renewable source. *open*: the other bids against every ask's Wh still unsold, the
green asks' leftovers included, so renewable energy nobody paid a premium for is still
sold. In each product the bids go by price descending and the asks by price ascending
(ties by order id, as bytes); the two lists are walked while the bid's price reaches the
ask's, each step filling as much as the smaller remaining side. Everyone in a product pays
or gets the same price, halfway (rounded down) between the last filled bid and ask: no
buyer pays more than its bid, no seller gets less than its ask (pay-as-clear).

Prices are whole units per Wh and amounts whole units, like every amount on the ledger.
Clearing costs one sort of the bids and one of the asks; the walks are linear.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import chain
from typing import TypeVar

GREEN, OPEN = "green", "open"
RENEWABLE = frozenset({"solar", "wind", "hydro"})
SOURCES = ("solar", "wind", "hydro", "grid", "fossil")
T = TypeVar("T")


def _check_order(kind: str, id: object, wh: object, price: object) -> None:
    """Refuses an order no walk could handle: a fill of 0 Wh, or a price below any ask.

    `type(...) is int` rather than isinstance, because True is an int to Python and a
    `wh: true` in a book is a mistake, not 1 Wh.
    """
    if type(id) is not bytes or not id:
        raise ValueError(f"{kind} {id!r}: the id must be non-empty bytes")
    if type(wh) is not int or wh <= 0:
        raise ValueError(f"{kind} {id.hex()}: wh must be an integer > 0, not {wh!r}")
    if type(price) is not int or price < 0:
        raise ValueError(f"{kind} {id.hex()}: price must be an integer >= 0, not {price!r}")


@dataclass(frozen=True, slots=True)
class BookBid:
    """A buyer's order: up to `wh` Wh at no more than `price` units per Wh, green or any."""

    id: bytes
    wh: int
    price: int
    green: bool

    def __post_init__(self) -> None:
        _check_order("bid", self.id, self.wh, self.price)
        if type(self.green) is not bool:
            raise ValueError(f"bid {self.id.hex()}: green must be a bool, not {self.green!r}")


@dataclass(frozen=True, slots=True)
class BookAsk:
    """A seller's order: up to `wh` Wh from `source` at no less than `price` units per Wh."""

    id: bytes
    wh: int
    price: int
    source: str

    def __post_init__(self) -> None:
        _check_order("ask", self.id, self.wh, self.price)
        if self.source not in SOURCES:
            raise ValueError(f"ask {self.id.hex()}: unknown source {self.source!r} (one of {', '.join(SOURCES)})")


@dataclass(frozen=True, slots=True)
class Fill:
    """`wh` Wh of bid `bid` bought from ask `ask` in `product`, for `amount` units in all."""

    product: str
    bid: bytes
    ask: bytes
    wh: int
    amount: int

    @property
    def price(self) -> int:
        """Units per Wh: the product's clearing price (exact, as amount = wh * price)."""
        return self.amount // self.wh


@dataclass(frozen=True, slots=True)
class Product:
    """One product's result: its clearing price (None when nothing crossed) and Wh sold."""

    name: str
    price: int | None
    wh: int


@dataclass(frozen=True, slots=True)
class Clearing:
    """An interval's result: (green, open) and every fill in the order it was made."""

    products: tuple[Product, Product]
    fills: tuple[Fill, ...]
    # Wh filled per order id, so that the ledger's look-up per order is not a scan of the fills.
    _filled: Mapping[bytes, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        filled: dict[bytes, int] = {}
        for fill in self.fills:
            filled[fill.bid] = filled.get(fill.bid, 0) + fill.wh
            filled[fill.ask] = filled.get(fill.ask, 0) + fill.wh
        object.__setattr__(self, "_filled", filled)

    def filled_wh(self, order_id: bytes) -> int:
        """Wh filled of the bid or ask with this id (ids are unique across a book); 0 if none."""
        return self._filled.get(order_id, 0)

    def price_of(self, product: str) -> int | None:
        """The clearing price of `product` ("green" or "open"), None if nothing was filled."""
        for p in self.products:
            if p.name == product:
                return p.price
        raise ValueError(f"no product {product!r} (one of {GREEN}, {OPEN})")


def bid_priority(bid: BookBid) -> tuple[int, bytes]:
    """The sort key that puts the bid first in its product: highest price, then lowest id."""
    return -bid.price, bid.id


def ask_priority(ask: BookAsk) -> tuple[int, bytes]:
    """The sort key that puts the ask first in its product: lowest price, then lowest id."""
    return ask.price, ask.id


def clear(bids: Iterable[BookBid], asks: Iterable[BookAsk]) -> Clearing:
    """Clears one interval's book: green first, then open on what is left.

    Both lists are sorted once, by a total order (ids are unique), so the result does not
    depend on the order the book came in. The green product walks the green bids and the
    renewable asks; the open product then walks the other bids and every ask with Wh left,
    still in price order since filtering a sorted list keeps it sorted. ValueError for a
    duplicate id: two orders with one id could not be told apart when the ledger settles.
    """
    bids, asks = sorted(bids, key=bid_priority), sorted(asks, key=ask_priority)
    repeated = _repeated(chain((b.id for b in bids), (a.id for a in asks)))
    if repeated is not None:
        raise ValueError(f"order {repeated.hex()}: the id appears twice in the book")
    left = [ask.wh for ask in asks]  # what each ask (by its place in `asks`) still has to sell
    green, green_fills = _walk(
        GREEN, [b for b in bids if b.green], asks, [i for i, a in enumerate(asks) if a.source in RENEWABLE], left
    )
    open_, open_fills = _walk(OPEN, [b for b in bids if not b.green], asks, [i for i, n in enumerate(left) if n], left)
    return Clearing((green, open_), (*green_fills, *open_fills))


def _walk(
    name: str, bids: list[BookBid], asks: list[BookAsk], places: list[int], left: list[int]
) -> tuple[Product, list[Fill]]:
    """One product: `bids` in priority order against asks[i] for i in `places` (in priority
    order, each with left[i] > 0 Wh). Takes the filled Wh off `left`; returns the product and
    its fills, priced once the walk has found its last bid and ask."""
    made: list[tuple[bytes, bytes, int]] = []
    b = p = 0
    need = bids[0].wh if bids else 0
    last_bid = last_ask = 0
    while b < len(bids) and p < len(places):
        bid, i = bids[b], places[p]
        if bid.price < asks[i].price:
            break
        q = min(need, left[i])
        made.append((bid.id, asks[i].id, q))
        need -= q
        left[i] -= q
        last_bid, last_ask = bid.price, asks[i].price
        if need == 0:
            b += 1
            need = bids[b].wh if b < len(bids) else 0
        if left[i] == 0:
            p += 1
    if not made:
        return Product(name, None, 0), []
    price = (last_bid + last_ask) // 2
    return Product(name, price, sum(q for _, _, q in made)), [
        Fill(name, bid, ask, q, q * price) for bid, ask, q in made
    ]


def _repeated(ids: Iterable[bytes]) -> bytes | None:
    """The first id seen twice, or None."""
    seen: set[bytes] = set()
    for id in ids:
        if id in seen:
            return id
        seen.add(id)
    return None


def book_from_json(obj: object) -> tuple[list[BookBid], list[BookAsk]]:
    """The bids and asks of a parsed JSON book, {"bids": [...], "asks": [...]}.

    Each order is an object with exactly the keys of its kind ("id" in lowercase hex, as the
    fills print it, so an id read back is the id written). A key too many is refused as well
    as one missing: a misspelt "green" would otherwise make a green bid an open one. Every
    ValueError says where in the book: `bids[3]: ...`.
    """
    book = _object(obj, ("bids", "asks"), "the book")
    bids = _orders(book, "bids", BookBid, "green")
    asks = _orders(book, "asks", BookAsk, "source")
    places = [f"bids[{n}]" for n in range(len(bids))] + [f"asks[{n}]" for n in range(len(asks))]
    ids = [b.id for b in bids] + [a.id for a in asks]
    repeated = _repeated(ids)
    if repeated is not None:
        first, second = [place for place, id in zip(places, ids, strict=True) if id == repeated][:2]
        raise ValueError(f"{second}: id {repeated.hex()} is also the id of {first}")
    return bids, asks


def _orders(book: dict, side: str, kind: Callable[..., T], last: str) -> list[T]:
    """book[side] as `kind`s, made from each order's id, wh, price and `last` key."""
    if not isinstance(book[side], list):
        raise ValueError(f'"{side}" must be a list of orders')
    keys = ("id", "wh", "price", last)
    orders = []
    for n, order in enumerate(book[side]):
        place = f"{side}[{n}]"
        order = _object(order, keys, place)
        text = order["id"]
        try:
            id = bytes.fromhex(text) if isinstance(text, str) else b""
        except ValueError:
            id = b""
        if not id or id.hex() != text:
            raise ValueError(f"{place}: id {text!r} is not non-empty lowercase hex")
        try:
            orders.append(kind(id, *(order[key] for key in keys[1:])))
        except ValueError as exc:
            raise ValueError(f"{place}: {exc}") from None
    return orders


def _object(obj: object, keys: tuple[str, ...], place: str) -> dict:
    """obj, if it is a JSON object with exactly `keys`; ValueError otherwise."""
    if not isinstance(obj, dict):
        raise ValueError(f"{place}: not an object with the keys {', '.join(keys)}")
    for key in keys:
        if key not in obj:
            raise ValueError(f'{place}: missing key "{key}"')
    for key in obj:
        if key not in keys:
            raise ValueError(f"{place}: unknown key {key!r} (the keys are {', '.join(keys)})")
    return obj


def clearing_lines(clearing: Clearing) -> list[str]:
    """The result as text, one fact per line so that it diffs and greps: each product's price
    (`-` when nothing crossed) and Wh, then each fill in the order the walks made them."""
    lines = [f"product {p.name} price {'-' if p.price is None else p.price} wh {p.wh}" for p in clearing.products]
    lines += [f"fill {f.product} {f.bid.hex()} {f.ask.hex()} {f.wh} {f.amount}" for f in clearing.fills]
    return lines
