"""Households trading by themselves (issue 15) with real processes, once per module: six
`spb-meter run` meters with emulated ADCs (three producers with registered sources, solar,
solar and wind; three consumers), Mosquitto with the community's TLS and ACL, four `spb-ledger
run` validators, and every meter's policy in `mode = auto` with prices that cross, so each
order comes from a meter's own agent. The market's interval is 6 s.

The story: the street trades until a fill settled; a consumer is killed with
SIGKILL right after its agent placed an order for the next interval, before that gate, and
restarted on the same state dir; once it is back online, Mosquitto is stopped for 30 s and
started again on the same port and persistence dir. The street trades on until an interval
that began after the outage clears with fills; then every policy goes back to manual at once,
the last fills run to their end, the meters and the validators stop cleanly. Each test checks
one promise of the issue on what the meters' and the validators' databases hold: no order
lost or doubled, every fill settled or refunded, balances exact, audits pass on one head.

The clock is the market's, so the story waits for what the validators publish (results,
`online`), for the meters' stores, and once for the wall clock (the last fills' expiry).
The only fixed wait is the outage itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from hashlib import sha256

import pytest

from broker.clock import wall_ms
from broker.runtime import find_mosquitto
from edge.agent_node import MIN_LEAD_MS
from edge.store import SENT, OrderRow, SaleRow, TradeRow
from ledger.audit import AuditFailure, audit
from ledger.state import CtpRecord, LedgerState
from tests.support.bus import wait_for
from tests.support.street import OPENING, STREET, VALIDATORS, I, Street
from wire.messages import CtpState, OrderState

OUTAGE_S = 30
VICTIM = STREET[3]  # the consumer killed mid-interval
GRACE = 1  # the genesis' default: a fill of k expires at the end of k + 1 + GRACE
LEAD_MS = min(max(I // 10, MIN_LEAD_MS), I // 2)  # edge/agent_node.py: an agent plans this long before a gate


@dataclass
class Story:
    street: Street
    kill_k: int = 0  # the interval of the order the victim had just placed when killed
    kill_wall: int = 0
    before_kill: list[OrderRow] = field(default_factory=list)  # the victim's orders then
    down_wall: int = 0
    up_wall: int = 0
    outage_s: float = 0.0
    resumed_k: int = 0  # the first interval after the outage that cleared with fills
    orders: dict[str, list[OrderRow]] = field(default_factory=dict)  # meter -> its store's orders, at the end
    sales: dict[str, list[SaleRow]] = field(default_factory=dict)
    trades: dict[str, list[TradeRow]] = field(default_factory=dict)
    states: list[LedgerState] = field(default_factory=list)  # each validator's, stopped
    heads: list[tuple[int, bytes, bytes]] = field(default_factory=list)
    audits: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    phases: list[tuple[str, float]] = field(default_factory=list)  # (what, seconds since the start)

    def phase(self, what: str) -> None:
        self.phases.append((what, time.monotonic() - self.started))

    @property
    def ledger(self) -> LedgerState:
        return self.states[0]


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed: apt-get install mosquitto", pytrace=False)
    s = Story(Street(tmp_path_factory.mktemp("agents")))
    try:
        tell(s)
        yield s
    finally:
        s.street.close()


# ---- the story ----------------------------------------------------------------------------------


def tell(s: Story) -> None:
    street = s.street
    mark = len(street.inbox.messages)
    for i in range(VALIDATORS):
        street.start_validator(i)
    for h in STREET:
        street.start_meter(h)
    street.wait_online(mark)
    s.phase("started")
    # An agent orders only after one whole interval measured (edge/agent_node.py), and bids
    # once a peer vouched for its key batch: a few intervals after the start. A fill settles
    # once its buyer's meter counted the Wh and its seller's proved the export.
    wait_for(street.settled_fills, 90, lambda: f"a fill settled{street.procs.logs()}", interval=0.2)
    s.phase("first fill settled")
    kill_mid_interval(s)
    s.phase("victim killed and back")
    broker_outage(s)
    s.phase("outage over, everyone back")
    s.resumed_k = street.wait_result(
        lambda r: r.fills > 0 and r.k * I > s.up_wall, 60, "an interval after the outage cleared with fills"
    ).k
    s.phase("cleared with fills after the outage")
    wind_down(s)
    s.phase("wound down and stopped")
    read_back(s)


def kill_mid_interval(s: Story) -> None:
    """SIGKILL the victim right after its agent placed an order for the next interval, before
    that gate, and start it again on the same state dir."""
    street, meter = s.street, VICTIM.meter

    def fresh_order() -> OrderRow | None:
        now = wall_ms()
        return next((r for r in street.orders(meter) if r.k == now // I + 1 and now < r.k * I - 1000), None)

    placed = wait_for(fresh_order, 3 * I / 1000, lambda: f"{meter} placing an order{street.procs.logs()}")
    assert placed is not None
    street.procs.kill_9(street.meters[meter])
    s.kill_wall, s.kill_k = wall_ms(), placed.k
    assert s.kill_wall < placed.k * I, "killed after the gate: not mid-interval"
    s.before_kill = street.orders(meter)
    mark = len(street.inbox.messages)
    street.start_meter(VICTIM)
    wait_for(
        lambda: any(t.endswith(f"/{meter}/state") and p == b"online" for t, p, _ in street.inbox.messages[mark:]),
        30,
        lambda: f"{meter} online again{street.procs.logs()}",
    )


def broker_outage(s: Story) -> None:
    """Mosquitto away for OUTAGE_S, then back on the same port and persistence dir."""
    street = s.street
    broker = street.broker
    port, data_dir = broker.port, broker.data_dir
    assert port is not None and data_dir is not None
    down = time.monotonic()
    s.down_wall = wall_ms()
    broker.stop()
    time.sleep(max(0.0, down + OUTAGE_S - time.monotonic()))  # the outage: a scenario, not a wait
    for name, proc in {**street.meters, **{f"v{i}": p for i, p in street.validators.items()}}.items():
        assert proc.poll() is None, f"{name} died during the outage{street.procs.logs()}"
    mark = len(street.inbox.messages)
    broker.start(port, data_dir)
    s.up_wall = wall_ms()
    s.outage_s = time.monotonic() - down
    wait_for(street.monitor.connected.is_set, 20, "the monitor back")
    assert street.monitor.session_present, "Mosquitto lost the monitor's session over its restart"
    # Each client's reconnect backoff doubles from 1 s: the try 31 s after the drop finds the broker.
    street.wait_online(mark, timeout=60)


def wind_down(s: Story) -> None:
    """Every policy back to manual; then until every order was answered and cleared, every
    fill ended in the ledger and in its meters, and the meters and validators stopped."""
    street = s.street
    for h in STREET:
        street.set_policy(h.meter, mode="manual")
    # An agent reads its policy when it plans, a lead before the next gate: one that may have
    # planned before the switch placed an order for the next interval at the latest.
    now = wall_ms()
    last_k = now // I + (now >= (now // I + 1) * I - LEAD_MS - 500)
    last_exp = (last_k + 1 + GRACE) * I

    def still_open() -> str:
        """What is still open ("" once nothing is)."""
        if wall_ms() <= last_exp:
            return f"the clock before {last_exp}"
        state = street.state(0)
        assert state.market is not None
        held = [r.ctp.id.hex() for r in state.ctps.values() if r.state == CtpState.HELD]
        if held or state.market.pending:
            return f"held {held}, pending intervals {sorted(state.market.pending)}"
        for h in STREET:
            open_orders = [r.id.hex() for r in street.orders(h.meter) if r.state in (SENT, OrderState.OPEN)]
            open_trades = street.store_of(
                h.meter,
                lambda store: (
                    [t.id.hex() for t in store.trades() if t.state in (SENT, CtpState.HELD)]
                    + [x.id.hex() for x in store.sales() if x.state == CtpState.HELD]
                ),
            )
            if open_orders or open_trades:
                return f"{h.meter}: orders {open_orders}, trades {open_trades}"
        return ""

    wait_for(lambda: not still_open(), 60, lambda: f"{still_open()}{street.procs.logs()}", interval=0.5)
    s.phase("every order and fill ended")
    street.stop_all()


def read_back(s: Story) -> None:
    street = s.street
    for h in STREET:
        s.orders[h.meter] = street.orders(h.meter)
        s.sales[h.meter] = street.store_of(h.meter, lambda store: store.sales())
        s.trades[h.meter] = street.store_of(h.meter, lambda store: store.trades())
    for i in range(VALIDATORS):
        store = street.ledger(i)
        try:
            s.states.append(store.load())
            s.heads.append(store.head())
            try:
                report = audit(store)
                s.audits.append(f"ok: height {report.height}, {report.trades} trades")
            except AuditFailure as exc:
                s.audits.append(f"validator {i} failed: {exc}")
        finally:
            store.close()


# ---- what must hold ---------------------------------------------------------------------------


def fills(s: Story) -> dict[bytes, CtpRecord]:
    """The ledger's market fills, by trade id."""
    return {i: r for i, r in s.ledger.ctps.items() if r.fill is not None}


