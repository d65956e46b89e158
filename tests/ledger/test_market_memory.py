"""The market's records leave RAM once behind the horizon (docs/decisions/0013-bounded-memory.md),
and no decision changes: the same traffic decided by a state that keeps everything, by one
whose horizon trails the last block by a few intervals (the archive a dict), and by a
validator whose archive is its SQLite database gives the same blocks, outputs and market;
a restart loads only what is in RAM; a copy, a withdrawal, a reveal or an export record
naming something that left RAM is answered from the archive as before.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import event, given, settings
from hypothesis import strategies as st

from ledger.draft import MAX_HOLD_MS, replay
from ledger.market import KEEP_MS, MarketState
from ledger.state import LedgerState
from ledger.workload import SimCommunity
from tests.ledger.test_market_invariants import STEPS, Traffic
from tests.support.ledger import NOW
from tests.support.market import REVEAL_S, I, K, Market, MarketChain, order_id
from wire.verify import Verifier

KEEP_ALL = 10**15  # a horizon that never moves: the state as it was before records left RAM


def market_of(state: LedgerState) -> MarketState:
    assert state.market is not None
    return state.market


def history(state: LedgerState) -> tuple:
    """The market over all history, as its views show it: what must not depend on the horizon."""
    market = market_of(state)
    return (
        (state.height, state.tip, state.t, state.balances, state.held, state.refused),
        market.orders.all(),
        {k: list(ids) for k, ids in market.by_k.items()},
        market.pending,
        market.results.all(),
        market.exports.all(),
        dict(market.tokens.items()),
    )


def kept(state: LedgerState) -> tuple:
    """What is in RAM: a restart must load exactly what a running validator kept."""
    m = market_of(state)
    return (m.horizon, m._orders, m.revealed, m._by_k, m.pending, m._results, m._exports, m.ks, m._tokens)


def test_keep_ms_is_the_longest_hold():
    assert KEEP_MS == MAX_HOLD_MS


@settings(max_examples=120, deadline=None)
@given(st.data())
def test_any_traffic_decides_alike_whatever_the_market_keeps_in_ram(data):
    c = SimCommunity(4, NOW)
    m = Market(c)
    with tempfile.TemporaryDirectory() as tmp:
        chain = MarketChain(Path(tmp), c, balance=300)
        market_of(chain.state).keep_ms = 0  # the validator's horizon: a few intervals behind
        traffic = Traffic(data, chain, m)
        t = (K - 1) * I
        for _ in range(data.draw(st.integers(1, 30), label="blocks")):
            t += data.draw(st.sampled_from([*STEPS, 5 * I]), label="step")
            chain.block(t, *traffic.batch(t))
        left = market_of(chain.state).horizon - K
        event(f"intervals behind the horizon: {min(max(left, 0), 3)}+")
        reference, pruned = LedgerState(chain.state.genesis), LedgerState(chain.state.genesis)
        market_of(reference).keep_ms, market_of(pruned).keep_ms = KEEP_ALL, 0
        verifier = Verifier(cas=reference.genesis.cas, validators=reference.genesis.validators)
        for height in range(1, chain.state.height + 1):
            block = chain.store.block(height)
            drafts = [replay(s, verifier, block.header.t, block.inputs) for s in (reference, pruned)]
            for draft in drafts:
                assert draft.changes.header.hash == block.header.hash, f"block {height} decided otherwise"
            assert drafts[0].outputs == drafts[1].outputs, f"block {height}'s statuses and rejects differ"
            reference.commit(drafts[0].changes)
            pruned.commit(drafts[1].changes)
            assert history(pruned) == history(reference)
        assert market_of(reference).horizon == 0 and not market_of(reference).archive.all_orders()
        assert history(chain.state) == history(reference), "the validator's (SQLite archive) market is the same"
        for market in (market_of(chain.state), market_of(pruned)):  # one record at a time, as statuses ask
            ref = market_of(reference)
            assert {k: market.results.get(k) for k in ref.results} == ref.results.all()
            assert {i: market.orders.get(i) for i in ref.orders} == ref.orders.all()
            assert {k: market.by_k.get(k) for k in ref.by_k} == {k: list(v) for k, v in ref.by_k.items()}
            assert {key: market.tokens.get(key) for key in ref.tokens} == dict(ref.tokens.items())
        assert kept(pruned) == kept(chain.state), "a dict archive and SQLite keep the same in RAM"
        restored = chain.store.load()
        market_of(restored).keep_ms = 0
        assert history(restored) == history(reference)
        chain.store.close()


def test_a_restart_loads_what_is_in_ram_and_old_records_are_still_answered():
    c = SimCommunity(4, NOW)
    m = Market(c)
    with tempfile.TemporaryDirectory() as tmp:
        chain = MarketChain(Path(tmp), c, balance=300)
        state = chain.state
        ask, bid = m.ask(0, 10, 3, K), m.bid(3, 10, 5, K)
        seal_bid = m.bid(2, 4, 4, K)
        seal, nonce = m.seal(2, seal_bid, 40, K)
        withdrawn = m.bid(3, 2, 3, K)
        assert chain.block(K * I - 5_000, ("ask", ask), ("bid", bid), ("seal", seal), ("bid", withdrawn)) == [None] * 4
        assert chain.block(K * I - 4_000, ("withdraw", m.withdraw(3, withdrawn))) == [None]
        assert chain.block(K * I + 500, ("reveal", m.reveal(2, seal, seal_bid, nonce))) == [None]
        assert chain.block(K * I + REVEAL_S * 1000 + 1) == []  # clears K
        assert market_of(state).results[K].fills >= 1
        proved = m.export(1, K, 5, 5)
        assert chain.block((K + 1) * I + 100, ("export", m.export(0, K, 10, 10)), ("export", proved)) == [None] * 2
        assert chain.block((K + 2) * I + 100, ("export", m.export(1, K + 1, 5, 10))) == [None]
        later = (K + 1) * I + KEEP_MS + 10 * I  # a day and more on: K is behind the horizon
        assert chain.block(later, ("export", m.export(2, K + 5, 3, 3))) == [None]  # an old interval's, late
        market = market_of(state)
        assert market.horizon > K
        assert not market._orders and not market._results and not market.revealed
        meters = [h.meter_id for h in c.households]
        assert sorted(market._exports) == [(meters[0], K), (meters[1], K + 1), (meters[2], K + 5)], "each last stays"
        assert market.orders[order_id(ask)].k == K and market.results[K].fills >= 1, "the views read the archive"
        before = history(state)
        restored = chain.store.load()
        assert kept(restored) == kept(state) and history(restored) == before
        reasons = chain.block(
            later + 1_000,
            ("ask", ask),  # a copy of an archived order
            ("bid", seal_bid),  # a copy of a bid revealed under a seal
            ("withdraw", m.withdraw(3, bid)),  # naming a filled order
            ("reveal", m.reveal(2, seal, seal_bid, nonce)),  # naming an opened seal
            ("export", proved),  # a record proved before, not its meter's last
        )
        assert reasons == ["duplicate", "duplicate", "not-open", "not-open", "duplicate"]
        chain.store.close()


def test_a_trade_delivers_against_export_records_that_left_ram():
    c = SimCommunity(4, NOW)
    m = Market(c)
    with tempfile.TemporaryDirectory() as tmp:
        chain = MarketChain(Path(tmp), c, balance=300)
        market_of(chain.state).keep_ms = 0  # the horizon a few intervals behind: K leaves RAM soon
        t0 = K * I + 100
        ctp = m.c.ctp(3, 1, amount=10, wh=5, exp=t0 + 9 * I)
        assert chain.block(t0, ("ctp", ctp)) == [None]
        assert chain.block((K + 1) * I + 100, ("export", m.export(1, K, 5, 5))) == [None]
        assert chain.block((K + 2) * I + 100, ("export", m.export(1, K + 1, 0, 5))) == [None]
        assert chain.block((K + 7) * I, ("export", m.export(0, K + 6, 1, 1))) == [None]
        market = market_of(chain.state)
        assert market.horizon > K and (c.households[1].meter_id, K) not in market._exports
        ctp_id = next(iter(chain.state.open))
        assert chain.block((K + 7) * I + 100, ("erc", m.erc(3, ctp_id, 5))) == [None]
        assert market.exports[c.households[1].meter_id, K].used == 5, "delivered by the record in the archive"
        chain.store.close()
