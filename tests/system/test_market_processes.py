"""The market (docs/PROTOCOL.md §9) with real processes: four `spb-ledger run` validators
on a real Mosquitto, a market genesis of six households (two solar sellers, a grid seller,
three buyers), and one full interval K told as a story, once per module; each test then
checks one part of what happened.

The story: a direct CTP is held, and its ERC refused `oversold` (its payee proved no export
yet). Before K's gate: three asks, a green bid, an open bid, a bid withdrawn again, two
sealed bids. After the gate: one seal revealed within the window, an ask turned away
(`gate-closed`); K clears after the window, the unrevealed seal is void, and a reveal of it
then is `not-open`. After K ends: the sellers' export records for K, the solar sellers'
covering what they sold, the grid seller's short of it; the buyers' ERCs, one at a time,
settle each fill its seller's export covers, and the grid seller's last is `oversold`; the
direct CTP's ERC, sent again, now settles against its payee's export. One fill's ERC waits
until after the fills' expiry: it is `expired`, and that block refunds it and the oversold
fill. Then all four validators stop, and their databases, `spb-ledger head/audit/show/
market/tokens` and what the broker retained must all tell the same story as
ledger.clearing.clear does on the same book.

The validators read the wall clock, so the story waits for it where the market does (a gate,
the end of an interval, an expiry) and otherwise for what the validators publish. Only the
ERC after expiry needs more: to be decided in the first block past expiry, not after the
refund, it must reach the pools before that block is proposed, so the validator that would
propose it in round 0 is stopped (SIGSTOP) across the expiry and the block comes from
round 1, a round timeout (1 s) after the others saw the expiry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from hashlib import sha256

import pytest

from broker.client import BusClient
from broker.clock import wall_ms
from broker.runtime import Mosquitto, find_mosquitto, free_port
from ledger.clearing import BookAsk, BookBid, Clearing, clear
from ledger.fill import FillDoc
from ledger.state import LedgerState
from ledger.workload import pk
from tests.support.bus import wait_for
from tests.support.consensus import VALIDATORS
from tests.support.market import Market
from tests.support.market_bus import BALANCE, GRACE, REVEAL_S, SOURCES, I, MarketValidators, wait_clock
from wire import topics
from wire.cose import message_hash
from wire.market import fill_id, order_id_of
from wire.messages import AccountStatus, Cleared, Order, Status, open_message

SOLAR_1, SOLAR_2, GRID, BUYER_1, BUYER_2, BUYER_3 = range(6)
LEAD_MS = I  # orders go out at least one interval before their gate


@dataclass
class Trade:
    """A fill or the direct CTP, as the story expects it to end."""

    id: bytes
    payer: int
    payee: int
    wh: int
    amount: int
    exp: int
    msg: bytes  # H(CTP) or H(fill document): its held status names it
    end: str = "held"  # settled or refunded
    erc: bytes = b""


@dataclass
class Story:
    v: MarketValidators
    k: int = 0
    orders: dict[str, bytes] = field(default_factory=dict)  # name -> the order's message
    reveal: bytes = b""
    sealed_seen: Order | None = None  # the sealed bid's status before its reveal
    revealed_seen: Order | None = None
    clearing: Clearing | None = None
    book_ids: dict[str, bytes] = field(default_factory=dict)  # name -> its id in the book
    result: Cleared | None = None
    trades: dict[str, Trade] = field(default_factory=dict)  # fill "<bid>/<ask>" or "ctp" -> Trade
    exported: dict[int, int] = field(default_factory=dict)  # household -> Wh its meter proved in K
    reasons: dict[str, str] = field(default_factory=dict)  # what -> the reason it was refused
    retained: dict[str, bytes] = field(default_factory=dict)  # topic -> what the broker kept
    states: list[LedgerState] = field(default_factory=list)  # each validator's, stopped

    @property
    def m(self) -> Market:
        return Market(self.v.community)

    def account(self, h: int) -> bytes:
        return pk(self.v.community.households[h].account)

    def gate(self, k: int) -> int:
        return k * I

    def cli(self, command: str, *args: object, validator: int = 0) -> str:
        """`spb-ledger COMMAND DIR ARGS --validator I` (the validators are stopped by then)."""
        return self.v.cli(command, str(self.v.root), *map(str, args), "--validator", str(validator))

    def refused(self, what: str, topic: str, raw: bytes) -> str:
        self.reasons[what] = self.v.wait_reject(self.v.send(topic, raw)).reason
        return self.reasons[what]


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed: apt-get install mosquitto", pytrace=False)
    tmp = tmp_path_factory.mktemp("market")
    broker = Mosquitto()
    broker.start(free_port(), tmp / "mosquitto")
    clients: list[BusClient] = []

    def make_client(port: int, client_id: str, **options) -> BusClient:
        clients.append(BusClient("127.0.0.1", port, client_id, reconnect_min_delay=0.05, **options))
        return clients[-1]

    v = MarketValidators(tmp, broker.port, make_client)
    try:
        for i in range(VALIDATORS):
            v.start(i)
        s = Story(v)
        tell(s, make_client)
        yield s
    finally:
        v.close()
        for client in clients:
            client.close()
        broker.stop()


# ---- the story ----------------------------------------------------------------------------------


def tell(s: Story, make_client) -> None:
    v, m = s.v, s.m
    s.k = k = (wall_ms() + LEAD_MS) // I + 1
    exp = s.gate(k + 1 + GRACE)
    direct_ctp(s)
    place_orders(s, k)
    assert wall_ms() < s.gate(k), "the orders took more than an interval to be accepted"
    wait_clock(s.gate(k))
    s.reveal = m.reveal(BUYER_3, s.orders["sealed"], s.orders["sealed bid"], nonce(s, "sealed bid"))
    v.send(topics.TX_REVEAL, s.reveal)
    s.refused("ask after the gate", topics.TX_ASK, m.ask(SOLAR_1, wh=1, price=1, k=k, src="solar"))
    s.revealed_seen = v.wait_order(order_id_of(s.orders["sealed"]), "open")
    s.result = v.wait_result(k)
    s.clearing = book_clearing(s)
    unrevealed = m.reveal(BUYER_3, s.orders["unrevealed"], s.orders["unrevealed bid"], nonce(s, "unrevealed bid"))
    s.refused("reveal after the clearing", topics.TX_REVEAL, unrevealed)
    expect_fills(s, exp)
    wait_clock(s.gate(k + 1))
    deliver(s)
    erc_after_expiry(s, exp)
    v.wait_heads_agree()
    v.stop_all()
    read_back(s, make_client)


def direct_ctp(s: Story) -> None:
    """BUYER_1 pays SOLAR_2 for 5 Wh directly; its ERC before any export is oversold (rule 7)."""
    c = s.v.community
    ctp = c.ctp(BUYER_1, SOLAR_2, amount=15, wh=5, exp=s.gate(s.k + 8))
    trade = Trade(open_message(ctp, "ctp").body.id, BUYER_1, SOLAR_2, 5, 15, s.gate(s.k + 8), message_hash(ctp))
    s.trades["ctp"] = trade
    s.v.send(topics.TX_CTP, ctp)
    s.v.wait_trade(trade.id, "held")
    trade.erc = c.erc(ctp)
    s.refused("ctp erc before export", topics.TX_ERC, trade.erc)


def nonce(s: Story, bid: str) -> bytes:
    return sha256(s.orders[bid] + b"nonce").digest()  # tests.support.market.Market.seal's


def place_orders(s: Story, k: int) -> None:
    m, o = s.m, s.orders
    o["ask solar 1"] = m.ask(SOLAR_1, wh=10, price=2, k=k, src="solar")
    o["ask solar 2"] = m.ask(SOLAR_2, wh=10, price=3, k=k, src="solar")
    o["ask grid"] = m.ask(GRID, wh=10, price=1, k=k, src="grid")
    o["bid green"] = m.bid(BUYER_1, wh=12, price=5, k=k, green=True)
    o["bid open"] = m.bid(BUYER_2, wh=8, price=4, k=k)
    o["bid withdrawn"] = m.bid(BUYER_1, wh=5, price=9, k=k)
    o["sealed bid"] = m.bid(BUYER_3, wh=6, price=6, k=k)
    o["sealed"] = m.seal(BUYER_3, o["sealed bid"], deposit=40, k=k)[0]
    o["unrevealed bid"] = m.bid(BUYER_3, wh=2, price=2, k=k)
    o["unrevealed"] = m.seal(BUYER_3, o["unrevealed bid"], deposit=10, k=k)[0]
    topic = {"ask": topics.TX_ASK, "bid": topics.TX_BID, "sea": topics.TX_SEAL, "unr": topics.TX_SEAL}
    placed = [name for name in o if not name.endswith(" bid")]  # a sealed bid's own bid waits for its reveal
    for name in placed:
        s.v.send(topic[name[:3]], o[name])
    for name in placed:
        state = "sealed" if name in ("sealed", "unrevealed") else "open"
        s.v.wait_order(order_id_of(o[name]), state)
    s.sealed_seen = s.v.wait_order(order_id_of(o["sealed"]), "sealed")
    s.v.send(topics.TX_WITHDRAW, m.withdraw(BUYER_1, o["bid withdrawn"]))
    s.v.wait_order(order_id_of(o["bid withdrawn"]), "withdrawn")


def book_clearing(s: Story) -> Clearing:
    """ledger.clearing.clear on the book the ledger should have had at K's gate: the open
    asks and bids and the revealed bid, none of the withdrawn or unrevealed ones."""
    o = s.orders
    asks = {name: open_message(o[name], "ask").body for name in ("ask solar 1", "ask solar 2", "ask grid")}
    bids = {name: open_message(o[name], "bid").body for name in ("bid green", "bid open", "sealed bid")}
    s.book_ids = {name: order_id_of(o[name]) for name in (*asks, *bids)}
    return clear(
        [BookBid(s.book_ids[n], b.wh, b.price, b.green) for n, b in bids.items()],
        [BookAsk(s.book_ids[n], a.wh, a.price, a.src) for n, a in asks.items()],
    )


def expect_fills(s: Story, exp: int) -> None:
    """The held trades the clearing must make, named "<bid>/<ask>"."""
    assert s.clearing is not None and s.result is not None
    name = {i: n for n, i in s.book_ids.items()}
    owner = {"ask solar 1": SOLAR_1, "ask solar 2": SOLAR_2, "ask grid": GRID}
    owner |= {"bid green": BUYER_1, "bid open": BUYER_2, "sealed bid": BUYER_3}
    for fill in s.clearing.fills:
        bid, ask = name[fill.bid], name[fill.ask]
        bid_hash, ask_hash = message_hash(s.orders[bid]), message_hash(s.orders[ask])
        doc = FillDoc(
            id=fill_id(bid_hash, ask_hash),
            k=s.k,
            bid=bid_hash,
            ask=ask_hash,
            payer=s.account(owner[bid]),
            payee=s.account(owner[ask]),
            wh=fill.wh,
            amount=fill.amount,
            exp=exp,
            meter=open_message(s.orders[bid], "bid").body.meter,
            t=s.result.t,
        )
        s.trades[f"{bid}/{ask}"] = Trade(
            doc.id, owner[bid], owner[ask], fill.wh, fill.amount, exp, sha256(doc.encode()).digest()
        )
    for trade in s.trades.values():
        s.v.wait_trade(trade.id, "held")


def fills_of(s: Story, seller: int) -> list[Trade]:
    return [t for n, t in s.trades.items() if n != "ctp" and t.payee == seller]


def deliver(s: Story) -> None:
    """Export records for K, then the ERCs one at a time. SOLAR_1 proves what it sold,
    SOLAR_2 that and the direct CTP's 5 Wh and 5 more, GRID all but its last fill's Wh. The
    last fill of SOLAR_2 keeps its ERC for after the expiry."""
    v, m, k = s.v, s.m, s.k
    grid = fills_of(s, GRID)
    s.exported = {
        SOLAR_1: sum(t.wh for t in fills_of(s, SOLAR_1)),
        SOLAR_2: sum(t.wh for t in fills_of(s, SOLAR_2)) + s.trades["ctp"].wh + 5,
        GRID: sum(t.wh for t in grid) - grid[-1].wh,
    }
    for h, wh in s.exported.items():
        v.send(topics.TX_EXPORT, m.export(h, k, wh=wh, total=wh))
    v.wait_exports({(v.community.households[h].meter_id, k) for h in s.exported})
    late = fills_of(s, SOLAR_2)[-1]
    for trade in (t for n, t in s.trades.items() if n != "ctp" and t is not late):
        trade.erc = m.erc(trade.payer, trade.id, trade.wh)
        msg = v.send(topics.TX_ERC, trade.erc)
        if trade is grid[-1]:
            s.reasons["erc beyond the export"] = v.wait_reject(msg).reason
            continue
        trade.end = v.wait_trade(trade.id, "settled").state
    ctp = s.trades["ctp"]
    v.send(topics.TX_ERC, ctp.erc)  # the very ERC refused as oversold (§9.4: oversold is not final)
    ctp.end = v.wait_trade(ctp.id, "settled").state
    late.erc = m.erc(late.payer, late.id, late.wh)


def erc_after_expiry(s: Story, exp: int) -> None:
    """The late fill's ERC in the first block after `exp`, ahead of the refund at expiry."""
    v = s.v
    height = v.wait_heads_agree()[0]
    # its publisher announces a block after its statuses: none is left to a stand-in (3 s on)
    wait_for(lambda: height in {b.header.height for b in v.blocks_published()}, 30, f"block {height} announced")
    assert wall_ms() < exp, "the deliveries took until the fills' expiry"
    proposer = (height + 1) % VALIDATORS  # of the next block in round 0 (ledger.replica.proposer)
    v.pause(proposer)
    try:
        wait_clock(exp + 1)  # the refund is due at block time exp + 1
        late = fills_of(s, SOLAR_2)[-1]
        s.reasons["erc after expiry"] = v.wait_reject(v.send(topics.TX_ERC, late.erc)).reason
        for trade in s.trades.values():
            if trade.end == "held":
                trade.end = v.wait_trade(trade.id, "refunded").state
    finally:
        v.resume(proposer)


