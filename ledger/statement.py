"""A household account's statement, built from what a validator's database holds
(docs/decisions/0017-statements.md): `spb-ledger statement` prints it, and
ledger.statement_service answers a meter's request with it over the bus.

Pure in the sense the house means: it reads one committed snapshot of the store and the
genesis, takes the period as arguments, and reads no clock. The money comes from the
`balances` table (every account's (free, held) after each block that changed it), the
trades from `ctps` (settled and refunded ones, with the market's asks for a fill's meter
and source), funds and payouts from `money`, replaced keys from `rotations`.

Keys and rotations: a statement is of one key. A trade, fund or payout naming key X in block
h belongs to the key that held X's account after block h (X itself unless X was rotated at a
height <= h): a rotation moves everything, so what block h did to X before the rotation
moved with it. The rotation itself is a `rotated-out` line of the old key and a `rotated-in`
line of the new one, for the old key's money after the block before.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ledger.fill import trade_ctp
from ledger.store import LedgerStore
from wire.cose import message_hash
from wire.messages import Ask, CtpState, Rotate, open_message
from wire.reasons import Reject
from wire.statement import BOUGHT, FUND, PAYOUT, ROTATED_IN, ROTATED_OUT, SOLD, AccountStatement, Line

_KIND_ORDER = {ROTATED_IN: 0, FUND: 1, BOUGHT: 2, SOLD: 3, PAYOUT: 4, ROTATED_OUT: 5}


class StatementError(ValueError):
    """A statement asked for that cannot be made: the caller's to fix, one line."""


@dataclass(frozen=True, slots=True)
class _Rotation:
    old: bytes
    new: bytes
    height: int


class _Accounts:
    """Who held which key's account when, and each account's meters, from one snapshot."""

    def __init__(self, store: LedgerStore):
        db = store.db
        self.rotations = {
            old: _Rotation(old, new, h) for old, new, h in db.execute("SELECT old, new, height FROM rotations")
        }
        terms = store.genesis.market
        meters = [(m.meter, m.account, m.source) for m in (terms.meters if terms is not None else ())]
        meters += list(db.execute("SELECT meter, account, source FROM meters"))
        self.meters = sorted(meters)

    def owner(self, pk: bytes, height: int) -> bytes:
        """The key that held `pk`'s account after block `height`."""
        while (r := self.rotations.get(pk)) is not None and r.height <= height:
            pk = r.new
        return pk

    def now(self, pk: bytes) -> bytes:
        return self.owner(pk, 1 << 63)

    def meters_of(self, pk: bytes) -> list[tuple[str, str]]:
        """(meter id, source) of the meters of `pk`'s household now (they follow rotations)."""
        current = self.now(pk)
        return [(meter, source) for meter, account, source in self.meters if self.now(account) == current]

    def meter_account(self, meter_id: str) -> bytes | None:
        return next((self.now(account) for meter, account, _ in self.meters if meter == meter_id), None)


def account_of(store: LedgerStore, text: str) -> bytes:
    """An account key from the command line: 64 hex digits, or a meter id (its household's key now)."""
    if len(text) == 64:
        try:
            return bytes.fromhex(text)
        except ValueError:
            pass
    with store.snapshot():
        found = _Accounts(store).meter_account(text)
    if found is None:
        raise StatementError(f"{text!r} is neither an account key (64 hex digits) nor a registered meter")
    return found


def build_statement(store: LedgerStore, account: bytes, start: int, end: int) -> AccountStatement:
    """Account `account`'s statement over block times [start, end), checked to add up."""
    if end <= start:
        raise StatementError(f"the period is empty: to ({end}) is not after from ({start})")
    with store.snapshot():
        return _Builder(store, account).build(start, end).check()


