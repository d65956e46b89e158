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
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace

from ledger.archive import HistoryView, MarketArchive, MemoryArchive
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


KEEP_MS = 86_400_000  # ledger.draft.MAX_HOLD_MS (not imported: ledger.draft imports this module)


def first_kept(terms: MarketTerms, t: int, keep_ms: int = KEEP_MS) -> int:
    """The first interval kept in RAM after a block at time t (MarketState's horizon): a held
    trade delivers only against intervals from its hold time's on (a CTP is held at most
    KEEP_MS) or against its fill's interval (its trade expires `grace` intervals after it)."""
    return max(0, min(terms.interval(t - keep_ms), terms.interval(t) - terms.grace - 2))


class MarketState:
    """The market after the last committed block.

    What can still change or is read by the next blocks is in RAM: the orders of intervals
    not cleared yet or newer than the horizon, and the results, export records and tokens of
    intervals from the horizon on, plus each meter's last export record (decision 0013). The
    horizon trails the last block by a day (KEEP_MS, the longest a CTP is held) and a fill's
    grace, so no trade still held delivers against an interval before it. Everything older is
    in the archive (ledger.archive.MarketArchive) and every read falls through to it: which
    records are in RAM changes no decision, only how often the archive is asked.
    `orders`, `results`, `exports`, `tokens` and `by_k` are read-only views over both, for
    tools and tests that read history; a block's decisions use the methods below.
    """

    def __init__(self, terms: MarketTerms, archive: MarketArchive | None = None, keep_ms: int = KEEP_MS):
        self.terms = terms
        self.archive: MarketArchive = archive if archive is not None else MemoryArchive()
        self.keep_ms = keep_ms
        self.horizon = 0  # intervals before it are in the archive only (but pending ones, each meter's last export)
        self._orders: dict[bytes, OrderRecord] = {}
        self.revealed: dict[bytes, bytes] = {}  # a revealed bid's order id -> its seal's (of orders in RAM)
        self._by_k: dict[int, list[bytes]] = {}  # interval -> its orders' ids, in the order accepted
        self.pending: dict[int, int] = {}  # interval with orders, not cleared yet -> its clearing time
        self._results: dict[int, Result] = {}
        self._exports: dict[tuple[str, int], ExportRecord] = {}
        self.ks: dict[str, list[int]] = {}  # meter -> intervals of its export records in RAM, ascending
        self._tokens: dict[tuple[int, str], list[int]] = {}  # (k, source) -> [minted, sold], k >= horizon
        self.orders = HistoryView(self._orders, self.order, lambda: self.archive.all_orders())
        self.results = HistoryView(self._results, self.result, lambda: self.archive.all_results())
        self.exports = HistoryView(self._exports, lambda key: self.export(*key), lambda: self.archive.all_exports())
        self.by_k = IntervalOrders(self)
        self.tokens = Tokens(self)

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
        archive: MarketArchive | None = None,
        t: int = 0,
    ) -> MarketState:
        """From the stored tables (ledger.store); orders in the order they were accepted. Given
        an archive and the tip's time, only what is in RAM at that time (`horizon`) is given."""
        market = cls(terms, archive)
        market.horizon = market.horizon_at(t)
        market.commit(
            MarketChanges(
                {o.id: o for o in orders},
                dict(pending),
                {r.k: r for r in results},
                {(e.meter, e.k): e for e in sorted(exports, key=lambda e: e.k)},
            ),
            t,
        )
        return market

    def horizon_at(self, t: int) -> int:
        return first_kept(self.terms, t, self.keep_ms)

    # -- reads: RAM, then the archive --

    def order(self, order_id: bytes, k: int | None = None) -> OrderRecord | None:
        """The order with this id; with its interval k if known (an order's id is its
        message's hash: a copy is in the same interval), RAM alone answers for k >= horizon."""
        record = self._orders.get(order_id)
        if record is not None or (k is not None and k >= self.horizon):
            return record
        return self.archive.order(order_id)

    def seal_of(self, book_id: bytes, k: int) -> bytes | None:
        """The seal whose revealed bid (of interval k) has this id in the book, None if none."""
        seal = self.revealed.get(book_id)
        if seal is not None or k >= self.horizon:
            return seal
        return self.archive.seal_of(book_id, k)

    def result(self, k: int) -> Result | None:
        result = self._results.get(k)
        return result if result is not None or k >= self.horizon else self.archive.result(k)

    def export(self, meter: str, k: int) -> ExportRecord | None:
        record = self._exports.get((meter, k))
        return record if record is not None or k >= self.horizon else self.archive.export(meter, k)

    def tokens_at(self, k: int, source: str) -> tuple[int, int]:
        """(minted, sold) of interval k and source: a sum over its meters' export records."""
        if k >= self.horizon:
            minted, sold = self._tokens.get((k, source), (0, 0))
            return minted, sold
        records = [self.export(m.meter, k) for m in self.terms.meters if m.source == source]
        return sum(r.wh for r in records if r), sum(r.used for r in records if r)

    def next_clearing(self) -> int | None:
        return min(self.pending.values(), default=None)

    def last_export(self, meter: str) -> ExportRecord | None:
        ks = self.ks.get(meter)
        return self._exports[meter, ks[-1]] if ks else None

    def export_ks(self, meter: str, first: int, last: int) -> list[int]:
        """Intervals first..last (inclusive) in which `meter` proved export."""
        ks = self.ks.get(meter, [])
        kept = ks[bisect.bisect_left(ks, first) : bisect.bisect_right(ks, last)]
        if first >= self.horizon:
            return kept
        return sorted({*self.archive.export_ks(meter, first, min(last, self.horizon - 1)), *kept})

    # -- commit --

    def check(self, changes: MarketChanges) -> str | None:
        """What committing would break, or None: used <= proved per meter and interval (so
        sold <= minted per interval and source), used never shrinks, orders stay unique."""
        for key, record in changes.exports.items():
            old = self.export(*key)
            if not 0 <= record.used <= record.wh or (old is not None and record.used < old.used):
                return f"export of {record.meter} in {record.k}: {record.used} Wh used of {record.wh} proved"
        for (k, source), (minted, sold) in self._token_deltas(changes).items():
            minted, sold = (a + b for a, b in zip(self.tokens_at(k, source), (minted, sold), strict=True))
            if sold > minted:
                return f"interval {k}, {source}: {sold} Wh sold of {minted} minted"
        for order in changes.orders.values():
            book_id = order.book_hash[:16]
            seal = self.seal_of(book_id, order.k)
            if (seal or order.id) != order.id or (order.bid_raw and self.order(book_id, order.k) is not None):
                return f"order {book_id.hex()} is in the book twice"
        return None

    def commit(self, changes: MarketChanges, t: int) -> None:
        """Take a block's changes (t: its time), then move what fell behind the horizon to the archive."""
        deltas = self._token_deltas(changes)  # before the exports change: against the records they replace
        for order in changes.orders.values():
            if order.id not in self._orders:
                self._by_k.setdefault(order.k, []).append(order.id)
            self._orders[order.id] = order
            if order.bid_raw:
                self.revealed[order.book_hash[:16]] = order.id
        self.pending.update(changes.pending)
        for k, result in changes.results.items():
            self._results[k] = result
            self.pending.pop(k, None)
        for (k, source), (minted, sold) in deltas.items():
            if k >= self.horizon:  # older ones are sums over the records (tokens_at)
                tokens = self._tokens.setdefault((k, source), [0, 0])
                tokens[0] += minted
                tokens[1] += sold
        for key, record in changes.exports.items():
            if key not in self._exports:
                bisect.insort(self.ks.setdefault(record.meter, []), record.k)
            self._exports[key] = record
        self._leave(self.horizon_at(t))

    def _leave(self, horizon: int) -> None:
        """Give the archive what fell behind the horizon: the orders of cleared intervals, the
        results, the export records (but each meter's last: the next one follows it) and tokens."""
        if horizon <= self.horizon:
            return
        self.horizon = horizon
        ks = sorted(k for k in self._by_k if k < horizon and k not in self.pending)
        orders = [self._orders.pop(i) for k in ks for i in self._by_k.pop(k)]
        for order in orders:
            if order.bid_raw:
                del self.revealed[order.book_hash[:16]]
        results = [self._results.pop(k) for k in sorted(k for k in self._results if k < horizon)]
        exports = []
        for meter, meter_ks in self.ks.items():
            cut = min(bisect.bisect_left(meter_ks, horizon), len(meter_ks) - 1)
            exports += [self._exports.pop((meter, k)) for k in meter_ks[:cut]]
            del meter_ks[:cut]
        for key in [key for key in self._tokens if key[0] < horizon]:
            del self._tokens[key]
        self.archive.put_market(orders, results, exports)

    def _token_deltas(self, changes: MarketChanges) -> dict[tuple[int, str], tuple[int, int]]:
        """(k, source) -> (Wh minted, Wh sold) by these changes: export of meters with a source."""
        deltas: dict[tuple[int, str], tuple[int, int]] = {}
        for key, record in changes.exports.items():
            entry, old = self.meter(record.meter), self.export(*key)
            if entry is None or not entry.source:  # a meter without a source proves export, mints nothing
                continue
            minted, sold = deltas.get((record.k, entry.source), (0, 0))
            minted += record.wh if old is None else 0
            sold += record.used - (old.used if old is not None else 0)
            deltas[record.k, entry.source] = (minted, sold)
        return deltas


