"""What `spb-ledger audit` checks of accounts after launch (docs/PROTOCOL.md §10) once it
replayed a chain: that the validator's stored funds and payouts, retired accounts,
rotations, registered meters and per-block balances are exactly what the replay wrote, and
that the stored funds and payouts add up to the replay's (what a restart reads back to
check balances + holds = genesis + funded − withdrawn).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ledger.state import Changes, LedgerState
from ledger.store import LedgerStore


class AccountsLog:
    """The §10 tables as the replay writes them, block by block: keyed as the store keys them."""

    def __init__(self) -> None:
        self.money: dict[tuple, tuple] = {}  # (height, idx) -> (typ, account, amount, ref, hash)
        self.retired: dict[tuple, tuple] = {}  # (pk,) -> (height,)
        self.rotations: dict[tuple, tuple] = {}  # (old,) -> (new, height, idx)
        self.meters: dict[tuple, tuple] = {}  # (meter,) -> (account, source, height, idx)
        self.balances: dict[tuple, tuple] = {}  # (pk, height) -> (balance, held)

    def add(self, changes: Changes) -> None:
        h, accounts = changes.header.height, changes.accounts
        for i, op in enumerate(accounts.ops):
            self.money[h, i] = (op.typ, op.account, op.amount, op.ref, op.hash)
        self.retired.update(((pk,), (h,)) for pk in accounts.retired)
        self.rotations.update(((old,), (new, h, i)) for i, (old, new) in enumerate(accounts.rotated))
        self.meters.update(((m.meter,), (m.account, m.source, h, i)) for i, m in enumerate(accounts.meters))
        self.balances.update(((pk, h), (units, changes.held[pk])) for pk, units in changes.balances.items())


_TABLES = {  # table -> its SELECT: key columns first, as AccountsLog keys them
    "money": ("SELECT height, idx, typ, account, amount, ref, hash FROM money", 2),
    "retired": ("SELECT pk, height FROM retired", 1),
    "rotations": ("SELECT old, new, height, idx FROM rotations", 1),
    "meters": ("SELECT meter, account, source, height, idx FROM meters", 1),
    "balances": ("SELECT pk, height, balance, held FROM balances", 2),
}


def accounts_faults(state: LedgerState, store: LedgerStore, log: AccountsLog) -> str | None:
    """The first thing in the stored §10 tables that is not what the replay wrote, or None."""
    history = store.account_history()
    stored, replayed = (history.funded, history.withdrawn), (state.funded, state.withdrawn)
    if stored != replayed:
        return (
            f"the stored funds and payouts add up to {stored[0]} funded and {stored[1]} withdrawn, "
            f"the replay's to {replayed[0]} and {replayed[1]}"
        )
    for table, (select, width) in _TABLES.items():
        rows = ((tuple(row[:width]), tuple(row[width:])) for row in store.db.execute(select))
        fault = _differ(table, getattr(log, table), rows)
        if fault is not None:
            return fault
    return None


def _differ(table: str, replayed: Mapping[tuple, tuple], stored: Iterable[tuple[tuple, tuple]]) -> str | None:
    """The first stored row the replay did not write (or wrote otherwise), else the first
    row of the replay's that the store lacks."""
    keys = set()
    for key, values in stored:
        if replayed.get(key) != values:
            return f"stored {table} row {_shown(key)} is {_shown(values)}, the replay's is {_shown(replayed.get(key))}"
        keys.add(key)
    missing = next((key for key in replayed if key not in keys), None)
    return None if missing is None else f"stored {table} lack the replay's row {_shown(missing)}"


def _shown(values: tuple | None) -> str:
    """A row for a message: keys as short hex."""
    if values is None:
        return "none"
    return "(" + ", ".join(v.hex()[:16] if isinstance(v, bytes) else repr(v) for v in values) + ")"