def read_back(s: Story, make_client) -> None:
    """What the broker retained and what each stopped validator stored."""
    v, k = s.v, s.k
    order_topics = len(s.orders) - 2  # the sealed bids' own bids have no topic of their own
    s.retained = v.read_retained(make_client, f"{topics.MARKET}/{k}/#", order_topics + 1, "market reader")
    for trade in s.trades.values():
        s.retained |= v.read_retained(make_client, topics.status(trade.id), 1, f"reader {trade.id.hex()}")
    s.retained |= v.read_retained(make_client, topics.ACCOUNT_ALL, len(SOURCES), "account reader")
    for i in range(VALIDATORS):
        store = v.store(i)
        s.states.append(store.load())
        store.close()


# ---- what each part of the story must have done ---------------------------------------------------


def retained_order(s: Story, name: str) -> Order:
    raw = s.retained[topics.market_order(s.k, order_id_of(s.orders[name]))]
    return s.v.verifier.verify(raw, wall_ms(), expect="order").body


def retained_status(s: Story, trade: Trade) -> Status:
    return s.v.verifier.verify(s.retained[topics.status(trade.id)], wall_ms(), expect="status").body


def states(s: Story, trade: Trade) -> list[str]:
    """The states a trade's statuses went through. A status may come twice, the same but
    for its signer: each validator stands in for a block's publisher that has not announced
    the block 3 s on (ledger/service.py TAKEOVER_S), and the one stopped across the expiry
    may have been stopped before it read that announcement (seen under a CPU hog)."""
    return [st.state for st in dict.fromkeys(s.v.trade_statuses(trade.id))]


