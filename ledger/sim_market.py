"""The market's part of the consensus simulation (ledger.sim --market): its signed traffic,
each message with the time a household or meter would send it, and the checks of the
market state the honest validators end with (docs/PROTOCOL.md §9).

The traffic is built once, like ledger.sim's workload: three intervals of asks and bids
from six households (two renewable sellers, one grid seller that proves less export than
it sells, two buyers), a sealed bid revealed after each gate and one revealed with the
wrong nonce, a withdrawal and a withdrawal by someone else, orders refused for a wrong
source, a closed gate or a lack of funds, every meter's export record after each interval
(and one too early), the ERCs of the fills the clearing rule predicts (some before the
seller's export: `oversold`, then the same bytes again after it, as a meter resends
them), and a direct CTP under proof of delivery. The fills are predicted with
ledger.clearing.clear on the book as sent; in a run where faults closed a gate first,
those ERCs are refused instead, as they would be.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from ledger.clearing import BookAsk, BookBid, clear
from ledger.draft import replay
from ledger.genesis import Genesis
from ledger.market import Escrowed
from ledger.state import LedgerState
from ledger.workload import SimCommunity, pk
from wire.cose import message_hash
from wire.market import fill_id, order_id_of
from wire.messages import Ask, Bid, CtpState, open_message

INTERVAL_S = 10
I = INTERVAL_S * 1000  # noqa: E741 - the protocol's name for it
REVEAL_S = 3
GRACE = 2  # a fill expires 2 intervals after its own ends: time for an ERC after the export
SOURCES = ("solar", "wind", "grid")  # households 0, 1, 2 sell; 3, 4 buy; 5 floods (ledger.sim)
BALANCE = 2_000
INTERVALS = 3  # traded: the three after the one holding the simulation's start


@dataclass(frozen=True)
class MarketTraffic:
    genesis: Genesis
    timed: tuple[tuple[int, str, bytes], ...]  # (ms after the start to send it, typ, raw)


def market_traffic(sim: SimCommunity, now: int, operator: bool = False) -> MarketTraffic:
    """The market messages of `sim` (six households with SOURCES), for intervals after `now`'s;
    with `operator`, on a chain whose genesis lists sim.operator (docs/PROTOCOL.md §10)."""
    terms = sim.market_terms(interval_s=INTERVAL_S, ahead=INTERVALS + 2, grace=GRACE, reveal_s=REVEAL_S)
    genesis = sim.genesis(BALANCE, validators=4, market=terms, operator=operator)
    timed: list[tuple[int, str, bytes]] = []
    totals = [0] * len(sim.households)  # each meter's cumulative export counter
    for i in range(INTERVALS):
        k = now // I + 1 + i
        gate = k * I - now  # in ms after the start
        timed += _interval(sim, k, gate, totals)
    ctp = sim.ctp(3, 0, amount=10, wh=10, exp=now + 60_000, t=now + 1_000)  # direct, under §9.4
    timed += [(1_000, "ctp", ctp), (2 * I + 2_500, "erc", sim.erc(ctp, t=now + 2 * I + 2_500))]
    return MarketTraffic(genesis, tuple(sorted(timed, key=lambda x: x[0])))


def _interval(sim: SimCommunity, k: int, gate: int, totals: list[int]) -> list[tuple[int, str, bytes]]:
    """One interval's traffic, sent at times relative to its gate (ms after the start)."""
    at = gate - 8_000
    t = sim.now + at
    asks = [sim.ask(0, 40, 3, k, t=t), sim.ask(1, 30, 4, k, t=t), sim.ask(2, 50, 2, k, t=t)]
    bids = [sim.bid(3, 30, 6, k, green=True, t=t), sim.bid(4, 40, 5, k, t=t), sim.bid(3, 20, 1, k, t=t)]
    sealed = sim.bid(4, 20, 7, k, t=t)
    seal, nonce = sim.seal(sealed, deposit=200, t=t)
    mismatched = sim.bid(3, 5, 5, k, t=t)
    bad_seal, _ = sim.seal(mismatched, deposit=50, t=t)
    withdrawn = sim.bid(3, 10, 9, k, t=t)
    out = [(at, "ask", a) for a in asks] + [(at + 200, "bid", b) for b in bids]
    out += [
        (at + 300, "seal", seal),
        (at + 300, "seal", bad_seal),
        (at + 400, "bid", withdrawn),
        (at + 1_900, "withdraw", sim.withdraw(withdrawn, t=t + 1_900)),
        (at + 1_900, "withdraw", sim.withdraw(asks[0], t=t + 1_900, by=4)),  # not-owner
        (at + 500, "bid", sim.bid(4, 1_000, 10, k, t=t)),  # insufficient-funds
        (at + 500, "ask", sim.ask(3, 10, 1, k, src="solar", t=t)),  # not-source: no source registered
        (gate + 1_000, "ask", sim.ask(1, 5, 1, k, t=t + 9_000)),  # gate-closed
        (gate + 1_500, "reveal", sim.reveal(seal, sealed, nonce, t=t + 9_500)),
        (gate + 1_600, "reveal", sim.reveal(bad_seal, mismatched, bytes(32), t=t + 9_600)),  # reveal-mismatch
    ]
    # The interval's end: its export records go after it, later than a skewed clock (ledger.sim:
    # up to 1 s) and a slow network may still put a block before it, as a meter's do.
    end = gate + I
    for meter, wh in ((0, 60), (1, 30), (2, 20), (3, 5)):  # meter 2 proves 20 Wh of the 50 it sells
        totals[meter] += wh
        out.append((end + 1_500, "export", sim.export(meter, k, wh, totals[meter], t=sim.now + end + 1_500)))
    out.append((gate + 1_000, "export", sim.export(3, k, 1, totals[3] + 1, t=sim.now + gate + 1_000)))  # too-early
    for bid, ask, wh in predicted_fills([*bids, sealed], asks):
        trade = fill_id(message_hash(bid), message_hash(ask))
        seller = open_message(ask, Ask).body.seller
        if seller == pk(sim.households[0].account):  # confirmed before the export: oversold, then the same again
            early = gate + REVEAL_S * 1000 + 1_500
            erc = sim.fill_erc(bid, trade, wh, t=sim.now + early)
            out += [(early, "erc", erc), (end + 2_500, "erc", erc)]
        else:
            out.append((end + 2_500, "erc", sim.fill_erc(bid, trade, wh, t=sim.now + end + 2_500)))
    return out


