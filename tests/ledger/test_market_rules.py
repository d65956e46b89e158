"""The market's rules in the ledger (docs/PROTOCOL.md §9.2-§9.4), one block at a time: each
reason code of each market message, each state change, the clearing at the gate, fills as
held trades, and delivery against proved export. Built with tests/support/market.py:
households 0 (solar) and 1 (grid) sell, 2's meter has no source, 3 only buys."""

from __future__ import annotations

from hashlib import sha256

import pytest
from nacl.signing import SigningKey

from ledger.audit import audit
from ledger.replica import Decided, Replica, Timing
from ledger.state import LedgerState
from ledger.workload import SimCommunity, pk
from tests.support.ledger import NOW, revoke
from tests.support.market import BALANCE, REVEAL_S, I, K, Market, MarketChain, market_genesis, order_id
from wire import topics
from wire.messages import Ask, Bid, CtpState, OrderState, Status, open_message
from wire.verify import Verifier

GATE = K * I


@pytest.fixture
def c():
    return SimCommunity(4, NOW)


@pytest.fixture
def m(c):
    return Market(c)


@pytest.fixture
def chain(tmp_path, c):
    chain = MarketChain(tmp_path, c)
    yield chain
    assert audit(chain.store).height == chain.state.height, "every chain a test built audits"
    chain.store.close()


def money(chain: MarketChain, m: Market, h: int) -> tuple[int, int]:
    return chain.state.balances[m.account(h)], chain.state.held[m.account(h)]


def order(chain: MarketChain, raw: bytes):
    assert chain.state.market is not None
    return chain.state.market.orders[order_id(raw)]


def fills(chain: MarketChain):
    return [r for r in chain.state.ctps.values() if r.fill is not None]


def published(chain: MarketChain, topic: str) -> list:
    return [open_message(p).body for t, p, _ in chain.outputs if t == topic]


# -- asks --


def test_an_ask_is_open_and_holds_nothing(chain, m):
    a = m.ask(0, 10, 5)
    assert chain.block(NOW, ("ask", a)) == [None]
    assert order(chain, a).state == OrderState.OPEN
    assert money(chain, m, 0) == (BALANCE, 0)
    [status] = published(chain, topics.market_order(K, order_id(a)))
    assert (status.state, status.wh, status.price, status.src, status.side) == ("open", 10, 5, "solar", "ask")


def test_ask_reasons_in_order(chain, m, c):
    stranger = SigningKey(bytes(32))
    foreign = Ask(seller=pk(stranger), meter="m0001", wh=1, price=1, k=K, src="solar", t=NOW).sign(stranger)
    a = m.ask(0, 10, 5)
    chain.block(NOW, ("ask", a))
    cases = [
        foreign,  # unknown-account, before not-source
        a,  # duplicate
        m.ask(0, 10, 5, meter="m0002"),  # not-source: another account's meter
        m.ask(2, 10, 5, src="solar"),  # not-source: a meter without a source
        m.ask(1, 10, 5, src="solar"),  # not-source: not its registered source
        m.ask(0, 10, 5, meter="m0099"),  # not-source: no such meter
        m.ask(0, 10, 5, k=K - 1),  # gate-closed (the current interval's gate has passed)
        m.ask(0, 10, 5, k=K + 3),  # too-far: ahead = 3 intervals after the current one (K - 1)
    ]
    assert chain.block(NOW + 1, *[("ask", x) for x in cases]) == [
        "unknown-account",
        "duplicate",
        *["not-source"] * 4,
        "gate-closed",
        "too-far",
    ]
    assert chain.block(NOW + 2, ("ask", m.ask(0, 10, 5, k=K + 2))) == [None]


def test_a_rejected_order_is_duplicate_until_its_gate(chain, m):
    b = m.bid(3, 10, BALANCE)  # 10 * 1000 > 1000 free
    assert chain.block(NOW, ("bid", b)) == ["insufficient-funds"]
    assert chain.block(NOW + 1, ("bid", b)) == ["duplicate"]
    assert chain.state.refused[sha256(b).digest()] == GATE
    chain.block(GATE + 1, ("ask", m.ask(0, 1, 1, k=K + 1)))  # a block after the gate forgets the refusal
    assert sha256(b).digest() not in chain.state.refused
    assert chain.block(GATE + 2, ("bid", b)) == ["gate-closed"]