def test_the_result_is_what_ledger_clearing_makes_of_the_book(story):
    s = story
    assert s.clearing is not None and s.result is not None
    green, other = s.clearing.products
    assert (s.result.k, s.result.green, s.result.open, s.result.fills) == (
        s.k,
        [green.price, green.wh],
        [other.price, other.wh],
        len(s.clearing.fills),
    )
    assert s.retained[topics.market_result(s.k)] and s.v.results(s.k) == [
        s.v.verifier.verify(s.retained[topics.market_result(s.k)], wall_ms(), expect="cleared").body
    ], "one result, the retained one"
    # the story needs both products and sellers with several buyers
    assert green.wh > 0 and other.wh > 0 and len(fills_of(s, GRID)) >= 2 and len(fills_of(s, SOLAR_2)) >= 2
    assert s.gate(s.k) + REVEAL_S * 1000 <= s.result.t, "clearing waits for the reveal window"


def test_each_order_ends_as_the_clearing_says_with_the_clearings_block(story):
    s = story
    assert s.clearing is not None and s.result is not None
    for name in ("ask solar 1", "ask solar 2", "ask grid", "bid green", "bid open", "sealed"):
        order = retained_order(s, name)
        body = open_message(s.orders[name if name != "sealed" else "sealed bid"]).body
        filled = s.clearing.filled_wh(s.book_ids[name if name != "sealed" else "sealed bid"])
        state = "filled" if filled == body.wh else "partial" if filled else "unfilled"
        assert (order.state, order.filled, order.wh, order.price) == (state, filled, body.wh, body.price), name
        assert (order.t, order.h) == (s.result.t, s.result.h), f"{name}: the clearing block's time and height"
    withdrawn, void = retained_order(s, "bid withdrawn"), retained_order(s, "unrevealed")
    assert (withdrawn.state, withdrawn.filled) == ("withdrawn", 0)
    assert (void.state, void.filled, void.wh, void.price, void.deposit) == ("void", 0, None, None, 10)
    assert s.reasons["reveal after the clearing"] == "not-open"
    assert s.reasons["ask after the gate"] == "gate-closed"


