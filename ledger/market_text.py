"""What `spb-ledger market` and `spb-ledger tokens` print, from a validator's state: one fact
per line, so that it diffs and greps (as `spb-ledger clear` prints a clearing)."""

from __future__ import annotations

from ledger.market import MarketState, OrderRecord
from ledger.state import LedgerState
from wire.messages import SELL_SOURCES, Ask


def _price(p: int | None) -> str:
    return "-" if p is None else str(p)


def interval_lines(market: MarketState) -> list[str]:
    """One line per interval that had orders: its state, order count and, once cleared, prices."""
    lines = []
    for k in sorted(market.by_k):
        count = len(market.by_k[k])
        result = market.results.get(k)
        if result is None:
            lines.append(f"interval {k} open orders {count} clears {market.pending.get(k, '-')}")
        else:
            (gp, gw), (op, ow) = result.green, result.open
            lines.append(
                f"interval {k} cleared orders {count} green {_price(gp)} {gw} open {_price(op)} {ow} "
                f"fills {result.fills} height {result.height}"
            )
    return lines


def book_lines(state: LedgerState, k: int) -> list[str]:
    """Interval k's orders in the order accepted (a sealed bid shows only its deposit), its
    result, and its fills as trades with their state."""
    market = state.market
    assert market is not None
    lines = [_order_line(market.orders[i]) for i in market.by_k.get(k, ())]
    result = market.results.get(k)
    if result is not None:
        for name, (price, wh) in (("green", result.green), ("open", result.open)):
            lines.append(f"product {name} price {_price(price)} wh {wh}")
        fills = [r for r in state.ctps.values() if r.fill is not None and r.fill.k == k]
        for r in sorted(fills, key=lambda r: r.index):
            assert r.fill is not None
            lines.append(
                f"fill {r.ctp.id.hex()} {r.fill.bid[:16].hex()} {r.fill.ask[:16].hex()} {r.ctp.wh} {r.ctp.amount} "
                f"{r.state}"
            )
    return lines


def _order_line(o: OrderRecord) -> str:
    body, bid = o.body, o.bid
    words = [f"order {o.id.hex()} {o.side} {o.state} filled {o.filled}"]
    if isinstance(body, Ask):
        words.append(f"wh {body.wh} price {body.price} src {body.src}")
    elif bid is not None:
        words.append(f"wh {bid.wh} price {bid.price}" + (" green" if bid.green else ""))
    if o.bid_raw or (o.side == "bid" and not isinstance(body, type(bid))):
        words.append(f"deposit {o.escrow}")
    return " ".join(words)


def token_lines(market: MarketState, k: int) -> list[str]:
    """`<source> minted <wh> sold <wh>` for each source a genesis meter has, in a fixed order."""
    registered = {m.source for m in market.terms.meters if m.source}
    lines = []
    for source in (s for s in SELL_SOURCES if s in registered):
        minted, sold = market.tokens.get((k, source), (0, 0))
        lines.append(f"{source} minted {minted} sold {sold}")
    return lines
