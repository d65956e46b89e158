"""edge.market_screen's record from plain rows (the open order, the fresh fill, today's totals, the
day boundary, an unknown balance), its scales, and a MeterNode drawing the market screens through
a painter on the recording display, moved by keys from a pipe."""

from __future__ import annotations

import io
import os
from types import SimpleNamespace

import pytest

from broker.clock import wall_ms
from broker.keys import load_key
from deploy.provision import provision
from edge import orders
from edge.agent import DAY_MS
from edge.cli import keys_fd
from edge.config import MeterConfig
from edge.display import WHITE, YELLOW, View, render
from edge.display_drivers import NoDisplay, Painter, RecordingDisplay, SenseHatDisplay, TerminalDisplay, open_input
from edge.display_input import JoystickInput, TerminalKeys
from edge.display_screens import ASK, BALANCE, BID, BOUGHT, NOW, SOLD, TODAY, Market, Scales, render_screen
from edge.market_screen import DEFAULT_FULL_PRICE, first_interval, market_record, scales
from edge.meter import MeterNode
from edge.policy import Policy
from edge.state_dir import MeterIdentity
from edge.store import SENT, OrderRow, SaleRow
from tests.support.screens import frame_of
from wire import topics
from wire.messages import CtpState, Order, OrderState, Side

IMS = 300_000  # 288 intervals a day
DAY = 20_000  # a UTC day number
K = DAY * DAY_MS // IMS + 100  # an interval in the middle of DAY
AT = K * IMS + 1_000  # the time of most records
WAIT_S = 5.0  # generous: only a broken painter ever waits this long


def order(side: str, k: int, state: str, filled: int = 0, price: int = 7, green: bool = False, **kw) -> OrderRow:
    """An order row of ours as the store keeps it; only what the record reads varies."""
    id_ = bytes([k % 256, len(side), filled % 256]) * 5 + b"o"
    row = OrderRow(id_, side, k, max(filled, 5), price, int(green), b"m", *[None] * 5, state, "", filled, 0, 0, 0, 0)
    return row._replace(**kw)


def sale(state: str, role: str = SOLD) -> SaleRow:
    return SaleRow(b"s" * 16, role, b"p" * 32, b"q" * 32, 3, 0, state, None, 0, 0)


def test_no_market_activity_is_an_empty_record_and_the_now_screen_is_the_meters_own_view():
    market = market_record([], [], AT, IMS, balance=None)
    assert market == Market(balance=None)
    view = View(online=True, phase="idle", power_w=800)
    assert render_screen(NOW, market, view, AT) == render(view, AT)


def test_the_open_order_is_the_soonest_unanswered_one_for_now_or_later():
    rows = [
        order(BID, K - 1, OrderState.OPEN, price=1),  # an interval gone: not open any more for the screen
        order(ASK, K + 1, OrderState.FILLED, filled=5, price=2),  # answered by its clearing
        order(BID, K + 2, SENT, price=3),
        order(ASK, K + 1, OrderState.OPEN, price=4, created=1),
        order(BID, K + 1, OrderState.SEALED, price=5, created=2),  # the same interval, placed later: shown
    ]
    market = market_record(rows, [], AT, IMS, balance=10)
    assert (market.order_side, market.order_price, market.open) == (BID, 5, True)
    assert market_record(rows[:2], [], AT, IMS, balance=10).open is False


def test_a_held_trade_naming_us_keeps_the_record_open_until_it_ends():
    assert market_record([], [sale(CtpState.HELD)], AT, IMS, balance=None).open is True
    assert market_record([], [sale(CtpState.HELD, BOUGHT)], AT, IMS, balance=None).open is True
    assert market_record([], [sale(CtpState.SETTLED)], AT, IMS, balance=None).open is False


def test_the_fresh_fill_is_of_this_interval_or_the_one_just_ended_at_the_orders_price():
    bought = order(BID, K - 1, OrderState.PARTIAL, filled=4, price=9, green=True)
    market = market_record([bought], [], AT, IMS, balance=None)
    assert (market.fill_side, market.fill_wh, market.fill_price, market.fill_green) == (BOUGHT, 4, 9, True)
    assert market_record([bought], [], AT + IMS, IMS, balance=None).fill_side == ""  # two intervals on: old news

    sold = order(ASK, K, OrderState.FILLED, filled=6, price=3, status_t=5)
    market = market_record([bought, sold], [], AT, IMS, balance=None, source="solar")
    assert (market.fill_side, market.fill_wh, market.fill_price, market.fill_green) == (SOLD, 6, 3, True)
    assert market_record([sold], [], AT, IMS, balance=None, source="grid").fill_green is False
    unfilled = order(BID, K, OrderState.UNFILLED)
    assert market_record([unfilled], [], AT, IMS, balance=None).fill_side == ""


