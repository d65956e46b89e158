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
from typing import NamedTuple, Protocol, TextIO

from broker.clock import wall_ms
from edge.display import SIDE, Frame, View, dim
from edge.display_input import JoystickInput, ScreenSelector, TerminalKeys
from edge.display_screens import Market, Scales, render_screen

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


class Shown(NamedTuple):
    """What the painter is asked to draw: everything display_screens.render_screen takes but the
    screen (the selector's) and the time (the painter's)."""

    view: View
    low_light: bool
    market: Market
    scales: Scales


NO_MARKET = Market()  # a meter without market activity: the NOW screen is edge.display's frame
DEFAULT_SCALES = Scales()


class ScreenInput(Protocol):
    def close(self) -> None: ...


def open_input(driver: Driver, on_event: Callable[[str], None], keys_fd: int | None) -> ScreenInput | None:
    """What moves the screens for `driver`: a Sense HAT's (or sense_emu's) joystick; for the
    terminal, the keys read from keys_fd (the caller passes its stdin only when the frames are
    drawn to that same terminal, so meters run in the background, as the demo runs six, never
    read or reconfigure a terminal they do not own); else None, the NOW screen stays.

    A joystick that cannot be opened costs a warning, like a display that cannot."""
    if isinstance(driver, SenseHatDisplay):
        try:
            return JoystickInput(driver.hat, on_event)
        except Exception as exc:  # no evdev joystick device, whatever the library raises
            log.warning("joystick unavailable, the screens stay on NOW: %s: %s", type(exc).__name__, exc)
            return None
    if isinstance(driver, TerminalDisplay) and keys_fd is not None:
        return TerminalKeys(keys_fd, on_event)
    return None


class Painter:
    """Owns a driver on a daemon thread, so a slow or stuck display never delays the caller
    (the meter's 10 Hz sampling loop): show() only hands over the latest view and market.

    The thread renders the selected screen (display_screens) with the clock, draws only what
    changed and, while offline, wakes every BLINK_POLL_S so the blink animates. on_event (the
    joystick's or the keys' thread) moves the selector and wakes it at once. A failing driver
    is logged (once until it recovers).
    """

    def __init__(self, driver: Driver):
        self.driver = driver
        self.selector = ScreenSelector()
        self._cond = threading.Condition()
        self._latest: Shown | None = None
        self._fresh = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="display", daemon=True)
        self._thread.start()

    def show(self, view: View, low_light: bool, market: Market = NO_MARKET, scales: Scales = DEFAULT_SCALES) -> None:
        shown = Shown(view, low_light, market, scales)
        with self._cond:
            if shown != self._latest:
                self._latest, self._fresh = shown, True
                self._cond.notify()

    def on_event(self, event: str) -> None:
        """A joystick move or key (display_screens.NEXT, PREV, HOME): the next screen, drawn now."""
        self.selector.on_event(event)
        with self._cond:
            self._fresh = True
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
        latest: Shown | None = None
        drawn, failing = None, False
        while True:
            with self._cond:
                blinking = latest is not None and not latest.view.online
                self._cond.wait_for(lambda: self._fresh or self._closed, BLINK_POLL_S if blinking else None)
                if self._closed:
                    return
                latest, self._fresh = self._latest, False
            if latest is None:
                continue  # a screen chosen before the meter showed anything: drawn with the first view
            view, low_light, market, scales = latest
            frame = render_screen(self.selector.screen, market, view, wall_ms(), scales)
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