# -- bids and seals --


def test_a_bid_holds_its_escrow_and_reasons_in_order(chain, m):
    b = m.bid(3, 10, 7)
    assert chain.block(NOW, ("bid", b)) == [None]
    assert money(chain, m, 3) == (BALANCE - 70, 70)
    stranger = SigningKey(bytes(32))
    foreign = Bid(buyer=pk(stranger), wh=1, price=1, k=K, green=False, meter=bytes(32), t=NOW).sign(stranger)
    cases = [("bid", foreign), ("bid", b), ("bid", m.bid(3, 1, 1, k=K - 1)), ("bid", m.bid(3, 1, 1, k=K + 3))]
    cases.append(("bid", m.bid(3, 1, BALANCE - 69)))  # one unit more than is free
    assert chain.block(NOW + 1, *cases) == [
        "unknown-account",
        "duplicate",
        "gate-closed",
        "too-far",
        "insufficient-funds",
    ]
    assert money(chain, m, 3) == (BALANCE - 70, 70)


def test_a_seal_holds_its_deposit_and_shows_nothing_else(chain, m):
    seal, _ = m.seal(3, m.bid(3, 10, 7), deposit=100)
    assert chain.block(NOW, ("seal", seal)) == [None]
    assert money(chain, m, 3) == (BALANCE - 100, 100)
    [status] = published(chain, topics.market_order(K, order_id(seal)))
    assert (status.state, status.deposit, status.wh, status.price, status.green) == ("sealed", 100, None, None, None)
    assert chain.state.next_due() == GATE + REVEAL_S * 1000, "an interval with a seal clears after the reveal window"


# -- reveals --


def test_reveal_reasons_in_order(chain, m, c):
    bid = m.bid(3, 10, 7)
    seal, nonce = m.seal(3, bid, deposit=70)
    ask = m.ask(0, 10, 5)
    chain.block(NOW, ("seal", seal), ("ask", ask))
    assert chain.block(NOW + 1, ("reveal", m.reveal(3, seal, bid, nonce))) == ["too-early"]
    other_bid = m.bid(3, 10, 8)
    cases = [
        m.reveal(3, ask, bid, nonce),  # unknown-order: not a seal
        m.reveal(2, seal, bid, nonce),  # not-owner
        m.reveal(3, seal, bid, bytes(32)),  # reveal-mismatch: another nonce
        m.reveal(3, seal, other_bid, nonce),  # reveal-mismatch: another bid
    ]
    pricey = m.bid(3, 10, 8)
    pricey_seal, pricey_nonce = m.seal(3, pricey, deposit=70)
    chain.block(NOW + 2, ("seal", pricey_seal))
    cases.append(m.reveal(3, pricey_seal, pricey, pricey_nonce))  # reveal-mismatch: costs more than the deposit
    assert chain.block(GATE, *[("reveal", x) for x in cases]) == [
        "unknown-order",
        "not-owner",
        *["reveal-mismatch"] * 3,
    ]
    good = m.reveal(3, seal, bid, nonce)
    assert chain.block(GATE + 1, ("reveal", good)) == [None]
    assert order(chain, seal).state == OrderState.OPEN and order(chain, seal).bid_raw == bid
    assert chain.block(GATE + 2, ("reveal", good)) == ["not-open"]
    late = m.reveal(3, pricey_seal, pricey, pricey_nonce)
    assert chain.block(GATE + REVEAL_S * 1000, ("reveal", late)) == ["gate-closed"]


def test_a_revealed_bid_that_is_an_order_already_is_duplicate(chain, m):
    bid = m.bid(3, 1, 7)
    seal, nonce = m.seal(3, bid, deposit=7)
    chain.block(NOW, ("seal", seal), ("bid", bid))
    assert chain.block(GATE, ("reveal", m.reveal(3, seal, bid, nonce))) == ["duplicate"]


