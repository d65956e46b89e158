"""SimCommunity's market builders (ledger.workload): what they sign is what a market ledger
accepts, trades and settles (docs/PROTOCOL.md §9), the same bytes from the same seed, and
the v1 genesis the other tests use is unchanged by them."""

from __future__ import annotations

from ledger.draft import replay
from ledger.sim_market import predicted_fills
from ledger.state import LedgerState
from ledger.workload import SimCommunity, pk
from wire.cose import message_hash
from wire.market import fill_id
from wire.messages import CtpState, OrderState
from wire.verify import Verifier

NOW = 1_800_000_000_000
I = 10_000  # noqa: E741 - the protocol's name for it
K = NOW // I + 1


def community(seed: bytes = b"workload market") -> SimCommunity:
    return SimCommunity(4, NOW, seed=seed, sources=("solar", "grid"))


class Chain:
    """A market chain's state, block after block, decided in-process."""

    def __init__(self, c: SimCommunity):
        genesis = c.genesis(1_000, market=c.market_terms(interval_s=10, ahead=2, reveal_s=4))
        self.state, self.verifier = LedgerState(genesis), Verifier(cas=genesis.cas, validators=genesis.validators)

    def block(self, t: int, *inputs: tuple[str, bytes]) -> list[str | None]:
        draft = replay(self.state, self.verifier, t, inputs)
        self.state.commit(draft.changes)
        return draft.reasons


def test_the_builders_make_orders_a_market_ledger_accepts_clears_and_settles():
    c = community()
    chain = Chain(c)
    ask, grid_ask = c.ask(0, 30, 2, K), c.ask(1, 20, 3, K)
    bid, green = c.bid(2, 25, 5, K), c.bid(3, 10, 6, K, green=True)
    sealed = c.bid(3, 5, 9, K)
    seal, nonce = c.seal(sealed, deposit=45)
    spare = c.bid(2, 1, 1, K)
    assert (
        chain.block(NOW + 1, ("ask", ask), ("ask", grid_ask), ("bid", bid), ("bid", green), ("seal", seal))
        == [None] * 5
    )
    assert chain.block(NOW + 2, ("bid", spare), ("withdraw", c.withdraw(spare))) == [None, None]
    market = chain.state.market
    assert market is not None
    assert market.orders[message_hash(spare)[:16]].state == OrderState.WITHDRAWN
    assert chain.block(K * I + 1, ("reveal", c.reveal(seal, sealed, nonce))) == [None]
    assert chain.block(K * I + 4_000) == []  # the reveal window closed: the interval clears
    fills = predicted_fills([bid, green, sealed], [ask, grid_ask])
    assert sum(wh for *_, wh in fills) == market.results[K].green[1] + market.results[K].open[1] > 0
    exports = [c.export(0, K, 30, 30, t=(K + 1) * I), c.export(1, K, 20, 25, t=(K + 1) * I)]
    ercs = [c.fill_erc(b, fill_id(message_hash(b), message_hash(a)), wh) for b, a, wh in fills]
    assert chain.block((K + 1) * I + 1, *[("export", e) for e in exports], *[("erc", e) for e in ercs]) == [None] * (
        len(exports) + len(ercs)
    )
    fill_records = [r for r in chain.state.ctps.values() if r.fill is not None]
    assert len(fill_records) == len(fills) and all(r.state == CtpState.SETTLED for r in fill_records)
    assert market.tokens[K, "solar"][0] == 30 and chain.state.total() == 4_000


def test_an_ask_names_its_meters_registered_source_and_a_meter_without_one_cannot_sell():
    c = community()
    chain = Chain(c)
    assert chain.block(NOW + 1, ("ask", c.ask(1, 5, 1, K)), ("ask", c.ask(2, 5, 1, K, src="solar"))) == [
        None,
        "not-source",
    ]


def test_the_same_seed_signs_the_same_bytes_and_the_v1_genesis_stays_v1():
    a, b = community(), community()
    assert a.bid(2, 5, 5, K) == b.bid(2, 5, 5, K) and a.seal(a.bid(2, 5, 5, K), 25) == b.seal(b.bid(2, 5, 5, K), 25)
    assert a.export(0, K, 3, 3) == b.export(0, K, 3, 3)
    assert community(b"another seed").bid(2, 5, 5, K) != a.bid(2, 5, 5, K)
    assert a.genesis(1_000).market is None
    assert a.genesis(1_000).hash == SimCommunity(4, NOW, seed=b"workload market").genesis(1_000).hash
    terms = a.market_terms()
    assert [(m.meter, m.account, m.source) for m in terms.meters] == [
        (h.meter_id, pk(h.account), source) for h, source in zip(a.households, ("solar", "grid", "", ""), strict=True)
    ]
