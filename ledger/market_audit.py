"""What `spb-ledger audit` checks of the market (docs/PROTOCOL.md §9) after replaying a chain.

The replay already ran every clearing through the Draft; this checks its outcome again
from the other side, with nothing but the orders the chain accepted and ledger.clearing:
each cleared interval's book is cleared once more and must give the result, the fills
(as held trades with their fill documents), each order's filled Wh and an escrow that
covers what its fills hold. Then the delivery invariants, and that the validator's
stored market tables are the replayed ones.
"""

from __future__ import annotations

from collections.abc import Callable

from ledger.market import Escrowed, MarketState, Result, clear_book
from ledger.market_store import export_rows, interval_rows, order_rows
from ledger.state import LedgerState
from ledger.store import LedgerStore
from wire.messages import OrderState

CLEARED = frozenset({OrderState.FILLED, OrderState.PARTIAL, OrderState.UNFILLED})  # open when their interval cleared


def market_faults(state: LedgerState, store: LedgerStore) -> str | None:
    """The first thing wrong with the replayed market or the stored one, or None."""
    market = state.market
    if market is None:
        return None
    return _clearings(state, market) or _delivery(market) or _tables(market, store)


def escrow(market: MarketState | None, current: Callable[[bytes], bytes] = lambda pk: pk) -> dict[bytes, int]:
    """Per account, the units its open and sealed orders hold: under `current(owner)`, the
    key that holds the owner's account now (a rotation moves an order's escrow, §10)."""
    held: dict[bytes, int] = {}
    for order in market.orders.values() if market is not None else ():
        if order.state in Escrowed:
            owner = current(order.owner)
            held[owner] = held.get(owner, 0) + order.escrow
    return held


def _clearings(state: LedgerState, market: MarketState) -> str | None:
    fills = {(r.fill.k, r.fill.bid, r.fill.ask): r.fill for r in state.ctps.values() if r.fill is not None}
    made = 0
    for k, result in sorted(market.results.items()):
        orders = [market.orders[i] for i in market.by_k.get(k, ())]
        book = [o for o in orders if o.state in CLEARED]
        bids, asks, clearing = clear_book(book)
        if (result.green, result.open, result.fills) != Result.summary(clearing):
            return f"interval {k}: the stored result is not the clearing of its book"
        paid: dict[bytes, int] = {}
        for fill in clearing.fills:
            bid, ask = bids[fill.bid], asks[fill.ask]
            doc = fills.get((k, bid.book_hash, ask.hash))
            expected = (fill.wh, fill.amount, bid.owner, ask.owner)
            if doc is None or (doc.wh, doc.amount, doc.payer, doc.payee) != expected:
                return f"interval {k}: the fill of bid {fill.bid.hex()} by ask {fill.ask.hex()} is not a held trade"
            paid[bid.id] = paid.get(bid.id, 0) + fill.amount
        made += len(clearing.fills)
        for o in book:
            if o.filled != clearing.filled_wh(o.book_hash[:16]):
                return f"interval {k}: order {o.id.hex()} shows {o.filled} Wh filled, not what its clearing filled"
            if paid.get(o.id, 0) > o.escrow:
                return f"interval {k}: the fills of bid {o.id.hex()} hold more than its escrow"
        if any(o.state == OrderState.SEALED for o in orders):
            return f"interval {k}: a seal is still sealed after its clearing"
    if made != len(fills):
        return f"{len(fills)} fills are held trades, the clearings made {made}"
    return None


def _delivery(market: MarketState) -> str | None:
    for record in market.exports.values():
        if not 0 <= record.used <= record.wh:
            return f"meter {record.meter} in {record.k}: {record.used} Wh used of {record.wh} proved"
    return next(iter(oversold_tokens(market)), None)


def oversold_tokens(market: MarketState) -> list[str]:
    """Every (interval, source) whose settled trades used more export than was proved: none,
    on an honest chain (MarketState asserts it at each commit)."""
    return [
        f"interval {k}, {source}: {sold} Wh sold of {minted} minted"
        for (k, source), (minted, sold) in market.tokens.items()
        if sold > minted
    ]


def _tables(market: MarketState, store: LedgerStore) -> str | None:
    if {o.id: o.row() for o in market.orders.values()} != order_rows(store.db):
        return "stored orders differ from the replay"
    rows = interval_rows(store.db)
    if market.pending != {k: row[0] for k, row in rows.items() if row[1] is None}:
        return "stored intervals waiting to clear differ from the replay"
    results = {k: (r.height, *r.green, *r.open, r.fills) for k, r in market.results.items()}
    if results != {k: row[1:] for k, row in rows.items() if row[1] is not None}:
        return "stored clearing results differ from the replay"
    if market.exports != export_rows(store.db):
        return "stored export records differ from the replay"
    return None