def test_sealed_bids_clear_after_the_window_and_an_unrevealed_one_is_void(chain, m):
    bid = m.bid(3, 10, 7)
    seal, nonce = m.seal(3, bid, deposit=90)
    silent, _ = m.seal(2, m.bid(2, 1, 1), deposit=50)
    ask = m.ask(0, 10, 5)
    chain.block(NOW, ("seal", seal), ("seal", silent), ("ask", ask))
    chain.block(GATE + 1, ("reveal", m.reveal(3, seal, bid, nonce)))
    assert chain.state.market.results == {}, "no clearing inside the reveal window"
    chain.block(GATE + REVEAL_S * 1000)
    assert order(chain, seal).state == OrderState.FILLED
    assert order(chain, silent).state == OrderState.VOID and money(chain, m, 2) == (BALANCE, 0)
    [fill] = fills(chain)
    assert (fill.ctp.wh, fill.ctp.amount, fill.fill.bid) == (10, 60, sha256(bid).digest())
    assert money(chain, m, 3) == (BALANCE - 60, 60), "the deposit's rest is released"


# -- withdraw --


def test_withdraw_releases_the_escrow_and_reasons_in_order(chain, m):
    b, a = m.bid(3, 10, 7), m.ask(0, 10, 5)
    chain.block(NOW, ("bid", b), ("ask", a))
    cases = [m.withdraw(3, m.bid(3, 1, 1)), m.withdraw(2, b)]
    assert chain.block(NOW + 1, *[("withdraw", x) for x in cases]) == ["unknown-order", "not-owner"]
    assert chain.block(NOW + 2, ("withdraw", m.withdraw(3, b))) == [None]
    assert money(chain, m, 3) == (BALANCE, 0) and order(chain, b).state == OrderState.WITHDRAWN
    assert chain.block(NOW + 3, ("withdraw", m.withdraw(3, b))) == ["not-open"]
    assert chain.block(GATE, ("withdraw", m.withdraw(0, a))) == ["gate-closed"]
    assert fills(chain) == [] and order(chain, a).state == OrderState.UNFILLED


# -- clearing --


def test_an_idle_ledger_clears_at_the_gate(chain, m):
    a, b = m.ask(0, 10, 5), m.bid(3, 8, 7)
    chain.block(NOW, ("ask", a), ("bid", b))
    assert chain.state.next_due() == GATE
    chain.block(GATE)  # no inputs: the clearing alone makes the block
    assert chain.store.block(2).inputs == ()
    assert (order(chain, a).state, order(chain, a).filled) == (OrderState.PARTIAL, 8)
    assert order(chain, b).state == OrderState.FILLED
    [fill] = fills(chain)
    assert (fill.ctp.payer, fill.ctp.payee, fill.ctp.wh, fill.ctp.amount) == (m.account(3), m.account(0), 8, 48)
    assert fill.ctp.exp == (K + 2) * I and fill.state == CtpState.HELD
    assert money(chain, m, 3) == (BALANCE - 48, 48), "56 held in escrow, 8 released"
    [status] = published(chain, topics.status(fill.ctp.id))
    assert isinstance(status, Status) and (status.payer, status.payee) == (m.account(3), m.account(0))
    [result] = published(chain, topics.market_result(K))
    assert (result.green, result.open, result.fills) == ([None, 0], [6, 8], 1)
    assert chain.state.next_due() == (K + 2) * I + 1, "next: the fill's expiry"


def test_every_status_of_a_fill_names_its_parties_the_final_one_too(chain, m):
    """§9: a block's status that a later block superseded before its validator could publish
    it is never published (decision 0007), so a fill's `refunded` may be the only status its
    seller's meter sees: it names the parties, the Wh and the expiry like the `held` one."""
    chain.block(NOW, ("ask", m.ask(0, 10, 5)), ("bid", m.bid(3, 8, 7)))
    chain.block(GATE)
    [fill] = fills(chain)
    chain.block(fill.ctp.exp + 1)  # nobody confirmed it: refunded at its expiry
    statuses = published(chain, topics.status(fill.ctp.id))
    assert [s.state for s in statuses] == [CtpState.HELD, CtpState.REFUNDED]
    for status in statuses:
        assert (status.payer, status.payee, status.wh, status.exp) == (m.account(3), m.account(0), 8, fill.ctp.exp)


