"""A validator's wall clock, checked against its monotonic clock before anyone uses it.

The replica takes block times from the wall clock (max(wall, tip + 1 ms)), and a block time
is for good: every later block is after it. A wall clock that steps forward an hour (an NTP
server gone wrong, a mistyped `date -s`) would move the ledger's time an hour ahead, expire
every CTP early and leave the honest validators unable to propose until their own clocks
catch up; one that steps back would stamp rejects and statuses with times the meters find
absurd. The monotonic clock cannot step, so ClockGuard believes the wall clock only while
the two tick together.

Pure: fed (wall ms, monotonic ms) at each read, it returns the time to use and keeps the
numbers behind the alarm (jumps, the offset). ledger.service feeds it; the log line is its
one side effect.

The rule:
- In step: the wall clock is where the last time used plus the monotonic time since says
  it should be, within `tolerance_ms`, and not before its last reading. Then the wall clock
  is used (never before the last time used). Tolerance covers NTP's slewing (at most 0.5 ms/s) between reads, which
  come at least once a minute, with room to spare; it stays well under the replica's
  `max_skew_ms` (5 s), so what the guard lets through the other validators accept.
- A jump: the wall clock is before its last reading (backwards at all), or more than
  `tolerance_ms` away from where it should be. From then on the time used keeps advancing
  from the last good one by the monotonic clock alone, one WARNING says how far the wall
  clock jumped, `jumps` counts it and `offset_ms` says how far the wall clock is from the
  time used.
- Back in step: a wall clock that returns to where it should be (the jump was undone, or
  a step back was smaller than `tolerance_ms`) is used again at the next read, with no
  second alarm.
- Accepted: a wall clock that stays at its new offset (within `tolerance_ms`) for
  `settle_ms` of monotonic time is believed from then on: a real correction (a clock that
  was wrong at start, a validator restored from a snapshot) is not ignored for good. It may
  move the time used back; the replica still makes each block time after the tip's. A
  wall clock that keeps moving never settles, and every new offset is one more jump.

Simpler rules were rejected: using the wall clock only at start ignores every later NTP
correction; slewing the time used towards the wall clock at a bounded rate would take days
to absorb an hour's error. Not covered: a wall clock already wrong when the validator starts
(nothing to compare it with; the others refuse its proposals by the skew rule), and a host
that suspends (the monotonic clock stops, so the wall clock seems to jump forward: accepted
after `settle_ms`).
"""

from __future__ import annotations

import logging

log = logging.getLogger("spb.ledger")

TOLERANCE_MS = 1000  # wall clock vs monotonic clock, between two reads
SETTLE_MS = 60_000  # a new wall clock offset believed after this long without moving


class ClockGuard:
    """Feed it every wall-clock read with the monotonic clock; use what it returns."""

    def __init__(self, tolerance_ms: int = TOLERANCE_MS, settle_ms: int = SETTLE_MS):
        self.tolerance_ms, self.settle_ms = tolerance_ms, settle_ms
        self.jumps = 0  # jumps seen since start
        self.offset_ms = 0  # the wall clock minus the time used, at the last read
        self._used: int | None = None  # the time returned by the last read
        self._wall = 0  # the wall clock at the last read
        self._mono = 0  # the monotonic clock at the last read
        self._since: int | None = None  # while out of step: the monotonic time the current offset began

    @property
    def in_step(self) -> bool:
        return self._since is None

    def read(self, wall: int, mono: int) -> int:
        """The time to use now (ms since the epoch) for a wall clock reading `wall` at
        monotonic time `mono` (ms, any origin; never decreasing)."""
        if self._used is None:
            self._used, self._wall, self._mono = wall, wall, mono
            return wall
        expected = self._used + max(0, mono - self._mono)
        offset = wall - expected  # how far the wall clock is from where it should be
        stepped_back = self._since is None and wall < self._wall
        self._wall, self._mono = wall, mono
        if abs(offset) <= self.tolerance_ms and not stepped_back:
            if self._since is not None:
                log.warning("the wall clock is back in step (%+.3f s from the time used)", offset / 1000)
            # Never before the last time used: the wall and the monotonic clock are read one
            # after the other, so coming back in step may find the wall clock a little behind.
            return self._use(max(wall, self._used))
        if self._since is None or abs(offset - self.offset_ms) > self.tolerance_ms:
            self.jumps += 1
            self._since = mono
            log.warning(
                "the wall clock jumped %+.3f s; block times follow the monotonic clock until it is back "
                "in step or keeps its new time for %d s",
                (offset - self.offset_ms) / 1000,  # from the offset it had: 0 while in step
                self.settle_ms // 1000,
            )
        elif mono - self._since >= self.settle_ms:
            log.warning(
                "the wall clock kept its new time for %d s: believed again (%+.3f s from the time used)",
                self.settle_ms // 1000,
                offset / 1000,
            )
            return self._use(wall)
        self._used, self.offset_ms = expected, offset
        return expected

    def _use(self, time: int) -> int:
        self._used, self._since, self.offset_ms = time, None, 0
        return time
