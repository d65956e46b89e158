"""SQLite for one validator: the block log, the state tables and the outbox.

A block, the state it leads to, and the statuses it announces are written in one
transaction (WAL, synchronous=FULL): after `kill -9` the database holds either all of a
block or none of it, and whatever was announced is still in the outbox until the broker
acknowledged it. The tables mirror LedgerState so a restart does not replay the chain;
`spb-ledger audit` replays it and compares.

Start-up reads only what can still change (docs/decisions/0013-bounded-memory.md): the
accounts, the held CTPs (a partial index), the refused hashes, the market, and the pruned
CTP-database tree, whose nodes the `tree` table holds as a snapshot rewritten in every
block's transaction. Finished CTPs stay in `ctps` and are read one at a time, by index,
through SqliteArchive.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from ledger.accounts import FUND, PAYOUT, AccountChanges, AccountHistory
from ledger.archive import FINAL
from ledger.block import BLOCK_V, Block, decode_inputs, encode_inputs
from ledger.fill import FillDoc, trade_ctp
from ledger.genesis import Genesis, MeterEntry
from ledger.market_store import SqliteMarketArchive, load_market, write_market
from ledger.state import BrokenInvariant, Changes, CtpRecord, LedgerState
from wire.cose import message_hash
from wire.merkle import MerkleTree, PrunedTree, TreeChange
from wire.messages import Ctp, CtpState
from wire.reasons import Reject

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS blocks(height INTEGER PRIMARY KEY, hash BLOB NOT NULL, t INTEGER NOT NULL,
                                  chain BLOB NOT NULL, inputs BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS accounts(pk BLOB PRIMARY KEY, balance INTEGER NOT NULL, held INTEGER NOT NULL,
                                    height INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS ctps(id BLOB PRIMARY KEY, leaf INTEGER NOT NULL UNIQUE, raw BLOB NOT NULL,
                                hash BLOB NOT NULL, state TEXT NOT NULL, height INTEGER NOT NULL,
                                by BLOB NOT NULL, erc_pk BLOB UNIQUE);
CREATE INDEX IF NOT EXISTS ctps_held ON ctps(leaf) WHERE state = 'held';
CREATE TABLE IF NOT EXISTS tree(k INTEGER NOT NULL, j INTEGER NOT NULL, hash BLOB NOT NULL,
                                PRIMARY KEY(k, j)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS revoked(pk BLOB PRIMARY KEY, t INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS trades(ctp BLOB PRIMARY KEY, height INTEGER NOT NULL, idx INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS rejected(id BLOB PRIMARY KEY, reason TEXT NOT NULL, msg BLOB NOT NULL,
                                    t INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS refused(hash BLOB PRIMARY KEY, exp INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS refused_by_exp ON refused(exp);
CREATE TABLE IF NOT EXISTS orders(id BLOB PRIMARY KEY, k INTEGER NOT NULL, raw BLOB NOT NULL, hash BLOB NOT NULL,
                                  state TEXT NOT NULL, filled INTEGER NOT NULL, height INTEGER NOT NULL,
                                  by BLOB NOT NULL, bid BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS orders_by_k ON orders(k);
CREATE TABLE IF NOT EXISTS intervals(k INTEGER PRIMARY KEY, clear_t INTEGER NOT NULL, height INTEGER,
                                     green_price INTEGER, green_wh INTEGER, open_price INTEGER,
                                     open_wh INTEGER, fills INTEGER);
CREATE INDEX IF NOT EXISTS intervals_pending ON intervals(k) WHERE height IS NULL;
CREATE TABLE IF NOT EXISTS exports(meter TEXT NOT NULL, k INTEGER NOT NULL, wh INTEGER NOT NULL,
                                   total INTEGER NOT NULL, used INTEGER NOT NULL, height INTEGER NOT NULL,
                                   PRIMARY KEY(meter, k));
-- Accounts after launch (docs/PROTOCOL.md §10): funds and payouts, closed accounts, replaced
-- keys, meters registered after the genesis, and every account's money after each block
-- that changed it (what a statement's opening and closing balances are read from).
CREATE TABLE IF NOT EXISTS money(height INTEGER NOT NULL, idx INTEGER NOT NULL, typ TEXT NOT NULL,
                                 account BLOB NOT NULL, amount INTEGER NOT NULL, ref TEXT NOT NULL,
                                 hash BLOB NOT NULL, PRIMARY KEY(height, idx), UNIQUE(typ, ref));
CREATE INDEX IF NOT EXISTS money_by_account ON money(account, height);
CREATE TABLE IF NOT EXISTS retired(pk BLOB PRIMARY KEY, height INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS rotations(old BLOB PRIMARY KEY, new BLOB NOT NULL UNIQUE, height INTEGER NOT NULL,
                                     idx INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meters(meter TEXT PRIMARY KEY, account BLOB NOT NULL, source TEXT NOT NULL,
                                  height INTEGER NOT NULL, idx INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS balances(pk BLOB NOT NULL, height INTEGER NOT NULL, balance INTEGER NOT NULL,
                                    held INTEGER NOT NULL, PRIMARY KEY(pk, height)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox(seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,
                                  payload BLOB NOT NULL, retain INTEGER NOT NULL,
                                  height INTEGER NOT NULL, rank INTEGER NOT NULL);
"""


