"""The meter's side of the market (docs/PROTOCOL.md §9): pure decisions on its orders, and on
the held trades that name its account (edge.store.OrderRow, SaleRow values).

An order is the household's ask, bid or sealed bid. Its states come from the validators'
`order` statuses and only move forward; a sealed bid is revealed by the meter itself after
the gate, within the reveal window. A held status naming our account as payer of a trade we
did not sign is a fill of one of our bids: the meter confirms it like its own CTP. Naming
us as payee, it is a sale: shown, and our export is counted against it, oldest first.

A held status names payer and payee but not (yet: see the report of issue 14) the trade's
Wh, nor which order it filled. Both follow from our own orders' statuses: the fills of one
clearing are held in the block that also moves our orders to `filled`/`partial`, so they
share its block time `t`; an order's Wh not yet given to a known fill is what a new fill of
it can be. That is exact when an order fills once (one ask against one bid), and an upper
bound otherwise, which keeps an ERC valid (`wh` >= the trade's) but may wait longer.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

from edge.display import SOLD as SALE_PHASE
from edge.display import View
from edge.energy import WMS_PER_WH, share_oldest_first
from edge.store import SENT, OrderRow, SaleRow
from wire import topics
from wire.messages import CtpState, Order, OrderState, Reveal, Side, Status, Withdraw, open_message
from wire.reasons import TRANSIENT

REJECTED = "rejected"
FINAL = (OrderState.WITHDRAWN, OrderState.FILLED, OrderState.PARTIAL, OrderState.UNFILLED, OrderState.VOID)
_RANK: dict[str, int] = {SENT: 0, REJECTED: 1, OrderState.SEALED: 2, OrderState.OPEN: 3, **dict.fromkeys(FINAL, 4)}
_WITHDRAWABLE = (OrderState.SEALED, OrderState.OPEN)  # what a withdraw sent may still end (§9.2)
REVEAL = "reveal"  # an order step that needs a new signature
WITHDRAW = "withdraw"  # ... and a withdraw a replaced key signed, signed again by the current key
ROTATED = "rotated"  # the ledger's reason for a message of a replaced key (§10.2)
SOLD, BOUGHT = "sold", "bought"  # a SaleRow's role: we are the payee, or the payer of a fill


class Fill(NamedTuple):
    """A fill of our bid, to confirm as our own trade: its Wh and expiry."""

    order: OrderRow
    wh: int
    exp: int


def order_topics(row: OrderRow) -> set[str]:
    """Where the validators publish the order's status: a sealed bid's under its seal's id,
    and after the reveal under its bid's (§9.2)."""
    return {topics.market_order(row.k, row.id), topics.market_order(row.k, row.bid_id)}


def gate(row: OrderRow, interval_ms: int) -> int:
    return row.k * interval_ms


def on_order(row: OrderRow, order: Order, now: int) -> OrderRow | None:
    """The order after a verified `order` status about it, or None if it changes nothing.

    The status's id is a prefix of our message's hash, so it is about our order; states only
    move forward, whatever order statuses arrive in."""
    if order.id not in (row.id, row.bid_id) or order.k != row.k or order.side != row.side:
        return None
    if _RANK[order.state] < _RANK[row.state] or (order.state == row.state and order.filled == row.filled):
        return None
    return row._replace(state=order.state, filled=order.filled, status_t=order.t, reason="", changed=now)


def on_reject(row: OrderRow, kind: str, reason: str, now: int, account: bytes = b"") -> OrderRow | None:
    """The order after the ledger rejected its `kind` message ("order", "reveal", "withdraw").

    `duplicate` was applied before (a status says how); a transient reason decided nothing
    (the message goes again, next_step). A rejected order is final; a rejected reveal or
    withdraw is shown, and a reveal refused `too-early` (our clock ahead of the block's)
    goes again within the window. A reveal or withdraw refused `rotated` that a key other
    than our current `account` signed (before a rotation, §10.3) is dropped: the current
    key, which took the order over, signs it again (REVEAL, WITHDRAW)."""
    if reason == "duplicate":
        return None
    if reason == ROTATED and kind in (REVEAL, WITHDRAW) and _signer(row, kind) not in (None, account):
        dropped = row._replace(reveal=None) if kind == REVEAL else row._replace(withdraw=None)
        return dropped._replace(reason=f"{kind} {reason}")
    if reason in TRANSIENT or (kind == REVEAL and reason == "too-early"):
        return row._replace(reason=f"{kind} {reason}")
    if kind == "order":
        return row._replace(state=REJECTED, reason=reason, changed=now) if row.state == SENT else None
    return row._replace(reason=f"{kind} {reason}", changed=now)


def _signer(row: OrderRow, kind: str) -> bytes | None:
    """Who signed the order's pending reveal or withdraw; None if it has none."""
    if kind == REVEAL and row.reveal is not None:
        return open_message(row.reveal, Reveal).body.buyer
    if kind == WITHDRAW and row.withdraw is not None:
        return open_message(row.withdraw, Withdraw).body.by
    return None


