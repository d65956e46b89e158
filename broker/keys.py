"""Ed25519 key files: a 32-byte seed as hex text, mode 0600, never overwritten.

Shared by provisioning (writes), meters and the ledger (read), so every part agrees on
one format.
"""

from __future__ import annotations

import os
from pathlib import Path

from nacl.signing import SigningKey


def write_new_key(path: Path) -> SigningKey:
    """Create a key at `path` unless one is there; return the key on disk either way.

    O_EXCL makes "never overwrite" hold even against a concurrent provisioning run, and the
    file is created 0600 so the seed is never readable by others, not even briefly.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    key = SigningKey.generate()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_key(path)
    with os.fdopen(fd, "w") as f:
        f.write(bytes(key).hex() + "\n")
        f.flush()
        os.fsync(f.fileno())
    return key


def load_key(path: Path) -> SigningKey:
    seed = bytes.fromhex(Path(path).read_text().strip())
    if len(seed) != 32:
        raise ValueError(f"{path}: not a 32-byte Ed25519 seed")
    return SigningKey(seed)


def public_hex(key: SigningKey) -> str:
    return bytes(key.verify_key).hex()
