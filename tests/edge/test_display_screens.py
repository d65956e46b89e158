"""edge.display_screens pixel by pixel, its state machine, and the input adapters of edge.display_input."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from edge.display import BLACK, BLUE, GREEN, RED, WHITE, Frame, View, render
from edge.display_drivers import RecordingDisplay
from edge.display_input import JoystickInput, ScreenSelector, TerminalKeys
from edge.display_screens import (
    ASK,
    BALANCE,
    BID,
    BOUGHT,
    GREEN_SHARE,
    GREY,
    HOME,
    NEXT,
    NOW,
    PREV,
    SCREENS,
    SOLD,
    TODAY,
    Market,
    Scales,
    joystick_event,
    key_events,
    next_screen,
    render_screen,
)
from tests.support.screens import WatchedSelector, frame_of

WAIT_S = 5.0  # generous: only a broken adapter ever waits this long
ONLINE = View(online=True, phase="idle")


def shown(screen: str, market: Market, view: View = ONLINE, now_ms: int = 0) -> Frame:
    """The frame as a driver receives it: rendered, then shown through the recording stand-in."""
    display = RecordingDisplay()
    display.show(render_screen(screen, market, view, now_ms), False)
    ((frame, _),) = display.shown
    assert len(frame) == 64
    return frame


# -- the market screen: asking or bidding, with the price -------------------------------------------


def test_asking_is_a_yellow_arrow_up_with_the_price_bar_and_the_open_pixel():
    market = Market(order_side=ASK, order_price=30, open=True)  # 30 of 100: ceil(2.4) = 3 px
    assert shown(NOW, market) == frame_of(
        ".......W",
        "...YY...",
        "..YYYY..",
        ".YYYYYY.",
        "...YY...",
        "...YY...",
        "...YY...",
        "WWW-----",
    )


def test_bidding_is_a_blue_arrow_down_and_a_full_price_caps_at_the_row():
    market = Market(order_side=BID, order_price=10_000, open=True)
    assert shown(NOW, market) == frame_of(
        ".......W",
        "...BB...",
        "...BB...",
        "...BB...",
        ".BBBBBB.",
        "..BBBB..",
        "...BB...",
        "WWWWWWWW",
    )


@pytest.mark.parametrize("price, lit", [(0, 0), (1, 1), (12, 1), (13, 2), (50, 4), (99, 8), (100, 8), (-5, 0)])
def test_price_bar_rounds_up_so_any_price_shows(price, lit):
    frame = shown(NOW, Market(order_side=ASK, order_price=price))
    assert frame[56:] == (WHITE,) * lit + (GREY,) * (8 - lit)


# -- the filled screen: Wh at the clearing price, green or not ---------------------------------------


def test_bought_green_fills_blue_with_a_green_row_and_the_clearing_price():
    market = Market(fill_side=BOUGHT, fill_wh=250, fill_price=25, fill_green=True, order_side=BID, open=True)
    assert shown(NOW, market) == frame_of(  # 250 of 1000 Wh: 12 of 48 px; price 25: 2 px; the fill wins
        "BBBBBBBW",
        "BBBB----",
        "--------",
        "--------",
        "--------",
        "--------",
        "GGGGGGGG",
        "WW------",
    )


def test_sold_not_green_fills_yellow_over_a_grey_row():
    market = Market(fill_side=SOLD, fill_wh=1000, fill_price=100, fill_green=False)
    assert shown(NOW, market) == frame_of(
        "YYYYYYYY",
        "YYYYYYYY",
        "YYYYYYYY",
        "YYYYYYYY",
        "YYYYYYYY",
        "YYYYYYYY",
        "--------",
        "WWWWWWWW",
    )


def test_a_tiny_fill_still_lights_one_pixel_and_nothing_open_leaves_the_corner_alone():
    frame = shown(NOW, Market(fill_side=BOUGHT, fill_wh=1, fill_price=0))
    assert frame[:8] == (BLUE,) + (GREY,) * 7
    assert frame[56:] == (GREY,) * 8


# -- now without market news: the meter's own view, plus the open pixel ------------------------------


def test_now_without_order_or_fill_is_edge_display_render():
    view = View(online=True, phase="held", delivered_wh=1, promised_wh=2)
    assert shown(NOW, Market(), view) == render(view, 0)
    assert shown(NOW, Market(), ONLINE) == frame_of("a.......", *["........"] * 7)


def test_the_open_pixel_stays_lit_through_the_offline_blink():
    offline = View(online=False, phase="idle")
    dark = shown(NOW, Market(open=True), offline, now_ms=500)  # the blink's off half
    assert dark == frame_of(".......W", *["........"] * 7)
    assert shown(NOW, Market(), offline, now_ms=500) == (BLACK,) * 64


# -- today: Wh bought and sold, balance, green share ----------------------------------------------------


def test_today_shows_bought_in_the_top_half_and_sold_in_the_bottom_half():
    market = Market(bought_wh=2500, sold_wh=10_000)  # 2500 of 10000 Wh: 8 of 32 px; sold: all 32
    assert shown(TODAY, market) == frame_of(
        "BBBBBBBB",
        "--------",
        "--------",
        "--------",
        "YYYYYYYY",
        "YYYYYYYY",
        "YYYYYYYY",
        "YYYYYYYY",
    )


def test_today_with_nothing_sold_shows_a_dim_yellow_rest_and_the_open_pixel():
    market = Market(bought_wh=1, open=True)
    assert shown(TODAY, market) == frame_of(
        "B------W",
        "--------",
        "--------",
        "--------",
        "yyyyyyyy",
        "yyyyyyyy",
        "yyyyyyyy",
        "yyyyyyyy",
    )


@pytest.mark.parametrize("balance, lit", [(0, 0), (-10, 0), (1, 1), (50_000, 32), (100_000, 64), (10**9, 64)])
def test_balance_fills_white_in_proportion(balance, lit):
    assert shown(BALANCE, Market(balance=balance)) == (WHITE,) * lit + (GREY,) * (64 - lit)


@pytest.mark.parametrize("green, bought, lit", [(0, 0, 0), (5, 0, 0), (0, 10, 0), (1, 3, 21), (3, 4, 48), (9, 9, 64)])
def test_green_share_is_the_renewable_part_of_what_was_bought(green, bought, lit):
    assert shown(GREEN_SHARE, Market(green_wh=green, bought_wh=bought)) == (GREEN,) * lit + (GREY,) * (64 - lit)


def test_summary_screens_mark_offline_in_the_top_left_without_blinking():
    offline = View(online=False, phase="idle")
    for now_ms in (0, 500):
        frame = shown(GREEN_SHARE, Market(bought_wh=1, green_wh=1, open=True), offline, now_ms)
        assert frame == (RED,) + (GREEN,) * 6 + (WHITE,) + (GREEN,) * 56


def test_scales_change_what_a_full_bar_means():
    frame = render_screen(BALANCE, Market(balance=10), ONLINE, 0, Scales(full_balance=20))
    assert frame == (WHITE,) * 32 + (GREY,) * 32


# -- the state machine ------------------------------------------------------------------------------------


def test_next_cycles_now_today_balance_green_and_back():
    seen, screen = [], NOW
    for _ in range(5):
        seen.append(screen)
        screen = next_screen(screen, NEXT)
    assert seen == [NOW, TODAY, BALANCE, GREEN_SHARE, NOW]
    assert SCREENS == (NOW, TODAY, BALANCE, GREEN_SHARE)


def test_prev_goes_backwards_and_home_goes_to_now():
    assert next_screen(NOW, PREV) == GREEN_SHARE
    assert next_screen(BALANCE, PREV) == TODAY
    assert next_screen(BALANCE, HOME) == NOW


def test_unknown_events_keep_the_screen_and_unknown_screens_reset_to_now():
    assert next_screen(BALANCE, "released") == BALANCE
    assert next_screen("nonsense", NEXT) == NOW
    assert next_screen("nonsense", "whatever") == NOW


# -- input: joystick and keys --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "direction, action, event",
    [
        ("right", "pressed", NEXT),
        ("down", "pressed", NEXT),
        ("left", "pressed", PREV),
        ("up", "pressed", PREV),
        ("middle", "pressed", HOME),
        ("right", "released", None),
        ("right", "held", None),
        ("sideways", "pressed", None),
    ],
)
def test_joystick_presses_map_to_events(direction, action, event):
    assert joystick_event(direction, action) == event


def test_keys_and_arrows_map_to_events_and_a_split_arrow_waits_for_its_tail():
    assert key_events(b"np h\x1b[C\x1b[D\x1b[A\x1b[Bx") == ([NEXT, PREV, NEXT, HOME, NEXT, PREV, PREV, NEXT], b"")
    events, rest = key_events(b"n\x1b[")
    assert (events, rest) == ([NEXT], b"\x1b[")
    assert key_events(rest + b"C") == ([NEXT], b"")
    assert key_events(b"\x1bn") == ([NEXT], b"")  # a lone Esc is dropped, the key after it kept


class FakeStick:
    """sense_hat's stick as far as JoystickInput uses it: direction_any takes a one-argument callback."""

    def __init__(self):
        self.direction_any = None

    def move(self, direction: str, action: str) -> None:
        self.direction_any(SimpleNamespace(timestamp=0.0, direction=direction, action=action))