def test_the_street_traded_through_the_kill_and_the_outage(story):
    s = story
    assert s.outage_s >= OUTAGE_S
    results = s.street.results()
    traded = [k for k, r in results.items() if r.fills]
    assert any(k * I < s.kill_wall for k in traded), "no interval traded before the kill"
    assert s.resumed_k * I > s.up_wall and results[s.resumed_k].fills > 0
    assert fills(s), "no fill at all"
    settled = [r for r in fills(s).values() if r.state == CtpState.SETTLED]
    assert any(r.t < s.kill_wall for r in settled), "no fill settled before the kill"
    timeline = ", ".join(f"{what} {at:.0f} s" for what, at in s.phases)
    print(f"\n{timeline}; {len(fills(s))} fills, {len(settled)} settled")


def test_no_order_lost_or_doubled(story):
    """Every order a meter's store recorded reached the ledger: accepted once into the books
    (the same signed message) or rejected with a reason the validators published; the books
    hold no order its meter does not know; at most one order per meter and interval."""
    s = story
    market = s.ledger.market
    assert market is not None
    rejected: dict[bytes, set[str]] = {}  # H(message) -> why the validators refused it (`duplicate` too)
    for rejection in s.street.rejections():
        rejected.setdefault(rejection.msg, set()).add(rejection.reason)
    owner_meter = {account: meter for meter, account in s.street.account.items()}
    booked: dict[str, set[bytes]] = {h.meter: set() for h in STREET}
    per_interval: dict[tuple[str, int], int] = {}
    for order in market.orders.values():
        meter = owner_meter[order.owner]
        booked[meter].add(order.id)
        per_interval[meter, order.k] = per_interval.get((meter, order.k), 0) + 1
    assert {key: n for key, n in per_interval.items() if n > 1} == {}, "two orders of one meter in one interval"
    for h in STREET:
        rows = s.orders[h.meter]
        assert rows, f"{h.meter} placed no order"
        ks = [r.k for r in rows]
        assert len(ks) == len(set(ks)), f"{h.meter} recorded two orders for one interval: {sorted(ks)}"
        accepted = {r.id for r in rows if r.state != "rejected"}
        assert accepted == booked[h.meter], f"{h.meter}: its accepted orders are not the ledger's"
        for r in rows:
            if r.state == "rejected":
                assert r.reason in rejected.get(sha256(r.msg).digest(), ()), f"{h.meter}: {r.id.hex()} {r.reason}"
                continue
            book = market.orders[r.id]
            assert book.raw == r.msg, f"{h.meter}: order {r.id.hex()} in the book is another message"
            assert (r.state, r.filled) == (book.state, book.filled), f"{h.meter}: order {r.id.hex()}"