class IntervalOrders(Mapping[int, list[bytes]]):
    """Interval -> its orders' ids in the order accepted, over all history: for tools."""

    def __init__(self, market: MarketState):
        self._market = market

    def __getitem__(self, k: int) -> list[bytes]:
        kept = self._market._by_k.get(k)
        if kept is not None:
            return kept
        ids = self._market.archive.order_ids(k) if k < self._market.horizon else None
        if not ids:
            raise KeyError(k)
        return ids

    def __iter__(self) -> Iterator[int]:
        return iter(self.all())

    def __len__(self) -> int:
        return len(self.all())

    def all(self) -> dict[int, list[bytes]]:
        out: dict[int, list[bytes]] = {}
        for order_id, order in self._market.archive.all_orders():
            if order_id not in self._market._orders:
                out.setdefault(order.k, []).append(order_id)
        return out | {k: list(ids) for k, ids in self._market._by_k.items()}


class Tokens(Mapping[tuple[int, str], list[int]]):
    """(k, source) -> [minted, sold] over all history: for tools."""

    def __init__(self, market: MarketState):
        self._market = market

    def __getitem__(self, key: tuple[int, str]) -> list[int]:
        k, source = key
        market = self._market
        if k >= market.horizon:
            return market._tokens[key]
        if not any(market.export(m.meter, k) for m in market.terms.meters if m.source == source):
            raise KeyError(key)
        return list(market.tokens_at(k, source))

    def __iter__(self) -> Iterator[tuple[int, str]]:
        return iter(self.all())

    def __len__(self) -> int:
        return len(self.all())

    def all(self) -> dict[tuple[int, str], list[int]]:
        out: dict[tuple[int, str], list[int]] = {}
        for (meter, k), record in self._market.exports.all().items():
            entry = self._market.meter(meter)
            if entry is not None and entry.source and k < self._market.horizon:
                tokens = out.setdefault((k, entry.source), [0, 0])
                tokens[0] += record.wh
                tokens[1] += record.used
        return out | {key: list(v) for key, v in self._market._tokens.items()}