def test_todays_totals_are_the_filled_wh_of_todays_orders_and_green_those_of_green_bids():
    first_today = -(-DAY * DAY_MS // IMS)
    rows = [
        order(BID, first_today - 1, OrderState.FILLED, filled=1000),  # yesterday's last interval
        order(BID, first_today, OrderState.FILLED, filled=10, green=True),
        order(BID, K - 50, OrderState.PARTIAL, filled=20),
        order(BID, K - 40, OrderState.UNFILLED),
        order(BID, K + 1, OrderState.OPEN),
        order(ASK, K - 30, OrderState.FILLED, filled=30),
        order(ASK, K - 20, OrderState.PARTIAL, filled=40),
        order(ASK, K - 10, OrderState.WITHDRAWN),
    ]
    market = market_record(rows, [], AT, IMS, balance=None)
    assert (market.bought_wh, market.sold_wh, market.green_wh) == (30, 70, 10)


def test_at_midnight_the_interval_just_ended_is_yesterdays_fresh_fill_but_not_todays_total():
    first_today = -(-DAY * DAY_MS // IMS)
    midnight = first_today * IMS
    yesterday = order(BID, first_today - 1, OrderState.FILLED, filled=8)
    assert first_interval(midnight, IMS) == first_today - 1  # the store query reaches back to it
    assert first_interval(AT, IMS) == first_today
    market = market_record([yesterday], [], midnight, IMS, balance=None)
    assert (market.fill_side, market.fill_wh, market.bought_wh) == (BOUGHT, 8, 0)
    assert market_record([yesterday], [], midnight - 1, IMS, balance=None).bought_wh == 8  # still its day


def test_an_unknown_balance_shows_a_question_mark_not_an_empty_bar():
    online = View(online=True, phase="idle")
    unknown = render_screen(BALANCE, market_record([], [], AT, IMS, balance=None), online, AT)
    assert unknown == frame_of(
        "--------",
        "--???---",
        "-?---?--",
        "-----?--",
        "----?---",
        "---?----",
        "--------",
        "---?----",
    )
    zero = render_screen(BALANCE, market_record([], [], AT, IMS, balance=0), online, AT)
    assert zero == frame_of(*["--------"] * 8)
    half = render_screen(BALANCE, market_record([], [], AT, IMS, balance=50_000), online, AT)
    assert half == frame_of(*["WWWWWWWW"] * 4, *["--------"] * 4)


@pytest.mark.parametrize(
    "policy, full_price",
    [
        (Policy(buy_max_price=12, sell_min_price=5), 12),  # a buyer's limit is the full row
        (Policy(sell_min_price=5), 10),  # a seller's floor is half the row
        (Policy(), DEFAULT_FULL_PRICE),
    ],
)
def test_scales_follow_the_import_full_scale_the_interval_and_the_policy(policy, full_price):
    got = scales(import_full_w=5000, interval_s=300, policy=policy)
    assert got == Scales(full_price=full_price, full_fill_wh=417, full_w=5000)  # 5000 W x 300 s = 416.7 Wh, up
    assert scales(import_full_w=1, interval_s=1, policy=policy).full_fill_wh == 1


def test_open_input_gives_a_joystick_to_a_sense_hat_and_keys_only_to_a_terminal_given_its_fd():
    hat = SimpleNamespace(stick=SimpleNamespace(direction_any=None))
    joystick = open_input(SenseHatDisplay(hat), print, None)
    assert isinstance(joystick, JoystickInput) and hat.stick.direction_any is not None
    joystick.close()
    read_fd, write_fd = os.pipe()
    try:
        keys = open_input(TerminalDisplay(io.StringIO()), print, read_fd)
        assert isinstance(keys, TerminalKeys)
        keys.close()
        assert open_input(TerminalDisplay(io.StringIO()), print, None) is None  # frames to a file: no keys
        assert open_input(NoDisplay(), print, read_fd) is None
    finally:
        os.close(write_fd)
        os.close(read_fd)


def test_keys_are_read_only_from_a_terminal_the_frames_are_drawn_on(tmp_path):
    controller, terminal = os.openpty()
    read_fd, write_fd = os.pipe()
    try:
        with open(terminal, closefd=False) as tty, open(read_fd, closefd=False) as pipe:
            assert keys_fd(None, tty) == terminal
            assert keys_fd(tmp_path / "display.ans", tty) is None  # frames to a file: a background meter
            assert keys_fd(None, pipe) is None  # stdin not a terminal (a service, the demo's pipes)
            assert keys_fd(None, None) is None
    finally:
        for fd in (controller, terminal, read_fd, write_fd):
            os.close(fd)


class NoStick:
    @property
    def stick(self):
        raise OSError("no joystick device")


def test_a_joystick_that_cannot_open_costs_a_warning_not_the_meter(caplog):
    assert open_input(SenseHatDisplay(NoStick()), print, None) is None
    assert "joystick unavailable" in caplog.text


# -- the running meter: the painter draws the market screens ---------------------------------------


@pytest.fixture
def meter(tmp_path):
    """m0001 with an account and a solar source, never connected (port 9), drawing on a recording
    display; and the key of the genesis's only validator, which signs the clearing's statuses."""
    community = provision(tmp_path / "c", meters=1, accounts=None, validators=1, now_ms=wall_ms() - 60_000)
    me = MeterIdentity.load(community.root / "meters" / "m0001")
    display = RecordingDisplay()
    config = MeterConfig(interval_s=IMS // 1000, source="solar")
    node = MeterNode(me, config, "127.0.0.1", 9, sense=lambda _e: (0, 0), painter=Painter(display))
    yield node, display, load_key(community.root / "validators" / "v0" / "validator.key")
    node.painter.close()
    node.store.close()


def test_a_meter_shows_its_ask_and_the_days_summary_after_a_key(meter):
    node, display, validator = meter
    now = wall_ms() // IMS * IMS + 1000  # early in this interval: the steps below stay in it
    node.housekeeping(now)
    assert node.screen_market == Market(balance=None)
    ask = orders.new_ask(node.store, node.id.account_key(), node.id.meter, "solar", 3, 30, now // IMS + 1, now)
    node.housekeeping(now + 1)  # the same interval: made again because the market's rows changed
    node._show(now + 1)
    assert node.screen_market == Market(order_side=ASK, order_price=30, balance=None, open=True)
    arrow = render_screen(NOW, node.screen_market, View(online=False, phase="idle"), now)  # offline: port 9
    assert arrow[1 * 8 + 3] == YELLOW and arrow[7] == WHITE  # the ask's arrow (every pixel of it is
    # test_display_screens'), and the open pixel
    assert display.wait_for(lambda f: f == arrow, WAIT_S) == arrow, display.shown[-1:]

    read_fd, write_fd = os.pipe()
    keys = TerminalKeys(read_fd, node.painter.on_event)  # what open_input gives a terminal display
    try:
        os.write(write_fd, b"n")
        today = frame_of(  # nothing bought or sold yet: both halves at rest; offline marked, open lit
            "R------W",
            *["--------"] * 3,
            *["yyyyyyyy"] * 4,
        )
        assert display.wait_for(lambda f: f == today, WAIT_S) == today, display.shown[-1:]
        assert node.painter.selector.screen == TODAY

        k = ask.k  # its interval comes, the clearing sells all 3 Wh: the store changed, the record follows
        filled = Order(id=ask.id, k=k, side=Side.ASK, state=OrderState.FILLED, filled=3, t=now, h=5)
        node.market._on_order(topics.market_order(k, ask.id), filled.sign(validator), False)
        node.housekeeping(k * IMS)
        node._show(k * IMS)
        assert node.screen_market == Market(
            fill_side=SOLD, fill_wh=3, fill_price=30, fill_green=True, sold_wh=3, balance=None
        )
        sold = frame_of("R-------", *["--------"] * 3, "Yyyyyyyy", *["yyyyyyyy"] * 3)  # 3 of 10 kWh: 1 px
        assert display.wait_for(lambda f: f == sold, WAIT_S) == sold, display.shown[-1:]
    finally:
        keys.close()
        os.close(write_fd)
        os.close(read_fd)
