"""The market's committed state (docs/PROTOCOL.md §9): orders per interval, their escrow,
the clearing results, and the export each meter proved with what of it trades used.

Plain data, like ledger.state: it changes only in `commit(changes)` with what a decided
block's Draft (ledger.market_draft) collected, after the market's invariants are checked:
per meter and interval the Wh used never exceed the Wh proved, so per interval and source
the tokens sold never exceed the tokens minted. Tokens are not kept apart: minted is the
proved export of meters with a source, sold the part of it that settled trades used, so
both are sums over the export records and a restore rebuilds them from those.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from ledger.clearing import BookAsk, BookBid, Clearing, clear
from ledger.genesis import MarketTerms, MeterEntry
from wire.cose import message_hash
from wire.messages import Ask, Bid, Cleared, Order, OrderState, Seal, Side

MARKET_TYPES = frozenset({"ask", "bid", "seal", "reveal", "withdraw", "export"})  # its transactions
Escrowed = frozenset({OrderState.OPEN, OrderState.SEALED})  # states whose escrow is still held


@dataclass(frozen=True, slots=True)
class OrderRecord:
    """One accepted order: an ask, a bid, or a seal (with its bid once revealed)."""

    id: bytes  # first 16 bytes of `hash`: the topic of its status and what withdraw/reveal name
    raw: bytes  # the ask, bid or seal message as accepted
    hash: bytes
    body: Ask | Bid | Seal
    state: OrderState
    height: int  # block of the last change
    t: int  # that block's time
    by: bytes  # hash of the message of the last change; b"" for the clearing
    filled: int = 0  # Wh filled at the clearing
    bid_raw: bytes = b""  # a seal's revealed bid message
    bid: Bid | None = None  # a seal's revealed bid; a bid's own body

    def __post_init__(self) -> None:
        if isinstance(self.body, Bid) and self.bid is None:
            object.__setattr__(self, "bid", self.body)

    @property
    def k(self) -> int:
        return self.body.k

    @property
    def side(self) -> Side:
        return Side.ASK if isinstance(self.body, Ask) else Side.BID

    @property
    def owner(self) -> bytes:
        return self.body.seller if isinstance(self.body, Ask) else self.body.buyer

    @property
    def escrow(self) -> int:
        """Units this order holds of its owner's balance while it is open or sealed."""
        if isinstance(self.body, Seal):
            return self.body.deposit
        if isinstance(self.body, Bid):
            return self.body.wh * self.body.price
        return 0

    @property
    def book_hash(self) -> bytes:
        """The hash the book and a fill name: the bid message's for a revealed seal."""
        return message_hash(self.bid_raw) if self.bid_raw else self.hash

    def row(self) -> tuple:
        """Its row in the validator's database (ledger.market_store), as audit compares it."""
        return (self.id, self.k, self.raw, self.hash, self.state, self.filled, self.height, self.by, self.bid_raw)

    def moved(self, state: OrderState, height: int, t: int, by: bytes, **more) -> OrderRecord:
        return replace(self, state=state, height=height, t=t, by=by, **more)

    def status(self) -> Order:
        """Its retained status (§9.5): a seal shows its deposit and, only once revealed, its bid."""
        body, bid = self.body, self.bid
        return Order(
            id=self.id,
            k=self.k,
            side=self.side,
            state=self.state,
            filled=self.filled,
            t=self.t,
            h=self.height,
            wh=body.wh if isinstance(body, Ask) else bid.wh if bid else None,
            price=body.price if isinstance(body, Ask) else bid.price if bid else None,
            src=body.src if isinstance(body, Ask) else None,
            green=bid.green if bid else None,
            deposit=body.deposit if isinstance(body, Seal) else None,
            msg=self.book_hash,  # the order's own message (a revealed seal's: its bid's), §9.5
        )


def clear_book(orders: Iterable[OrderRecord]) -> tuple[dict[bytes, OrderRecord], dict[bytes, OrderRecord], Clearing]:
    """Clear a book (ledger.clearing.clear, §9.3): its bids by their id in the book, its
    asks by id, and the clearing. Only open orders are given: the caller chooses them."""
    orders = list(orders)
    bids = {o.book_hash[:16]: o for o in orders if o.bid is not None}
    asks = {o.id: o for o in orders if isinstance(o.body, Ask)}
    clearing = clear(
        [BookBid(i, o.bid.wh, o.bid.price, o.bid.green) for i, o in bids.items() if o.bid is not None],
        [BookAsk(i, o.body.wh, o.body.price, o.body.src) for i, o in asks.items() if isinstance(o.body, Ask)],
    )
    return bids, asks, clearing


@dataclass(frozen=True, slots=True)
class ExportRecord:
    """A meter's proved export in interval k, and how much of it settled trades used."""

    meter: str
    k: int
    wh: int
    total: int  # the meter's cumulative export counter at the end of k
    used: int
    height: int  # block that accepted it (the record's `used` changes later, its height not)

    @property
    def unused(self) -> int:
        return self.wh - self.used


@dataclass(frozen=True, slots=True)
class Result:
    """Interval k's clearing: per product (price or None, Wh), the fill count, when."""

    k: int
    green: tuple[int | None, int]
    open: tuple[int | None, int]
    fills: int
    height: int
    t: int

    @staticmethod
    def summary(clearing: Clearing) -> tuple[tuple[int | None, int], tuple[int | None, int], int]:
        """(green, open, fills) of a clearing, as a Result keeps them."""
        green, other = clearing.products
        return (green.price, green.wh), (other.price, other.wh), len(clearing.fills)

    def status(self) -> Cleared:
        return Cleared(
            k=self.k, green=list(self.green), open=list(self.open), fills=self.fills, t=self.t, h=self.height
        )


