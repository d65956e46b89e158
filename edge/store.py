"""The meter's durable state in SQLite (DIR/meter.db): counters, outbox, key ring, trades, peers.

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

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from edge.energy import Totals
from edge.keyring import Batch
from wire import topics

_SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters VALUES ('boot', 0), ('seq', 0), ('wms_in', 0), ('wms_out', 0);
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


_TRADE_COLUMNS = ", ".join(TradeRow._fields)
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
            if totals.wms_in < self._get("wms_in") or totals.wms_out < self._get("wms_out"):
                raise ValueError("energy totals never decrease")
            db.execute("UPDATE counters SET value = value + 1 WHERE name = 'seq'")
            db.executemany(
                "UPDATE counters SET value = ? WHERE name = ?", ((totals.wms_in, "wms_in"), (totals.wms_out, "wms_out"))
            )
            self._save_progress(progress)
            seq = self._get("seq")
            self._enqueue(*sign(seq), READING)
            return seq

    def _save_progress(self, progress: dict[bytes, int]) -> None:
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
        with self.transaction():
            current = self._trade(ctp_id)
            new = make(current) if current else None
            if new is None or new == current:
                return None
            self._db.execute(
                f"UPDATE trades SET {', '.join(f'{f} = ?' for f in TradeRow._fields[1:])} WHERE id = ?",
                (*new[1:], ctp_id),
            )
            if queue_topic is not None:
                self._enqueue(queue_topic, new.message(queue_topic), TX)
            return new

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
