"""Signing the household's market orders into the meter's store and outbox (docs/PROTOCOL.md §9.2).

Shared by the `spb-meter ask|bid|cancel-order` commands, which write while the meter runs,
and the running meter, which reveals sealed bids by itself: like edge.tx, every message is
recorded and queued in one transaction, and the meter sends what was queued.
"""

from __future__ import annotations

import hashlib
import os

from nacl.signing import SigningKey

from edge import keyring, market
from edge.store import SENT, MeterStore, OrderRow
from edge.tx import TradeError
from wire import topics
from wire.messages import Ask, Bid, OrderState, Reveal, Seal, Side, Withdraw


def order_id(raw: bytes) -> bytes:
    """An order's id: the first 16 bytes of its message hash (§9.2)."""
    return hashlib.sha256(raw).digest()[:16]


def new_ask(
    store: MeterStore, account: SigningKey, meter: str, source: str, wh: int, price: int, k: int, now: int
) -> OrderRow:
    """Offer `wh` of this meter's export in interval k for at least `price` per Wh."""
    if not source:
        raise TradeError("this meter has no registered source (meter.toml [market] source): it cannot sell")
    raw = Ask(seller=bytes(account.verify_key), meter=meter, wh=wh, price=price, k=k, src=source, t=now).sign(account)
    row = _row(raw, Side.ASK, k, wh, price, False, now)
    return store.add_order(row, topics.TX_ASK)


def new_bid(
    store: MeterStore,
    account: SigningKey,
    wh: int,
    price: int,
    k: int,
    green: bool,
    sealed: bool,
    exp: int,
    now: int,
) -> OrderRow:
    """Bid for `wh` in interval k at most `price` per Wh, to be confirmed by a key of a batch
    whose CoE lasts until the fills' expiry `exp`. Sealed: only the commitment and a deposit
    of wh·price go out now; the meter reveals the bid after the gate."""
    try:
        batch = keyring.choose(store.batches(), now, exp)
    except keyring.NoKey as exc:
        raise TradeError(str(exc)) from None
    buyer = bytes(account.verify_key)
    bid = Bid(buyer=buyer, wh=wh, price=price, k=k, green=green, meter=batch.root, t=now).sign(account)
    if not sealed:
        return store.add_order(_row(bid, Side.BID, k, wh, price, green, now, root=batch.root), topics.TX_BID)
    if wh * price <= 0:
        raise TradeError("a sealed bid needs a price above 0: its deposit (wh × price) must be positive")
    nonce = os.urandom(32)
    seal = Seal(buyer=buyer, k=k, c=market.commitment(bid, nonce), deposit=wh * price, t=now).sign(account)
    row = _row(seal, Side.BID, k, wh, price, green, now, root=batch.root)._replace(bid=bid, nonce=nonce)
    return store.add_order(row, topics.TX_SEAL)


def reveal(store: MeterStore, account: SigningKey, row_id: bytes, now: int) -> OrderRow | None:
    """Open a sealed bid: the bid and nonce committed to, signed into a `reveal` and queued."""

    def make(row: OrderRow) -> OrderRow | None:
        if row.bid is None or row.nonce is None or row.reveal is not None:
            return None
        raw = Reveal(buyer=bytes(account.verify_key), seal=row.id, bid=row.bid, nonce=row.nonce, t=now).sign(account)
        return row._replace(reveal=raw, sent=now)

    return store.update_order(row_id, make, lambda row: (topics.TX_REVEAL, row.reveal))


def withdraw(store: MeterStore, account: SigningKey, row_id: bytes, interval_ms: int, now: int) -> OrderRow:
    """Withdraw our order before its gate; its escrow comes back (§9.2)."""

    def make(row: OrderRow) -> OrderRow:
        if now >= market.gate(row, interval_ms):
            raise TradeError(f"interval {row.k} has begun: its orders can no longer be withdrawn")
        if row.state not in (SENT, OrderState.SEALED, OrderState.OPEN):
            raise TradeError(f"the order is {row.state}")
        raw = Withdraw(by=bytes(account.verify_key), order=row.id, t=now).sign(account)
        return row._replace(withdraw=raw, sent=now)

    row = store.update_order(row_id, make, lambda row: (topics.TX_WITHDRAW, row.withdraw))
    if row is None:
        raise TradeError(f"no order {row_id.hex()} on this meter")
    return row


def resend(store: MeterStore, row_id: bytes, topic: str, now: int) -> OrderRow | None:
    """Queue the order's message for `topic` again (the broker may have lost it)."""
    return store.update_order(
        row_id, lambda row: row._replace(sent=now), lambda row: (topic, market.message(row, topic))
    )


def _row(
    raw: bytes, side: Side, k: int, wh: int, price: int, green: bool, now: int, root: bytes | None = None
) -> OrderRow:
    return OrderRow(
        id=order_id(raw),
        side=side,
        k=k,
        wh=wh,
        price=price,
        green=int(green),
        msg=raw,
        bid=None,
        nonce=None,
        reveal=None,
        withdraw=None,
        root=root,
        state=SENT,
        reason="",
        filled=0,
        status_t=0,
        sent=now,
        created=now,
        changed=now,
    )


def interval_arg(text: str | None, now: int, interval_ms: int) -> int:
    """An order's interval from `--interval K|next`: the next one (whose gate is still ahead) by default."""
    if text in (None, "next"):
        return now // interval_ms + 1
    assert text is not None
    if not text.isdecimal():
        raise TradeError(f"--interval {text!r} is neither a whole number nor `next`")
    return int(text)
