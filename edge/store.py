"""The meter's durable state in SQLite (DIR/meter.db): counters, outbox, key ring, trades, peers,
the household account's last status and the account keys it has had.

It must survive power cuts:
- a reading's `seq` is never reused across reboots (§4), the cumulative Wh never go
  backwards, and a reading is in the outbox in the same transaction that used its seq;
- every signed message is in the outbox before it is sent, and leaves it only when the
  broker acknowledged it (the outbox, not paho's memory, is what survives a restart);
- a one-time key is reserved for a trade in the transaction that records the trade, and
  UNIQUE(batch, idx) makes a second use of it impossible, even by a buggy caller.

The running meter and the `spb-meter ctp|erc|status` commands share the file (WAL); each
write is one IMMEDIATE transaction, so they never interleave half-done changes.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from edge.energy import Totals
from edge.export import Due, ExportState
from edge.keyring import Batch, NoKey
from wire import topics

_SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters VALUES ('boot', 0), ('seq', 0), ('wms_in', 0), ('wms_out', 0),
                                      ('export_k', -1), ('export_mark', 0);
CREATE TABLE IF NOT EXISTS peer_births (meter TEXT PRIMARY KEY, birth BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,
                                   payload BLOB NOT NULL, kind TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS outbox_kind ON outbox (kind, seq);
CREATE TABLE IF NOT EXISTS dropped (reason TEXT PRIMARY KEY, count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS batches (id INTEGER PRIMARY KEY AUTOINCREMENT, root BLOB NOT NULL UNIQUE,
                                    seeds BLOB NOT NULL, next_idx INTEGER NOT NULL DEFAULT 0,
                                    made INTEGER NOT NULL, coe BLOB, coe_t INTEGER, coe_exp INTEGER);
CREATE TABLE IF NOT EXISTS trades (id BLOB PRIMARY KEY, ctp BLOB NOT NULL, batch INTEGER NOT NULL,
                                   idx INTEGER NOT NULL, wh INTEGER NOT NULL, exp INTEGER NOT NULL,
                                   state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
                                   delivered_wms INTEGER NOT NULL DEFAULT 0, erc BLOB, cancel BLOB,
                                   sent INTEGER NOT NULL, created INTEGER NOT NULL, changed INTEGER NOT NULL,
                                   UNIQUE (batch, idx));
CREATE INDEX IF NOT EXISTS trades_open ON trades (state) WHERE state IN ('sent', 'held');
CREATE INDEX IF NOT EXISTS trades_changed ON trades (changed);
CREATE TABLE IF NOT EXISTS exports (k INTEGER PRIMARY KEY, raw BLOB NOT NULL, wh INTEGER NOT NULL,
                                    total INTEGER NOT NULL, sent INTEGER NOT NULL, reason TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS orders (id BLOB PRIMARY KEY, side TEXT NOT NULL, k INTEGER NOT NULL,
                                   wh INTEGER NOT NULL, price INTEGER NOT NULL, green INTEGER NOT NULL,
                                   msg BLOB NOT NULL, bid BLOB, nonce BLOB, reveal BLOB, withdraw BLOB,
                                   root BLOB, state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
                                   filled INTEGER NOT NULL DEFAULT 0, status_t INTEGER NOT NULL DEFAULT 0,
                                   sent INTEGER NOT NULL, created INTEGER NOT NULL, changed INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS account (one INTEGER PRIMARY KEY CHECK (one = 0), balance INTEGER NOT NULL,
                                    held INTEGER NOT NULL, t INTEGER NOT NULL, h INTEGER NOT NULL,
                                    raw BLOB NOT NULL, pk BLOB NOT NULL DEFAULT x'');
CREATE TABLE IF NOT EXISTS account_keys (pk BLOB PRIMARY KEY, since INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sales (id BLOB PRIMARY KEY, role TEXT NOT NULL, payer BLOB NOT NULL,
                                  payee BLOB NOT NULL, wh INTEGER, t INTEGER NOT NULL, state TEXT NOT NULL,
                                  order_id BLOB, delivered_wms INTEGER NOT NULL DEFAULT 0,
                                  changed INTEGER NOT NULL);
"""

READING, TX, COE = "reading", "tx", "coe"  # outbox kinds; only readings may be dropped when full
SENT = "sent"  # a trade's state until a status or reject answers its CTP: the meter's own, never on the wire