def test_each_order_status_names_its_orders_message(story):
    """§9.5: `msg` is H(the ask, bid or seal), a revealed bid's H(bid), whatever changed it
    last (the clearing, a withdraw), as tests/data/vectors-ext.json's order_filled_ask has it."""
    s = story
    wrong = {}
    for name in (n for n in s.orders if not n.endswith(" bid")):
        message = s.orders["sealed bid" if name == "sealed" else name]
        order = retained_order(s, name)
        if order.msg != message_hash(message):
            wrong[name] = (order.state, order.msg.hex() if order.msg else None, message_hash(message).hex())
    assert wrong == {}, "name: (state, msg, H(message))"


def test_a_sealed_bid_shows_its_deposit_until_its_reveal_in_the_window(story):
    s = story
    sealed, revealed = s.sealed_seen, s.revealed_seen
    assert sealed is not None and revealed is not None
    assert (sealed.state, sealed.deposit, sealed.wh, sealed.price, sealed.green) == ("sealed", 40, None, None, None)
    assert sealed.t < s.gate(s.k), "sealed before the gate"
    assert (revealed.id, revealed.wh, revealed.price, revealed.green) == (order_id_of(s.orders["sealed"]), 6, 6, False)
    assert s.gate(s.k) <= revealed.t < s.gate(s.k) + REVEAL_S * 1000, "revealed within the window"


