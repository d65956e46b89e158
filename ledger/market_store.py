"""The market's tables in a validator's SQLite database (ledger.store): orders, intervals
(waiting to clear, or their result) and export records, written in the block's transaction
so a restarted validator holds the market it had, and read back into a MarketState.

Tokens are not stored: they are sums over the export records (ledger.market).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from ledger.genesis import MarketTerms
from ledger.market import ExportRecord, MarketChanges, MarketState, OrderRecord, Result
from wire.cose import message_hash
from wire.messages import Ask, Bid, OrderState, Seal, open_message
from wire.reasons import Reject

_TIME = "COALESCE((SELECT t FROM blocks WHERE blocks.height = {0}.height), 0)"  # the time of a row's block


def write_market(db: sqlite3.Connection, changes: MarketChanges) -> None:
    db.executemany(
        "INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET state = excluded.state, "
        "filled = excluded.filled, height = excluded.height, by = excluded.by, bid = excluded.bid",
        (o.row() for o in changes.orders.values()),
    )
    db.executemany(
        "INSERT INTO intervals(k, clear_t) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET clear_t = excluded.clear_t",
        changes.pending.items(),
    )
    db.executemany(
        "INSERT INTO intervals VALUES (?, 0, ?, ?, ?, ?, ?, ?) ON CONFLICT(k) DO UPDATE SET height = excluded.height, "
        "green_price = excluded.green_price, green_wh = excluded.green_wh, open_price = excluded.open_price, "
        "open_wh = excluded.open_wh, fills = excluded.fills",
        ((r.k, r.height, *r.green, *r.open, r.fills) for r in changes.results.values()),
    )
    db.executemany(
        "INSERT OR REPLACE INTO exports VALUES (?, ?, ?, ?, ?, ?)",
        ((e.meter, e.k, e.wh, e.total, e.used, e.height) for e in changes.exports.values()),
    )


def order_rows(db: sqlite3.Connection) -> dict[bytes, tuple]:
    """Every order row, for audit's comparison with a replay (as OrderRecord.row makes them)."""
    return {row[0]: row for row in db.execute("SELECT id, k, raw, hash, state, filled, height, by, bid FROM orders")}


def interval_rows(db: sqlite3.Connection) -> dict[int, tuple]:
    """k -> (clear_t or 0, height, green price, green wh, open price, open wh, fills); None where not cleared."""
    return {row[0]: row[1:] for row in db.execute("SELECT * FROM intervals")}


def export_rows(db: sqlite3.Connection) -> dict[tuple[str, int], ExportRecord]:
    return {(r[0], r[1]): ExportRecord(*r) for r in db.execute("SELECT meter, k, wh, total, used, height FROM exports")}


def load_market(db: sqlite3.Connection, terms: MarketTerms, fail: Callable[[str], Exception]) -> MarketState:
    """The stored market; `fail(what)` makes the error for a row that is not what the chain wrote."""
    orders = [
        _order(fail, *row)
        for row in db.execute(
            f"SELECT id, raw, hash, state, filled, height, {_TIME.format('orders')}, by, bid FROM orders ORDER BY rowid"
        )
    ]
    pending, results = {}, []
    for k, clear_t, height, gp, gw, op, ow, fills, t in db.execute(
        f"SELECT k, clear_t, height, green_price, green_wh, open_price, open_wh, fills, {_TIME.format('intervals')} "
        "FROM intervals"
    ):
        if height is None:
            pending[k] = clear_t
        else:
            results.append(Result(k, (gp, gw), (op, ow), fills, height, t))
    return MarketState.restore(terms, orders, pending, results, export_rows(db).values())


def _order(fail, order_id, raw, digest, state, filled, height, t, by, bid_raw) -> OrderRecord:
    if message_hash(raw) != digest or digest[:16] != order_id:
        raise fail(f"order row {order_id.hex()} was altered")
    try:
        body = open_message(raw).body
        bid = open_message(bid_raw, Bid).body if bid_raw else None
        if not isinstance(body, (Ask, Bid, Seal)):
            raise Reject("type", f"a {body.typ} is not an order")
        return OrderRecord(order_id, raw, digest, body, OrderState(state), height, t, by, filled, bid_raw, bid)
    except (Reject, ValueError) as exc:
        raise fail(f"order row {order_id.hex()} does not hold an order: {exc}") from None
