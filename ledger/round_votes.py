"""One height's votes of one kind (PREPAREs, COMMITs, ROUND-CHANGEs, proposals), bounded per
sender (docs/CONSENSUS.md "Bounded votes", decision 0015).

A message's round may be anything below 2^20 and its digest any 32 bytes, so a map keyed by
(round, digest) that keeps whatever arrives lets one Byzantine validator fill a replica's
memory. An honest validator sends at most one message of a kind per round, and its rounds
only go up; so keeping one per (sender, round), the latest, and only the `rounds` highest
rounds of each sender, keeps every honest vote that can still matter and holds at most
n x `rounds` entries, whatever a faulty sender sends.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, Literal, TypeVar

V = TypeVar("V")
Slot = tuple[int, bytes]  # (round, digest)


class RoundVotes(Generic[V]):
    def __init__(self, rounds: int):
        self.rounds = rounds
        self._by: dict[Slot, dict[int, V]] = {}  # (round, digest) -> sender -> its vote
        self._of: dict[int, dict[int, bytes]] = {}  # sender -> round -> the digest it voted for there

    def add(self, sender: int, r: int, d: bytes, vote: V) -> Slot | Literal[False] | None:
        """Keep `vote`, replacing the sender's earlier one in round r. False if r is below
        the sender's `rounds` highest (nothing kept); else the slot of the vote it pushed
        out (the sender's lowest round), or None."""
        mine = self._of.setdefault(sender, {})
        evicted: Slot | None = None
        if r in mine:
            self._forget(sender, r, mine[r])
        elif len(mine) >= self.rounds:
            lowest = min(mine)
            if r < lowest:
                return False
            evicted = (lowest, mine[lowest])
            self._forget(sender, lowest, mine.pop(lowest))
        mine[r] = d
        self._by.setdefault((r, d), {})[sender] = vote
        return evicted

    def drop(self, sender: int, r: int, d: bytes) -> None:
        """Forget the sender's vote for (r, d) (a forged seal: its real one may still come)."""
        mine = self._of.get(sender, {})
        if mine.get(r) == d:
            del mine[r]
            self._forget(sender, r, d)

    def _forget(self, sender: int, r: int, d: bytes) -> None:
        votes = self._by[r, d]
        del votes[sender]
        if not votes:
            del self._by[r, d]

    def get(self, slot: Slot, default: dict[int, V] | None = None) -> dict[int, V]:
        """Each sender's vote for (round, digest); do not change what it returns."""
        return self._by.get(slot, {} if default is None else default)

    def items(self) -> Iterator[tuple[Slot, dict[int, V]]]:
        return iter(list(self._by.items()))

    def in_round(self, r: int) -> dict[int, V]:
        """Each sender's vote in round r, whatever its digest."""
        return {sender: vote for (r2, _), votes in self._by.items() if r2 == r for sender, vote in votes.items()}

    def highest(self) -> dict[int, int]:
        """Each sender's highest round."""
        return {sender: max(mine) for sender, mine in self._of.items() if mine}

    def digests(self) -> set[bytes]:
        return {d for _, d in self._by}

    def __len__(self) -> int:
        return sum(len(votes) for votes in self._by.values())
