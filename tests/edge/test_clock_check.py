"""edge.clock_check: a meter's clock is plausible from its devcert's nbf on; the wait says
once why it waits, checks again every retry_s, and gives up only when stopped."""

from __future__ import annotations

import logging
import threading

from broker.clock import wall_ms
from deploy.provision import provision
from edge.clock_check import clock_wrong, floor_of, wait_for_clock
from edge.state_dir import MeterIdentity

NBF = 1_800_000_000_000  # 2027-01-15 08:00:00 UTC


def test_a_clock_before_the_certificate_is_wrong_and_says_so():
    assert clock_wrong(NBF, NBF) is None
    assert clock_wrong(NBF + 1, NBF) is None
    assert clock_wrong(0, NBF) == (
        "it says 1970-01-01 00:00:00 UTC, before this meter's certificate (2027-01-15 08:00:00 UTC)"
    )
    assert clock_wrong(NBF - 1, NBF) is not None


def test_the_floor_is_the_devcerts_nbf(tmp_path):
    provision(tmp_path, meters=1, accounts=None, validators=1, now_ms=NBF + 3_600_000)
    identity = MeterIdentity.load(tmp_path / "meters/m0001")
    assert floor_of(identity.devcert) == NBF  # provisioned an hour later, valid from an hour before


class Clock:
    """Says 1970 for its first `wrong` reads, then the real time."""

    def __init__(self, wrong: int):
        self.wrong, self.reads = wrong, 0

    def __call__(self) -> int:
        self.reads += 1
        return 0 if self.reads <= self.wrong else wall_ms()


def test_the_wait_ends_when_the_clock_is_set_and_logs_once(caplog):
    clock = Clock(wrong=5)
    with caplog.at_level(logging.INFO, "spb.meter"):
        assert wait_for_clock(clock, NBF - 3_600_000 * 24 * 365, threading.Event(), retry_s=0)
    assert clock.reads == 7  # five wrong, the right one, and the one the log line shows
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert messages[0].startswith("waiting for the clock: it says 1970-01-01 00:00:00 UTC, before this meter's")
    assert messages[1].startswith("the clock is set: 20")


def test_a_plausible_clock_does_not_wait_or_log(caplog):
    clock = Clock(wrong=0)
    with caplog.at_level(logging.INFO, "spb.meter"):
        assert wait_for_clock(clock, 0, threading.Event(), retry_s=60)
    assert clock.reads == 1 and not caplog.records


def test_a_stop_ends_the_wait():
    stop = threading.Event()
    stop.set()
    clock = Clock(wrong=10**9)
    assert not wait_for_clock(clock, NBF, stop, retry_s=60)
    assert clock.reads == 1


def test_the_wait_ticks_between_checks_and_the_stop_ends_it():
    """The meter counts energy while it waits: tick() runs between checks, and a stop during
    the ticks ends the wait at once."""
    stop = threading.Event()
    ticks = []

    def tick() -> None:
        ticks.append(1)
        if len(ticks) == 25:
            stop.set()

    clock = Clock(wrong=10**9)
    assert not wait_for_clock(clock, NBF, stop, retry_s=0.01, tick=tick, tick_s=0.001)
    assert len(ticks) == 25
    assert clock.reads >= 3  # it went on checking the clock between ticks (every 10 ms, 1 ms ticks)


def test_a_tick_longer_than_the_retry_still_checks_at_each_retry():
    clock = Clock(wrong=3)
    ticks = []
    assert wait_for_clock(clock, NBF - 3_600_000 * 24 * 365, threading.Event(), retry_s=0, tick=lambda: ticks.append(1))
    assert clock.reads == 5 and len(ticks) == 3  # one tick per wrong read, none once it is right
