"""The I/O side of the meter's display: drivers that put a display.Frame somewhere, a painter
thread that keeps them off the sampling loop, and the session LED.

Hardware libraries are imported only when asked for, and a missing one costs a warning, never
the meter's start-up: a display is not worth a meter that does not run.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TextIO

from broker.clock import wall_ms
from edge.display import SIDE, Frame, View, dim, render

log = logging.getLogger("spb.meter")

DISPLAYS = ("sensehat", "emu", "terminal", "none")
BLINK_POLL_S = 0.25  # how often the painter re-renders while offline, so the blink animates


class Driver(Protocol):
    def show(self, frame: Frame, low_light: bool) -> None: ...
    def close(self) -> None: ...


class SenseHatDisplay:
    """The Sense HAT's matrix; `hat` defaults to a new sense_hat.SenseHat()."""

    module = "sense_hat"

    def __init__(self, hat=None):
        self.hat = hat if hat is not None else importlib.import_module(self.module).SenseHat()
        self._low_light: bool | None = None

    def show(self, frame: Frame, low_light: bool) -> None:
        if low_light != self._low_light:  # each change rewrites the HAT's gamma table
            self.hat.low_light = self._low_light = low_light
        self.hat.set_pixels([list(p) for p in frame])

    def close(self) -> None:
        self.hat.clear()


class EmuDisplay(SenseHatDisplay):
    """The desktop Sense HAT emulator (sense_emu, same API), to try the display without a Pi."""

    module = "sense_emu"


class TerminalDisplay:
    """The matrix in ANSI 24-bit colour, two "█" per pixel so it comes out roughly square.

    To a TTY it redraws in place, to another stream it appends each frame; given a Path it
    replaces that file with the latest frame (temp file + rename, so a reader such as the
    demo never sees half a frame).
    """

    def __init__(self, out: TextIO | Path):
        self.out = out
        self._redraw = not isinstance(out, Path) and out.isatty()
        self._drawn = False

    def show(self, frame: Frame, low_light: bool) -> None:
        text = ansi(dim(frame) if low_light else frame)
        if isinstance(self.out, Path):
            tmp = self.out.with_name(f".{self.out.name}.tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, self.out)
            return
        if self._redraw and self._drawn:
            self.out.write(f"\x1b[{SIDE}A")  # cursor up to the previous frame's first row
        self.out.write(text)
        self.out.flush()
        self._drawn = True

    def close(self) -> None:
        pass


def ansi(frame: Frame) -> str:
    """Eight lines of coloured "██" pairs, each line reset to the default colour."""
    return "".join(
        "".join(f"\x1b[38;2;{r};{g};{b}m██" for r, g, b in frame[row : row + SIDE]) + "\x1b[0m\n"
        for row in range(0, SIDE * SIDE, SIDE)
    )


class NoDisplay:
    """No display at all: the meter runs the same without one."""

    def show(self, frame: Frame, low_light: bool) -> None:
        pass

    def close(self) -> None:
        pass


class RecordingDisplay:
    """For tests: keeps every (frame, low_light) shown; wait_for waits on a condition, not a sleep."""

    def __init__(self):
        self.shown: list[tuple[Frame, bool]] = []
        self.closed = False
        self._cond = threading.Condition()

    def show(self, frame: Frame, low_light: bool) -> None:
        with self._cond:
            self.shown.append((frame, low_light))
            self._cond.notify_all()

    def close(self) -> None:
        self.closed = True

    def wait_for(self, predicate: Callable[[Frame], bool], timeout: float) -> Frame | None:
        """The first frame shown, so far or within `timeout` s, that satisfies `predicate`; else None."""
        with self._cond:
            return self._cond.wait_for(lambda: next((f for f, _ in self.shown if predicate(f)), None), timeout)


def open_display(name: str, out: TextIO | Path | None = None) -> Driver:
    """The driver called `name` (one of DISPLAYS); `out` is the terminal's stream or file (default stdout).

    A Sense HAT (or emulator) that cannot be imported or opened is logged and replaced by
    NoDisplay. An unknown name is a configuration mistake and raises ValueError.
    """
    if name == "terminal":
        return TerminalDisplay(sys.stdout if out is None else out)
    if name == "none":
        return NoDisplay()
    if name not in ("sensehat", "emu"):
        raise ValueError(f"unknown display {name!r}: one of {', '.join(DISPLAYS)}")
    try:
        return SenseHatDisplay() if name == "sensehat" else EmuDisplay()
    except Exception as exc:  # ImportError, OSError (no framebuffer), whatever the library raises
        log.warning("display %s unavailable, running without one: %s: %s", name, type(exc).__name__, exc)
        return NoDisplay()


class Painter:
    """Owns a driver on a daemon thread, so a slow or stuck display never delays the caller
    (the meter's 10 Hz sampling loop): show() only hands over the latest view.

    The thread renders with the clock, draws only what changed and, while offline, wakes every
    BLINK_POLL_S so the blink animates. A failing driver is logged (once until it recovers).
    """

    def __init__(self, driver: Driver):
        self.driver = driver
        self._cond = threading.Condition()
        self._latest: tuple[View, bool] | None = None
        self._fresh = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="display", daemon=True)
        self._thread.start()

    def show(self, view: View, low_light: bool) -> None:
        with self._cond:
            if (view, low_light) != self._latest:
                self._latest, self._fresh = (view, low_light), True
                self._cond.notify()

    def close(self, timeout_s: float = 2.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("display driver still busy after %.1f s; closing it anyway", timeout_s)
        try:
            self.driver.close()
        except Exception:
            log.exception("display driver failed to close")

    def _run(self) -> None:
        latest: tuple[View, bool] | None = None
        drawn, failing = None, False
        while True:
            with self._cond:
                blinking = latest is not None and not latest[0].online
                self._cond.wait_for(lambda: self._fresh or self._closed, BLINK_POLL_S if blinking else None)
                if self._closed:
                    return
                latest, self._fresh = self._latest, False
            assert latest is not None, "woken by show() or, blinking, with a view shown already"
            view, low_light = latest
            frame = render(view, wall_ms())
            if (frame, low_light) == drawn:
                continue
            try:
                self.driver.show(frame, low_light)
            except Exception:
                if not failing:
                    log.exception("display driver failed; the meter carries on")
                failing = True
                continue
            if failing:
                log.info("display driver works again")
            drawn, failing = (frame, low_light), False


class SessionLed:
    """A GPIO LED lit while a trading session is open. pin None: no LED. Opened on first use;
    without usable GPIO here (no pin factory, pin busy) it warns once and does nothing."""

    def __init__(self, pin: int | None):
        self.pin = pin
        self._led = None
        self._tried = pin is None

    def set(self, open: bool) -> None:
        if not self._tried:
            self._tried = True
            self._led = self._open()
        if self._led is not None:
            self._led.value = open

    def close(self) -> None:
        if self._led is not None:
            self._led.off()
            self._led.close()
            self._led = None

    def _open(self):
        from gpiozero import LED

        try:
            return LED(self.pin)
        except Exception as exc:  # BadPinFactory off a Pi, GPIOPinInUse, lgpio.error "GPIO busy"
            log.warning(
                "session LED on GPIO %d unavailable, running without it: %s: %s", self.pin, type(exc).__name__, exc
            )
            return None
