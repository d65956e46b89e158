"""Proof of delivery (docs/PROTOCOL.md §9.4): which export record is due, a pure function of
(state, the cumulative export counter, the time).

At the end of every market interval the meter proves what it exported during it. The state
is the interval being accounted and the counter at the start of its accounting; the meter
keeps it in its store, committed with the record it makes, so a restart neither repeats nor
skips a record. Intervals the meter was off for are not invented: the interval it stopped
in gets what was measured before the stop, the ones after get nothing, and the first
interval after boot counts from boot. Wh are whole (§1): a record's `wh` is the difference
of two cumulative totals, so consecutive records add up to the counter exactly and the
ledger's `counter` check (`total - wh` >= the last record's `total`) always holds.
"""

from __future__ import annotations

from typing import NamedTuple


class ExportState(NamedTuple):
    """k: the interval being accounted (None before the first start); mark_wh: the cumulative
    export Wh when its accounting began (the previous record's total, or the boot's)."""

    k: int | None = None
    mark_wh: int = 0


class Due(NamedTuple):
    """An export record to sign: `wh` exported in interval `k`, `total` at its end."""

    k: int
    wh: int
    total: int


def interval_of(now_ms: int, interval_ms: int) -> int:
    """The interval that block time `now_ms` falls in (§9.1: k covers [k·I, (k+1)·I))."""
    return now_ms // interval_ms


def step(state: ExportState, total_wh: int, now_ms: int, interval_ms: int) -> tuple[ExportState, Due | None]:
    """The state after looking at the counter `total_wh` at `now_ms`, and the record now due.

    A record is due once `now_ms` is past the accounted interval; the interval after it
    starts from `total_wh` then. A clock that went back changes nothing (records go forward).
    """
    k = interval_of(now_ms, interval_ms)
    if state.k is None:
        return ExportState(k, total_wh), None
    if total_wh < state.mark_wh:
        raise ValueError(f"the export counter went back: {total_wh} Wh after {state.mark_wh} Wh")
    if k <= state.k:
        return state, None
    return ExportState(k, total_wh), Due(state.k, total_wh - state.mark_wh, total_wh)


def next_end(state: ExportState, interval_ms: int) -> int | None:
    """When the accounted interval ends (the next record is due then), in wall ms."""
    return None if state.k is None else (state.k + 1) * interval_ms