def test_each_fill_is_held_naming_payer_payee_wh_and_exp_with_the_clearings_time(story):
    s = story
    assert s.result is not None
    held = {name: next(st for st in s.v.trade_statuses(t.id) if st.state == "held") for name, t in s.trades.items()}
    for name, trade in s.trades.items():
        assert (held[name].payer, held[name].payee, held[name].msg) == (
            s.account(trade.payer),
            s.account(trade.payee),
            trade.msg,
        ), name
        if name != "ctp":
            assert (held[name].t, held[name].h) == (s.result.t, s.result.h), f"{name}: held by the clearing block"
    assert {n: (st.wh, st.exp) for n, st in held.items()} == {n: (t.wh, t.exp) for n, t in s.trades.items()}


def settled_wh(s: Story, seller: int) -> int:
    return sum(t.wh for t in s.trades.values() if t.payee == seller and t.end == "settled")


def test_sellers_export_records_and_the_erc_each_covers_settles(story):
    s = story
    for state in s.states:
        assert state.market is not None
        records = {m: (e.wh, e.total) for (m, k), e in state.market.exports.items() if k == s.k}
        meters = s.v.community.households
        assert records == {meters[h].meter_id: (wh, wh) for h, wh in s.exported.items()}
        used = {m: e.used for (m, k), e in state.market.exports.items() if k == s.k}
        assert used == {meters[h].meter_id: settled_wh(s, h) for h in s.exported}, "export used by settled trades"
    settled = {n for n, t in s.trades.items() if t.end == "settled"}
    late, oversold = fills_of(s, SOLAR_2)[-1], fills_of(s, GRID)[-1]
    assert settled == {n for n, t in s.trades.items() if t not in (late, oversold)}
    for trade in s.trades.values():
        assert retained_status(s, trade).state == trade.end


