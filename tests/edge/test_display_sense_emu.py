"""The screens once against sense_emu, the Sense HAT emulator with the real library's API, so the
calls the drivers make (SenseHat(), set_pixels, low_light, stick.direction_any) are exercised
for real, not only against the stand-ins.

sense_emu needs no GUI to be driven, but it does need what its GUI provides: a process holding
its lock file (else SenseHat() waits a second and spawns `sense_emu_gui`), its screen and
sensor registers as files (it creates them), and a datagram socket serving joystick events. It
puts all of them in /dev/shm, shared by every process on the machine; this test points them
into tmp_path instead and plays the GUI's part itself: it holds the lock, reads the screen
back through the library's own get_pixels, and sends evdev key events to the stick's socket.
"""

from __future__ import annotations

import gc
import socket
import struct

import pytest

from edge.display import View
from edge.display_drivers import EmuDisplay, Painter, open_input
from edge.display_input import JoystickInput
from edge.display_screens import BALANCE, NEXT, NOW, PREV, SCREENS, TODAY, Market, render_screen
from tests.support.bus import wait_for
from tests.support.screens import WatchedSelector

sense_emu = pytest.importorskip(
    "sense_emu", reason="sense-emu is not installed (pip install -e '.[emulator]'; it needs numpy and Pillow)"
)
ONLINE = View(online=True, phase="idle")
WAIT_S = 5.0  # generous: only a broken emulator ever waits this long
EV_KEY, KEY_RIGHT, KEY_LEFT, PRESS, RELEASE = 0x01, 106, 105, 1, 0


@pytest.fixture
def emulator(tmp_path, monkeypatch):
    """sense_emu's shared files and socket in tmp_path, its lock held by us (as its GUI would)."""
    from sense_emu import humidity, imu, lock, pressure, screen, stick

    for module, name in [(screen, "screen"), (imu, "imu"), (pressure, "pressure"), (humidity, "humidity")]:
        monkeypatch.setattr(module, f"{name}_filename", lambda name=name: str(tmp_path / f"emu-{name}"))
    monkeypatch.setattr(lock, "lock_filename", lambda: str(tmp_path / "emu-pid"))
    address = str(tmp_path / "emu-stick")
    monkeypatch.setattr(stick, "stick_address", lambda: (socket.AF_UNIX, socket.SOCK_DGRAM, address))
    monkeypatch.setenv("HOME", str(tmp_path))  # SenseHat() copies its IMU settings under ~/.config
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(address)
    server.settimeout(WAIT_S)
    held = lock.EmulatorLock("test")
    held.acquire()
    try:
        yield server
    finally:
        held.release()
        server.close()


def rgb565(frame) -> list[list[int]]:
    """What the emulator's 16-bit screen keeps of each pixel: the top 5, 6 and 5 bits."""
    return [[r & 0xF8, g & 0xFC, b & 0xF8] for r, g, b in frame]


pytestmark = [
    # sense_emu 1.2.1 reads its font with Pillow's getdata, deprecated in Pillow 12: its warning, not ours.
    pytest.mark.filterwarnings("ignore:Image.Image.getdata is deprecated:DeprecationWarning"),
    # SenseHat() opens its sensor registers and has no close: the files go when it is collected.
    pytest.mark.filterwarnings(
        r"ignore:Exception ignored in.*emu-(imu|pressure|humidity):pytest.PytestUnraisableExceptionWarning"
    ),
]


def test_screens_and_joystick_through_sense_emus_real_api(emulator):
    hat = sense_emu.SenseHat()
    display = EmuDisplay(hat)
    watched = WatchedSelector()
    joystick = JoystickInput(hat, watched.on_event)
    market = Market(order_side="ask", order_price=40, bought_wh=3000, sold_wh=500, green_wh=1000, balance=7, open=True)
    try:
        for screen in SCREENS:
            frame = render_screen(screen, market, ONLINE, 0)
            display.show(frame, low_light=screen == BALANCE)
            assert hat.get_pixels() == rgb565(frame), screen
            assert hat.low_light == (screen == BALANCE)

        hello, client = emulator.recvfrom(64)  # the stick's thread asks for events, as it asks the GUI
        assert hello == b"hello"
        for code, value in [(KEY_RIGHT, PRESS), (KEY_RIGHT, RELEASE), (KEY_RIGHT, PRESS), (KEY_LEFT, PRESS)]:
            emulator.sendto(struct.pack("llHHI", 0, 0, EV_KEY, code, value), client)
        assert watched.wait_count(3, WAIT_S) == [NEXT, NEXT, PREV]  # the release moved nothing
        assert watched.selector.screen == TODAY
    finally:
        joystick.close()
        display.close()  # not hat.stick.close(): see JoystickInput.close
        del hat, display
        gc.collect()  # here, under this test's filters, not in whichever test runs next


def wait_shown(hat, pixels: list[list[int]], what: str) -> None:
    """Until the emulator's screen holds `pixels` (the painter draws on a thread of its own)."""
    wait_for(lambda: hat.get_pixels() == pixels, WAIT_S, lambda: f"{what} on the emulator: {hat.get_pixels()}")


def test_the_meters_painter_draws_on_sense_emu_and_its_joystick_moves_the_screen(emulator):
    """As `spb-meter run --display emu` wires them: the painter's driver, and open_input's joystick
    calling the painter, which draws the next screen at once."""
    hat = sense_emu.SenseHat()
    painter = Painter(EmuDisplay(hat))
    joystick = open_input(painter.driver, painter.on_event, None)
    market = Market(order_side="bid", order_price=60, sold_wh=5000, balance=None, open=True)
    try:
        assert isinstance(joystick, JoystickInput)
        painter.show(ONLINE, False, market)
        now = rgb565(render_screen(NOW, market, ONLINE, 0))
        wait_shown(hat, now, "NOW")
        hello, client = emulator.recvfrom(64)
        assert hello == b"hello"
        emulator.sendto(struct.pack("llHHI", 0, 0, EV_KEY, KEY_RIGHT, PRESS), client)
        today = rgb565(render_screen(TODAY, market, ONLINE, 0))
        wait_shown(hat, today, "TODAY")
    finally:
        if joystick is not None:
            joystick.close()
        painter.close()
        del hat, painter
        gc.collect()
