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

import bisect
import heapq
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Protocol, TypeVar

from wire.cose import message_hash
from wire.messages import CtpState

if TYPE_CHECKING:
    from ledger.market import ExportRecord, OrderRecord, Result
    from ledger.state import CtpRecord

FINAL = frozenset({CtpState.SETTLED, CtpState.REFUNDED})  # a record in these states never changes


class MarketArchive(Protocol):
    """The market's records that left RAM (ledger.market.MarketState): the orders of cleared
    intervals behind the state's horizon, and those intervals' results and export records."""

    def order(self, order_id: bytes) -> OrderRecord | None: ...

    def seal_of(self, book_id: bytes, k: int) -> bytes | None:
        """The seal of interval k whose revealed bid has this id in the book."""
        ...

    def order_ids(self, k: int) -> list[bytes]:
        """The ids of interval k's orders it holds, in the order accepted."""
        ...

    def result(self, k: int) -> Result | None: ...

    def export(self, meter: str, k: int) -> ExportRecord | None: ...

    def export_ks(self, meter: str, first: int, last: int) -> list[int]:
        """Intervals first..last (inclusive) of the meter's export records, ascending."""
        ...

    def put_market(self, orders: list[OrderRecord], results: list[Result], exports: list[ExportRecord]) -> None:
        """Take what left RAM, in the order accepted (the SQLite archive has it already)."""
        ...

    def all_orders(self) -> Iterable[tuple[bytes, OrderRecord]]:
        """Every order it holds, for tools that read all history; so are the two below."""
        ...

    def all_results(self) -> Iterable[tuple[int, Result]]: ...

    def all_exports(self) -> Iterable[tuple[tuple[str, int], ExportRecord]]: ...


class Archive(MarketArchive, Protocol):
    """The finished CTP records of the committed chain, and the market's old records."""

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
        self._orders: dict[bytes, OrderRecord] = {}
        self._seals: dict[bytes, bytes] = {}  # a revealed bid's id in the book -> its seal's
        self._by_k: dict[int, list[bytes]] = {}
        self._results: dict[int, Result] = {}
        self._exports: dict[tuple[str, int], ExportRecord] = {}
        self._ks: dict[str, list[int]] = {}  # meter -> intervals of its records here, ascending

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

    def order(self, order_id: bytes) -> OrderRecord | None:
        return self._orders.get(order_id)

    def seal_of(self, book_id: bytes, k: int) -> bytes | None:
        return self._seals.get(book_id)

    def order_ids(self, k: int) -> list[bytes]:
        return list(self._by_k.get(k, ()))

    def result(self, k: int) -> Result | None:
        return self._results.get(k)

    def export(self, meter: str, k: int) -> ExportRecord | None:
        return self._exports.get((meter, k))

    def export_ks(self, meter: str, first: int, last: int) -> list[int]:
        ks = self._ks.get(meter, [])
        return ks[bisect.bisect_left(ks, first) : bisect.bisect_right(ks, last)]

    def put_market(self, orders: list[OrderRecord], results: list[Result], exports: list[ExportRecord]) -> None:
        for order in orders:
            if order.id not in self._orders:
                self._by_k.setdefault(order.k, []).append(order.id)
            self._orders[order.id] = order
            if order.bid_raw:
                self._seals[message_hash(order.bid_raw)[:16]] = order.id
        self._results.update((r.k, r) for r in results)
        for record in exports:
            if (record.meter, record.k) not in self._exports:
                bisect.insort(self._ks.setdefault(record.meter, []), record.k)
            self._exports[record.meter, record.k] = record

    def all_orders(self) -> Iterable[tuple[bytes, OrderRecord]]:
        return self._orders.items()

    def all_results(self) -> Iterable[tuple[int, Result]]:
        return self._results.items()

    def all_exports(self) -> Iterable[tuple[tuple[str, int], ExportRecord]]:
        return self._exports.items()


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class HistoryView(Mapping[K, V]):
    """A market map as it was when it held all history: the records in RAM, then the
    archive's (ledger.market.MarketState). Lookups by key are one read; iterating reads all
    history, so only tools and tests iterate."""

    def __init__(self, kept: dict[K, V], find: Callable[[K], V | None], every: Callable[[], Iterable[tuple[K, V]]]):
        self._kept, self._find, self._every = kept, find, every

    def __getitem__(self, key: K) -> V:
        value = self._kept.get(key)
        if value is None:
            value = self._find(key)
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        try:
            return self[key] is not None  # type: ignore[index]
        except (KeyError, TypeError):
            return False

    def __iter__(self) -> Iterator[K]:
        return iter(self.all())

    def __len__(self) -> int:
        return len(self.all())

    def values(self) -> list[V]:  # type: ignore[override]
        return list(self.all().values())

    def items(self) -> list[tuple[K, V]]:  # type: ignore[override]
        return list(self.all().items())

    def all(self) -> dict[K, V]:
        """Every record, the archive's first (in the order they left RAM), RAM's winning."""
        return {**dict(self._every()), **self._kept}


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