def predicted_fills(bids: list[bytes], asks: list[bytes]) -> list[tuple[bytes, bytes, int]]:
    """(bid, ask, Wh) of each fill the clearing rule makes of this book, if every order in it
    is accepted and the sealed bids revealed."""
    by_id = {order_id_of(raw): raw for raw in (*bids, *asks)}
    book_bids = []
    for raw in bids:
        bid = open_message(raw, Bid).body
        book_bids.append(BookBid(order_id_of(raw), bid.wh, bid.price, bid.green))
    book_asks = []
    for raw in asks:
        ask = open_message(raw, Ask).body
        book_asks.append(BookAsk(order_id_of(raw), ask.wh, ask.price, ask.src))
    return [(by_id[f.bid], by_id[f.ask], f.wh) for f in clear(book_bids, book_asks).fills]


# -- the checks --


def snapshot(state: LedgerState) -> dict:
    """What replicas that committed the same blocks must hold alike, market included."""
    market = state.market
    assert market is not None, "a market chain's state"
    return {
        "tip": (state.height, state.tip, state.t),
        "balances": dict(state.balances),
        "held": dict(state.held),
        "trades": {i: (r.state, r.hash, r.height, r.by, r.erc_pk) for i, r in state.ctps.items()},
        "refused": dict(state.refused),
        "orders": dict(market.orders),
        "pending": dict(market.pending),
        "results": dict(market.results),
        "exports": dict(market.exports),
        "tokens": {key: tuple(v) for key, v in market.tokens.items()},
    }


def market_problems(state: LedgerState) -> list[str]:
    """The market invariants of one committed state, each recomputed from the records rather
    than from the bookkeeping that keeps them: holds are exactly the open escrow and the held
    trades; per meter and interval used <= proved; per interval and source sold <= minted;
    the Wh of settled fills of a seller meter's asks in k <= its proved export in k. Holds are
    an account's under the key holding it now, and meters registered after the genesis
    mint tokens too (docs/PROTOCOL.md §10.3)."""
    market = state.market
    assert market is not None, "a market chain's state"
    problems = []
    held: Counter[bytes] = Counter()
    for order in market.orders.values():
        if order.state in Escrowed:
            held[state.current(order.owner)] += order.escrow
    for record in state.ctps.values():
        if record.state == CtpState.HELD:
            held[state.current(record.ctp.payer)] += record.ctp.amount
    for account, units in state.held.items():
        if units != held[account]:
            problems.append(f"{account.hex()[:8]} holds {units}, its escrow and held trades are {held[account]}")
    tokens: Counter[tuple[int, str, str]] = Counter()
    for (meter, k), export in market.exports.items():
        if not 0 <= export.used <= export.wh:
            problems.append(f"{meter} in {k}: {export.used} Wh used of {export.wh} proved")
        entry = market.terms.meter(meter)
        if entry is not None and entry.source:
            tokens[k, entry.source, "minted"] += export.wh
            tokens[k, entry.source, "sold"] += export.used
    for (k, source), (minted, sold) in market.tokens.items():
        if (minted, sold) != (tokens[k, source, "minted"], tokens[k, source, "sold"]) or sold > minted:
            problems.append(f"interval {k} {source}: tokens {minted} minted {sold} sold, the records say otherwise")
    sold_fills: Counter[tuple[str, int]] = Counter()
    for record in state.ctps.values():
        if record.fill is not None and record.state == CtpState.SETTLED:
            ask = market.orders[record.fill.ask[:16]].body
            assert isinstance(ask, Ask), "a fill's ask is an order"
            sold_fills[ask.meter, record.fill.k] += record.fill.wh
    for (meter, k), wh in sold_fills.items():
        proved = market.exports[meter, k].wh if (meter, k) in market.exports else 0
        if wh > proved:
            problems.append(f"{meter} sold {wh} Wh of fills in {k}, proved {proved}")
    return problems


def replayed(genesis: Genesis, blocks: Iterable) -> LedgerState:
    """A fresh state that decided `blocks` again from their inputs, as an audit does."""
    state, verifier = LedgerState(genesis), genesis.verifier()
    for block in blocks:
        state.commit(replay(state, verifier, block.header.t, block.inputs).changes)
    return state
