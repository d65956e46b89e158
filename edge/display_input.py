"""The I/O side of the screens' input: the Sense HAT joystick and the terminal's keys, each a thin
adapter that turns what it reads into an edge.display_screens event and hands it on.

The state machine stays pure (display_screens.next_screen); `ScreenSelector` is only its
thread-safe holder, because the joystick's callback thread, the keys' thread and the painter
all touch it.
"""

from __future__ import annotations

import logging
import os
import select
import threading
from collections.abc import Callable

from edge.display_screens import NOW, joystick_event, key_events, next_screen

log = logging.getLogger("spb.meter")

POLL_S = 0.25  # how often the keys' thread looks at its stop flag while no key comes


class ScreenSelector:
    """The screen shown now; on_event(event) moves it by next_screen, from any thread."""

    def __init__(self, screen: str = NOW):
        self._screen = screen
        self._lock = threading.Lock()

    @property
    def screen(self) -> str:
        with self._lock:
            return self._screen

    def on_event(self, event: str) -> None:
        with self._lock:
            self._screen = next_screen(self._screen, event)


class JoystickInput:
    """The Sense HAT's (or sense_emu's, same API) joystick: `hat.stick.direction_any` calls back
    on the library's own thread with an InputEvent (direction, action) for every move."""

    def __init__(self, hat, on_event: Callable[[str], None]):
        self.stick = hat.stick
        self.on_event = on_event
        self.stick.direction_any = self._moved  # one parameter: the library passes the InputEvent

    def _moved(self, event) -> None:
        mapped = joystick_event(event.direction, event.action)
        if mapped is not None:
            self.on_event(mapped)

    def close(self) -> None:
        """Unhook: the library's reader thread (a daemon) then drops events. Not stick.close(),
        which joins that thread, blocked in a read until the next joystick event (sense_hat
        2.6 and sense_emu 1.2 alike): a meter stopping would hang until someone touched it."""
        self.stick.direction_any = None


class TerminalKeys:
    """Keys from a file descriptor (the terminal's stdin) on a daemon thread: n / Space / → / ↓
    next, p / ← / ↑ previous, h / Enter home. A TTY is put in cbreak mode (a key arrives without
    Enter, echo off) and restored on close; a pipe is read as it is, which is how tests type."""

    def __init__(self, fd: int, on_event: Callable[[str], None]):
        self.fd = fd
        self.on_event = on_event
        self._saved = self._cbreak(fd)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="keys", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
        if self._saved is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)

    def _run(self) -> None:
        rest = b""
        while not self._stop.is_set():
            ready, _, _ = select.select([self.fd], [], [], POLL_S)
            if not ready:
                continue
            data = os.read(self.fd, 64)
            if not data:
                return  # end of input: nothing more will come
            events, rest = key_events(rest + data)
            for event in events:
                self.on_event(event)

    @staticmethod
    def _cbreak(fd: int) -> list | None:
        if not os.isatty(fd):
            return None
        import termios
        import tty

        saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
        return saved
