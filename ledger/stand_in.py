"""A stand-in's check that an announced block's statuses went out (docs/CONSENSUS.md "Hostile
proposers", decision 0015), pure: ledger.service subscribes and publishes.

A block's publisher sends the block on spb/v1/ledger/blocks after its statuses, so a stand-in
took the announcement as proof that they went out and dropped its copies. A Byzantine
proposer can announce the block and withhold the statuses. So on the announcement a stand-in
samples a few of the block's retained status topics, unknown to the proposer, and reads them
back from the broker (the retained status arrives on subscribe): each must hold the block's
status (the same body, whoever signed it) or a newer one (a later block changed the topic).
If one does not within the stand-in's wait (rank x TAKEOVER_S), it publishes the block's
rows as it would for a block never announced. The stand-ins before it that do publish
thereby show the statuses to the ones after it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import NamedTuple

from ledger.statuses import is_status
from ledger.store import LedgerOutboxRow
from wire.cose import parse_sign1
from wire.reasons import Reject

SAMPLE = 4  # status topics of a block a stand-in reads back
_choose = random.SystemRandom()  # not predictable by a proposer choosing what to withhold


class _Check(NamedTuple):
    due: float
    rows: list[LedgerOutboxRow]
    sampled: frozenset[str]  # the topics it subscribed to for this block
    wanted: dict[str, bytes]  # sampled topic not yet seen right -> the body its status must have


class PublishedCheck:
    def __init__(self) -> None:
        self._checks: dict[int, _Check] = {}  # height -> its check

    def start(self, height: int, rows: list[LedgerOutboxRow], due: float) -> list[str] | None:
        """Check that the statuses of an announced block went out: the topics to subscribe
        to (again, if already), or None if the block has no retained status to check (drop its rows)."""
        statuses = {row.topic: _body(row.payload) for row in rows if row.retain and is_status(row.topic)}
        if not statuses:
            return None
        sample = _choose.sample(sorted(statuses), min(SAMPLE, len(statuses)))
        self._checks[height] = _Check(due, rows, frozenset(sample), {topic: statuses[topic] for topic in sample})
        return sample  # subscribe even to one already read: the broker sends its retained status again

    def seen(self, topic: str, payload: bytes, newer: Callable[[str, int], bool]) -> tuple[list[int], list[str]]:
        """A status on a topic being checked (`newer(topic, height)`: a block after `height`
        changed it): the heights whose statuses all went out, and the topics no longer checked."""
        done = []
        for height, check in list(self._checks.items()):
            want = check.wanted.get(topic)
            if want is not None and (_body(payload) == want or newer(topic, height)):
                del check.wanted[topic]
                if not check.wanted:
                    done.append(height)
        return done, self._end(done)

    def recheck(self, newer: Callable[[str, int], bool]) -> tuple[list[int], list[str]]:
        """After a block is decided here: the checks it completes because it changed a topic
        whose newer status the broker already sent (no message will come again for it)."""
        done = []
        for height, check in list(self._checks.items()):
            for topic in [t for t in check.wanted if newer(t, height)]:
                del check.wanted[topic]
            if not check.wanted:
                done.append(height)
        return done, self._end(done)

    def overdue(self, now: float) -> tuple[list[tuple[int, list[LedgerOutboxRow]]], list[str]]:
        """Blocks whose statuses did not all show in time: (height, rows) to publish, and the
        topics no longer checked."""
        late = sorted(h for h, check in self._checks.items() if check.due <= now)
        out = [(h, self._checks[h].rows) for h in late]
        return out, self._end(late)

    def next_due(self) -> float | None:
        return min((check.due for check in self._checks.values()), default=None)

    def topics(self) -> set[str]:
        """The topics subscribed to for the checks under way."""
        return {topic for check in self._checks.values() for topic in check.sampled}

    def _end(self, heights: list[int]) -> list[str]:
        """End these checks: the topics no other check still reads."""
        ended = {topic for h in heights for topic in self._checks.pop(h).sampled}
        return sorted(ended - self.topics())


def _body(payload: bytes) -> bytes:
    """A status's signed body: the same from any validator that publishes it."""
    try:
        return parse_sign1(payload).payload
    except Reject:  # junk someone retained is not the status
        return b""