class StoreError(Exception):
    """The database does not belong to this genesis, or is not a ledger database."""


class LedgerOutboxRow(NamedTuple):
    """A status, reject or block a validator announced and the broker has not acknowledged yet."""

    seq: int
    topic: str
    payload: bytes
    retain: bool
    height: int = 0  # the block that announced it (0: not a block's output)
    rank: int = 0  # 0: publish now; k > 0: a stand-in, published only if block `height` does not appear


class LedgerStore:
    def __init__(self, path: Path, genesis: Genesis, readonly: bool = False):
        self.path = Path(path)
        self.genesis = genesis
        if readonly and not self.path.exists():
            raise StoreError(f"{self.path} does not exist: has this validator run yet?")
        # Queries open it read-write too but write nothing: a read-only open of a WAL
        # database fails when no writer left its -shm file behind.
        if not readonly:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # One user at a time, but not always one thread: a service is built on one thread
        # and run on another.
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        if not readonly:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(_SCHEMA)
            self._add_account_heights()
            self._adopt(genesis)
        try:
            row = self.db.execute("SELECT value FROM meta WHERE key = 'genesis'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} is not a ledger database: {exc}") from None
        if row is None or row[0] != genesis.hash:
            raise StoreError(f"{self.path} belongs to another genesis")
        if self.value("format") != BLOCK_V:
            raise StoreError(
                f"{self.path} was written by an older ledger (block format {self.value('format') or 1}, "
                f"this one writes {BLOCK_V}): start a new ledger dir"
            )
        if not readonly:
            self._add_tree_snapshot()

    def _adopt(self, genesis: Genesis) -> None:
        with self._transaction():
            if self.db.execute("SELECT 1 FROM meta WHERE key = 'genesis'").fetchone() is None:
                self.db.execute("INSERT INTO meta VALUES ('genesis', ?)", (genesis.hash,))
                self.db.execute("INSERT INTO meta VALUES ('format', ?)", (BLOCK_V,))
                self.db.execute("INSERT INTO meta VALUES ('snapshot', 1)")
                self.db.executemany("INSERT INTO accounts (pk, balance, held) VALUES (?, ?, 0)", genesis.accounts)

    def _add_account_heights(self) -> None:
        """A database from before account statuses (decision 0010) gets the column saying which
        block each account's status comes from: its tip, the newest block that may have moved it."""
        if any(column[1] == "height" for column in self.db.execute("PRAGMA table_info(accounts)")):
            return
        with self._transaction():
            self.db.execute("ALTER TABLE accounts ADD COLUMN height INTEGER NOT NULL DEFAULT 0")
            self.db.execute("UPDATE accounts SET height = (SELECT COALESCE(max(height), 0) FROM blocks)")

    def _add_tree_snapshot(self) -> None:
        """A database from before snapshots gets its pruned tree built once from every leaf."""
        if self.value("snapshot") is not None:
            return
        with self._transaction():
            rows = self.db.execute("SELECT raw, hash, leaf, state, height, by, erc_pk, 0 FROM ctps ORDER BY leaf")
            records = [self._record(*row) for row in rows]
            tree = PrunedTree([r.leaf() for r in records])
            finished = [r.index for r in records if r.state in FINAL]
            tree.seal(finished, tree.sealing(TreeChange(tree.size, tree.size, (), tree.root()), finished))
            self.db.execute("DELETE FROM tree")
            self.db.executemany("INSERT INTO tree VALUES (?, ?, ?)", tree.nodes())
            self.db.execute("INSERT INTO meta VALUES ('snapshot', 1)")

    def close(self) -> None:
        self.db.close()

    def value(self, key: str):
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_value(self, key: str, value: bytes) -> None:
        """A durable value, such as the validator's consensus votes (written before they are sent)."""
        with self._transaction():
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def flag(self, name: str) -> bool:
        return self.db.execute("SELECT 1 FROM meta WHERE key = ?", (f"flag:{name}",)).fetchone() is not None

    def set_flag(self, name: str, on: bool) -> None:
        """A durable yes/no the service keeps across crashes (a pending status restore)."""
        with self._transaction():
            if on:
                self.db.execute("INSERT OR IGNORE INTO meta VALUES (?, 1)", (f"flag:{name}",))
            else:
                self.db.execute("DELETE FROM meta WHERE key = ?", (f"flag:{name}",))

    # -- the state --

    def load(self) -> LedgerState:
        """The state at the tip, from the open state alone: nothing here reads or hashes the
        finished history, so start-up time does not grow with it."""
        tip = self.db.execute("SELECT height, hash, t FROM blocks ORDER BY height DESC LIMIT 1").fetchone()
        height, tip_hash, t = tip if tip else (0, self.genesis.hash, 0)
        accounts = self.db.execute(
            "SELECT pk, balance, held, height, "
            "COALESCE((SELECT t FROM blocks WHERE blocks.height = accounts.height), 0) FROM accounts"
        )
        held = [self._record(*row) for row in self.db.execute(f"{_RECORD} WHERE state = 'held' ORDER BY leaf")]
        nodes = self.db.execute("SELECT k, j, hash FROM tree")
        tree = PrunedTree.from_nodes(self.tree_size(), nodes, [r.index for r in held])
        if tree.root() != self.head()[2] or not tree.consistent():
            raise StoreError(f"{self.path}: the stored CTP-database tree is not the tip's: run `spb-ledger audit`")
        refused = self.refusals()
        history = self.account_history()
        terms = self.genesis.market
        if terms is not None and history.meters:  # their export records are the market's too (§10)
            terms = terms.grown(history.meters, {})  # accounts: LedgerState.restore follows rotations
        archive = SqliteArchive(self)
        market = None if terms is None else load_market(self.db, terms, self._altered, archive, t)
        try:
            return LedgerState.restore(
                self.genesis,
                height,
                tip_hash,
                t,
                accounts,
                held,
                tree,
                refused,
                self.revocations(),
                market,
                archive,
                history,
            )
        except BrokenInvariant as exc:
            raise StoreError(f"{self.path}: {exc}: run `spb-ledger audit`") from None

    def tree_size(self) -> int:
        """Leaves in the CTP-database tree: one per CTP ever held (an index lookup)."""
        return self.db.execute("SELECT COALESCE(max(leaf) + 1, 0) FROM ctps").fetchone()[0]

    def _record(self, raw, digest, leaf, state, height, by, erc_pk, t) -> CtpRecord:
        """A `ctps` row (as _RECORD selects it) as a record, checked against its hash."""
        ctp, fill = self._ctp(raw, digest)
        return CtpRecord(ctp, raw, digest, leaf, self._state(state, digest), height, by, erc_pk, t, fill)

    @staticmethod
    def _state(value: str, digest: bytes) -> CtpState:
        try:
            return CtpState(value)
        except ValueError:
            raise StoreError(f"CTP row {digest.hex()} has no state {value!r}: run `spb-ledger audit`") from None

    @staticmethod
    def _ctp(raw: bytes, digest: bytes) -> tuple[Ctp, FillDoc | None]:
        """A stored CTP, or a fill's CTP and document (ledger.fill), refusing one whose bytes
        are not those the chain committed to."""
        if message_hash(raw) != digest:
            raise StoreError(f"CTP row {digest.hex()} was altered: run `spb-ledger audit`")
        try:
            return trade_ctp(raw)
        except (Reject, ValueError) as exc:
            raise StoreError(f"CTP row {digest.hex()} holds no CTP: {exc}: run `spb-ledger audit`") from None

    def _altered(self, what: str) -> StoreError:
        return StoreError(f"{self.path}: {what}: run `spb-ledger audit`")

    def commit(
        self,
        changes: Changes,
        block: Block,
        outputs: list[tuple[str, bytes, bool]],
        rank: int = 0,
        delivered: Sequence[int] = (),
    ) -> list[LedgerOutboxRow]:
        """Write a sealed block, the state its changes lead to and its outputs (at `rank`, see
        LedgerOutboxRow), and forget the outbox rows in `delivered`; returns the new outbox rows."""
        t = changes.header.t
        with self._transaction():
            self._delete_outbox(delivered)
            self._write_block(changes, block, block.chain_bytes())
            self.db.executemany(
                "INSERT OR REPLACE INTO rejected VALUES (?, ?, ?, ?)",
                ((i, reason, msg, t) for i, (reason, msg) in changes.ctp_rejects.items()),
            )
            self.db.executemany("INSERT OR REPLACE INTO refused VALUES (?, ?)", changes.refused.items())
            self.db.execute("DELETE FROM refused WHERE exp < ?", (t,))
            self._write_tree(changes)
            # Numbered after the highest seq ever used (AUTOINCREMENT's counter), never reused.
            row = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
            first = (row[0] if row else 0) + 1
            queued = [LedgerOutboxRow(seq, *out, block.header.height, rank) for seq, out in enumerate(outputs, first)]
            self.db.executemany("INSERT INTO outbox VALUES (?, ?, ?, ?, ?, ?)", queued)
        return queued

    def _write_block(self, changes: Changes, block: Block, chain: bytes) -> None:
        h = block.header
        self.db.execute(
            "INSERT INTO blocks VALUES (?, ?, ?, ?, ?)", (h.height, block.hash, h.t, chain, encode_inputs(block.inputs))
        )
        self.db.executemany(
            "INSERT INTO accounts(pk, balance, held) VALUES (?, ?, ?) "
            "ON CONFLICT(pk) DO UPDATE SET balance = excluded.balance, held = excluded.held",
            ((pk, changes.balances[pk], changes.held[pk]) for pk in changes.balances),
        )
        self.db.executemany(
            "INSERT INTO balances VALUES (?, ?, ?, ?)",
            ((pk, h.height, changes.balances[pk], changes.held[pk]) for pk in changes.balances),
        )
        self._write_accounts(changes.accounts, h.height)
        self.db.executemany("UPDATE accounts SET height = ? WHERE pk = ?", ((h.height, pk) for pk in changes.moved))
        known = changes.known  # records below this leaf existed: only their state changed
        self.db.executemany(
            "INSERT INTO ctps VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                (r.ctp.id, r.index, r.raw, r.hash, r.state, r.height, r.by, r.erc_pk)
                for r in changes.records.values()
                if r.index >= known
            ),
        )
        self.db.executemany(
            "UPDATE ctps SET state = ?, height = ?, by = ?, erc_pk = ? WHERE id = ?",
            ((r.state, r.height, r.by, r.erc_pk, r.ctp.id) for r in changes.records.values() if r.index < known),
        )
        self.db.executemany("INSERT INTO revoked VALUES (?, ?)", changes.revoked.items())
        if changes.market is not None:
            write_market(self.db, changes.market)
        self.db.executemany(
            "INSERT INTO trades VALUES (?, ?, ?)", ((ctp_id, h.height, i) for i, ctp_id in enumerate(changes.settled))
        )

    def _write_accounts(self, changes: AccountChanges, height: int) -> None:
        ops = ((height, i, op.typ, op.account, op.amount, op.ref, op.hash) for i, op in enumerate(changes.ops))
        self.db.executemany("INSERT INTO money VALUES (?, ?, ?, ?, ?, ?, ?)", ops)
        self.db.executemany("INSERT INTO retired VALUES (?, ?)", ((pk, height) for pk in changes.retired))
        self.db.executemany(
            "INSERT INTO rotations VALUES (?, ?, ?, ?)", ((o, n, height, i) for i, (o, n) in enumerate(changes.rotated))
        )
        self.db.executemany(
            "INSERT INTO meters VALUES (?, ?, ?, ?, ?)",
            ((m.meter, m.account, m.source, height, i) for i, m in enumerate(changes.meters)),
        )

    def account_history(self) -> AccountHistory:
        """§10's history as a restart needs it: small, paced by the operator."""
        db = self.db
        funded, withdrawn = db.execute(
            "SELECT COALESCE(SUM(CASE typ WHEN ? THEN amount END), 0), "
            "COALESCE(SUM(CASE typ WHEN ? THEN amount END), 0) FROM money",
            (FUND, PAYOUT),
        ).fetchone()
        return AccountHistory(
            funded,
            withdrawn,
            tuple(db.execute("SELECT typ, ref FROM money")),
            tuple(db.execute("SELECT pk, height FROM retired")),
            tuple(db.execute("SELECT old, new FROM rotations ORDER BY height, idx")),
            tuple(MeterEntry(*m) for m in db.execute("SELECT meter, account, source FROM meters ORDER BY height, idx")),
        )

    def _write_tree(self, changes: Changes) -> None:
        """Keep the stored pruned tree equal to the state's after this block: its snapshot."""
        self.db.executemany(
            "INSERT OR REPLACE INTO tree VALUES (?, ?, ?)",
            ((k, j, digest) for k, level in enumerate(changes.tree.nodes) for j, digest in level.items()),
        )
        self.db.executemany("DELETE FROM tree WHERE k = ? AND j = ?", changes.pruned)

    def forget(self, delivered: list[int]) -> None:
        """Drop outbox rows the broker acknowledged (when no block is coming to carry it)."""
        if delivered:
            with self._transaction():
                self._delete_outbox(delivered)

    def _delete_outbox(self, delivered: Sequence[int]) -> None:
        self.db.executemany("DELETE FROM outbox WHERE seq = ?", ((seq,) for seq in delivered))

    def outbox(self) -> list[LedgerOutboxRow]:
        """Everything announced but not yet acknowledged by the broker, in order."""
        return [
            LedgerOutboxRow(seq, topic, payload, bool(retain), height, rank)
            for seq, topic, payload, retain, height, rank in self.db.execute(
                "SELECT seq, topic, payload, retain, height, rank FROM outbox ORDER BY seq"
            )
        ]

    def drop_standby(self, height: int) -> None:
        """Forget the stand-in outputs (rank > 0) of block `height`: its publisher announced it."""
        with self._transaction():
            self.db.execute("DELETE FROM outbox WHERE rank > 0 AND height = ?", (height,))

    # -- queries --

    def account(self, pk: bytes) -> tuple[int, int] | None:
        return self.db.execute("SELECT balance, held FROM accounts WHERE pk = ?", (pk,)).fetchone()

    def ctp_row(self, ctp_id: bytes) -> tuple | None:
        """(raw, hash, state, height, by) of a CTP in the database."""
        return self.db.execute("SELECT raw, hash, state, height, by FROM ctps WHERE id = ?", (ctp_id,)).fetchone()

    def rejection(self, ctp_id: bytes) -> tuple[str, bytes, int] | None:
        """(reason, message hash, time) of the last rejected CTP with this id that no one holds."""
        return self.db.execute("SELECT reason, msg, t FROM rejected WHERE id = ?", (ctp_id,)).fetchone()

    def trade_at(self, ctp_id: bytes) -> tuple[int, int] | None:
        """(height, index among the block's trades) of a settled CTP."""
        return self.db.execute("SELECT height, idx FROM trades WHERE ctp = ?", (ctp_id,)).fetchone()

    def block(self, height: int) -> Block | None:
        row = self.db.execute("SELECT chain, inputs FROM blocks WHERE height = ?", (height,)).fetchone()
        return None if row is None else Block.from_chain_bytes(row[0], decode_inputs(row[1]))

    def blocks(self) -> Iterator[tuple[tuple[int, bytes, int], Block]]:
        """Every block in height order, with its row's own (height, hash, t) columns."""
        for height, digest, t, chain, inputs in self.db.execute(
            "SELECT height, hash, t, chain, inputs FROM blocks ORDER BY height"
        ):
            yield (height, digest, t), Block.from_chain_bytes(chain, decode_inputs(inputs))

    def records(self) -> dict[bytes, tuple]:
        """Every CTP row, for audit's comparison with a replay."""
        return {
            row[0]: row[1:]
            for row in self.db.execute("SELECT id, leaf, raw, hash, state, height, by, erc_pk FROM ctps")
        }

    def head(self) -> tuple[int, bytes, bytes]:
        """(height, hash, CTP-database root) of the last block; the genesis hash at height 0."""
        row = self.db.execute("SELECT height, chain FROM blocks ORDER BY height DESC LIMIT 1").fetchone()
        if row is None:
            return 0, self.genesis.hash, MerkleTree().root()
        header = Block.from_chain_bytes(row[1]).header
        return row[0], header.hash, header.ctps

    def block_times(self) -> dict[int, int]:
        return dict(self.db.execute("SELECT height, t FROM blocks"))

    def block_time(self, height: int) -> int:
        """The time of block `height` (0 for the genesis)."""
        row = self.db.execute("SELECT t FROM blocks WHERE height = ?", (height,)).fetchone()
        return row[0] if row else 0

    def rejections(self) -> dict[bytes, tuple[str, bytes, int]]:
        """CTP id -> (reason, message hash, time) of every `rejected` status published."""
        return {i: (reason, msg, t) for i, reason, msg, t in self.db.execute("SELECT id, reason, msg, t FROM rejected")}

    def trades(self) -> dict[bytes, tuple[int, int]]:
        return {ctp_id: (height, idx) for ctp_id, height, idx in self.db.execute("SELECT ctp, height, idx FROM trades")}

    def refusals(self) -> dict[bytes, int]:
        """Hash of a rejected payer-signed CTP -> its exp: copies are `duplicate` until then."""
        return dict(self.db.execute("SELECT hash, exp FROM refused"))

    def revocations(self) -> dict[bytes, int]:
        """Revoked device key -> revocation time."""
        return dict(self.db.execute("SELECT pk, t FROM revoked"))

    def accounts(self) -> dict[bytes, tuple[int, int]]:
        return {pk: (b, h) for pk, b, h in self.db.execute("SELECT pk, balance, held FROM accounts")}

    def _transaction(self):
        return _Transaction(self.db, "BEGIN IMMEDIATE")

    def snapshot(self):
        """A read transaction: queries inside it see one committed state, however many blocks
        a running ledger writes meanwhile (WAL)."""
        return _Transaction(self.db, "BEGIN")


