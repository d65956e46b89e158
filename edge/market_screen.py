"""What the Sense HAT's market screens show, from what the meter stored: pure, so every rule
below is checked with plain rows (tests/edge/test_market_screen.py).

`market_record` turns the meter's orders (edge.store.OrderRow) and the held trades naming its
account (SaleRow: fills of its bids, sales from its asks) into the edge.display_screens.Market
the screens draw; `scales` chooses what a full bar means. The meter calls both on its
housekeeping (about once a second, and only when its rows or the interval changed), never on
the 10 Hz frame path.

The rules, with k the current interval (now // interval):
- The open order: ours, for k or a later interval, still sent, sealed or open (the clearing
  has not answered it); of several, the soonest interval's, and of those the newest placed.
- The fresh fill: an order of ours for k or k - 1 (the interval just ended) that the
  clearing filled, fully or partly, with its filled Wh; of several, the latest interval's,
  then the latest status. Its price is the order's own: no status carries a trade's amount
  (wire.messages.Status), so the clearing price is not known to the meter; for a bid that is
  the upper bound of what it paid, for an ask the lower bound of what it got. Green: a bought
  fill from a green bid (the ledger fills those from renewable asks only), a sold fill if
  this meter's registered source is renewable; a bid that did not ask for green energy counts
  as not green even if a renewable ask filled it (the meter does not learn the seller's source).
- Today (the UTC day the current interval begins in, edge.agent.day_of, the daily budget's
  day): bought_wh and sold_wh are the filled Wh of our bids and asks for intervals of today,
  whatever the delivery later made of them (a refund is shown on the NOW screen by the
  trade's own outcome); green_wh the filled Wh of our green bids of today.
- open: an open order (above) or a trade naming us still held (a fill to confirm, a sale to
  deliver). A direct CTP of the household (`spb-meter ctp`) is not the market's: it has its own
  progress and outcome frames on the NOW screen, which stay as they were.
- balance: the account's, or None while the meter does not know it; the BALANCE screen then
  shows a '?' rather than an empty bar that would read as 0.
"""

from __future__ import annotations

from collections.abc import Iterable

from edge.agent import DAY_MS, day_of
from edge.display_screens import ASK, BID, BOUGHT, SOLD, Market, Scales
from edge.policy import Policy
from edge.store import SENT, OrderRow, SaleRow
from wire.messages import RENEWABLE, CtpState, OrderState

OPEN_STATES = (SENT, OrderState.SEALED, OrderState.OPEN)  # not yet answered by a clearing
FILLED_STATES = (OrderState.FILLED, OrderState.PARTIAL)
DEFAULT_FULL_PRICE = Scales().full_price  # units per Wh for a full price row when no policy limit is set
SECONDS_PER_HOUR = 3600


def first_interval(now_ms: int, interval_ms: int) -> int:
    """The first interval whose orders the record needs: today's first, or k - 1 if that is
    earlier (just after midnight the interval just ended, with its fresh fill, is yesterday's)."""
    k = now_ms // interval_ms
    first_of_day = -(-day_of(k, interval_ms) * DAY_MS // interval_ms)
    return min(first_of_day, k - 1)


def market_record(
    orders: Iterable[OrderRow],
    sales: Iterable[SaleRow],
    now_ms: int,
    interval_ms: int,
    balance: int | None,
    source: str = "",
) -> Market:
    """The Market the screens show at now_ms (see the module for each rule). `orders`: ours from
    first_interval() on (older ones are ignored); `sales`: the trades naming us, of which only
    the held ones count; `source`: this meter's registered source."""
    k = now_ms // interval_ms
    today = day_of(k, interval_ms)
    rows = list(orders)
    waiting = [r for r in rows if r.k >= k and r.state in OPEN_STATES]
    order = min(waiting, key=lambda r: (r.k, -r.created), default=None)
    filled = [r for r in rows if r.k in (k - 1, k) and r.state in FILLED_STATES and r.filled > 0]
    fill = max(filled, key=lambda r: (r.k, r.status_t, r.changed), default=None)
    todays = [r for r in rows if day_of(r.k, interval_ms) == today and r.state in FILLED_STATES]
    held = any(s.state == CtpState.HELD for s in sales)
    return Market(
        order_side="" if order is None else str(order.side),
        order_price=0 if order is None else order.price,
        fill_side="" if fill is None else (BOUGHT if fill.side == BID else SOLD),
        fill_wh=0 if fill is None else fill.filled,
        fill_price=0 if fill is None else fill.price,
        fill_green=fill is not None and (bool(fill.green) if fill.side == BID else source in RENEWABLE),
        bought_wh=sum(r.filled for r in todays if r.side == BID),
        sold_wh=sum(r.filled for r in todays if r.side == ASK),
        green_wh=sum(r.filled for r in todays if r.side == BID and r.green),
        balance=balance,
        open=order is not None or held,
    )


def scales(import_full_w: int, interval_s: int, policy: Policy) -> Scales:
    """What a full bar means for this meter:

    - full_w: the import channel's full scale (config import_full_w), as the idle bar had it.
    - full_fill_wh: what that full scale imports over one interval, rounded up (at least 1):
      a fill the house could take at full power fills the bar.
    - full_price: a buyer's limit (policy buy_max_price) is a full row, since every price it
      pays is at or below it; a seller only (sell_min_price, no buy limit) has its floor at half
      the row, so a better price shows as more; without either, DEFAULT_FULL_PRICE.
    - today's and the balance's full scales keep display_screens' defaults.
    """
    if policy.buy_max_price > 0:
        full_price = policy.buy_max_price
    elif policy.sell_min_price > 0:
        full_price = 2 * policy.sell_min_price
    else:
        full_price = DEFAULT_FULL_PRICE
    full_fill_wh = max(1, -(-import_full_w * interval_s // SECONDS_PER_HOUR))
    return Scales(full_price=full_price, full_fill_wh=full_fill_wh, full_w=import_full_w)
