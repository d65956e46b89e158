"""`spb-meter rotate-key`: the household replaces its account key (docs/PROTOCOL.md §10).

The new key takes over the balance, holds, open trades, orders and meters once the ledger
applies a `rotate` signed by the old key. The state dir changes only then, and so that a
crash at any point leaves a run of the command to finish it:

1. account.key.new (the new key) and rotate.cbor (the signed message) are written once and
   reused, so every run sends the very same bytes: the ledger applies them once and answers
   a copy `duplicate`, which means done;
2. applied: the old public key is recorded in the meter's store (its trades and orders of
   before name it: edge.market_node), the old key is kept as account.key.<first 16 hex of
   its public key>.old, then account.key.new is renamed over account.key (atomic), then
   rotate.cbor goes;
3. rejected: both go, so the next run starts afresh.
"""

from __future__ import annotations

import os
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from nacl.signing import SigningKey

from broker.keys import fsync_dir, load_key, write_file, write_new_key
from broker.outcome import Expect
from edge.state_dir import DB_NAME
from edge.store import MeterStore
from wire import topics
from wire.messages import Rotate, open_message

ACCOUNT_KEY = "account.key"
NEW_KEY = "account.key.new"
MESSAGE = "rotate.cbor"


@dataclass(frozen=True, slots=True)
class Rotation:
    old: SigningKey
    new: SigningKey
    expect: Expect  # the signed `rotate` and what shows it applied

    @property
    def old_pk(self) -> bytes:
        return bytes(self.old.verify_key)

    @property
    def new_pk(self) -> bytes:
        return bytes(self.new.verify_key)


def pending(state_dir: Path) -> bool:
    """Whether a run of `spb-meter rotate-key` stopped before it knew the outcome (no answer in
    time): the ledger may have applied the rotation, and then every message the current key
    signs is refused `rotated` until a run of the command again switches the key."""
    return (state_dir / MESSAGE).exists() and (state_dir / NEW_KEY).exists()


def finished(state_dir: Path) -> bytes | None:
    """The new key, if an earlier run switched to it and only left its message behind
    (then removed now); None otherwise."""
    message = state_dir / MESSAGE
    if not message.exists():
        return None
    body = open_message(message.read_bytes(), Rotate).body
    current = bytes(load_key(state_dir / ACCOUNT_KEY).verify_key)
    if body.new != current:
        return None
    message.unlink()
    return current


def prepare(state_dir: Path, now_ms: int) -> Rotation:
    """The rotation to send: a new key and the old key's signed `rotate`, or the ones an
    interrupted run left."""
    old = load_key(state_dir / ACCOUNT_KEY)
    new = write_new_key(state_dir / NEW_KEY)
    old_pk, new_pk = bytes(old.verify_key), bytes(new.verify_key)
    raw = None
    try:
        kept = (state_dir / MESSAGE).read_bytes()
        body = open_message(kept, Rotate).body
        if (body.account, body.new, body.by) == (old_pk, new_pk, old_pk):
            raw = kept
    except FileNotFoundError:
        pass
    if raw is None:
        raw = Rotate(account=old_pk, new=new_pk, by=old_pk, t=now_ms).sign(old)
        write_file(state_dir / MESSAGE, raw, 0o600, replace=True)
    # Applied shows as the old account's status emptied (its money moved) or, where the
    # broker lets this meter read it, the new account's first status.
    expect = Expect(topics.TX_ROTATE, raw, appears=new_pk, moves=old_pk, emptied=True, duplicate_is_applied=True)
    return Rotation(old, new, expect)


def switch(state_dir: Path, rotation: Rotation) -> Path:
    """The ledger applied it: the new key becomes account.key; returns where the old one is kept."""
    with closing(MeterStore(state_dir / DB_NAME)) as store:
        store.remember_account_key(rotation.old_pk, open_message(rotation.expect.message, Rotate).body.t)
    kept = state_dir / f"{ACCOUNT_KEY}.{rotation.old_pk.hex()[:16]}.old"
    try:
        os.link(state_dir / ACCOUNT_KEY, kept)
    except FileExistsError:
        if not os.path.samefile(state_dir / ACCOUNT_KEY, kept):
            raise
    fsync_dir(state_dir)
    os.replace(state_dir / NEW_KEY, state_dir / ACCOUNT_KEY)
    fsync_dir(state_dir)
    (state_dir / MESSAGE).unlink()
    return kept


def abandon(state_dir: Path) -> None:
    """The ledger rejected it: forget the new key and message."""
    (state_dir / NEW_KEY).unlink(missing_ok=True)
    (state_dir / MESSAGE).unlink(missing_ok=True)
    fsync_dir(state_dir)
