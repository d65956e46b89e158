"""Helpers of the screens' tests: frames written like the matrix, and a screen selector that also
records its events, for tests that wait on input arriving on another thread (a pipe's keys,
sense_emu's joystick) instead of sleeping."""

from __future__ import annotations

import threading

from edge.display import ALIVE, BLACK, BLUE, DIM_YELLOW, GREEN, RED, WHITE, YELLOW, Frame
from edge.display_input import ScreenSelector
from edge.display_screens import GREY, UNKNOWN

COLOURS = {".": BLACK, "-": GREY, "B": BLUE, "Y": YELLOW, "y": DIM_YELLOW, "G": GREEN, "W": WHITE, "R": RED}
COLOURS |= {"a": ALIVE, "?": UNKNOWN}


def frame_of(*rows: str) -> Frame:
    """Eight rows of eight legend characters (COLOURS) as a frame, so an expectation reads like the matrix."""
    assert len(rows) == 8 and all(len(r) == 8 for r in rows), rows
    return tuple(COLOURS[ch] for row in rows for ch in row)


class WatchedSelector:
    """on_event moves the real ScreenSelector and keeps the event; wait_count waits for n of them."""

    def __init__(self):
        self.selector = ScreenSelector()
        self.events: list[str] = []
        self._cond = threading.Condition()

    def on_event(self, event: str) -> None:
        with self._cond:
            self.selector.on_event(event)
            self.events.append(event)
            self._cond.notify_all()

    def wait_count(self, n: int, timeout: float) -> list[str]:
        """The events once there are n, failing with what came if they do not within `timeout` s."""
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.events) >= n, timeout), self.events
            return list(self.events)
