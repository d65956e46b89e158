"""edge.display frames pixel by pixel; edge.display_drivers' drivers, painter thread and session LED."""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
from pathlib import Path

import gpiozero
import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from edge.display import (
    ALIVE,
    AMBER,
    BLACK,
    BLUE,
    DIM_BLUE,
    DIM_YELLOW,
    FONT,
    GREEN,
    RED,
    WHITE,
    Frame,
    View,
    dim,
    is_night,
    render,
)
from edge.display_drivers import (
    NoDisplay,
    Painter,
    RecordingDisplay,
    SenseHatDisplay,
    SessionLed,
    TerminalDisplay,
    ansi,
    open_display,
)

WAIT_S = 5.0  # generous: only a broken painter ever waits this long
IDLE = View(online=True, phase="idle")


def lit(frame: Frame, colour=BLUE) -> int:
    return sum(p == colour for p in frame)


def bottom_row(frame: Frame) -> tuple:
    return frame[56:]


def white_rows(frame: Frame) -> list[str]:
    """The frame's white pixels as eight rows of '#' and '.'."""
    return ["".join("#" if p == WHITE else "." for p in frame[r * 8 : r * 8 + 8]) for r in range(8)]


def glyph_rows(ch: str) -> list[str]:
    """FONT[ch] placed in columns 1-5, rows 1-7 of the matrix."""
    return ["." * 8] + ["." + format(bits, "05b").replace("0", ".").replace("1", "#") + ".." for bits in FONT[ch]]


def rejected(reason: str) -> Frame:
    return render(View(online=True, phase="rejected", reason=reason), 0)


# -- render --------------------------------------------------------------------------------


def test_idle_without_power_is_dark_but_for_the_alive_pixel():
    frame = render(IDLE, 0)
    assert len(frame) == 64
    assert frame[0] == ALIVE
    assert set(frame[1:]) == {BLACK}


@pytest.mark.parametrize(
    "power_w, expected",
    [
        (2500, (DIM_BLUE,) * 4 + (BLACK,) * 4),  # import: blue from the left, 8 px at 5000 W
        (5000, (DIM_BLUE,) * 8),
        (99_000, (DIM_BLUE,) * 8),  # clamped
        (1, (DIM_BLUE,) + (BLACK,) * 7),  # any power shows its direction
        (-1250, (BLACK,) * 6 + (DIM_YELLOW,) * 2),  # export: yellow from the right
        (-5000, (DIM_YELLOW,) * 8),
    ],
)
def test_idle_bar_shows_power_direction_and_size(power_w, expected):
    frame = render(View(online=True, phase="idle", power_w=power_w), 0)
    assert bottom_row(frame) == expected
    assert frame[0] == ALIVE and set(frame[1:56]) == {BLACK}


def test_idle_full_scale_is_a_keyword():
    frame = render(View(online=True, phase="idle", power_w=500), 0, full_w=1000)
    assert lit(bottom_row(frame), DIM_BLUE) == 4


@pytest.mark.parametrize(
    "delivered, promised, expected",
    [
        (0, 10, 0),
        (5, 10, 32),
        (10, 10, 64),
        (15, 10, 64),
        (1, 3, 21),
        (2, 3, 42),
        (-4, 10, 0),
        (0, 0, 64),
    ],
)
def test_held_fills_row_by_row_in_proportion(delivered, promised, expected):
    frame = render(View(online=True, phase="held", delivered_wh=delivered, promised_wh=promised), 0)
    assert frame == (BLUE,) * expected + (BLACK,) * (64 - expected)


def test_settled_is_all_green_and_refunded_all_amber():
    assert render(View(online=True, phase="settled"), 0) == (GREEN,) * 64
    assert render(View(online=True, phase="refunded"), 0) == (AMBER,) * 64


def test_rejected_draws_the_reasons_first_letter_in_white_on_red():
    frame = rejected("insufficient-funds")
    assert set(frame) == {RED, WHITE}
    assert white_rows(frame) == glyph_rows("I")
    assert (
        white_rows(rejected("expired"))
        == glyph_rows("E")
        == [
            "........",
            ".#####..",
            ".#......",
            ".#......",
            ".####...",
            ".#......",
            ".#......",
            ".#####..",
        ]
    )
    assert rejected("insufficient-funds") != rejected("expired")
    assert rejected("expired") == rejected("energy-short")  # only the first letter is shown
    assert white_rows(rejected("coe")) == glyph_rows("C")


@pytest.mark.parametrize("reason", ["", "9lives", "é", "-"])
def test_rejected_without_a_known_letter_shows_a_question_mark(reason):
    assert white_rows(rejected(reason)) == glyph_rows("?")


def test_every_letter_has_its_own_5x7_glyph():
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    assert all(len(FONT[ch]) == 7 and all(0 <= row < 32 for row in FONT[ch]) for ch in letters + "?")
    frames = {rejected(ch.lower() + "xyz") for ch in letters}
    assert len(frames) == 26
    for ch in letters:
        assert white_rows(rejected(ch.lower())) == glyph_rows(ch)