_RECORD = (
    "SELECT raw, hash, leaf, state, height, by, erc_pk, "
    "COALESCE((SELECT t FROM blocks WHERE blocks.height = ctps.height), 0) FROM ctps"
)
_FINISHED = f"state IN ('{CtpState.SETTLED}', '{CtpState.REFUNDED}')"


class SqliteArchive(SqliteMarketArchive):
    """The finished CTPs of a validator's database (ledger.archive.Archive): looked up by
    the primary key or the one-time key's unique index, never all loaded; and the market's
    records behind its horizon (SqliteMarketArchive).

    It reads through a connection of its own, so a state loaded by a tool stays readable
    after the tool closed the store. It sees what the store committed (WAL): a block's rows
    are written before the state commits it, and nothing decides in between."""

    def __init__(self, store: LedgerStore):
        self.store = store
        super().__init__(sqlite3.connect(store.path, isolation_level=None, check_same_thread=False), store._altered)

    def __del__(self) -> None:
        self.db.close()  # with the state that used it: explicitly, so no warning says it leaked

    def record(self, ctp_id: bytes) -> CtpRecord | None:
        row = self.db.execute(f"{_RECORD} WHERE id = ? AND {_FINISHED}", (ctp_id,)).fetchone()
        return None if row is None else self.store._record(*row)

    def ctp_for_key(self, pk: bytes) -> bytes | None:
        row = self.db.execute("SELECT id FROM ctps WHERE erc_pk = ?", (pk,)).fetchone()
        return None if row is None else row[0]

    def put(self, records: Iterable[CtpRecord]) -> None:
        """Nothing to do: LedgerStore.commit wrote them in the block's transaction."""

    def records(self) -> Iterator[CtpRecord]:
        rows = self.db.execute(f"{_RECORD} WHERE {_FINISHED} ORDER BY leaf").fetchall()
        return (self.store._record(*row) for row in rows)


class _Transaction:
    """BEGIN ... COMMIT, or ROLLBACK if the body raised."""

    def __init__(self, db: sqlite3.Connection, begin: str):
        self.db, self.begin = db, begin

    def __enter__(self) -> None:
        self.db.execute(self.begin)

    def __exit__(self, exc_type, exc, tb) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
