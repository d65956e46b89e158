"""The meter's durable state in SQLite: boot count, reading seq, energy totals, peers.

It must survive power cuts: a reading's `seq` is never reused across reboots (§4) and
the cumulative Wh never go backwards, so each reading's seq and the totals it reports are
committed in one transaction before the reading is signed and sent. Peers' births are
kept too: after a reboot the persistent MQTT session delivers readings queued while we
were away before the retained births arrive, and they can only be verified with the
device keys those births carry.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from edge.energy import Totals

_SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters VALUES ('boot', 0), ('seq', 0), ('wms_in', 0), ('wms_out', 0);
CREATE TABLE IF NOT EXISTS peer_births (meter TEXT PRIMARY KEY, birth BLOB NOT NULL);
"""


class MeterStore:
    """One connection shared by the sampling loop and the MQTT thread, behind a lock."""

    def __init__(self, path: Path):
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a power cut must not undo a used seq
        self._db.executescript(_SCHEMA)

    def _get(self, name: str) -> int:
        return self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()[0]

    def next_boot(self) -> int:
        """Count this start; the birth message carries it."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("UPDATE counters SET value = value + 1 WHERE name = 'boot'")
            return self._get("boot")

    def totals(self) -> Totals:
        with self._lock:
            return Totals(self._get("wms_in"), self._get("wms_out"))

    def commit_reading(self, totals: Totals) -> int:
        """Store the totals a reading reports and return the reading's fresh seq."""
        with self._lock, self._db:
            if totals.wms_in < self._get("wms_in") or totals.wms_out < self._get("wms_out"):
                raise ValueError("energy totals never decrease")
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("UPDATE counters SET value = value + 1 WHERE name = 'seq'")
            self._db.executemany("UPDATE counters SET value = ? WHERE name = ?",
                                 ((totals.wms_in, "wms_in"), (totals.wms_out, "wms_out")))
            return self._get("seq")

    def save_peer_birth(self, meter: str, birth: bytes) -> None:
        """Remember a peer's latest verified birth (its device key, boot, firmware).

        Every reconnect redelivers the same retained births; an unchanged one writes nothing,
        so reconnects do not wear the SD card with synchronous commits.
        """
        with self._lock, self._db:
            self._db.execute("INSERT INTO peer_births VALUES (?, ?) ON CONFLICT (meter) DO UPDATE "
                             "SET birth = excluded.birth WHERE birth != excluded.birth", (meter, birth))

    def peer_births(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return self._db.execute("SELECT meter, birth FROM peer_births ORDER BY meter").fetchall()

    def close(self) -> None:
        self._db.close()
