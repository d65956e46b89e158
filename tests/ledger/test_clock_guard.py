"""ledger.clock_guard: the wall clock is used while it ticks with the monotonic clock; a
jump either way is held off (counted, logged once, its offset shown) until the wall clock
comes back or keeps its new time for settle_ms."""

from __future__ import annotations

import logging

from ledger.clock_guard import ClockGuard

T0 = 1_800_000_000_000
HOUR = 3_600_000


def reads(guard: ClockGuard, wall0: int, mono0: int, seconds: int, step_s: int = 1) -> list[int]:
    """One read a second (or every step_s) for `seconds`, wall and monotonic ticking together."""
    return [guard.read(wall0 + s * 1000, mono0 + s * 1000) for s in range(0, seconds, step_s)]


def test_a_clock_in_step_is_used_as_it_is():
    guard = ClockGuard()
    assert reads(guard, T0, 5, 10) == [T0 + s * 1000 for s in range(10)]
    assert guard.jumps == 0 and guard.offset_ms == 0 and guard.in_step


def test_slow_drift_within_the_tolerance_is_followed():
    """NTP slews at most 0.5 ms/s; here 5 ms/s either way, read once a minute: 300 ms a read."""
    for rate in (5, -5):
        guard = ClockGuard()
        used = [guard.read(T0 + m * 60_000 + m * 60 * rate, m * 60_000) for m in range(30)]
        assert used == [T0 + m * 60_000 + m * 60 * rate for m in range(30)]
        assert guard.jumps == 0


def test_a_forward_jump_is_held_off_and_alarmed_once(caplog):
    guard = ClockGuard(settle_ms=60_000)
    reads(guard, T0, 0, 10)
    with caplog.at_level(logging.WARNING, "spb.ledger"):
        used = reads(guard, T0 + 10_000 + HOUR, 10_000, 30)  # an hour ahead, for 30 s
    assert used == [T0 + 10_000 + s * 1000 for s in range(30)]  # on by the monotonic clock
    assert guard.jumps == 1 and guard.offset_ms == HOUR and not guard.in_step
    assert [r.getMessage()[:33] for r in caplog.records] == ["the wall clock jumped +3600.000 s"]


def test_a_backward_jump_is_held_off_and_undone_without_a_second_alarm(caplog):
    guard = ClockGuard()
    reads(guard, T0, 0, 10)
    with caplog.at_level(logging.WARNING, "spb.ledger"):
        held = reads(guard, T0 + 10_000 - HOUR, 10_000, 20)
        assert guard.offset_ms == -HOUR and guard.jumps == 1
        back = reads(guard, T0 + 30_000, 30_000, 5)  # someone set it right again
    assert held + back == [T0 + 10_000 + s * 1000 for s in range(25)]
    assert guard.jumps == 1 and guard.offset_ms == 0 and guard.in_step
    assert "jumped -3600.000 s" in caplog.records[0].getMessage()
    assert "back in step" in caplog.records[1].getMessage() and len(caplog.records) == 2


def test_even_a_small_step_back_is_a_jump_and_time_never_goes_back():
    guard = ClockGuard(tolerance_ms=1000)
    guard.read(T0, 0)
    assert guard.read(T0 - 10, 0) == T0  # never before the time already used
    assert guard.jumps == 1 and guard.offset_ms == -10
    assert guard.read(T0 - 5, 5) == T0  # back in step, but not before the time used...
    assert guard.in_step and guard.read(T0 + 20, 30) == T0 + 20  # ...until the wall clock passes it
    assert guard.jumps == 1


def test_an_undone_jump_a_little_behind_is_no_second_jump():
    """The wall and monotonic clocks are read one after the other: a read delayed between
    the two makes the wall clock seem a few ms behind when it comes back."""
    guard = ClockGuard()
    guard.read(T0, 0)
    guard.read(T0 + HOUR + 1000, 1000)
    assert guard.read(T0 + 1997, 2000) == T0 + 1997  # after the last time used (T0 + 1000)
    assert guard.in_step and guard.jumps == 1


def test_a_new_time_kept_for_settle_ms_is_believed():
    guard = ClockGuard(settle_ms=60_000)
    reads(guard, T0, 0, 10)
    used = reads(guard, T0 + 10_000 + HOUR, 10_000, 61)
    assert used[:60] == [T0 + 10_000 + s * 1000 for s in range(60)]
    assert used[60] == T0 + 70_000 + HOUR  # 60 s of the same offset: the wall clock is right
    assert guard.in_step and guard.offset_ms == 0 and guard.jumps == 1
    assert guard.read(T0 + 71_000 + HOUR, 71_000) == T0 + 71_000 + HOUR


def test_a_clock_that_keeps_moving_never_settles():
    """Each new offset is a jump of its own, and starts the settling again."""
    guard = ClockGuard(settle_ms=60_000)
    guard.read(T0, 0)
    for i in range(1, 10):  # 20 s apart, each time another hour ahead: never 60 s at one offset
        mono = i * 20_000
        assert guard.read(T0 + mono + i * HOUR, mono) == T0 + mono
    assert guard.jumps == 9 and guard.offset_ms == 9 * HOUR


def test_a_jump_between_sparse_reads_is_seen_against_the_monotonic_time():
    """A minute idle, and the wall clock moved 50 s: stepped back 10 s, though still later."""
    guard = ClockGuard()
    guard.read(T0, 0)
    assert guard.read(T0 + 50_000, 60_000) == T0 + 60_000
    assert guard.jumps == 1 and guard.offset_ms == -10_000
