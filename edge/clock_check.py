"""Whether a meter's wall clock can be trusted to sign with, and the wait until it can.

A Raspberry Pi has no battery-backed clock: it boots at the time fake-hwclock or
systemd-timesyncd saved at the last shutdown, at the systemd build date on a fresh card,
or at 1970 without either, and is set right only once NTP answers. A birth, reading or CTP
signed before then carries a time every peer and the ledger find absurd, and signatures
cannot be taken back. On a flashed Pi, spb-meter.service starts after time-sync.target
(deploy.flash), so the clock is normally set already; this check is the floor under that,
and covers a meter started by hand or after the bounded wait for NTP gave up.

The floor is the meter's own devcert's `nbf`: it was provisioned then (less an hour's
margin, deploy.provision), so a clock before it is surely wrong. A clock after it but stale
is not caught here; that is what waiting for time-sync.target is for.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from wire.messages import DevCert, open_message

log = logging.getLogger("spb.meter")
RETRY_S = 1.0


def floor_of(devcert: bytes) -> int:
    """The earliest plausible time (ms since the epoch) for a meter holding `devcert`: its nbf."""
    return open_message(devcert, DevCert).body.nbf


def shown(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def clock_wrong(now: int, floor: int) -> str | None:
    """Why wall time `now` is surely wrong for a meter whose certificate starts at `floor`; None if plausible."""
    if now < floor:
        return f"it says {shown(now)}, before this meter's certificate ({shown(floor)})"
    return None


def wait_for_clock(
    read: Callable[[], int],
    floor: int,
    stop: threading.Event,
    retry_s: float = RETRY_S,
    tick: Callable[[], None] | None = None,
    tick_s: float = RETRY_S,
) -> bool:
    """Return once read() is plausible (True), checking every retry_s, or when `stop` is set
    first (False). Says once that it waits and once that the wait is over. Meanwhile calls
    tick() every tick_s: the meter counts energy while it may not sign (a Pi waits for NTP
    up to minutes at boot, and what flowed then is still the household's)."""
    waited = False
    while (why := clock_wrong(read(), floor)) is not None:
        if not waited:
            log.warning("waiting for the clock: %s; checking every %g s", why, retry_s)
            waited = True
        deadline = time.monotonic() + retry_s
        while True:
            left = deadline - time.monotonic()
            step = left if tick is None else min(left, tick_s)
            if stop.wait(max(0.0, step)):
                return False
            if tick is not None:
                tick()
            if step >= left:
                break
    if waited:
        log.info("the clock is set: %s", shown(read()))
    return True
