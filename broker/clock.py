"""The wall clock in the wire's unit (§1: ms since the Unix epoch, UTC).

Only adapters call it; the protocol core takes `now` as an argument.
"""

from __future__ import annotations

import time


def wall_ms() -> int:
    return time.time_ns() // 1_000_000