def test_joystick_cycles_the_screens_shown_through_the_recording_display():
    stick, selector, display = FakeStick(), ScreenSelector(), RecordingDisplay()
    joystick = JoystickInput(SimpleNamespace(stick=stick), selector.on_event)
    market = Market(bought_wh=10_000, green_wh=10_000, balance=100_000)
    for direction, action in [("right", "pressed"), ("right", "released"), ("right", "pressed"), ("down", "pressed")]:
        stick.move(direction, action)
        display.show(render_screen(selector.screen, market, ONLINE, 0), False)
    assert selector.screen == GREEN_SHARE
    assert [f[:8] for f, _ in display.shown] == [(BLUE,) * 8, (BLUE,) * 8, (WHITE,) * 8, (GREEN,) * 8]
    joystick.close()
    assert stick.direction_any is None


def test_terminal_keys_read_from_a_pipe_move_the_selector():
    read_fd, write_fd = os.pipe()
    watched = WatchedSelector()
    keys = TerminalKeys(read_fd, watched.on_event)
    try:
        os.write(write_fd, b"n\x1b[")
        os.write(write_fd, b"Cp")  # the arrow split across two reads
        assert watched.wait_count(3, WAIT_S) == [NEXT, NEXT, PREV]
        assert watched.selector.screen == TODAY
    finally:
        keys.close()
        os.close(write_fd)
        os.close(read_fd)