def test_an_erc_beyond_the_sellers_export_is_oversold_and_its_trade_refunded_at_expiry(story):
    s = story
    oversold = fills_of(s, GRID)[-1]
    assert s.reasons["erc beyond the export"] == "oversold"
    assert states(s, oversold) == ["held", "refunded"], s.v.signers(oversold.id)
    refunded = retained_status(s, oversold)
    assert (refunded.state, refunded.msg) == ("refunded", None) and refunded.t > oversold.exp


def test_an_erc_after_expiry_is_expired_and_refunded_in_the_same_block(story):
    s = story
    late = fills_of(s, SOLAR_2)[-1]
    assert s.reasons["erc after expiry"] == "expired"
    reject = s.v.rejects(message_hash(late.erc))[0]
    refunded = retained_status(s, late)
    assert (refunded.state, refunded.msg, refunded.t) == ("refunded", None, reject.t)
    assert refunded.t > late.exp


def test_a_direct_ctp_settles_only_after_its_payees_export(story):
    s = story
    ctp = s.trades["ctp"]
    assert s.reasons["ctp erc before export"] == "oversold"
    assert states(s, ctp) == ["held", "settled"], s.v.signers(ctp.id)
    settled = retained_status(s, ctp)
    assert (settled.state, settled.msg) == ("settled", message_hash(ctp.erc))
    assert settled.t >= s.gate(s.k + 1), "settled after the payee's export of K could be proved"


