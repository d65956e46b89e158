"""Where a validator's files live in a ledger dir, and loading them.

DIR/genesis.cbor is shared; DIR/validators/vI/ holds validator I's key (0600, the layout
`spb-deploy provision` uses too) and its database, so several validators of one community
can run from one directory on a test machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nacl.signing import SigningKey

from broker.keys import load_key, secret_dir
from ledger.genesis import Genesis, GenesisError, read_genesis


def validator_dir(root: Path, index: int) -> Path:
    return root / "validators" / f"v{index}"


def secret_validator_dir(root: Path, index: int) -> Path:
    """validator_dir, made or tightened 0700 with DIR/validators: it holds a seed."""
    home = validator_dir(root, index)
    secret_dir(home.parent)
    return secret_dir(home)


@dataclass(frozen=True, slots=True)
class ValidatorIdentity:
    root: Path
    index: int
    genesis: Genesis
    key: SigningKey | None  # None when only reading (queries and audits need no secret)

    @property
    def home(self) -> Path:
        """DIR/validators/vI: its key, database and bus certificate."""
        return validator_dir(self.root, self.index)

    @property
    def db_path(self) -> Path:
        return self.home / "ledger.db"

    @classmethod
    def load(cls, root: Path, index: int, with_key: bool = True) -> ValidatorIdentity:
        genesis = read_genesis(root)
        if not 0 <= index < len(genesis.validators):
            raise GenesisError(f"the genesis in {root} has validators 0..{len(genesis.validators) - 1}, not {index}")
        key = None
        if with_key:
            key = load_key(validator_dir(root, index) / "validator.key")
            if bytes(key.verify_key) != genesis.validators[index]:
                raise GenesisError(
                    f"{validator_dir(root, index)}/validator.key is not validator {index} of the genesis"
                )
        return cls(root, index, genesis, key)