def test_green_bids_take_renewable_asks_first(chain, m):
    solar, grid = m.ask(0, 5, 3), m.ask(1, 5, 1)
    green, plain = m.bid(3, 5, 9, green=True), m.bid(2, 5, 9)
    chain.block(NOW, *[(x, y) for x, y in (("ask", solar), ("ask", grid), ("bid", green), ("bid", plain))])
    chain.block(GATE)
    by_bid = {f.fill.bid[:16]: f for f in fills(chain)}
    assert by_bid[order_id(green)].fill.ask == sha256(solar).digest()
    assert by_bid[order_id(plain)].fill.ask == sha256(grid).digest()


def test_a_fill_whose_id_a_ctp_took_gets_the_next_free_one(chain, m, c):
    a, b = m.ask(0, 1, 1), m.bid(3, 1, 1)
    squatted = sha256(sha256(b).digest() + sha256(a).digest()).digest()[:16]
    ctp = c.ctp(2, 1, amount=0, wh=0, exp=NOW + 10 * I, ctp_id=squatted)
    chain.block(NOW, ("ask", a), ("bid", b), ("ctp", ctp))
    chain.block(GATE)
    [fill] = fills(chain)
    assert fill.ctp.id == sha256(sha256(b).digest() + sha256(a).digest() + (1).to_bytes(4, "big")).digest()[:16]


# -- export and delivery --


def test_export_reasons_in_order(chain, m, c):
    unregistered = Market(SimCommunity(5, NOW))  # the same CA: household 4's meter m0005 is not in the genesis
    end = (K + 1) * I
    assert chain.block(end - 1, ("export", m.export(0, K, 5, 5))) == ["too-early"]
    assert chain.block(end, ("export", m.export(0, K, 5, 5))) == [None]
    cases = [
        ("export", unregistered.export(4, K, 1, 1)),  # unknown-meter
        ("export", m.export(0, K, 5, 5)),  # duplicate
        ("export", m.export(0, K - 1, 1, 1)),  # counter: k goes back
        ("export", m.export(1, K, 5, 4)),  # counter: total < wh
        ("revoke", revoke(c, 2, NOW)),
        ("export", m.export(2, K, 1, 1)),  # cert: the device key is revoked
    ]
    assert chain.block(end + 1, *cases) == ["unknown-meter", "duplicate", "counter", "counter", None, "cert"]
    assert chain.block((K + 2) * I, ("export", m.export(0, K + 1, 3, 7))) == ["counter"], "7 - 3 < 5"
    assert chain.block((K + 2) * I + 1, ("export", m.export(0, K + 1, 3, 8))) == [None]
    assert chain.state.market.tokens == {(K, "solar"): [5, 0], (K + 1, "solar"): [3, 0]}


def test_a_fill_settles_only_against_its_asks_meter_export_in_its_interval(chain, m):
    chain.block(NOW, ("ask", m.ask(0, 10, 5)), ("bid", m.bid(3, 8, 7)))
    chain.block(GATE)
    [fill] = fills(chain)
    erc = m.erc(3, fill.ctp.id, 8)
    assert chain.block(GATE + 1, ("erc", erc)) == ["oversold"]
    end = (K + 1) * I
    assert chain.block(end, ("export", m.export(0, K, 7, 7)), ("erc", erc)) == [None, "oversold"]
    assert chain.block(end + 1, ("export", m.export(1, K, 50, 50)), ("erc", erc)) == [None, "oversold"]
    assert chain.block((K + 2) * I, ("export", m.export(0, K + 1, 50, 57)), ("erc", erc)) == [None, "oversold"]
    chain.block((K + 3) * I)  # expiry (K + 2) * I has passed: refunded
    assert chain.state.record(fill.ctp.id).state == CtpState.REFUNDED
    assert money(chain, m, 3) == (BALANCE, 0)