@dataclass(frozen=True, slots=True)
class MarketChanges:
    """What one block does to the market (part of ledger.state.Changes)."""

    orders: dict[bytes, OrderRecord] = field(default_factory=dict)  # new or changed
    pending: dict[int, int] = field(default_factory=dict)  # interval -> its clearing time (new or later)
    results: dict[int, Result] = field(default_factory=dict)  # intervals cleared by the block
    exports: dict[tuple[str, int], ExportRecord] = field(default_factory=dict)  # new, or more used

    def __bool__(self) -> bool:
        return bool(self.orders or self.pending or self.results or self.exports)


class MarketState:
    """The market after the last committed block."""

    def __init__(self, terms: MarketTerms):
        self.terms = terms
        self.orders: dict[bytes, OrderRecord] = {}
        self.revealed: dict[bytes, bytes] = {}  # a revealed bid's order id -> its seal's
        self.by_k: dict[int, list[bytes]] = {}  # interval -> its orders' ids, in the order accepted
        self.pending: dict[int, int] = {}  # interval with orders, not cleared yet -> its clearing time
        self.results: dict[int, Result] = {}
        self.exports: dict[tuple[str, int], ExportRecord] = {}
        self.ks: dict[str, list[int]] = {}  # meter -> intervals of its export records, ascending
        self.tokens: dict[tuple[int, str], list[int]] = {}  # (k, source) -> [minted, sold]

    def meter(self, meter_id: str) -> MeterEntry | None:
        """The genesis entry of a meter."""
        return self.terms.meter(meter_id)

    @classmethod
    def restore(
        cls,
        terms: MarketTerms,
        orders: Iterable[OrderRecord],
        pending: dict[int, int],
        results: Iterable[Result],
        exports: Iterable[ExportRecord],
    ) -> MarketState:
        """From the stored tables (ledger.store); orders in the order they were accepted."""
        market = cls(terms)
        market.commit(
            MarketChanges(
                {o.id: o for o in orders},
                dict(pending),
                {r.k: r for r in results},
                {(e.meter, e.k): e for e in sorted(exports, key=lambda e: e.k)},
            )
        )
        return market

    def next_clearing(self) -> int | None:
        return min(self.pending.values(), default=None)

    def last_export(self, meter: str) -> ExportRecord | None:
        ks = self.ks.get(meter)
        return self.exports[meter, ks[-1]] if ks else None

    def export_ks(self, meter: str, first: int, last: int) -> list[int]:
        """Intervals first..last (inclusive) in which `meter` proved export."""
        ks = self.ks.get(meter, [])
        return ks[bisect.bisect_left(ks, first) : bisect.bisect_right(ks, last)]

    def check(self, changes: MarketChanges) -> str | None:
        """What committing would break, or None: used <= proved per meter and interval (so
        sold <= minted per interval and source), used never shrinks, orders stay unique."""
        for key, record in changes.exports.items():
            old = self.exports.get(key)
            if not 0 <= record.used <= record.wh or (old is not None and record.used < old.used):
                return f"export of {record.meter} in {record.k}: {record.used} Wh used of {record.wh} proved"
        for (k, source), (minted, sold) in self._token_deltas(changes).items():
            minted, sold = (a + b for a, b in zip(self.tokens.get((k, source), (0, 0)), (minted, sold), strict=True))
            if sold > minted:
                return f"interval {k}, {source}: {sold} Wh sold of {minted} minted"
        for order in changes.orders.values():
            book_id = order.book_hash[:16]
            if self.revealed.get(book_id, order.id) != order.id or (order.bid_raw and book_id in self.orders):
                return f"order {book_id.hex()} is in the book twice"
        return None

    def commit(self, changes: MarketChanges) -> None:
        for order in changes.orders.values():
            if order.id not in self.orders:
                self.by_k.setdefault(order.k, []).append(order.id)
            self.orders[order.id] = order
            if order.bid_raw:
                self.revealed[order.book_hash[:16]] = order.id
        self.pending.update(changes.pending)
        for k, result in changes.results.items():
            self.results[k] = result
            self.pending.pop(k, None)
        for (k, source), (minted, sold) in self._token_deltas(changes).items():
            tokens = self.tokens.setdefault((k, source), [0, 0])
            tokens[0] += minted
            tokens[1] += sold
        for key, record in changes.exports.items():
            if key not in self.exports:
                bisect.insort(self.ks.setdefault(record.meter, []), record.k)
            self.exports[key] = record

    def _token_deltas(self, changes: MarketChanges) -> dict[tuple[int, str], tuple[int, int]]:
        """(k, source) -> (Wh minted, Wh sold) by these changes: export of meters with a source."""
        deltas: dict[tuple[int, str], tuple[int, int]] = {}
        for key, record in changes.exports.items():
            entry, old = self.meter(record.meter), self.exports.get(key)
            if entry is None or not entry.source:  # a meter without a source proves export, mints nothing
                continue
            minted, sold = deltas.get((record.k, entry.source), (0, 0))
            minted += record.wh if old is None else 0
            sold += record.used - (old.used if old is not None else 0)
            deltas[record.k, entry.source] = (minted, sold)
        return deltas