@pytest.mark.parametrize(
    "now_ms, on",
    [
        (0, True),
        (499, True),
        (500, False),
        (999, False),
        (1000, True),
        (1_750_000_000_250, True),
        (1_750_000_000_500, False),
    ],
)
def test_offline_blinks_every_500_ms_with_a_red_corner(now_ms, on):
    view = View(online=False, phase="held", delivered_wh=5, promised_wh=10)
    frame = render(view, now_ms)
    if on:
        assert frame[0] == RED
        assert frame[1:] == render(View(online=True, phase="held", delivered_wh=5, promised_wh=10), now_ms)[1:]
    else:
        assert frame == (BLACK,) * 64


def test_online_frames_do_not_depend_on_the_clock():
    view = View(online=True, phase="held", delivered_wh=3, promised_wh=10)
    assert render(view, 0) == render(view, 500) == render(view, 123_456_789)


@pytest.mark.parametrize(
    "hour, start, end, night",
    [
        (23, 22, 7, True),
        (0, 22, 7, True),
        (6, 22, 7, True),
        (7, 22, 7, False),
        (21, 22, 7, False),
        (22, 22, 7, True),
        (12, 22, 7, False),
        (1, 0, 6, True),
        (6, 0, 6, False),
        (23, 0, 6, False),
        (5, 5, 5, False),
    ],
)
def test_is_night_handles_windows_across_midnight(hour, start, end, night):
    assert is_night(hour, start, end) is night


def test_dim_divides_every_channel():
    assert dim((WHITE, (8, 4, 3)) * 32) == ((63, 63, 63), (2, 1, 0)) * 32


# -- drivers -------------------------------------------------------------------------------


class FakeHat:
    """sense_hat.SenseHat's display API, recording what it was told."""

    def __init__(self):
        self.pixels, self.low_light_sets, self.cleared = None, [], False

    @property
    def low_light(self):
        return self.low_light_sets[-1] if self.low_light_sets else False

    @low_light.setter
    def low_light(self, value):
        self.low_light_sets.append(value)

    def set_pixels(self, pixels):
        self.pixels = pixels

    def clear(self):
        self.cleared = True


def test_sensehat_driver_sets_pixels_and_low_light_only_when_it_changes():
    hat = FakeHat()
    display = SenseHatDisplay(hat)
    frame = render(View(online=True, phase="settled"), 0)
    for low_light in (False, True, True, False):
        display.show(frame, low_light)
    assert hat.pixels == [[0, 255, 0]] * 64
    assert hat.low_light_sets == [False, True, False]
    display.close()
    assert hat.cleared


class FakeTty(io.StringIO):
    def isatty(self):
        return True


def test_terminal_appends_frames_to_a_plain_stream():
    out = io.StringIO()
    display = TerminalDisplay(out)
    display.show(render(View(online=True, phase="settled"), 0), False)
    display.show(render(View(online=True, phase="refunded"), 0), False)
    text = out.getvalue()
    assert text == ansi((GREEN,) * 64) + ansi((AMBER,) * 64)
    assert text.count("\n") == 16 and text.count("██") == 128
    assert "\x1b[38;2;0;255;0m██" in text and "\x1b[0m\n" in text
    assert "\x1b[8A" not in text


def test_terminal_redraws_in_place_on_a_tty_and_dims_in_low_light():
    out = FakeTty()
    display = TerminalDisplay(out)
    display.show((GREEN,) * 64, False)
    assert not out.getvalue().startswith("\x1b[8A")
    display.show((GREEN,) * 64, True)
    assert out.getvalue() == ansi((GREEN,) * 64) + "\x1b[8A" + ansi(((0, 63, 0),) * 64)


def test_terminal_file_is_replaced_atomically_with_the_latest_frame(tmp_path, monkeypatch):
    path = tmp_path / "m0001.ansi"
    display = open_display("terminal", out=path)
    first, second = (GREEN,) * 64, (AMBER,) * 64
    display.show(first, False)
    assert path.read_text(encoding="utf-8") == ansi(first)

    real_replace = os.replace

    def replace(src, dst):  # at the rename, readers still see the whole previous frame
        assert dst == path and path.read_text(encoding="utf-8") == ansi(first)
        assert Path(src).read_text(encoding="utf-8") == ansi(second)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    display.show(second, False)
    assert path.read_text(encoding="utf-8") == ansi(second)
    assert os.listdir(tmp_path) == ["m0001.ansi"]


@pytest.mark.parametrize("name, module", [("sensehat", "sense_hat"), ("emu", "sense_emu")])
def test_a_missing_hardware_library_gives_no_display_and_a_warning(name, module, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, module, None)  # as on a machine without it: import fails
    with caplog.at_level(logging.WARNING, logger="spb.meter"):
        display = open_display(name)
    assert isinstance(display, NoDisplay)
    assert [(r.name, r.levelno) for r in caplog.records] == [("spb.meter", logging.WARNING)]
    assert name in caplog.records[0].getMessage()


def test_open_display_knows_none_and_terminal_and_refuses_other_names():
    assert isinstance(open_display("none"), NoDisplay)
    assert isinstance(open_display("terminal", out=io.StringIO()), TerminalDisplay)
    with pytest.raises(ValueError):
        open_display("hdmi")


