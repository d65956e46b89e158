"""Byzantine proposers for ledger.sim that send nothing malformed (docs/CONSENSUS.md "Hostile
proposers", decision 0015): each is a Replica that follows the protocol but for one choice
the protocol leaves to a proposer, made against the others.

- `time-ahead`: its fresh blocks take a time ahead of its clock: `max_skew_ms` ahead at even
  heights (as far as the skew rule lets a proposer go), ten times that at odd ones (refused).
- `censor`: its fresh blocks leave out every other transaction it holds (by message hash),
  and it records which and from what height (`left_out`), so the simulation can measure how long they waited.
"""

from __future__ import annotations

from collections.abc import Iterable

from ledger.replica import Key, Replica, _Pending
from wire.cose import message_hash

MODES = ("time-ahead", "censor")


class TimeAhead(Replica):
    def _block_time(self) -> int:
        ahead = self.timing.max_skew_ms * (10 if self.h % 2 else 1)
        return max(self.wall + ahead, self.state.t + 1)


class Censor(Replica):
    left_out: dict[Key, int]  # a transaction it left out -> the first height it did

    def _proposable(self) -> Iterable[_Pending]:
        if not hasattr(self, "left_out"):
            self.left_out = {}
        for key, entry in self.pool.items():
            if message_hash(entry.raw)[0] % 2:
                self.left_out.setdefault(key, self.h)
            else:
                yield entry

    def _propose(self, now: int) -> None:
        super()._propose(now)
        self.proposed_in.add(self.round)  # done with this round, even if all it held was left out


def replica_class(mode: str) -> type[Replica]:
    """The Replica a Byzantine validator of this mode runs (the plain one for other modes)."""
    return {"time-ahead": TimeAhead, "censor": Censor}.get(mode, Replica)
