"""The market's tables in a validator's SQLite database (ledger.store): orders, intervals
(waiting to clear, or their result) and export records, written in the block's transaction
so a restarted validator holds the market it had, and read back into a MarketState.

Tokens are not stored: they are sums over the export records (ledger.market).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable

from ledger.archive import MarketArchive
from ledger.genesis import MarketTerms
from ledger.market import ExportRecord, MarketChanges, MarketState, OrderRecord, Result, first_kept
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


def load_market(
    db: sqlite3.Connection, terms: MarketTerms, fail: Callable[[str], Exception], archive: MarketArchive, t: int
) -> MarketState:
    """The market in RAM after the tip at time t (MarketState's horizon: the orders of
    intervals from it on or not cleared, the results and export records from it on, each
    meter's last record), by index: nothing older is read. `fail(what)` makes the error for
    a row that is not what the chain wrote."""
    horizon = first_kept(terms, t)
    pending = dict(db.execute("SELECT k, clear_t FROM intervals WHERE height IS NULL"))
    rows = [
        *db.execute(f"SELECT rowid, {_ORDER} FROM orders WHERE k >= ?", (horizon,)),
        *db.execute(
            f"SELECT rowid, {_ORDER} FROM orders WHERE k IN (SELECT k FROM intervals WHERE height IS NULL AND k < ?)",
            (horizon,),
        ),
    ]  # two index searches, sorted here: an ORDER BY rowid made SQLite scan the whole table instead
    rows.sort(key=lambda row: row[0])
    orders = [_order(fail, *row[1:]) for row in rows]
    results = [_result(*row) for row in db.execute(f"{_RESULT} WHERE k >= ? AND height IS NOT NULL", (horizon,))]
    exports: dict[tuple[str, int], ExportRecord] = {}
    for entry in terms.meters:
        last = db.execute(f"{_EXPORT} WHERE meter = ? ORDER BY k DESC LIMIT 1", (entry.meter,)).fetchall()
        kept = db.execute(f"{_EXPORT} WHERE meter = ? AND k >= ?", (entry.meter, horizon)).fetchall()
        exports |= {(r[0], r[1]): ExportRecord(*r) for r in [*last, *kept]}
    return MarketState.restore(terms, orders, pending, results, exports.values(), archive, t)


_ORDER = f"id, raw, hash, state, filled, height, {_TIME.format('orders')}, by, bid"  # as _order takes them
_RESULT = (
    f"SELECT k, green_price, green_wh, open_price, open_wh, fills, height, {_TIME.format('intervals')} FROM intervals"
)
_EXPORT = "SELECT meter, k, wh, total, used, height FROM exports"


class SqliteMarketArchive:
    """The market's records behind the horizon (ledger.archive.MarketArchive), read by index
    from a validator's database: the rows LedgerStore.commit wrote in each block's transaction."""

    def __init__(self, db: sqlite3.Connection, fail: Callable[[str], Exception]):
        self.db, self.fail = db, fail

    def order(self, order_id: bytes) -> OrderRecord | None:
        row = self.db.execute(f"SELECT {_ORDER} FROM orders WHERE id = ?", (order_id,)).fetchone()
        return None if row is None else _order(self.fail, *row)

    def seal_of(self, book_id: bytes, k: int) -> bytes | None:
        for order_id, bid_raw in self.db.execute("SELECT id, bid FROM orders WHERE k = ? AND bid != x''", (k,)):
            if message_hash(bid_raw)[:16] == book_id:
                return order_id
        return None

    def order_ids(self, k: int) -> list[bytes]:
        return [i for (i,) in self.db.execute("SELECT id FROM orders WHERE k = ? ORDER BY rowid", (k,))]

    def result(self, k: int) -> Result | None:
        row = self.db.execute(f"{_RESULT} WHERE k = ? AND height IS NOT NULL", (k,)).fetchone()
        return None if row is None else _result(*row)

    def export(self, meter: str, k: int) -> ExportRecord | None:
        row = self.db.execute(f"{_EXPORT} WHERE meter = ? AND k = ?", (meter, k)).fetchone()
        return None if row is None else ExportRecord(*row)

    def export_ks(self, meter: str, first: int, last: int) -> list[int]:
        query = "SELECT k FROM exports WHERE meter = ? AND k BETWEEN ? AND ? ORDER BY k"
        return [k for (k,) in self.db.execute(query, (meter, first, last))]

    def put_market(self, orders: list[OrderRecord], results: list[Result], exports: list[ExportRecord]) -> None:
        """Nothing to do: LedgerStore.commit wrote them in the block's transaction."""

    def all_orders(self) -> Iterable[tuple[bytes, OrderRecord]]:
        rows = self.db.execute(f"SELECT {_ORDER} FROM orders ORDER BY rowid").fetchall()
        return ((row[0], _order(self.fail, *row)) for row in rows)

    def all_results(self) -> Iterable[tuple[int, Result]]:
        return ((row[0], _result(*row)) for row in self.db.execute(f"{_RESULT} WHERE height IS NOT NULL").fetchall())

    def all_exports(self) -> Iterable[tuple[tuple[str, int], ExportRecord]]:
        return export_rows(self.db).items()


def _result(k, green_price, green_wh, open_price, open_wh, fills, height, t) -> Result:
    return Result(k, (green_price, green_wh), (open_price, open_wh), fills, height, t)


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