class _Builder:
    def __init__(self, store: LedgerStore, account: bytes):
        self.store, self.db, self.account = store, store.db, account
        self.accounts = _Accounts(store)
        self._times: dict[int, int] = {}
        self.genesis_units = dict(store.genesis.accounts)
        known = account in self.genesis_units or store.account(account) is not None
        if not (known or account in self.accounts.rotations):
            raise StatementError(f"{account.hex()} is not an account of this ledger")
        self._check_history()

    def _check_history(self) -> None:
        """A database from before per-block balances (decision 0016) cannot say what an account
        held at a past block: refuse rather than print a wrong opening balance."""
        row = self.db.execute("SELECT height FROM accounts WHERE pk = ?", (self.account,)).fetchone()
        if row is not None and row[0] > 0 and self._money_after(row[0]) is None:
            raise StatementError("this ledger's database predates per-block balances: no statement before it")

    def build(self, start: int, end: int) -> AccountStatement:
        h_open, h_close = self._last_before(start), self._last_before(end)
        lines = [*self._trades(h_open, h_close), *self._money(h_open, h_close), *self._rotations(h_open, h_close)]
        lines.sort(key=lambda ln: (ln.height, _KIND_ORDER[ln.kind], ln.id))
        rotation = self.accounts.rotations.get(self.account)
        return AccountStatement(
            account=self.account,
            start=start,
            end=end,
            height=h_close,
            opening=self._money_at(h_open),
            closing=self._money_at(h_close),
            lines=tuple(lines),
            rotated=None if rotation is None else rotation.new,
        )

    # -- the store --

    def _last_before(self, t: int) -> int:
        return self.db.execute("SELECT COALESCE(MAX(height), 0) FROM blocks WHERE t < ?", (t,)).fetchone()[0]

    def _time(self, height: int) -> int:
        if height not in self._times:  # many lines share a block
            self._times[height] = self.store.block_time(height)
        return self._times[height]

    def _money_after(self, height: int, pk: bytes | None = None) -> tuple[int, int] | None:
        row = self.db.execute(
            "SELECT balance, held FROM balances WHERE pk = ? AND height <= ? ORDER BY height DESC LIMIT 1",
            (self.account if pk is None else pk, height),
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def _money_at(self, height: int, pk: bytes | None = None) -> tuple[int, int]:
        """(free, held) of a key after block `height`: its genesis balance before any change."""
        pk = self.account if pk is None else pk
        found = self._money_after(height, pk)
        return found if found is not None else (self.genesis_units.get(pk, 0), 0)

    def _mine(self, pk: bytes, height: int) -> bool:
        return self.accounts.owner(pk, height) == self.account

    # -- the lines --

    def _trades(self, h_open: int, h_close: int) -> Iterable[Line]:
        rows = self.db.execute(
            "SELECT raw, hash, state, height FROM ctps WHERE state IN (?, ?) AND height > ? AND height <= ?",
            (CtpState.SETTLED, CtpState.REFUNDED, h_open, h_close),
        )
        for raw, digest, state, height in rows.fetchall():
            if message_hash(raw) != digest:
                raise StatementError(f"CTP row {digest.hex()} was altered: run `spb-ledger audit`")
            ctp, fill = trade_ctp(raw)
            ask = self._ask(fill.ask) if fill is not None else None
            for kind, me, other in ((BOUGHT, ctp.payer, ctp.payee), (SOLD, ctp.payee, ctp.payer)):
                if not self._mine(me, height):
                    continue
                if ask is not None and kind == BOUGHT:
                    meters, src = ask.meter, ask.src  # a fill names the seller's meter exactly
                else:
                    known = self.accounts.meters_of(other if kind == BOUGHT else me)
                    sources = {source for _, source in known if source}
                    src = ask.src if ask is not None else ctp.src or (sources.pop() if len(sources) == 1 else "")
                    meters = ",".join(meter for meter, _ in self.accounts.meters_of(other))
                yield Line(kind, height, self._time(height), ctp.id, ctp.amount, ctp.wh, state, src, other, meters)

    def _ask(self, ask_hash: bytes) -> Ask | None:
        row = self.db.execute("SELECT raw FROM orders WHERE id = ?", (ask_hash[:16],)).fetchone()
        try:
            return None if row is None else open_message(row[0], Ask).body
        except Reject:
            return None

    def _money(self, h_open: int, h_close: int) -> Iterable[Line]:
        rows = self.db.execute(
            "SELECT height, typ, account, amount, ref, hash FROM money WHERE height > ? AND height <= ?",
            (h_open, h_close),
        )
        for height, typ, account, amount, ref, digest in rows.fetchall():
            if self._mine(account, height):
                kind = FUND if typ == FUND else PAYOUT
                yield Line(kind, height, self._time(height), digest, amount, ref=ref, party=b"")

    def _rotations(self, h_open: int, h_close: int) -> Iterable[Line]:
        """The rotation that replaced this key, and the one that made it (if in the period)."""
        for r in self.accounts.rotations.values():
            if not (h_open < r.height <= h_close and self.account in (r.old, r.new)):
                continue
            moved = sum(self._money_at(r.height - 1, r.old))
            kind, other = (ROTATED_OUT, r.new) if r.old == self.account else (ROTATED_IN, r.old)
            yield Line(kind, r.height, self._time(r.height), self._rotate_hash(r), moved, party=other)

    def _rotate_hash(self, r: _Rotation) -> bytes:
        """The hash of the `rotate` block r.height applied: what `spb-ledger proof` proves."""
        block = self.store.block(r.height)
        assert block is not None, "the rotations table names a block of this snapshot"
        for typ, raw in block.inputs:
            if typ == "rotate":
                body = open_message(raw, Rotate).body
                if body.account == r.old and body.new == r.new:
                    return message_hash(raw)
        raise StatementError(f"block {r.height} holds no rotate of {r.old.hex()}: run `spb-ledger audit`")
