"""Ed25519 key files: a 32-byte seed as hex text, mode 0600, never overwritten.

Shared by provisioning (writes), meters and the ledger (read), so every part agrees on
one format.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from nacl.signing import SigningKey


class KeyFileError(ValueError):
    """A key file that exists but holds no key: reported, never replaced, as it may be the only copy."""


def write_new_key(path: Path) -> SigningKey:
    """Create a key at `path` unless one is there; return the key on disk either way.

    The seed is written and fsynced in a 0600 temp file first, then hard-linked into place:
    link never overwrites, so a concurrent run that loses the race reads the winner's complete
    file, and a crash leaves either no key or a whole one (plus, at worst, an ignored
    `.NAME.*` temp file).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    key = SigningKey.generate()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp creates 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(bytes(key).hex() + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return load_key(path)
    finally:
        os.unlink(tmp)
    fsync_dir(path.parent)
    return key


def load_key(path: Path) -> SigningKey:
    try:
        seed = bytes.fromhex(Path(path).read_text().strip())
    except ValueError:  # not hex, or not text at all
        seed = b""
    if len(seed) != 32:
        raise KeyFileError(f"{path}: not a key file (a 32-byte Ed25519 seed in hex); "
                           "restore it from a backup, or remove it to make a new key")
    return SigningKey(seed)


def fsync_dir(path: Path) -> None:
    """Make a new or removed directory entry survive a crash, not only the file's contents."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def public_hex(key: SigningKey) -> str:
    return bytes(key.verify_key).hex()
