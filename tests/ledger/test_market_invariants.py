"""Property tests of the market in the ledger (docs/PROTOCOL.md §9): hypothesis plays asks,
bids, seals, reveals, withdrawals, export records, direct CTPs, ERCs and copies of earlier
messages into blocks whose times cross gates, reveal windows and expiries. After every
block: money is constant, holds are the held trades plus the open orders' escrow, no trade
settles twice and no one-time key confirms twice, used <= proved per meter and interval,
sold <= minted per interval and source. At the end the log audits, and replaying it into a
fresh state, or restoring the validator's tables, gives the same state.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import event, given, settings
from hypothesis import strategies as st

from ledger.audit import audit
from ledger.draft import replay
from ledger.market_audit import escrow
from ledger.state import LedgerState
from ledger.workload import SimCommunity
from tests.support.ledger import NOW
from tests.support.market import REVEAL_S, I, K, Market, MarketChain
from wire.messages import CtpState
from wire.verify import Verifier

STEPS = (1, I // 3, I // 3, I, I + REVEAL_S * 1000, 3 * I)  # ms between blocks: within, across gates and windows


def snapshot(state: LedgerState) -> tuple:
    """Everything a state holds, comparable across a replay and a restore."""
    market = state.market
    assert market is not None
    return (
        (state.height, state.tip, state.t, state.balances, state.held, state.refused, state.revoked),
        dict(state.ctps),
        state.used_keys,
        (market.orders, market.revealed, market.by_k, market.pending, market.results),
        (market.exports, market.ks, market.tokens),
    )


def check_invariants(chain: MarketChain, settled: dict[bytes, int]) -> None:
    state, market = chain.state, chain.state.market
    assert market is not None
    assert state.total() == state.genesis.total, "money is constant"
    held = dict.fromkeys(state.balances, 0) | escrow(market)
    for record in state.ctps.values():
        if record.state == CtpState.HELD:
            held[record.ctp.payer] += record.ctp.amount
        if record.state == CtpState.SETTLED:
            assert settled.setdefault(record.ctp.id, record.height) == record.height, "no trade settles twice"
    assert held == state.held, "holds are the held trades and the open orders' escrow"
    assert len(state.used_keys) == len(settled), "one one-time key per settled trade"
    for export in market.exports.values():
        assert 0 <= export.used <= export.wh, "no oversell: used <= proved"
    for minted, sold in market.tokens.values():
        assert sold <= minted


class Traffic:
    """Draws the next block's messages from what the chain holds so far."""

    def __init__(self, data, chain: MarketChain, m: Market):
        self.data, self.chain, self.m = data, chain, m
        self.sent: list[tuple[str, bytes]] = []
        self.seals: list[tuple[int, bytes, bytes, bytes]] = []  # (household, seal, bid, nonce)
        self.totals = [0, 0, 0, 0]  # each meter's export counter
        self.exported: dict[int, int] = {}  # household -> last interval it sent a record for

    def draw(self, kind: str, strategy):
        return self.data.draw(strategy, label=kind)

    def batch(self, t: int) -> list[tuple[str, bytes]]:
        # Weighted towards what makes fills and settles them; orders cross at prices 3..6.
        kinds = ["ask", "ask", "bid", "bid", "seal", "reveal", "withdraw", "export", "export", "export", "ctp"]
        kinds += ["erc", "erc", "erc"]
        kinds.append("again")
        return [
            x for kind in self.draw("kinds", st.lists(st.sampled_from(kinds), max_size=8)) if (x := self.one(kind, t))
        ]

    def one(self, kind: str, t: int) -> tuple[str, bytes] | None:
        m, draw = self.m, self.draw
        k = t // I + draw("k", st.integers(0, 2))  # 0: the current interval, whose gate has passed
        msg: tuple[str, bytes] | None = None
        if kind == "ask":
            msg = (
                "ask",
                m.ask(
                    draw("seller", st.integers(0, 2)), draw("wh", st.integers(1, 20)), draw("p", st.integers(0, 6)), k
                ),
            )
        elif kind == "bid":
            h, green = draw("buyer", st.integers(0, 3)), draw("green", st.booleans())
            msg = ("bid", m.bid(h, draw("wh", st.integers(1, 10)), draw("p", st.integers(3, 12)), k, green))
        elif kind == "seal":
            h = draw("buyer", st.integers(0, 3))
            bid = m.bid(h, draw("wh", st.integers(1, 10)), draw("p", st.integers(0, 12)), k, t=t)
            seal, nonce = m.seal(h, bid, draw("deposit", st.integers(1, 150)), k)
            self.seals.append((h, seal, bid, nonce))
            msg = ("seal", seal)
        elif kind == "reveal" and self.seals:
            h, seal, bid, nonce = draw("seal", st.sampled_from(self.seals))
            msg = ("reveal", m.reveal(h, seal, bid, nonce))
        elif kind == "withdraw" and self.chain.state.market.orders:
            order = draw("order", st.sampled_from(sorted(self.chain.state.market.orders.values(), key=lambda o: o.id)))
            by = draw("owner", st.sampled_from([i for i in range(4) if m.account(i) == order.owner] + [3]))
            msg = ("withdraw", m.withdraw(by, order.raw))
        elif kind == "export":  # the next meter's record of the interval that ended last
            ended = t // I - 1
            h = next((h for h in range(4) if self.exported.get(h, ended - 3) < ended), None)
            if h is not None:
                wh = draw("exported", st.integers(0, 30))
                self.totals[h] += wh
                self.exported[h] = ended
                msg = ("export", m.export(h, ended, wh, self.totals[h]))
        elif kind == "ctp":
            payer, payee = draw("payer", st.integers(0, 3)), draw("payee", st.integers(0, 3))
            exp = t + draw("exp", st.sampled_from([I, 3 * I]))
            msg = (
                "ctp",
                m.c.ctp(
                    payer, payee, amount=draw("amount", st.integers(0, 30)), wh=draw("wh", st.integers(0, 9)), exp=exp
                ),
            )
        elif kind == "erc":
            held = [r for r in self.chain.state.ctps.values() if r.state == CtpState.HELD and r.ctp.exp >= t]
            fills = [r for r in held if r.fill is not None]
            held = sorted(fills if fills and draw("a fill", st.booleans()) else held, key=lambda r: r.ctp.id)
            if held:
                record = draw("trade", st.sampled_from(held))
                buyer = next(i for i in range(4) if m.account(i) == record.ctp.payer)
                msg = ("erc", m.erc(buyer, record.ctp.id, record.ctp.wh))
        elif kind == "again" and self.sent:
            msg = draw("copy", st.sampled_from(self.sent))
        if msg is not None:
            self.sent.append(msg)
        return msg


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_market_invariants_hold_for_any_traffic(data):
    c = SimCommunity(4, NOW)
    m = Market(c)
    with tempfile.TemporaryDirectory() as tmp:
        chain = MarketChain(Path(tmp), c, balance=300)
        traffic = Traffic(data, chain, m)
        settled: dict[bytes, int] = {}
        t = (K - 1) * I
        for _ in range(data.draw(st.integers(1, 24), label="blocks")):
            t += data.draw(st.sampled_from(STEPS), label="step")
            chain.block(t, *traffic.batch(t))
            check_invariants(chain, settled)
        fills = [r for r in chain.state.ctps.values() if r.fill is not None]
        event(
            f"fills: {min(len(fills), 3)}+, settled fills: {min(sum(r.state == CtpState.SETTLED for r in fills), 2)}+"
        )
        event(f"cleared intervals: {min(len(chain.state.market.results), 2)}+")
        event(f"settled: {min(len(settled), 3)}+")
        assert audit(chain.store).height == chain.state.height
        live = snapshot(chain.state)
        fresh = LedgerState(chain.state.genesis)
        verifier = Verifier(cas=fresh.genesis.cas, validators=fresh.genesis.validators)
        for height in range(1, chain.state.height + 1):
            block = chain.store.block(height)
            fresh.commit(replay(fresh, verifier, block.header.t, block.inputs).changes)
        assert snapshot(fresh) == live, "replaying the blocks gives the same state"
        assert snapshot(chain.store.load()) == live, "restoring the tables gives the same state"
        chain.store.close()
