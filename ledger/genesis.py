"""The genesis: what every validator of one ledger must agree on before block 1.

Trusted manufacturer CAs, the household accounts with their opening balances, the
validator keys, the block interval and, for a chain with a market, the market's terms and
which meter belongs to which account with which energy source. Stored as deterministic
CBOR (DIR/genesis.cbor), so its SHA-256 names the chain: block 1's `prev` is the genesis
hash. A genesis without a `market` section is a v1 chain and keeps v1's rules for good:
its blocks must replay to the same verdicts forever (docs/decisions/0009-market.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from hashlib import sha256
from pathlib import Path

from broker.keys import write_file
from wire.cose import encode, load
from wire.messages import SELL_SOURCES
from wire.reasons import Reject
from wire.verify import Verifier

GENESIS_FILE = "genesis.cbor"
DEFAULT_BLOCK_MS = 200
MAX_UNITS = (1 << 63) - 1  # balances live in SQLite INTEGER columns


class GenesisError(ValueError):
    """A genesis file or argument that cannot start a ledger."""


DEFAULT_INTERVAL_S = 300  # SETS's five-minute dispatch interval
DEFAULT_REVEAL_S = 60
NO_SOURCE = ""  # a meter registered without a source: it proves export but cannot ask


@dataclass(frozen=True, slots=True)
class MeterEntry:
    """A household meter: its id (the devcert's), its account, its energy source."""

    meter: str
    account: bytes
    source: str = NO_SOURCE


@dataclass(frozen=True, slots=True)
class MarketTerms:
    """The market's rules of one chain (docs/PROTOCOL.md, Market). Times in seconds, counts
    in intervals: interval k covers block times [k*interval_s*1000, (k+1)*interval_s*1000)."""

    meters: tuple[MeterEntry, ...] = ()  # sorted by meter id
    interval_s: int = DEFAULT_INTERVAL_S
    ahead: int = 288  # orders for at most this many intervals after the current one
    grace: int = 1  # a fill's trade expires this many intervals after its interval ends
    reveal_s: int = DEFAULT_REVEAL_S  # sealed bids of interval k are revealed in [gate, gate + reveal_s)
    # The flat grid tariff (units per Wh) the community compares its market with; 0: none.
    # Informational: no rule uses it, so it is absent from the map when 0 (older genesis hashes stay).
    tariff: int = 0
    # Lookups the ledger makes for every ask, export record and ERC, built once.
    _by_id: dict[str, MeterEntry] = field(init=False, repr=False, compare=False)
    _by_account: dict[bytes, tuple[MeterEntry, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ids = [m.meter for m in self.meters]
        if ids != sorted(set(ids)):
            raise GenesisError("market meters must be unique and sorted by id")
        for m in self.meters:
            if not (type(m.meter) is str and m.meter and type(m.account) is bytes and len(m.account) == 32):
                raise GenesisError("a market meter is a non-empty id and a 32-byte account key")
            if m.source != NO_SOURCE and m.source not in SELL_SOURCES:
                raise GenesisError(f"meter {m.meter}: source is one of {', '.join(SELL_SOURCES)} or none")
        for name in ("interval_s", "ahead", "grace", "reveal_s", "tariff"):
            value = getattr(self, name)
            if not (type(value) is int and 0 <= value <= 1_000_000):
                raise GenesisError(f"market {name} is an integer in 0..1000000")
        if self.interval_s < 1 or self.reveal_s >= self.interval_s:
            raise GenesisError("market interval_s is at least 1 and reveal_s is shorter than it")
        by_account: dict[bytes, tuple[MeterEntry, ...]] = {}
        for m in self.meters:
            by_account[m.account] = (*by_account.get(m.account, ()), m)
        object.__setattr__(self, "_by_id", {m.meter: m for m in self.meters})
        object.__setattr__(self, "_by_account", by_account)

    @property
    def interval_ms(self) -> int:
        return self.interval_s * 1000

    def interval(self, t: int) -> int:
        """The interval holding block time t (ms)."""
        return t // self.interval_ms

    def gate(self, k: int) -> int:
        """Block time from which interval k takes no more orders: its start."""
        return k * self.interval_ms

    def meter(self, meter_id: str) -> MeterEntry | None:
        return self._by_id.get(meter_id)

    def meters_of(self, account: bytes) -> tuple[MeterEntry, ...]:
        """The account's meters, by id."""
        return self._by_account.get(account, ())

    def grown(self, added: Iterable[MeterEntry], rotated: Mapping[bytes, bytes]) -> MarketTerms:
        """These terms with meters registered after the genesis and accounts whose key was
        rotated (docs/PROTOCOL.md §10): what a ledger's market reads after such blocks. The
        genesis keeps its own terms: its hash names the chain."""
        meters = [replace(m, account=rotated.get(m.account, m.account)) for m in (*self.meters, *added)]
        return replace(self, meters=tuple(sorted(meters, key=lambda m: m.meter)))

    def to_map(self) -> dict:
        m = {
            "meters": [[m.meter, m.account, m.source] for m in self.meters],
            "interval_s": self.interval_s,
            "ahead": self.ahead,
            "grace": self.grace,
            "reveal_s": self.reveal_s,
        }
        if self.tariff:
            m["tariff"] = self.tariff
        return m

    @classmethod
    def from_map(cls, m: dict) -> MarketTerms:
        keys = {"meters", "interval_s", "ahead", "grace", "reveal_s"}
        if type(m) is not dict or not keys <= set(m) <= keys | {"tariff"}:
            raise GenesisError("market is a map of meters, interval_s, ahead, grace, reveal_s and optionally tariff")
        if "tariff" in m and not (type(m["tariff"]) is int and m["tariff"] > 0):
            raise GenesisError("market tariff, when present, is a positive integer (absent means none)")
        meters = tuple(MeterEntry(meter, account, source) for meter, account, source in m["meters"])
        return cls(meters, m["interval_s"], m["ahead"], m["grace"], m["reveal_s"], m.get("tariff", 0))


def default_reveal_s(interval_s: int) -> int:
    """The reveal window for an interval length: 60 s, as long as that leaves half the interval.

    The window must be shorter than the interval (MarketTerms); a demo's 10 s interval gets 5 s.
    """
    return min(DEFAULT_REVEAL_S, interval_s // 2)


@dataclass(frozen=True, slots=True)
class Genesis:
    cas: tuple[bytes, ...]
    accounts: tuple[tuple[bytes, int], ...]  # (account key, opening balance), sorted by key
    validators: tuple[bytes, ...]  # index i is validator vI
    block_ms: int = DEFAULT_BLOCK_MS
    market: MarketTerms | None = None  # None: a v1 chain, without market or proof of delivery
    # Keys that may sign register, fund, payout, retire and rotate (docs/PROTOCOL.md §10).
    # Absent from the map when empty, so genesis hashes made before them stay.
    operators: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        keys = [*self.cas, *(pk for pk, _ in self.accounts), *self.validators, *self.operators]
        if not all(type(k) is bytes and len(k) == 32 for k in keys):
            raise GenesisError("every key is 32 bytes")
        if not self.cas or not self.validators:
            raise GenesisError("a genesis needs at least one CA and one validator")
        pks = [pk for pk, _ in self.accounts]
        if pks != sorted(set(pks)):
            raise GenesisError("accounts must be unique and sorted by key")
        if len(set(self.validators)) != len(self.validators) or len(set(self.cas)) != len(self.cas):
            raise GenesisError("a CA or validator key is listed twice")
        if not all(type(u) is int and u >= 0 for _, u in self.accounts) or self.total > MAX_UNITS:
            raise GenesisError(f"balances are units in 0..{MAX_UNITS} in total")
        if not (type(self.block_ms) is int and 1 <= self.block_ms <= 3_600_000):
            raise GenesisError("block_ms is in 1..3600000")
        if self.market is not None and not {m.account for m in self.market.meters} <= set(pks):
            raise GenesisError("a market meter belongs to an account that is not in the genesis")
        if list(self.operators) != sorted(set(self.operators)):
            raise GenesisError("operator keys must be unique and sorted")
        if self.operators and self.market is None:
            raise GenesisError("operators register meters on the market: a genesis with operators has a market")

    @classmethod
    def build(
        cls,
        cas,
        accounts: dict[bytes, int],
        validators,
        block_ms: int = DEFAULT_BLOCK_MS,
        market: MarketTerms | None = None,
        operators=(),
    ) -> Genesis:
        return cls(
            tuple(cas), tuple(sorted(accounts.items())), tuple(validators), block_ms, market, tuple(sorted(operators))
        )

    def verifier(self) -> Verifier:
        """A verifier that trusts this chain's CAs, validators and operators."""
        return Verifier(cas=self.cas, validators=self.validators, operators=self.operators)

    @property
    def total(self) -> int:
        """Balances + holds always add up to this (docs/PROTOCOL.md §5)."""
        return sum(units for _, units in self.accounts)

    def encode(self) -> bytes:
        m = {
            "v": 1,
            "typ": "genesis",
            "cas": list(self.cas),
            "accounts": [[pk, units] for pk, units in self.accounts],
            "validators": list(self.validators),
            "block_ms": self.block_ms,
        }
        if self.market is not None:  # absent, not null, in a v1 chain's genesis: its hash stays
            m["market"] = self.market.to_map()
        if self.operators:
            m["operators"] = list(self.operators)
        return encode(m)

    @property
    def hash(self) -> bytes:
        return sha256(self.encode()).digest()

    @classmethod
    def decode(cls, raw: bytes) -> Genesis:
        try:
            m = load(raw)
            if not isinstance(m, dict) or m.get("v") != 1 or m.get("typ") != "genesis":
                raise GenesisError("not a v1 genesis")
            genesis = cls(
                tuple(m["cas"]),
                tuple((pk, units) for pk, units in m["accounts"]),
                tuple(m["validators"]),
                m["block_ms"],
                MarketTerms.from_map(m["market"]) if "market" in m else None,
                tuple(m.get("operators", ())),
            )
            if "operators" in m and not genesis.operators:
                raise GenesisError("operators, when present, list at least one key")
        except (Reject, AttributeError, KeyError, TypeError, ValueError) as exc:
            raise GenesisError(f"malformed genesis: {exc}") from None
        if genesis.encode() != raw:
            raise GenesisError("genesis is not in its deterministic encoding")
        return genesis


def read_genesis(root: Path) -> Genesis:
    try:
        raw = (root / GENESIS_FILE).read_bytes()
    except FileNotFoundError:
        raise GenesisError(f"{root / GENESIS_FILE} does not exist: run `spb-ledger init` first") from None
    return Genesis.decode(raw)


def write_genesis(root: Path, genesis: Genesis) -> bool:
    """Write DIR/genesis.cbor once; True if written, False if the same genesis is there.

    A different genesis already on disk is an error: a running chain's genesis never changes.
    """
    path = root / GENESIS_FILE
    raw = genesis.encode()
    root.mkdir(parents=True, exist_ok=True)
    if write_file(path, raw, 0o644, replace=False):
        return True
    if path.read_bytes() == raw:  # an earlier or concurrent run wrote the same genesis
        return False
    raise GenesisError(f"{path} already holds a different genesis; a chain's genesis never changes")