def test_the_killed_meter_kept_its_order_and_placed_no_second(story):
    s = story
    before = [r for r in s.before_kill if r.k == s.kill_k]
    after = [r for r in s.orders[VICTIM.meter] if r.k == s.kill_k]
    assert len(before) == 1 and [r.id for r in after] == [before[0].id]
    assert after[0].state != SENT


def test_orders_placed_during_the_outage_were_refused_at_their_closed_gate_only(story):
    """An order queued in an outbox while the broker was away reached the ledger after its
    gate: `gate-closed`, the one reason an order of the street may get."""
    s = story
    reasons = {r.reason for rows in s.orders.values() for r in rows if r.state == "rejected"}
    assert reasons <= {"gate-closed"}, reasons
    during = [r for rows in s.orders.values() for r in rows if s.down_wall < r.created < s.up_wall]
    assert during, "no agent placed an order while the broker was away"


def test_every_fill_ended_settled_or_refunded_after_its_expiry(story):
    s = story
    for trade_id, record in fills(s).items():
        assert record.state in (CtpState.SETTLED, CtpState.REFUNDED), trade_id.hex()
        if record.state == CtpState.REFUNDED:
            assert record.t > record.ctp.exp, f"{trade_id.hex()} refunded before its expiry"
        else:
            assert record.t <= record.ctp.exp, f"{trade_id.hex()} settled after its expiry"
    for state in s.states:
        assert set(state.held.values()) == {0}, "escrow still held"
        assert state.market is not None and not state.market.pending


