"""A meter's state dir, as `spb-deploy provision` writes it (DIR/meters/<id>/)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from nacl.signing import SigningKey

from broker.keys import load_key

DB_NAME = "meter.db"


@dataclass(frozen=True)
class MeterIdentity:
    meter: str
    device_key: SigningKey
    devcert: bytes
    ca_pk: bytes
    validators: tuple[bytes, ...]  # whose signed statuses and rejects the meter believes
    root: Path

    @classmethod
    def load(cls, root: Path) -> MeterIdentity:
        info = tomllib.loads((root / "meter.toml").read_text())
        if not info.get("validators"):  # a state dir from before meters traded: nothing to believe
            raise ValueError("meter.toml names no ledger validators; re-run `spb-deploy provision` on the community")
        return cls(
            meter=info["id"],
            device_key=load_key(root / "device.key"),
            devcert=(root / "devcert.cbor").read_bytes(),
            ca_pk=bytes.fromhex(info["ca_pk"]),
            validators=tuple(bytes.fromhex(v) for v in info["validators"]),
            root=root,
        )

    @property
    def db_path(self) -> Path:
        """The meter's store (edge.store), shared by `spb-meter run` and its trade commands."""
        return self.root / DB_NAME

    def account_key(self) -> SigningKey:
        """The household's account key, which signs CTPs and cancels; only households that
        pay have one (provision --accounts)."""
        path = self.root / "account.key"
        if not path.exists():
            raise FileNotFoundError(f"{path}: this meter's household has no account to pay from")
        return load_key(path)