def test_every_validator_agrees_audits_and_keeps_the_money(story):
    s = story
    heads = {s.cli("head", validator=i) for i in range(VALIDATORS)}
    assert len(heads) == 1 and heads.pop().startswith("height "), heads
    for i in range(VALIDATORS):
        audit = s.cli("audit", validator=i)
        assert audit.startswith("audit ok") and f", {len(s.trades) - 2} trades," in audit, audit
    expected = {s.account(h): BALANCE for h in range(len(SOURCES))}
    for t in s.trades.values():
        if t.end == "settled":
            expected[s.account(t.payer)] -= t.amount
            expected[s.account(t.payee)] += t.amount
    genesis_total = BALANCE * len(SOURCES)
    for i, state in enumerate(s.states):
        assert sum(state.balances.values()) + sum(state.held.values()) == genesis_total, f"validator {i}"
        assert {a: (state.balances[a], state.held.get(a, 0)) for a in expected} == {
            a: (units, 0) for a, units in expected.items()
        }, f"validator {i}: every trade settled or refunded, every escrow released"
    # What each household's meter reads (decision 0010): the same money, from the block that last moved it.
    retained = {
        a: s.v.verifier.verify(s.retained[topics.account(a)], wall_ms(), expect=AccountStatus).body for a in expected
    }
    assert {a: (r.balance, r.held) for a, r in retained.items()} == {a: (units, 0) for a, units in expected.items()}
    for i, state in enumerate(s.states):
        assert {a: (r.h, r.t) for a, r in retained.items()} == {a: state.moved_at[a] for a in expected}, (
            f"validator {i}"
        )


def test_tokens_show_sold_within_minted(story):
    s = story
    solar = [h for h, src in enumerate(SOURCES) if src == "solar"]
    sold = {
        src: sum(t.wh for t in s.trades.values() if t.end == "settled" and SOURCES[t.payee] == src)
        for src in ("solar", "grid")
    }
    minted = {"solar": sum(s.exported[h] for h in solar), "grid": s.exported[GRID]}
    want = [f"{src} minted {minted[src]} sold {sold[src]}" for src in ("solar", "grid")]
    for i in range(VALIDATORS):
        assert s.cli("tokens", "--interval", s.k, validator=i).splitlines() == want, f"validator {i}"
    assert all(sold[src] <= minted[src] for src in sold) and sold["grid"] == minted["grid"]


def test_market_command_shows_the_book_and_the_retained_statuses(story):
    s = story
    assert s.clearing is not None
    outputs = {s.cli("market", "--interval", s.k, validator=i) for i in range(VALIDATORS)}
    assert len(outputs) == 1, "the validators' books differ"
    lines = outputs.pop().splitlines()
    for name in (n for n in s.orders if not n.endswith(" bid")):  # a sealed bid's bid shows under its seal
        order = retained_order(s, name)
        line = next((ln for ln in lines if ln.startswith(f"order {order.id.hex()} ")), None)
        assert line is not None and f" {order.state} filled {order.filled}" in line, (name, lines)
    green, other = s.clearing.products
    for p in (green, other):
        assert f"product {p.name} price {'-' if p.price is None else p.price} wh {p.wh}" in lines
    fills = [ln for ln in lines if ln.startswith("fill ")]
    assert sorted(ln.split()[1] for ln in fills) == sorted(t.id.hex() for n, t in s.trades.items() if n != "ctp")


def test_each_trades_retained_status_is_what_every_validator_stored(story):
    s = story
    for name, trade in s.trades.items():
        status = retained_status(s, trade)
        for i, state in enumerate(s.states):
            record = state.ctps[trade.id]
            assert (record.state, record.height, record.ctp.wh, record.ctp.amount) == (
                status.state,
                status.h,
                trade.wh,
                trade.amount,
            ), f"{name} on validator {i}"
        shown = dict(line.split(" ", 1) for line in s.cli("show", trade.id.hex()).splitlines())
        assert (shown["state"], int(shown["height"]), int(shown["wh"]), int(shown["amount"])) == (
            status.state,
            status.h,
            trade.wh,
            trade.amount,
        ), name
        assert (shown["payer"], shown["payee"], int(shown["exp"])) == (
            s.account(trade.payer).hex(),
            s.account(trade.payee).hex(),
            trade.exp,
        ), name