class MeterOutboxRow(NamedTuple):
    """A message the meter queued (reading, transaction, CoE request) and the broker has not acknowledged yet."""

    seq: int
    topic: str
    payload: bytes


class TradeRow(NamedTuple):
    id: bytes
    ctp: bytes
    batch: int
    idx: int
    wh: int
    exp: int
    state: str  # SENT or a wire.messages.CtpState
    reason: str
    delivered_wms: int
    erc: bytes | None
    cancel: bytes | None
    sent: int  # when a message of the trade was last queued (for resending)
    created: int
    changed: int  # when its state last changed (the display shows fresh outcomes)

    def message(self, topic: str) -> bytes:
        """The trade's message that goes on `topic` (tx/ctp, tx/erc or tx/cancel)."""
        message = {topics.TX_CTP: self.ctp, topics.TX_ERC: self.erc, topics.TX_CANCEL: self.cancel}[topic]
        assert message is not None, f"asked for the {topic} of a trade that has none (trades.next_step never does)"
        return message


class OrderRow(NamedTuple):
    """A market order this meter placed (docs/PROTOCOL.md §9.2) and what the ledger said of it."""

    id: bytes  # its order id: of the ask, the bid, or (sealed) the seal
    side: str  # "ask" or "bid"
    k: int
    wh: int
    price: int
    green: int  # 0 or 1 (SQLite)
    msg: bytes  # the signed message placed: ask, bid or seal
    bid: bytes | None  # a sealed bid: the signed bid committed to, revealed after the gate
    nonce: bytes | None  # ... and the commitment's nonce
    reveal: bytes | None
    withdraw: bytes | None
    root: bytes | None  # a bid's CoE root: the key batch whose keys confirm its fills
    state: str  # SENT until the ledger answers, then an OrderState, or "rejected"
    reason: str
    filled: int  # Wh filled, from the order's status
    status_t: int  # the block time of its last status (fills of one clearing share it)
    sent: int  # when a message of the order was last queued
    created: int
    changed: int

    @property
    def bid_id(self) -> bytes:
        """The order id its bid trades under: a sealed bid's is that of the revealed bid (§9.2)."""
        return self.id if self.bid is None else hashlib.sha256(self.bid).digest()[:16]


class SaleRow(NamedTuple):
    """A held trade naming this meter's account that the meter did not sign: a sale (role
    "sold", it is the payee) or a fill of one of its bids (role "bought"), from statuses."""

    id: bytes
    role: str
    payer: bytes
    payee: bytes
    wh: int | None  # None: the status did not say, nor an order of ours
    t: int  # the block time that held it
    state: str  # a CtpState
    order_id: bytes | None  # our ask or bid it filled, once known
    delivered_wms: int  # a sale's export counted against it
    changed: int


class AccountRow(NamedTuple):
    """The newest account status the ledger published for this meter's household (§9.6)."""

    balance: int  # free units
    held: int  # units in holds
    t: int  # block time
    h: int  # block height
    raw: bytes  # the validator-signed status
    account: bytes  # whose: the household's key when it came (b"" if stored before keys rotated)


_TRADE_COLUMNS = ", ".join(TradeRow._fields)
_ORDER_COLUMNS = ", ".join(OrderRow._fields)
_SALE_COLUMNS = ", ".join(SaleRow._fields)
_BATCH_COLUMNS = "id, root, seeds, next_idx, made, coe, coe_t, coe_exp"


