"""The household's trading agent: from a policy, a forecast and the money at hand, the orders
to place for one interval. Pure and deterministic: no clock, no store, no randomness; the
running meter (or a test) gives it everything and writes what it returns like `spb-meter
ask|bid` would.

Rules (each one tested against generated inputs in tests/edge/test_agent.py):
- manual mode places nothing: the household trades by hand, as before the agent.
- at most one order per interval, and none for an interval that already has one of ours
  (the household's own, or the agent's from before a restart: placing is idempotent).
- no order is over the wire's 2^32 - 1 Wh.
- a surplus (forecast net Wh < 0) is asked at `sell_min_price`, for the surplus minus the
  reserve (`reserve_w` over the interval, rounded up to whole Wh), and only by a meter with
  a registered source.
- a shortfall (forecast net Wh > 0) is bid at `buy_max_price` (the clearing price is uniform,
  so bidding the limit pays no more than the market asks), for no more Wh than the budget
  left today and the free balance can escrow at that price; `buy_max_price` 0 never buys.
  `green_only` bids green, `sealed` bids sealed.
Prices are the policy's limits, so no order is ever outside them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from edge.policy import Policy
from edge.store import SENT, OrderRow
from wire.messages import OrderState, Side

DAY_MS = 86_400_000
MAX_ORDER_WH = (1 << 32) - 1  # an order's wh is below 2^32 (docs/PROTOCOL.md §9.2, `schema`)
# Our bids whose escrow is still held or was paid: rejected, withdrawn, void or unfilled ones
# got theirs back. A filled or partial bid counts its filled Wh at its own limit (an upper
# bound of what the clearing price took), an open one all it escrowed.
_ESCROWED = {SENT, OrderState.SEALED, OrderState.OPEN}
_FILLED = {OrderState.FILLED, OrderState.PARTIAL}


class OrderIntent(NamedTuple):
    """One order the agent wants placed: what `spb-meter ask|bid` take."""

    side: Side
    k: int
    wh: int
    price: int
    green: bool = False
    sealed: bool = False


def reserve_wh(reserve_w: int, interval_s: int) -> int:
    """W kept over one interval, in whole Wh rounded up: the reserve never shrinks by rounding."""
    return -(-reserve_w * interval_s // 3600)


def day_of(k: int, interval_ms: int) -> int:
    """The UTC day an interval begins in: the daily budget's day."""
    return k * interval_ms // DAY_MS


def spent_on_day(orders: Iterable[OrderRow], day: int, interval_ms: int) -> int:
    """Units our bids for intervals of `day` escrowed or spent (see _ESCROWED)."""
    spent = 0
    for row in orders:
        if row.side != Side.BID or day_of(row.k, interval_ms) != day:
            continue
        if row.state in _ESCROWED:
            spent += row.wh * row.price
        elif row.state in _FILLED:
            spent += row.filled * row.price
    return spent


def plan(
    policy: Policy,
    forecast_wh: int,
    balance: int,
    orders: Iterable[OrderRow],
    spent_today: int,
    k: int,
    interval_s: int,
    can_sell: bool,
) -> list[OrderIntent]:
    """The orders for interval k (none or one).

    `forecast_wh` is the forecast net Wh of k (import - export, edge.forecast); `balance`
    the account's free units; `orders` ours, any interval; `spent_today` what today's bids
    already escrowed or spent (`spent_on_day`); `can_sell`: the meter has a source."""
    if policy.mode != "auto" or any(row.k == k for row in orders):
        return []
    if forecast_wh < 0:
        wh = min(-forecast_wh - reserve_wh(policy.reserve_w, interval_s), MAX_ORDER_WH)
        if not can_sell or wh <= 0:
            return []
        return [OrderIntent(Side.ASK, k, wh, policy.sell_min_price)]
    price = policy.buy_max_price
    if forecast_wh == 0 or price == 0:
        return []
    money = min(policy.max_spend_per_day - spent_today, balance)
    wh = min(forecast_wh, max(0, money) // price, MAX_ORDER_WH)
    if wh <= 0:
        return []
    return [OrderIntent(Side.BID, k, wh, price, policy.green_only, policy.sealed)]