def published_held(s: Story) -> set[bytes]:
    """The trades whose `held` status went out on the bus (the monitor's persistent session
    gets every status published). A block's status that a later block superseded before it
    was published never is (decision 0007): a clearing late enough that the next block (or
    the same one) refunds its fills leaves them with a final status only."""
    return {status.ctp for status in s.street.statuses() if status.state == CtpState.HELD}


def test_each_meter_knows_how_its_trades_ended(story):
    """Each fill's seller's and buyer's meters saw its end as the ledger says: from the final
    status, which names the parties (§9), also when its `held` status never went out; and the
    buyer confirmed or lost as its own trade every fill it knew was held."""
    s = story
    held = published_held(s)
    for h in STREET:
        account = s.street.account[h.meter]
        sold = {i: r.state for i, r in fills(s).items() if r.ctp.payee == account}
        bought = {i: r.state for i, r in fills(s).items() if r.ctp.payer == account}
        sales = {x.id: (x.role, x.state) for x in s.sales[h.meter]}
        assert sales == {i: ("sold", state) for i, state in sold.items()} | {
            i: ("bought", state) for i, state in bought.items()
        }, h.meter
        assert {t.id: t.state for t in s.trades[h.meter]} == {i: st for i, st in bought.items() if i in held}, h.meter


def test_balances_are_exact(story):
    """balance + held = opening + received - paid over the settled fills, on every validator;
    and all of it together is the genesis total."""
    s = story
    expected = dict.fromkeys(s.street.account.values(), OPENING)
    for record in fills(s).values():
        if record.state == CtpState.SETTLED:
            expected[record.ctp.payer] -= record.ctp.amount
            expected[record.ctp.payee] += record.ctp.amount
    assert expected != dict.fromkeys(expected, OPENING), "no money moved"
    for i, state in enumerate(s.states):
        assert {a: state.balances[a] + state.held[a] for a in expected} == expected, f"validator {i}"
        assert sum(state.balances.values()) + sum(state.held.values()) == OPENING * len(expected), f"validator {i}"


def test_every_validator_audits_on_one_head(story):
    s = story
    assert len(set(s.heads)) == 1, s.heads
    assert len(set(s.audits)) == 1 and s.audits[0].startswith("ok: ") and s.heads[0][0] > 0, s.audits
    for state in s.states[1:]:
        assert state.balances == s.ledger.balances and state.ctps == s.ledger.ctps
        assert state.market is not None and s.ledger.market is not None
        assert state.market.orders == s.ledger.market.orders
