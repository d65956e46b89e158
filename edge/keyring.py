"""The key ring: batches of one-time Ed25519 keys, each vouched for by a CoE (docs/PROTOCOL.md §3).

Pure: batches are values (rows of edge.store), the clock and the random seeds come in as
arguments. A key is used for one ERC only. Its index is reserved when the CTP it will
confirm is made, because the CTP names the root of the batch whose key will sign.
"""

from __future__ import annotations

from typing import NamedTuple

from nacl.signing import SigningKey

from wire.merkle import MerkleTree

SEED = 32


class NoKey(Exception):
    """No batch can confirm a new trade yet; the message says what is missing."""


_COE_FIELDS = "a batch's CoE is stored with its t and exp (MeterStore.set_coe)"


class Batch(NamedTuple):
    id: int | None
    root: bytes
    seeds: bytes  # size × 32-byte seeds, concatenated
    next_idx: int  # keys below this are reserved or used
    made: int
    coe: bytes | None = None
    coe_t: int | None = None
    coe_exp: int | None = None

    @classmethod
    def new(cls, seeds: bytes, now: int) -> Batch:
        if not seeds or len(seeds) % SEED:
            raise ValueError("seeds must be a whole number of 32-byte seeds")
        return cls(None, _tree(seeds).root(), seeds, 0, now)

    @property
    def size(self) -> int:
        return len(self.seeds) // SEED

    def key(self, idx: int) -> SigningKey:
        return SigningKey(self.seeds[idx * SEED : (idx + 1) * SEED])

    def proof(self, idx: int) -> list[bytes]:
        return _tree(self.seeds).inclusion_proof(idx)

    def usable(self, now: int, until: int) -> bool:
        """Has a free key and a CoE valid from now until `until` (a CTP's expiry)."""
        if self.coe is None:
            return False
        assert self.coe_t is not None and self.coe_exp is not None, _COE_FIELDS
        return self.next_idx < self.size and self.coe_t <= now and until <= self.coe_exp


def _tree(seeds: bytes) -> MerkleTree:
    keys = (SigningKey(seeds[i : i + SEED]).verify_key for i in range(0, len(seeds), SEED))
    return MerkleTree([bytes(k) for k in keys])


def choose(batches: list[Batch], now: int, until: int) -> Batch:
    """The oldest batch that can confirm a trade expiring at `until`: used up in order."""
    for batch in batches:
        if batch.usable(now, until):
            return batch
    if not any(b.coe for b in batches):
        raise NoKey(
            "no key batch has a CoE yet: the meter asks an online peer for one "
            "(is `spb-meter run` running, and another meter online?)"
        )
    raise NoKey(
        "no key batch with a free key and a CoE valid until the trade's expiry; "
        "the running meter is fetching the next one"
    )


def wants_new_batch(newest: Batch | None, now: int) -> bool:
    """Whether to make the next batch: none yet, or the newest has a CoE and 75% of its
    keys are reserved or 75% of its CoE's lifetime has passed. A newest batch still
    waiting for its CoE is being fetched already."""
    if newest is None:
        return True
    if newest.coe is None:
        return False
    assert newest.coe_t is not None and newest.coe_exp is not None, _COE_FIELDS
    return 4 * newest.next_idx >= 3 * newest.size or 4 * (newest.coe_exp - now) <= newest.coe_exp - newest.coe_t
