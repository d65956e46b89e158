"""The market screens of the 8x8 matrix and which one is shown: pure, like edge.display.

The household cycles four screens with the joystick (or keys in the terminal): NOW (what the
meter does this moment: a fresh fill, an open order, else edge.display's view), TODAY (Wh
bought and sold), BALANCE and GREEN (the renewable share of what it bought). Each screen is a
function of (screen, Market, View, time) -> Frame, and `next_screen` is the whole state
machine, so a test checks every pixel and every step with plain values; the drivers in
edge.display_drivers only turn a joystick or a key into an event.

Bars, not digits: 8x8 cannot show a price, so amounts are bars against a scale the meter
chooses (`Scales`), rounded up so that any amount at all lights one pixel (as idle's bar does).
Row 7, the bottom row, is the price on both market screens.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.display import BLACK, BLUE, DIM_YELLOW, GREEN, RED, SIDE, WHITE, YELLOW, Frame, Pixel, View, glyph, render

NOW, TODAY, BALANCE, GREEN_SHARE = "now", "today", "balance", "green"
SCREENS = (NOW, TODAY, BALANCE, GREEN_SHARE)  # the joystick's cycle, in order
NEXT, PREV, HOME = "next", "prev", "home"  # the events of the state machine

ASK, BID = "ask", "bid"  # an open order's side
BOUGHT, SOLD = "bought", "sold"  # a fill's side

LIT_PIXEL = SIDE - 1  # the top-right pixel: on whenever an order or trade is open
OPEN: Pixel = WHITE
GREY: Pixel = (24, 24, 24)  # a bar's unlit rest: the scale is visible in the dark
UNKNOWN: Pixel = (96, 96, 96)  # the '?' of a balance the meter does not know: dim, and steady
BUY_COLOUR, SELL_COLOUR = BLUE, YELLOW  # import blue, export yellow, as in idle's bar
PRICE_ROW = SIDE - 1


@dataclass(frozen=True, slots=True)
class Market:
    """What the household's trading did, as the meter knows it; integers like every amount.

    order_side: ASK, BID or "" (no open order), at order_price units per Wh. fill_side:
    BOUGHT, SOLD or "" (no fill to show), fill_wh at the clearing price fill_price, fill_green
    whether it came from a renewable seller. The day so far: bought_wh / sold_wh, green_wh of
    the bought Wh renewable, and the account's balance, None while the meter does not know it.
    open: an order or trade is open.
    """

    order_side: str = ""
    order_price: int = 0
    fill_side: str = ""
    fill_wh: int = 0
    fill_price: int = 0
    fill_green: bool = False
    bought_wh: int = 0
    sold_wh: int = 0
    green_wh: int = 0
    balance: int | None = 0
    open: bool = False


@dataclass(frozen=True, slots=True)
class Scales:
    """What a full bar means: the meter sets these from its community (a full row = full_price)."""

    full_price: int = 100  # units per Wh across the 8 pixels of the price row
    full_fill_wh: int = 1000  # a fill of this many Wh fills rows 0-5
    full_day_wh: int = 10_000  # today's bought (rows 0-3) or sold (rows 4-7) at full
    full_balance: int = 100_000  # the balance filling the matrix
    full_w: int = 5000  # the idle bar's full power, as edge.display.render takes it


def next_screen(current: str, event: str) -> str:
    """The screen after `event`: NEXT and PREV cycle SCREENS, HOME goes to NOW, anything else
    (a release, an unknown key, an unknown screen's NEXT) keeps or resets without raising."""
    if event == HOME:
        return NOW
    if event not in (NEXT, PREV):
        return current if current in SCREENS else NOW
    if current not in SCREENS:
        return NOW
    step = 1 if event == NEXT else -1
    return SCREENS[(SCREENS.index(current) + step) % len(SCREENS)]


def render_screen(screen: str, market: Market, view: View, now_ms: int, scales: Scales = Scales()) -> Frame:
    """The frame of `screen`; with an order or trade open the top-right pixel stays lit on every
    screen and through the offline blink, so the household always sees that something is open."""
    if screen == TODAY:
        pixels = _today(market, scales)
    elif screen == BALANCE:
        pixels = _balance(market.balance, scales)
    elif screen == GREEN_SHARE:
        pixels = _green_share(market)
    else:
        pixels = _now(market, view, now_ms, scales)
    if screen != NOW and not view.online:
        pixels[0] = RED  # as edge.display marks it: the summary screens say so too, without blinking
    if market.open:
        pixels[LIT_PIXEL] = OPEN
    return tuple(pixels)


def _now(market: Market, view: View, now_ms: int, scales: Scales) -> list[Pixel]:
    """A fill first (the news), then an open order, else the meter's own view (trade, sale, idle)."""
    if market.fill_side in (BOUGHT, SOLD):
        return filled(market, scales)
    if market.order_side in (ASK, BID):
        return asking_or_bidding(market, scales)
    return list(render(view, now_ms, full_w=scales.full_w))


def asking_or_bidding(market: Market, scales: Scales) -> list[Pixel]:
    """An arrow in the side's colour, up for an ask (energy leaves), down for a bid (energy
    comes in), so it reads without colour; the price bar in the bottom row."""
    colour = SELL_COLOUR if market.order_side == ASK else BUY_COLOUR
    pixels = [BLACK] * SIDE * SIDE
    rows = ARROW if market.order_side == ASK else ARROW[::-1]
    for y, row in enumerate(rows):
        for x, ch in enumerate(row):
            if ch == "#":
                pixels[(1 + y) * SIDE + x] = colour
    pixels[PRICE_ROW * SIDE :] = _bar(market.order_price, scales.full_price, SIDE, WHITE)
    return pixels


ARROW = ("...##...", "..####..", ".######.", "...##...", "...##...", "...##...")  # rows 1-6, pointing up


def filled(market: Market, scales: Scales) -> list[Pixel]:
    """Bought (blue) or sold (yellow) Wh as a bar over rows 0-5, row 6 green if the energy is
    renewable (grey if not), row 7 the clearing price."""
    colour = BUY_COLOUR if market.fill_side == BOUGHT else SELL_COLOUR
    pixels = _bar(market.fill_wh, scales.full_fill_wh, 6 * SIDE, colour)
    pixels += [GREEN if market.fill_green else GREY] * SIDE
    pixels += _bar(market.fill_price, scales.full_price, SIDE, WHITE)
    return pixels


def _today(market: Market, scales: Scales) -> list[Pixel]:
    """Bought Wh in blue over rows 0-3, sold Wh in dim-then-bright yellow over rows 4-7."""
    half = SIDE * SIDE // 2
    sold = _bar(market.sold_wh, scales.full_day_wh, half, YELLOW)
    return _bar(market.bought_wh, scales.full_day_wh, half, BUY_COLOUR) + [DIM_YELLOW if p == GREY else p for p in sold]


def _balance(balance: int | None, scales: Scales) -> list[Pixel]:
    """The balance as a white bar over the whole matrix; unknown (None), a dim '?' on the grey
    rest, never an empty bar that would read as a balance of 0. Steady, not blinking: a blink
    is the offline signal."""
    if balance is None:
        return glyph("?", UNKNOWN, GREY)
    return _bar(balance, scales.full_balance, SIDE * SIDE, WHITE)


def _green_share(market: Market) -> list[Pixel]:
    """floor(64 * green / bought) pixels green, the rest grey; nothing bought shows all grey."""
    full = SIDE * SIDE
    lit = 0 if market.bought_wh <= 0 else max(0, min(full, full * market.green_wh // market.bought_wh))
    return [GREEN] * lit + [GREY] * (full - lit)


def _bar(amount: int, full_amount: int, length: int, colour: Pixel) -> list[Pixel]:
    """ceil(length * amount / full_amount) pixels of `colour` from the start, capped at `length`,
    the rest GREY; zero or less lights none."""
    lit = 0 if amount <= 0 or full_amount <= 0 else min(length, -(-length * amount // full_amount))
    return [colour] * lit + [GREY] * (length - lit)


# -- input: what a joystick or a key means, for the drivers to hand to next_screen --------------

JOYSTICK = {"right": NEXT, "down": NEXT, "left": PREV, "up": PREV, "middle": HOME}
KEYS = {b"n": NEXT, b" ": NEXT, b"\x1b[C": NEXT, b"\x1b[B": NEXT, b"p": PREV, b"\x1b[D": PREV, b"\x1b[A": PREV}
KEYS |= {b"h": HOME, b"\r": HOME, b"\n": HOME}


def joystick_event(direction: str, action: str) -> str | None:
    """The event of a sense_hat InputEvent: a press only (a hold repeats, a release follows
    every press, and neither should move the screen again); None for what means nothing."""
    return JOYSTICK.get(direction) if action == "pressed" else None


def key_events(buffer: bytes) -> tuple[list[str], bytes]:
    """The events in the bytes read from a terminal, and the tail kept for the next read (an
    arrow's escape sequence may arrive split). Unknown bytes and sequences are dropped."""
    events: list[str] = []
    i = 0
    while i < len(buffer):
        if buffer[i : i + 1] == b"\x1b":
            if buffer[i + 1 : i + 2] not in (b"", b"["):  # a lone Esc: no sequence follows
                i += 1
                continue
            if len(buffer) - i < 3:
                return events, buffer[i:]  # wait for the rest of the sequence
            key = buffer[i : i + 3]
            i += 3
        else:
            key = buffer[i : i + 1]
            i += 1
        event = KEYS.get(key)
        if event is not None:
            events.append(event)
    return events, b""