def next_step(row: OrderRow, now: int, resend_ms: int, interval_ms: int, reveal_ms: int) -> str | None:
    """What the order needs now: REVEAL or WITHDRAW (a new signature), a topic to send its
    last message on again, or None.

    A sealed bid is revealed once its gate has passed by a tenth of the reveal window (the
    ledger refuses a reveal before the gate by block time) and while the window is open. An
    unanswered order or withdraw goes again after resend_ms until the gate, a reveal until
    the window closes. A withdraw a replaced key signed (on_reject) is signed again at once,
    before the gate."""
    stale = now - row.sent >= resend_ms
    opens = gate(row, interval_ms)
    if row.bid is not None and row.state == OrderState.SEALED and opens + reveal_ms // 10 <= now < opens + reveal_ms:
        if row.reveal is None:
            return REVEAL
        return topics.TX_REVEAL if stale else None
    if now < opens and row.withdraw is None and row.reason == f"{WITHDRAW} {ROTATED}" and row.state in _WITHDRAWABLE:
        return WITHDRAW
    if not stale or now >= opens:
        return None
    if row.state == SENT:
        return {Side.ASK: topics.TX_ASK, Side.BID: topics.TX_SEAL if row.bid else topics.TX_BID}[Side(row.side)]
    if row.withdraw is not None and row.state in _WITHDRAWABLE:
        return topics.TX_WITHDRAW
    return None


def message(row: OrderRow, topic: str) -> bytes:
    """The order's message that goes on `topic`."""
    raw = {topics.TX_REVEAL: row.reveal, topics.TX_WITHDRAW: row.withdraw}.get(topic, row.msg)
    assert raw is not None, f"asked for the {topic} of an order that has none (next_step never does)"
    return raw


def watched(row: OrderRow, now: int, interval_ms: int, grace: int) -> bool:
    """Whether the order's status (or a reject of it) still matters: until its fills' trades
    expire, and however late until the ledger ended it. An answer can come after the expiry
    (a broker outage across the gate: the clearing, or the `gate-closed` reject of an order
    queued meanwhile, only comes once the bus is back); unwatched, the order would stay
    `sent` or `open` in the store for good."""
    if row.state in (SENT, OrderState.SEALED, OrderState.OPEN):
        return True
    return row.state not in (REJECTED, OrderState.WITHDRAWN, OrderState.VOID) and now <= fill_exp(
        row.k, interval_ms, grace
    )


def fill_exp(k: int, interval_ms: int, grace: int) -> int:
    """The expiry of a fill of interval k (§9.3): the end of k plus `grace` intervals."""
    return (k + 1 + grace) * interval_ms


def sale_of(status: Status, topic: str, accounts: tuple[bytes, ...], now: int) -> SaleRow | None:
    """A status naming one of our `accounts` as payer or payee, as a sale or fill; else None.
    Our accounts are the household's key and the keys it replaced: a trade made before a
    rotation names the old key, and the ledger pays it to or from the new one (§10.3). Held, or
    already settled or refunded: in a market chain every status of a trade names its parties
    (§9), and the final one may be the only one we see (a `held` status superseded before it
    was published never is, decision 0007), so a sale can be known first at its end.

    `wh` is read if the status carries it (a proposed optional key), else left to match."""
    if (
        status.state not in (CtpState.HELD, CtpState.SETTLED, CtpState.REFUNDED)
        or topic != topics.status(status.ctp)
        or not ({status.payer, status.payee} & set(accounts))
    ):
        return None
    assert status.payer is not None and status.payee is not None, "one of them is our account"
    role = SOLD if status.payee in accounts else BOUGHT
    wh = getattr(status, "wh", None)
    return SaleRow(status.ctp, role, status.payer, status.payee, wh, status.t, status.state, None, 0, now)


def on_sale_status(sale: SaleRow, status: Status, now: int) -> SaleRow | None:
    """A sale after a later status of its trade: settled or refunded ends it."""
    if status.state in (CtpState.SETTLED, CtpState.REFUNDED) and sale.state == CtpState.HELD:
        return sale._replace(state=status.state, changed=now)
    return None


def match(sale: SaleRow, orders: list[OrderRow], sales: list[SaleRow]) -> tuple[OrderRow, int] | None:
    """The order of ours a new sale or fill belongs to, and its Wh; None if none (yet).

    Our orders on its side (a fill of our bid, a sale from our ask) that were filled in the
    block that held it (same `t`) and have Wh not yet given to a known sale. A fill of a bid
    may also match a bid filled at another time (a fill always comes from a bid of ours);
    a sale without an ask of that block is a direct CTP."""
    side = Side.BID if sale.role == BOUGHT else Side.ASK
    given: dict[bytes, int] = {}
    for other in sales:
        if other.order_id is not None and other.id != sale.id:
            given[other.order_id] = given.get(other.order_id, 0) + (other.wh or 0)
    open_ = [o for o in orders if o.side == side and o.filled > given.get(o.id, 0)]
    same_block = [o for o in open_ if o.status_t == sale.t]
    pick = same_block or (open_ if side == Side.BID else [])
    if not pick:
        return None
    order = pick[0]
    return order, sale.wh if sale.wh is not None else order.filled - given.get(order.id, 0)


def allocate_export(sales: list[SaleRow], progress: dict[bytes, int], wms: int) -> None:
    """Give newly exported energy to held sales of known Wh, oldest first, so two sales never
    count the same Wh. Updates `progress` (trade id -> W·ms) in place."""
    share_oldest_first((s for s in sales if s.role == SOLD and s.state == CtpState.HELD), progress, wms)


def sale_view(sales: list[SaleRow], progress: dict[bytes, int], online: bool, power_w: int) -> View | None:
    """The oldest held sale, as "sold, deliver now" with its export so far; None if none."""
    held = [s for s in sales if s.role == SOLD and s.state == CtpState.HELD]
    if not held:
        return None
    s = held[0]
    delivered = progress.get(s.id, s.delivered_wms) // WMS_PER_WH
    return View(online=online, phase=SALE_PHASE, delivered_wh=delivered, promised_wh=s.wh or 0, power_w=power_w)


def commitment(bid: bytes, nonce: bytes) -> bytes:
    """A sealed bid's `c` (§9.2): SHA-256(bid message bytes || nonce)."""
    return hashlib.sha256(bid + nonce).digest()
