"""What the street's day did, read from a validator's state after the run: the rows of the
report (deploy.day_report) and the checks of the verdict.

Pure over (LedgerState, who is who, what the meters measured): the demo calls it on
validator 0's store once every process has stopped, and tests call it on states they built.
Only fills of the day's intervals count; a fill's side is told by its document (payer the
buyer, payee the seller), its source by its ask in the book.
"""

from __future__ import annotations

from collections.abc import Sequence, Set
from dataclasses import dataclass

from deploy.day_report import HouseholdRow, IntervalRow
from ledger.market import MarketState
from ledger.state import CtpRecord, LedgerState
from wire.messages import RENEWABLE, Ask, CtpState


@dataclass(frozen=True)
class Home:
    """A household as the report names it, and the Wh its meter measured over the day
    (import from its readings, export from its export records)."""

    meter: str
    kind: str
    account: bytes
    imported_wh: int
    exported_wh: int


@dataclass(frozen=True)
class Refund:
    """A fill that ended refunded, and why the energy did not allow it (or "" if it did)."""

    fill: CtpRecord
    why: str


def day_fills(state: LedgerState, ks: range) -> list[CtpRecord]:
    """The trades of the market's fills for intervals in `ks`, in the order they were held."""
    fills = [r for r in state.ctps.values() if r.fill is not None and r.fill.k in ks]
    return sorted(fills, key=lambda r: r.index)


def _ask(market: MarketState, fill: CtpRecord) -> Ask:
    assert fill.fill is not None
    ask = market.orders[fill.fill.ask[:16]].body
    assert isinstance(ask, Ask), "a fill's ask hash names an ask of the book"
    return ask


def interval_rows(state: LedgerState, ks: range, labels: Sequence[str]) -> list[IntervalRow]:
    """Per interval: the Wh asked and bid (revealed sealed bids included), filled, and the prices."""
    market = state.market
    assert market is not None, "the street's genesis has a market"
    rows = []
    for k, label in zip(ks, labels, strict=True):
        supply = demand = 0
        for order_id in market.by_k.get(k, []):
            order = market.orders[order_id]
            if isinstance(order.body, Ask):
                supply += order.body.wh
            elif order.bid is not None:  # an open bid, or a seal once revealed
                demand += order.bid.wh
        result = market.results.get(k)
        green, other = (result.green, result.open) if result else ((None, 0), (None, 0))
        rows.append(IntervalRow(k, label, supply, demand, green[1] + other[1], other[0], green[0]))
    return rows


def household_rows(state: LedgerState, ks: range, homes: Sequence[Home]) -> list[HouseholdRow]:
    """Per household: what its settled fills bought and sold, paid and received, and how
    much of what it bought was renewable."""
    market = state.market
    assert market is not None, "the street's genesis has a market"
    fills = day_fills(state, ks)
    rows = []
    for home in homes:
        bought = sold = paid = received = green = refunded = settled = 0
        for r in fills:
            doc = r.fill
            assert doc is not None
            buyer, seller = doc.payer == home.account, doc.payee == home.account
            if r.state == CtpState.SETTLED and (buyer or seller):
                settled += 1
                if buyer:
                    bought, paid = bought + doc.wh, paid + doc.amount
                    green += doc.wh if _ask(market, r).src in RENEWABLE else 0
                if seller:
                    sold, received = sold + doc.wh, received + doc.amount
            elif r.state == CtpState.REFUNDED and buyer:
                refunded += 1
        rows.append(
            HouseholdRow(
                home.meter, home.kind, home.imported_wh, home.exported_wh, bought, sold,
                paid, received, green, refunded, settled,
            )
        )  # fmt: skip
    return rows


def unfinished(state: LedgerState, ks: range) -> list[CtpRecord]:
    """Fills of the day neither settled nor refunded: the verdict wants none."""
    return [r for r in day_fills(state, ks) if r.state not in (CtpState.SETTLED, CtpState.REFUNDED)]


def refunds(state: LedgerState, ks: range, confirmed: Set[bytes]) -> list[Refund]:
    """Every refunded fill of the day with why the energy did not allow it: the seller's meter
    proved less export in k than its asks' fills took, or the buyer's meter never confirmed
    it (`confirmed`: the trade ids ERCs were sent for), having counted less import for it
    before expiry (its imports go to its trades oldest first). "" when neither: its ERC came
    too late, which the verdict counts as a failure."""
    market = state.market
    assert market is not None
    fills = day_fills(state, ks)
    out = []
    for r in fills:
        doc = r.fill
        if r.state != CtpState.REFUNDED or doc is None:
            continue
        seller = _ask(market, r).meter
        record = market.exports.get((seller, doc.k))
        asked = sum(f.fill.wh for f in fills if f.fill and f.fill.k == doc.k and _ask(market, f).meter == seller)
        if record is None:
            why = f"{seller} proved no export for #{doc.k}"
        elif record.wh < asked:
            why = f"{seller} exported {record.wh} Wh in #{doc.k}, its asks' fills took {asked}"
        elif doc.id not in confirmed:
            why = "the buyer's meter counted less import for it before expiry"
        else:
            why = ""
        out.append(Refund(r, why))
    return out


def exported_in(market: MarketState, meter: str, ks: range) -> int:
    """The Wh the meter proved exported in the intervals `ks`: its signed export records."""
    return sum(record.wh for (m, k), record in market.exports.items() if m == meter and k in ks)


def imported_between(readings: Sequence[tuple[int, int]], start: int, end: int) -> int | None:
    """Wh imported between two times, from (t, cumulative Wh) readings: the last reading at or
    before each end; None without readings around both."""
    before = [wh for t, wh in readings if t <= start]
    upto = [wh for t, wh in readings if t <= end]
    if not before or not upto:
        return None
    return upto[-1] - before[-1]
