"""The genesis: what every validator of one ledger must agree on before block 1.

Trusted manufacturer CAs, the household accounts with their opening balances, the
validator keys and the block interval. Stored as deterministic CBOR (DIR/genesis.cbor), so
its SHA-256 names the chain: block 1's `prev` is the genesis hash.
"""

from __future__ import annotations

from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path

from broker.keys import write_file
from wire.cose import encode, load
from wire.reasons import Reject

GENESIS_FILE = "genesis.cbor"
DEFAULT_BLOCK_MS = 200
MAX_UNITS = (1 << 63) - 1  # balances live in SQLite INTEGER columns


class GenesisError(ValueError):
    """A genesis file or argument that cannot start a ledger."""


@dataclass(frozen=True, slots=True)
class Genesis:
    cas: tuple[bytes, ...]
    accounts: tuple[tuple[bytes, int], ...]  # (account key, opening balance), sorted by key
    validators: tuple[bytes, ...]  # index i is validator vI
    block_ms: int = DEFAULT_BLOCK_MS

    def __post_init__(self) -> None:
        keys = [*self.cas, *(pk for pk, _ in self.accounts), *self.validators]
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

    @classmethod
    def build(cls, cas, accounts: dict[bytes, int], validators, block_ms: int = DEFAULT_BLOCK_MS) -> Genesis:
        return cls(tuple(cas), tuple(sorted(accounts.items())), tuple(validators), block_ms)

    @property
    def total(self) -> int:
        """Balances + holds always add up to this (docs/PROTOCOL.md §5)."""
        return sum(units for _, units in self.accounts)

    def encode(self) -> bytes:
        return encode(
            {
                "v": 1,
                "typ": "genesis",
                "cas": list(self.cas),
                "accounts": [[pk, units] for pk, units in self.accounts],
                "validators": list(self.validators),
                "block_ms": self.block_ms,
            }
        )

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
            )
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