def test_a_fill_settles_and_sells_tokens(chain, m):
    chain.block(NOW, ("ask", m.ask(0, 10, 5)), ("bid", m.bid(3, 8, 7)))
    chain.block(GATE)
    [fill] = fills(chain)
    end = (K + 1) * I
    assert chain.block(end, ("export", m.export(0, K, 9, 9)), ("erc", m.erc(3, fill.ctp.id, 8))) == [None, None]
    assert chain.state.record(fill.ctp.id).state == CtpState.SETTLED
    assert money(chain, m, 3) == (BALANCE - 48, 0) and money(chain, m, 0) == (BALANCE + 48, 0)
    assert chain.state.market.exports["m0001", K].used == 8
    assert chain.state.market.tokens == {(K, "solar"): [9, 8]}


def test_a_direct_ctp_needs_its_payees_export_from_its_block_on_oldest_first(chain, m, c):
    end = (K + 1) * I
    early = c.ctp(3, 0, amount=10, wh=6, exp=NOW + 10 * I)
    chain.block(end, ("export", m.export(0, K, 4, 4)))  # before the CTP: outside its window
    chain.block(end + 1, ("ctp", early))
    erc = c.erc(early)
    assert chain.block(end + 2, ("erc", erc)) == ["oversold"]
    chain.block((K + 2) * I, ("export", m.export(0, K + 1, 2, 6)))
    chain.block((K + 3) * I, ("export", m.export(0, K + 2, 5, 11)))
    assert chain.block((K + 3) * I + 1, ("erc", erc)) == [None]
    exports = chain.state.market.exports
    assert (exports["m0001", K].used, exports["m0001", K + 1].used, exports["m0001", K + 2].used) == (0, 2, 4)


def test_a_v1_chain_has_no_market(tmp_path, c, m):
    from tests.support.ledger import Chain

    chain = Chain(tmp_path, c)
    assert chain.block(NOW, ("ask", m.ask(0, 1, 1)), ("export", m.export(0, K, 1, 1))) == ["type", "type"]
    ctp = c.ctp(0, 1, amount=1, wh=1, exp=NOW + 100)
    chain.block(NOW + 1, ("ctp", ctp))
    status = open_message(chain.store.outbox()[-2].payload).body
    assert status.state == "held" and status.payer is None and status.payee is None
    chain.store.close()


def test_a_lone_replica_proposes_the_clearing_block_at_the_gate_with_nothing_to_decide(c, m):
    """LedgerState.next_due tells the replica a clearing is due, as it tells an expiry."""
    genesis = market_genesis(c)
    verifier = Verifier(cas=genesis.cas, validators=genesis.validators)
    replica = Replica(LedgerState(genesis), verifier, 0, c.validator_keys[0], {}.get, Timing(block_ms=50), None, NOW, 0)
    decided: list[Decided] = []

    def run(wall: int) -> None:
        mono = wall - NOW  # the monotonic clock runs with the wall clock
        decided.extend(a for a in replica.tick(wall, mono) if isinstance(a, Decided))

    for typ, raw in (("ask", m.ask(0, 10, 5)), ("bid", m.bid(3, 8, 7))):
        replica.submit(typ, raw, NOW, 0)
    wall = NOW
    while not decided:
        wall = NOW + replica.deadline(wall, wall - NOW)
        run(wall)
    assert decided[0].block.header.t < GATE and replica.state.market.results == {}
    wall = NOW + replica.deadline(wall, wall - NOW)
    assert wall == GATE, "idle, the replica wakes at the gate"
    while len(decided) == 1:
        run(wall)
        wall = NOW + replica.deadline(wall, wall - NOW)
    assert decided[1].block.inputs == () and decided[1].block.header.t == GATE
    assert replica.state.market.results[K].fills == 1
