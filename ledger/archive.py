"""Where a validator keeps the CTPs that can no longer change (settled or refunded).

A finished trade never changes again, yet a block still asks about it: a copy of its CTP
is `duplicate`, its ERC's one-time key is used, a cancel or ERC naming it is `not-held`.
Keeping every such record in RAM made memory and start-up grow with history
(docs/decisions/0013-bounded-memory.md). LedgerState keeps only the open ones and asks an
archive for the rest through this small protocol: the validator's SQLite database
(ledger.store.SqliteArchive, indexed lookups) or, for pure tests, audits and simulations,
a dict (MemoryArchive). Both answer the same for the same committed blocks, so which one a
state uses changes no decision.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Protocol

from wire.messages import CtpState

if TYPE_CHECKING:
    from ledger.state import CtpRecord

FINAL = frozenset({CtpState.SETTLED, CtpState.REFUNDED})  # a record in these states never changes


class Archive(Protocol):
    """The finished CTP records of the committed chain."""

    def record(self, ctp_id: bytes) -> CtpRecord | None:
        """The finished record with this id, None if there is none."""
        ...

    def ctp_for_key(self, pk: bytes) -> bytes | None:
        """The CTP an ERC with this one-time key settled, None if none did."""
        ...

    def put(self, records: Iterable[CtpRecord]) -> None:
        """Take the records a committed block finished (the SQLite archive has them already:
        LedgerStore.commit wrote them in the block's transaction)."""
        ...

    def records(self) -> Iterator[CtpRecord]:
        """Every finished record, in leaf order: for tools that read all history (audit, a full
        status restore), never for a block's decisions."""
        ...


class MemoryArchive:
    """An archive in RAM: what a state without a database (tests, audit, simulation) uses."""

    def __init__(self) -> None:
        self._records: dict[bytes, CtpRecord] = {}
        self._keys: dict[bytes, bytes] = {}

    def record(self, ctp_id: bytes) -> CtpRecord | None:
        return self._records.get(ctp_id)

    def ctp_for_key(self, pk: bytes) -> bytes | None:
        return self._keys.get(pk)

    def put(self, records: Iterable[CtpRecord]) -> None:
        for record in records:
            self._records[record.ctp.id] = record
            if record.erc_pk is not None:
                self._keys[record.erc_pk] = record.ctp.id

    def records(self) -> Iterator[CtpRecord]:
        return iter(sorted(self._records.values(), key=lambda r: r.index))


class CtpView(Mapping[bytes, "CtpRecord"]):
    """Every CTP ever held, open ones from RAM and finished ones from the archive: what
    `LedgerState.ctps` was when it held them all, for readers that want history."""

    def __init__(self, open_records: dict[bytes, CtpRecord], archive: Archive, size: Callable[[], int]):
        self._open, self._archive, self._size = open_records, archive, size

    def __getitem__(self, ctp_id: bytes) -> CtpRecord:
        record = self._open.get(ctp_id) or self._archive.record(ctp_id)
        if record is None:
            raise KeyError(ctp_id)
        return record

    def __contains__(self, ctp_id: object) -> bool:
        return isinstance(ctp_id, bytes) and self.get(ctp_id) is not None

    def __iter__(self) -> Iterator[bytes]:
        return (r.ctp.id for r in self.values())

    def __len__(self) -> int:
        return self._size()  # one leaf per record

    def values(self) -> list[CtpRecord]:  # type: ignore[override]
        """In leaf order: all of history, so only for tools and tests."""
        index = lambda r: r.index  # noqa: E731
        return list(heapq.merge(self._archive.records(), sorted(self._open.values(), key=index), key=index))

    def items(self) -> list[tuple[bytes, CtpRecord]]:  # type: ignore[override]
        return [(r.ctp.id, r) for r in self.values()]


class UsedKeys(Mapping[bytes, bytes]):
    """One-time ERC key -> the CTP it settled: only finished records have one."""

    def __init__(self, archive: Archive):
        self._archive = archive

    def __getitem__(self, pk: bytes) -> bytes:
        ctp_id = self._archive.ctp_for_key(pk)
        if ctp_id is None:
            raise KeyError(pk)
        return ctp_id

    def __contains__(self, pk: object) -> bool:
        return isinstance(pk, bytes) and self._archive.ctp_for_key(pk) is not None

    def __iter__(self) -> Iterator[bytes]:
        return (r.erc_pk for r in self._archive.records() if r.erc_pk is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)