# -- painter -------------------------------------------------------------------------------


@pytest.fixture
def recording():
    display = RecordingDisplay()
    painter = Painter(display)
    yield display, painter
    painter.close()


def test_painter_draws_the_latest_view_once_per_change(recording):
    display, painter = recording
    a = View(online=True, phase="idle", power_w=10)
    b = View(online=True, phase="settled")
    painter.show(a, False)
    assert display.wait_for(lambda f: f == render(a, 0), WAIT_S)
    painter.show(View(online=True, phase="idle", power_w=20), False)  # a different view, the same frame
    painter.show(b, False)
    assert display.wait_for(lambda f: f == (GREEN,) * 64, WAIT_S)
    painter.show(b, True)
    assert display.wait_for(lambda f: len(display.shown) == 3, WAIT_S)
    assert display.shown == [(render(a, 0), False), ((GREEN,) * 64, False), ((GREEN,) * 64, True)]


def test_painter_blinks_while_offline(recording):
    display, painter = recording
    view = View(online=False, phase="settled")
    on, off = render(view, 0), (BLACK,) * 64
    assert on[0] == RED and on[1:] == (GREEN,) * 63
    painter.show(view, False)
    assert display.wait_for(lambda f: len(display.shown) >= 3, WAIT_S)
    assert [f for f, _ in display.shown[:3]] in ([on, off, on], [off, on, off])


def test_painter_close_closes_the_driver():
    display = RecordingDisplay()
    Painter(display).close()
    assert display.closed


class StuckDisplay(RecordingDisplay):
    """A driver whose first show() hangs until released, like a wedged I2C bus."""

    def __init__(self):
        super().__init__()
        self.entered, self.release = threading.Event(), threading.Event()

    def show(self, frame, low_light):
        self.entered.set()
        assert self.release.wait(WAIT_S)
        super().show(frame, low_light)


def test_a_stuck_driver_never_blocks_show():
    display = StuckDisplay()
    painter = Painter(display)
    painter.show(View(online=True, phase="settled"), False)
    assert display.entered.wait(WAIT_S)

    def sample_loop():
        for wh in range(100):
            painter.show(View(online=True, phase="held", delivered_wh=wh, promised_wh=100), False)

    caller = threading.Thread(target=sample_loop)
    caller.start()
    caller.join(1.0)
    stuck = caller.is_alive()
    display.release.set()
    assert not stuck, "Painter.show waited for the driver"
    assert display.wait_for(lambda f: lit(f) == 63, WAIT_S)  # the latest view, 99/100
    painter.close()


class FlakyDisplay(RecordingDisplay):
    """Records every frame it is asked to show, then fails on the amber ones."""

    def show(self, frame, low_light):
        super().show(frame, low_light)
        if frame == (AMBER,) * 64:
            raise OSError("I2C bus error")


def test_a_failing_driver_is_logged_once_and_the_painter_carries_on(caplog):
    display = FlakyDisplay()
    painter = Painter(display)
    with caplog.at_level(logging.INFO, logger="spb.meter"):
        for low_light in (False, True):
            painter.show(View(online=True, phase="refunded"), low_light)
            assert display.wait_for(lambda f, n=1 + low_light: len(display.shown) == n, WAIT_S)
        painter.show(View(online=True, phase="settled"), False)
        assert display.wait_for(lambda f: f == (GREEN,) * 64, WAIT_S)
        painter.close()  # joins the thread: its logging is done
    assert display.shown == [((AMBER,) * 64, False), ((AMBER,) * 64, True), ((GREEN,) * 64, False)]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.exc_info[0] for r in errors] == [OSError]
    assert any("works again" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)


# -- session LED ---------------------------------------------------------------------------


@pytest.fixture
def mock_pins():
    previous = Device.pin_factory
    Device.pin_factory = MockFactory()
    yield Device.pin_factory
    Device.pin_factory.close()
    Device.pin_factory = previous


def test_session_led_follows_the_session(mock_pins):
    led = SessionLed(17)
    assert not mock_pins.pins  # opened on first use only
    led.set(True)
    assert mock_pins.pin(17).state
    led.set(False)
    assert not mock_pins.pin(17).state
    led.set(True)
    led.close()
    assert not mock_pins.pin(17).state


def test_session_led_without_a_pin_does_nothing(mock_pins):
    led = SessionLed(None)
    led.set(True)
    led.close()
    assert not mock_pins.pins


def test_session_led_without_gpio_warns_once(monkeypatch, caplog):
    attempts = []

    def no_factory(pin):
        attempts.append(pin)
        raise gpiozero.BadPinFactory("Unable to load any default pin factory!")

    monkeypatch.setattr(gpiozero, "LED", no_factory)
    led = SessionLed(17)
    with caplog.at_level(logging.WARNING, logger="spb.meter"):
        led.set(True)
        led.set(False)
        led.set(True)
    led.close()
    assert attempts == [17]
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "17" in caplog.records[0].getMessage()
