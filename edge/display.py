"""What the meter's 8x8 Sense HAT matrix shows: a pure function of the meter's state and the time.

Pure so every frame can be checked pixel by pixel; edge.display_drivers owns the clock, the
thread and the hardware.
"""

from __future__ import annotations

from dataclasses import dataclass

from wire.messages import CtpState

Pixel = tuple[int, int, int]
Frame = tuple[Pixel, ...]  # 64 pixels, row-major, row 0 at the top

SIDE = 8
BLACK: Pixel = (0, 0, 0)
BLUE: Pixel = (0, 0, 255)
GREEN: Pixel = (0, 255, 0)
AMBER: Pixel = (255, 160, 0)
RED: Pixel = (255, 0, 0)
WHITE: Pixel = (255, 255, 255)
DIM_BLUE: Pixel = (0, 0, 64)
DIM_YELLOW: Pixel = (64, 48, 0)
ALIVE: Pixel = (0, 32, 0)  # idle's top-left pixel: the meter is running
BLINK_MS = 500
IDLE = "idle"  # a View's phase when no trade is shown
SOLD = "sold"  # a View's phase for a held sale: the household should deliver (export) now
YELLOW: Pixel = (255, 255, 0)

# 5x7 glyphs, one hex byte per row from the top, bit 4 the leftmost column.
FONT: dict[str, bytes] = {
    ch: bytes.fromhex(rows)
    for ch, rows in zip(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZ?",
        (
            "0e11111f111111",
            "1e11111e11111e",
            "0e11101010110e",
            "1c12111111121c",
            "1f10101e10101f",
            "1f10101e101010",
            "0e11101711110f",
            "1111111f111111",
            "0e04040404040e",
            "0702020202120c",
            "11121418141211",
            "1010101010101f",
            "111b1515111111",
            "11111915131111",
            "0e11111111110e",
            "1e11111e101010",
            "0e11111115120d",
            "1e11111e141211",
            "0f10100e01011e",
            "1f040404040404",
            "1111111111110e",
            "11111111110a04",
            "1111111515150a",
            "11110a040a1111",
            "1111110a040404",
            "1f01020408101f",
            "0e110102040004",
        ),
        strict=True,  # one glyph per character
    )
}
GLYPH_LEFT, GLYPH_TOP = 1, 1  # the 5x7 glyph sits in columns 1-5, rows 1-7


@dataclass(frozen=True, slots=True)
class View:
    """What the meter knows that the household should see.

    phase: IDLE, SOLD, or the CtpState of the trade shown (never `sent`); promised_wh is the
    held CTP's (or sale's) energy, reason the §4 code of a rejection, power_w the power now
    (+import, -export).
    """

    online: bool
    phase: str  # IDLE or a CtpState
    delivered_wh: int = 0
    promised_wh: int = 0
    reason: str = ""
    power_w: int = 0


def render(view: View, now_ms: int, *, full_w: int = 5000) -> Frame:
    """The frame for `view` at `now_ms`; offline, it blinks so a household notices the lost network."""
    if not view.online and now_ms // BLINK_MS % 2:
        return (BLACK,) * SIDE * SIDE
    pixels = _phase(view, full_w)
    if not view.online:
        pixels[0] = RED
    return tuple(pixels)


def _phase(view: View, full_w: int) -> list[Pixel]:
    if view.phase == CtpState.HELD:
        return _progress(view.delivered_wh, view.promised_wh)
    if view.phase == SOLD:
        return _sold(view.delivered_wh, view.promised_wh)
    if view.phase == CtpState.SETTLED:
        return [GREEN] * SIDE * SIDE
    if view.phase == CtpState.REFUNDED:
        return [AMBER] * SIDE * SIDE
    if view.phase == CtpState.REJECTED:
        return glyph(view.reason[:1].upper(), WHITE, RED)
    return _idle(view.power_w, full_w)


def _idle(power_w: int, full_w: int) -> list[Pixel]:
    """Dark but for the alive pixel and a bottom-row bar: import grows blue from the left, export
    yellow from the right (readable without colour); any power at all lights one pixel."""
    pixels = [BLACK] * SIDE * SIDE
    pixels[0] = ALIVE
    length = min(SIDE, -(-SIDE * abs(power_w) // full_w))
    row = SIDE * (SIDE - 1)
    for i in range(length):
        if power_w > 0:
            pixels[row + i] = DIM_BLUE
        else:
            pixels[row + SIDE - 1 - i] = DIM_YELLOW
    return pixels


def _progress(delivered_wh: int, promised_wh: int) -> list[Pixel]:
    """floor(64 * delivered / promised) pixels lit row by row; nothing promised counts as done."""
    full = SIDE * SIDE
    lit = full if promised_wh <= 0 else max(0, min(full, full * delivered_wh // promised_wh))
    return [BLUE] * lit + [BLACK] * (full - lit)


def _sold(exported_wh: int, sold_wh: int) -> list[Pixel]:
    """Sold, deliver now: yellow (export's colour in idle's bar) rising from the bottom as the
    export counted against the sale grows, over a dim yellow rest, so it never reads as a
    buyer's blue fill from the top; Wh unknown (0) shows the dim rest alone."""
    full = SIDE * SIDE
    lit = 0 if sold_wh <= 0 else max(0, min(full, full * exported_wh // sold_wh))
    return [DIM_YELLOW] * (full - lit) + [YELLOW] * lit


def glyph(ch: str, ink: Pixel, background: Pixel) -> list[Pixel]:
    """The letter `ch` (FONT, "?" for one it lacks) in `ink` on a matrix of `background`."""
    pixels = [background] * SIDE * SIDE
    for y, bits in enumerate(FONT.get(ch, FONT["?"])):
        for x in range(5):
            if bits >> (4 - x) & 1:
                pixels[(GLYPH_TOP + y) * SIDE + GLYPH_LEFT + x] = ink
    return pixels


def dim(frame: Frame, divisor: int = 4) -> Frame:
    """The frame as the Sense HAT's low-light mode roughly shows it, for drivers that have none."""
    return tuple((r // divisor, g // divisor, b // divisor) for r, g, b in frame)


def is_night(hour: int, start: int, end: int) -> bool:
    """Whether `hour` is in [start, end), a window that may wrap midnight (22..7); start == end: never."""
    if start <= end:
        return start <= hour < end
    return hour >= start or hour < end
