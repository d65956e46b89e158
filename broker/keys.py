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

    Linked into place (write_file, replace=False): a concurrent run that loses the race
    reads the winner's complete file, and a crash leaves either no key or a whole one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    key = SigningKey.generate()
    if not write_file(path, (bytes(key).hex() + "\n").encode(), 0o600, replace=False):
        return load_key(path)
    return key


def write_file(path: Path, data: bytes, mode: int, replace: bool) -> bool:
    """Write `data` durably and atomically: fsynced in a temp file beside `path`, then moved in.

    replace=True renames over whatever is there (readers see the old or the new file);
    replace=False hard-links, which never overwrites: False if `path` already existed. A
    crash leaves at worst an ignored `.NAME.*` temp file.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # created 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
    finally:
        Path(tmp).unlink(missing_ok=True)
    fsync_dir(path.parent)
    return True


def write_public(path: Path, data: str | bytes) -> bool:
    """write_file for a non-secret file (0644, replacing), skipped when the same bytes are
    already there with that mode, so re-running provisioning leaves the tree as it was.
    Whether it wrote."""
    data = data.encode() if isinstance(data, str) else data
    try:
        if path.read_bytes() == data and (path.stat().st_mode & 0o777) == 0o644:
            return False
    except FileNotFoundError:
        pass
    return write_file(path, data, 0o644, replace=True)


def secret_dir(path: Path) -> Path:
    """A dir holding seeds: 0700, tightened even if an earlier hand made it looser."""
    path.mkdir(mode=0o700, exist_ok=True)
    path.chmod(0o700)
    return path


def load_key(path: Path) -> SigningKey:
    try:
        seed = bytes.fromhex(Path(path).read_text().strip())
    except ValueError:  # not hex, or not text at all
        seed = b""
    if len(seed) != 32:
        raise KeyFileError(
            f"{path}: not a key file (a 32-byte Ed25519 seed in hex); "
            "restore it from a backup, or remove it to make a new key"
        )
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
