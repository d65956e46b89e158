"""The wall clock in the wire's unit (§1: ms since the Unix epoch, UTC).

Only adapters call it; the protocol core takes `now` as an argument. Every wall-clock read
of the ledger and the meters goes through wall_ms(), so one test hook here moves a whole
process's wall clock:

Test hook (the chaos run's clock jumps, docs/RELIABILITY.md): if the environment variable
SPB_TEST_CLOCK_OFFSET_FILE names a file, wall_ms() adds the integer it holds (ms, may be
negative; a missing, empty or unreadable file is 0) to the real clock. The file is read again
at most every 100 ms of monotonic time, so a jump takes effect within 100 ms. Without the
variable (every real deployment) wall_ms() is the system clock and nothing else.
"""

from __future__ import annotations

import os
import time

OFFSET_ENV = "SPB_TEST_CLOCK_OFFSET_FILE"
_REREAD_NS = 100_000_000

_offset_file = os.environ.get(OFFSET_ENV) or None
_offset_ms = 0
_read_at_ns: int | None = None


def wall_ms() -> int:
    now = time.time_ns() // 1_000_000
    if _offset_file is None:
        return now
    return now + _test_offset_ms()


def _test_offset_ms() -> int:
    global _offset_ms, _read_at_ns
    mono = time.monotonic_ns()
    if _read_at_ns is None or mono - _read_at_ns >= _REREAD_NS:
        _read_at_ns = mono
        try:
            with open(_offset_file) as f:  # type: ignore[arg-type]
                _offset_ms = int(f.read().strip() or 0)
        except (OSError, ValueError):
            _offset_ms = 0
    return _offset_ms