class MeterStore:
    """One connection shared by the sampling loop and the MQTT thread, behind a lock."""

    def __init__(self, path: Path, outbox_max: int = 100_000):
        self.outbox_max = outbox_max
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        path.chmod(0o600)  # it holds one-time key seeds
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a power cut must not undo a used seq or key
        self._db.executescript(_SCHEMA)
        if not any(column[1] == "pk" for column in self._db.execute("PRAGMA table_info(account)")):
            self._db.execute("ALTER TABLE account ADD COLUMN pk BLOB NOT NULL DEFAULT x''")  # a store from before

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: other processes on this file wait rather than interleave."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # also when COMMIT itself failed (disk full, I/O error)
                    self._db.execute("ROLLBACK")
                raise

    def _get(self, name: str) -> int:
        return self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()[0]

    # ---- counters and readings -----------------------------------------------------------

    def next_boot(self) -> int:
        """Count this start; the birth message carries it."""
        with self.transaction() as db:
            db.execute("UPDATE counters SET value = value + 1 WHERE name = 'boot'")
            return self._get("boot")

    def totals(self) -> Totals:
        with self._lock:
            return Totals(self._get("wms_in"), self._get("wms_out"))

    def commit_reading(
        self, totals: Totals, sign: Callable[[int], tuple[str, bytes]], progress: dict[bytes, int]
    ) -> int:
        """Store the totals, the trades' delivered energy and the reading `sign(seq)` makes
        as (topic, payload), all in one transaction; return the reading's fresh seq."""
        with self.transaction() as db:
            self._save_totals(totals, progress)
            db.execute("UPDATE counters SET value = value + 1 WHERE name = 'seq'")
            seq = self._get("seq")
            self._enqueue(*sign(seq), READING)
            return seq

    def save_totals(self, totals: Totals) -> None:
        """Store the energy totals alone: what a meter counted while it could not sign."""
        with self.transaction():
            self._save_totals(totals, {})

    def _save_totals(self, totals: Totals, progress: dict[bytes, int]) -> None:
        """The totals and the trades' delivered energy, inside the caller's transaction."""
        if totals.wms_in < self._get("wms_in") or totals.wms_out < self._get("wms_out"):
            raise ValueError("energy totals never decrease")
        self._db.executemany(
            "UPDATE counters SET value = ? WHERE name = ?", ((totals.wms_in, "wms_in"), (totals.wms_out, "wms_out"))
        )
        self._db.executemany(
            "UPDATE trades SET delivered_wms = max(delivered_wms, ?) WHERE id = ?",
            ((wms, ctp_id) for ctp_id, wms in progress.items()),
        )

    # ---- outbox --------------------------------------------------------------------------

    def enqueue(self, topic: str, payload: bytes, kind: str) -> None:
        with self.transaction():
            self._enqueue(topic, payload, kind)

    def _enqueue(self, topic: str, payload: bytes, kind: str) -> None:
        """Add a message; a full outbox drops its oldest reading (later readings carry the
        same cumulative Wh, so only resolution is lost) and counts it. Transactions are
        never dropped: they are money."""
        self._db.execute("INSERT INTO outbox (topic, payload, kind) VALUES (?, ?, ?)", (topic, payload, kind))
        readings = self._db.execute("SELECT count(*) FROM outbox WHERE kind = ?", (READING,)).fetchone()[0]
        if readings > self.outbox_max:
            self._db.execute("DELETE FROM outbox WHERE seq = (SELECT min(seq) FROM outbox WHERE kind = ?)", (READING,))
            self._db.execute(
                "INSERT INTO dropped VALUES ('outbox-full', 1) ON CONFLICT (reason) DO UPDATE SET count = count + 1"
            )

    def outbox_after(self, seq: int, limit: int) -> list[MeterOutboxRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, topic, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
            ).fetchall()
        return [MeterOutboxRow(*row) for row in rows]

    def delivered(self, seqs: list[int]) -> None:
        with self.transaction() as db:
            db.executemany("DELETE FROM outbox WHERE seq = ?", ((seq,) for seq in seqs))

    def queued(self, payload: bytes) -> bool:
        """Whether a copy of `payload` still waits in the outbox (the broker has not taken it)."""
        with self._lock:
            return self._db.execute("SELECT 1 FROM outbox WHERE payload = ?", (payload,)).fetchone() is not None

    def data_version(self) -> int:
        """Changes whenever another connection (`spb-meter ctp|erc`) committed to the file."""
        with self._lock:
            return self._db.execute("PRAGMA data_version").fetchone()[0]

    def outbox_size(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM outbox").fetchone()[0]

    def dropped(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT reason, count FROM dropped").fetchall())

    # ---- key ring ------------------------------------------------------------------------

    def add_batch(self, batch: Batch) -> Batch:
        """Persist a new batch's seeds before its root is shown to anyone."""
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO batches (root, seeds, made) VALUES (?, ?, ?)", (batch.root, batch.seeds, batch.made)
            )
            return batch._replace(id=cur.lastrowid)

    def set_coe(self, batch_id: int, coe: bytes, t: int, exp: int) -> bool:
        """Keep the first verified CoE of a batch; False if it already had one."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE batches SET coe = ?, coe_t = ?, coe_exp = ? WHERE id = ? AND coe IS NULL",
                (coe, t, exp, batch_id),
            )
            return cur.rowcount == 1

    def newest_batch(self) -> Batch | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_BATCH_COLUMNS} FROM batches ORDER BY id DESC LIMIT 1").fetchone()
        return Batch(*row) if row else None

    def roots(self) -> set[bytes]:
        with self._lock:
            return {root for (root,) in self._db.execute("SELECT root FROM batches")}

    def batches(self) -> list[Batch]:
        with self._lock:
            return [Batch(*row) for row in self._db.execute(f"SELECT {_BATCH_COLUMNS} FROM batches ORDER BY id")]

    def batch(self, batch_id: int) -> Batch:
        with self._lock:
            return Batch(
                *self._db.execute(f"SELECT {_BATCH_COLUMNS} FROM batches WHERE id = ?", (batch_id,)).fetchone()
            )

    # ---- trades --------------------------------------------------------------------------

    def add_trade(self, choose_key, make_ctp, now: int) -> TradeRow:
        """Reserve a one-time key with `choose_key(batches)` -> Batch, sign the CTP with
        `make_ctp(batch)` -> (id, raw, wh, exp), record the trade and queue the CTP: all or nothing."""
        with self.transaction() as db:
            batch = choose_key([Batch(*row) for row in db.execute(f"SELECT {_BATCH_COLUMNS} FROM batches ORDER BY id")])
            db.execute("UPDATE batches SET next_idx = next_idx + 1 WHERE id = ?", (batch.id,))
            ctp_id, raw, wh, exp = make_ctp(batch)
            db.execute(
                "INSERT INTO trades (id, ctp, batch, idx, wh, exp, state, sent, created, changed) "
                "VALUES (?, ?, ?, ?, ?, ?, 'sent', ?, ?, ?)",
                (ctp_id, raw, batch.id, batch.next_idx, wh, exp, now, now, now),
            )
            self._enqueue(topics.TX_CTP, raw, TX)
            row = self._trade(ctp_id)
            assert row is not None, "inserted just above, in this transaction"
            return row

    def trades(self, changed_since: int | None = None) -> list[TradeRow]:
        """All trades, oldest first; with changed_since, the open ones and those whose state
        changed at or after it."""
        where, args = (
            ("", ()) if changed_since is None else ("WHERE state IN ('sent', 'held') OR changed >= ?", (changed_since,))
        )
        with self._lock:
            rows = self._db.execute(f"SELECT {_TRADE_COLUMNS} FROM trades {where} ORDER BY created, id", args)
            return [TradeRow(*row) for row in rows.fetchall()]

    def trade(self, ctp_id: bytes) -> TradeRow | None:
        with self._lock:
            return self._trade(ctp_id)

    def _trade(self, ctp_id: bytes) -> TradeRow | None:
        row = self._db.execute(f"SELECT {_TRADE_COLUMNS} FROM trades WHERE id = ?", (ctp_id,)).fetchone()
        return TradeRow(*row) if row else None

    def update_trade(self, ctp_id: bytes, make, queue_topic: str | None = None) -> TradeRow | None:
        """Change one trade with `make(current row) -> new row or None` and queue the new row's
        message on queue_topic, in one transaction. Returns the new row, or None if unchanged.

        Deciding inside the transaction is what stops the running meter and `spb-meter erc`
        from both signing an ERC for one trade (which would use its one-time key twice)."""
        queue = None if queue_topic is None else (lambda new: (queue_topic, new.message(queue_topic)))
        return self._update("trades", TradeRow, ctp_id, make, queue)

    def _update(self, table: str, cls, key: bytes, make, queue=None):
        """One row of `table` (a `cls` whose first field is the key) changed by `make(current)
        -> new or None`, and `queue(new) -> (topic, payload)` queued, in one transaction."""
        columns = ", ".join(cls._fields)
        with self.transaction():
            found = self._db.execute(f"SELECT {columns} FROM {table} WHERE {cls._fields[0]} = ?", (key,)).fetchone()
            current = cls(*found) if found else None
            new = make(current) if current else None
            if new is None or new == current:
                return None
            self._db.execute(
                f"UPDATE {table} SET {', '.join(f'{f} = ?' for f in cls._fields[1:])} WHERE {cls._fields[0]} = ?",
                (*new[1:], key),
            )
            if queue is not None:
                topic, payload = queue(new)
                self._enqueue(topic, payload, TX)
            return new

    def add_fill(self, sale_id: bytes, order: OrderRow, wh: int, exp: int, now: int) -> TradeRow:
        """A fill of our bid becomes our trade to confirm, as if we had sent its CTP: a key of
        the batch the bid named is reserved, the trade recorded held, and the sale row matched,
        in one transaction. NoKey if that batch has no key left (the ledger refunds it at exp)."""
        with self.transaction() as db:
            found = db.execute(
                f"SELECT {_BATCH_COLUMNS} FROM batches WHERE root = ? AND next_idx < length(seeds) / 32", (order.root,)
            ).fetchone()
            if found is None:
                raise NoKey(f"no free key left in the batch bid {order.id.hex()} names")
            batch = Batch(*found)
            db.execute("UPDATE batches SET next_idx = next_idx + 1 WHERE id = ?", (batch.id,))
            db.execute(
                "INSERT INTO trades (id, ctp, batch, idx, wh, exp, state, sent, created, changed) "
                "VALUES (?, x'', ?, ?, ?, ?, 'held', ?, ?, ?)",
                (sale_id, batch.id, batch.next_idx, wh, exp, now, now, now),
            )
            db.execute("UPDATE sales SET order_id = ?, wh = ?, changed = ? WHERE id = ?", (order.id, wh, now, sale_id))
            row = self._trade(sale_id)
            assert row is not None, "inserted just above, in this transaction"
            return row

    # ---- export records ------------------------------------------------------------------

    def export_state(self) -> ExportState:
        with self._lock:
            k = self._get("export_k")
            return ExportState(None if k < 0 else k, self._get("export_mark"))

    def commit_export(self, totals: Totals, progress: dict[bytes, int], advance, sign, now: int) -> Due | None:
        """Store the totals and trade progress, `advance(state) -> (state, due)` and the record
        `sign(due)` makes, in one transaction: the record is queued exactly when its interval
        is closed, so a restart neither repeats nor skips one."""
        with self.transaction() as db:
            self._save_totals(totals, progress)
            state, due = advance(self.export_state())
            db.executemany(
                "UPDATE counters SET value = ? WHERE name = ?",
                ((-1 if state.k is None else state.k, "export_k"), (state.mark_wh, "export_mark")),
            )
            if due is not None:
                raw = sign(due)
                db.execute(
                    "INSERT INTO exports (k, raw, wh, total, sent) VALUES (?, ?, ?, ?, ?)",
                    (due.k, raw, due.wh, due.total, now),
                )
                self._enqueue(topics.TX_EXPORT, raw, TX)
            return due

    def exports(self, limit: int = 1000) -> list[tuple[int, bytes, int, int, int, str]]:
        """The latest export records, newest first: (k, raw, wh, total, sent, reason)."""
        with self._lock:
            return self._db.execute(
                "SELECT k, raw, wh, total, sent, reason FROM exports ORDER BY k DESC LIMIT ?", (limit,)
            ).fetchall()

    def export_answered(self, k: int, reason: str, now: int, resend: bool) -> None:
        """The ledger refused record k for `reason`; `resend`: queue the same bytes again now."""
        with self.transaction() as db:
            db.execute("UPDATE exports SET reason = ?, sent = ? WHERE k = ?", (reason, now, k))
            if resend:
                (raw,) = db.execute("SELECT raw FROM exports WHERE k = ?", (k,)).fetchone()
                self._enqueue(topics.TX_EXPORT, raw, TX)

    # ---- market orders -------------------------------------------------------------------

    def add_order(self, order: OrderRow, topic: str) -> OrderRow:
        """Record an order we signed and queue its message on `topic`, at once."""
        with self.transaction() as db:
            db.execute(
                f"INSERT INTO orders ({_ORDER_COLUMNS}) VALUES ({', '.join('?' * len(OrderRow._fields))})", order
            )
            self._enqueue(topic, order.msg, TX)
            return order

    def orders(self, changed_since: int | None = None) -> list[OrderRow]:
        """All orders, oldest first; with changed_since, those changed at or after it."""
        where, args = ("", ()) if changed_since is None else ("WHERE changed >= ?", (changed_since,))
        with self._lock:
            rows = self._db.execute(f"SELECT {_ORDER_COLUMNS} FROM orders {where} ORDER BY created, id", args)
            return [OrderRow(*row) for row in rows.fetchall()]

    def orders_from(self, k: int) -> list[OrderRow]:
        """Orders for interval k and later, oldest first: the agent's day, without the years before."""
        with self._lock:
            rows = self._db.execute(f"SELECT {_ORDER_COLUMNS} FROM orders WHERE k >= ? ORDER BY created, id", (k,))
            return [OrderRow(*row) for row in rows.fetchall()]

    def update_order(self, order_id: bytes, make, queue=None) -> OrderRow | None:
        """As update_trade, for an order; `queue(new) -> (topic, payload)` or None."""
        return self._update("orders", OrderRow, order_id, make, queue)

    # ---- sales and fills, as statuses tell them ------------------------------------------

    def add_sale(self, sale: SaleRow) -> bool:
        """Record a held trade naming us that we did not sign; False if known already."""
        with self._lock:
            cur = self._db.execute(
                f"INSERT OR IGNORE INTO sales ({_SALE_COLUMNS}) VALUES ({', '.join('?' * len(SaleRow._fields))})", sale
            )
            return cur.rowcount == 1

    def sales(self, changed_since: int | None = None) -> list[SaleRow]:
        """All sales and fills, oldest first; with changed_since, the held ones and those
        changed at or after it."""
        where, args = ("", ()) if changed_since is None else ("WHERE state = 'held' OR changed >= ?", (changed_since,))
        with self._lock:
            rows = self._db.execute(f"SELECT {_SALE_COLUMNS} FROM sales {where} ORDER BY t, id", args)
            return [SaleRow(*row) for row in rows.fetchall()]

    def update_sale(self, sale_id: bytes, make) -> SaleRow | None:
        return self._update("sales", SaleRow, sale_id, make)

    def save_sale_progress(self, progress: dict[bytes, int]) -> None:
        """Export counted against held sales; never backwards."""
        with self.transaction() as db:
            db.executemany(
                "UPDATE sales SET delivered_wms = max(delivered_wms, ?) WHERE id = ?",
                ((wms, sale_id) for sale_id, wms in progress.items()),
            )

    # ---- the household account's money, as the ledger says it --------------------------

    def save_account(self, row: AccountRow) -> bool:
        """Keep `row` if it is newer (by block height, then time) than the one stored, or of
        another key; whether it was. An older copy the broker delivers again never replaces a
        newer one. The meter only takes statuses of its current key (edge.account.accept), so
        one of another key stored is of a key it had before a rotation: its last status, maybe
        the 0/0 of the rotation's block, which the new key's first status (same block, same
        time) must replace."""
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO account (one, balance, held, t, h, raw, pk) VALUES (0, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (one) DO UPDATE SET balance = excluded.balance, held = excluded.held, t = excluded.t, "
                "h = excluded.h, raw = excluded.raw, pk = excluded.pk "
                "WHERE (excluded.h, excluded.t) > (h, t) OR excluded.pk != pk",
                row,
            )
            return cur.rowcount == 1

    def account(self) -> AccountRow | None:
        """The newest status stored, whichever key it is of: after a rotation, until the new
        key's first status comes, the old key's (the money the new key took over, or 0/0)."""
        with self._lock:
            found = self._db.execute("SELECT balance, held, t, h, raw, pk FROM account").fetchone()
        return AccountRow(*found) if found else None

    # ---- the household's account keys -----------------------------------------------------

    def remember_account_key(self, pk: bytes, now: int) -> None:
        """Record that the household's account had key `pk` (idempotent): the running meter its
        key at every start, `spb-meter rotate-key` the key it replaces, before replacing it."""
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO account_keys VALUES (?, ?)", (pk, now))

    def account_keys(self) -> list[bytes]:
        """Every key the household's account had on this meter, oldest first. Trades and orders
        that name a replaced key are still ours: the ledger pays them from or to the key that
        replaced it (docs/PROTOCOL.md §10.3)."""
        with self._lock:
            return [pk for (pk,) in self._db.execute("SELECT pk FROM account_keys ORDER BY since, pk")]

    # ---- peers ---------------------------------------------------------------------------

    def save_peer_birth(self, meter: str, birth: bytes) -> None:
        """Remember a peer's latest verified birth (its device key, boot, firmware).

        Every reconnect redelivers the same retained births; an unchanged one writes nothing,
        so reconnects do not wear the SD card with synchronous commits.
        """
        with self._lock:
            self._db.execute(
                "INSERT INTO peer_births VALUES (?, ?) ON CONFLICT (meter) DO UPDATE "
                "SET birth = excluded.birth WHERE birth != excluded.birth",
                (meter, birth),
            )

    def peer_births(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return self._db.execute("SELECT meter, birth FROM peer_births ORDER BY meter").fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()
