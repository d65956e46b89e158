"""The agent on a MeterNode with a real store and no broker: it measures whole intervals, places
one order shortly before the gate through the outbox, never a second one for
the same interval (not after a restart either), and follows the policy as it changes."""

from __future__ import annotations

import pytest

from broker.clock import wall_ms
from broker.keys import load_key
from deploy.provision import provision
from edge import policy
from edge.agent import OrderIntent
from edge.agent_node import AgentNode
from edge.config import MeterConfig
from edge.energy import WMS_PER_WH, Totals
from edge.meter import MeterNode
from edge.policy import Policy
from edge.state_dir import MeterIdentity
from edge.store import MeterStore
from tests.support.meter import add_witnessed_batch
from wire import topics
from wire.messages import AccountStatus, Side

IMS = 10_000


@pytest.fixture
def node(tmp_path):
    """m0001 (source solar) with a witnessed key batch and its MeterNode (never connected: port 9)."""
    now = wall_ms()
    community = provision(tmp_path / "c", meters=2, accounts=None, validators=1, now_ms=now - 60_000)
    m1, m2 = (MeterIdentity.load(community.root / "meters" / m) for m in ("m0001", "m0002"))
    store = MeterStore(m1.db_path)
    add_witnessed_batch(store, m1, m2, now)
    store.close()
    config = MeterConfig(interval_s=IMS // 1000, resend_s=1, source="solar")
    node = MeterNode(m1, config, "127.0.0.1", 9, sense=lambda _e: (0, 0))
    yield node
    node.store.close()


def _wh(wh_in: int, wh_out: int = 0) -> Totals:
    return Totals(wh_in * WMS_PER_WH, wh_out * WMS_PER_WH)


def _measure(agent: AgentNode, k0: int, nets: list[tuple[int, int]]) -> None:
    """Totals seen just after the start of k0, k0+1, ...: the first interval is not whole."""
    for i, (wh_in, wh_out) in enumerate(nets):
        assert agent.tick((k0 + i) * IMS + 100, _wh(wh_in, wh_out)) == []


def test_the_agent_bids_the_forecast_shortfall_once_before_the_gate_through_the_outbox(node):
    policy.save(node.id.root / "config.toml", Policy(mode="auto", buy_max_price=2, max_spend_per_day=1000))
    k0 = wall_ms() // IMS + 1
    _measure(node.agent, k0, [(0, 0), (5, 0), (25, 0)])  # k0 not whole; k0+1: 20 Wh imported
    assert node.agent.lead_ms == 3000  # a tenth of 10 s is shorter than the 3 s floor
    early = (k0 + 3) * IMS - node.agent.lead_ms - 1
    assert node.agent.tick(early, _wh(39)) == []  # not yet a tenth before the gate
    assert node.store.orders_from(k0) == []
    # k0+2 under way, 7 s in: 14 Wh so far, 20 over the whole interval, as k0+1
    assert node.agent.tick(early + 1, _wh(39)) == [OrderIntent(Side.BID, k0 + 3, 20, 2)]
    [row] = node.store.orders_from(k0)
    assert (row.side, row.k, row.wh, row.price, row.green, row.bid) == ("bid", k0 + 3, 20, 2, 0, None)
    assert node.store.queued(row.msg)  # the outbox sends it
    assert node.agent.tick(early + 2, _wh(39)) == []  # planned once

    restarted = AgentNode(node.id, node.config, node.store, node.market.account)
    restarted.history = node.agent.history  # the same forecast: only the store can stop it
    assert restarted.tick(early + 3, _wh(39)) == []
    assert len(node.store.orders_from(k0)) == 1


def test_a_restarted_agent_without_history_places_nothing(node):
    policy.save(node.id.root / "config.toml", Policy(mode="auto", buy_max_price=2, max_spend_per_day=1000))
    k0 = wall_ms() // IMS + 1
    assert node.agent.tick((k0 + 1) * IMS - 1, _wh(1000)) == []
    assert node.store.orders_from(k0) == []


def test_a_surplus_is_asked_a_policy_change_applies_at_the_next_interval(node):
    path = node.id.root / "config.toml"
    policy.save(path, Policy(mode="auto", sell_min_price=3, reserve_w=360))  # 360 W over 10 s: 1 Wh kept
    k0 = wall_ms() // IMS + 1
    _measure(node.agent, k0, [(0, 0), (0, 0), (0, 8)])  # k0+1: 8 Wh exported
    # k0+2 under way, 9.999 s in: 8 Wh out so far, as k0+1
    assert node.agent.tick((k0 + 3) * IMS - 1, _wh(0, 16)) == [OrderIntent(Side.ASK, k0 + 3, 7, 3)]
    [row] = node.store.orders_from(k0)
    assert (row.side, row.wh, row.price) == ("ask", 7, 3) and node.store.queued(row.msg)

    policy.save(path, Policy(mode="manual", sell_min_price=3))
    assert node.agent.tick((k0 + 3) * IMS + 100, _wh(0, 16)) == []  # k0+2 measured: 8 Wh out
    assert node.agent.tick((k0 + 4) * IMS - 1, _wh(0, 24)) == []
    assert len(node.store.orders_from(k0)) == 1


def test_the_meter_runs_the_agent_in_its_housekeeping(node):
    policy.save(node.id.root / "config.toml", Policy(mode="auto", buy_max_price=1, max_spend_per_day=100))
    k0 = wall_ms() // IMS + 1
    _measure(node.agent, k0, [(0, 4), (0, 4), (0, 0)])  # k0+1: net 4 Wh in
    node.housekeeping((k0 + 3) * IMS - 1)  # the integrator's totals are 0: k0+2 is 0 so far
    [row] = node.store.orders_from(k0)
    assert (row.side, row.k, row.wh) == ("bid", k0 + 3, (4 + 0) // 2)
    assert topics.market_order(row.k, row.id) in node.market._watched  # followed in the same housekeeping


def test_the_interval_under_way_counts_extrapolated_once_half_measured(node):
    """The plan is made 90% into the interval before the target: what that interval measured
    so far, scaled to its length, is the latest of the recent intervals (toward zero)."""
    k0 = wall_ms() // IMS + 1
    _measure(node.agent, k0, [(0, 0), (0, 0), (0, 30)])  # k0+1: 30 Wh out
    before = node.agent.history
    assert node.agent._with_current((k0 + 2) * IMS + IMS // 2 - 1, _wh(0, 40)) == before  # not half yet
    now = (k0 + 2) * IMS + 3 * IMS // 4
    assert dict(node.agent._with_current(now, _wh(0, 40)).net)[k0 + 2] == -13  # 10 Wh in 3/4: 13.3
    assert dict(node.agent._with_current(now, _wh(7, 30)).net)[k0 + 2] == 9  # 7 Wh in: 9.3
    assert node.agent.history == before  # the plan's view only


def test_the_bid_is_capped_by_the_free_balance_the_ledger_last_told_less_unanswered_bids(node):
    """Decision 0010: 20 Wh short at 2 per Wh, a budget of 1000, but 31 units free: 15 Wh."""
    policy.save(node.id.root / "config.toml", Policy(mode="auto", buy_max_price=2, max_spend_per_day=1000))
    validator = load_key(node.id.root.parents[1] / "validators" / "v0" / "validator.key")
    me = node.market.account_pk
    node.market._on_account(
        topics.account(me), AccountStatus(account=me, balance=31, held=69, t=1, h=3).sign(validator), True
    )
    assert node.market.balance() == 31
    k0 = wall_ms() // IMS + 1
    _measure(node.agent, k0, [(0, 0), (5, 0), (25, 0), (45, 0)])  # 20 Wh a whole interval
    assert node.agent.tick((k0 + 4) * IMS - 1, _wh(65)) == [OrderIntent(Side.BID, k0 + 4, 15, 2)]
    # That bid is not answered yet: its 30 units are not free for the next one, whatever the status said.
    node.agent.tick((k0 + 4) * IMS + 100, _wh(65))
    assert node.agent.tick((k0 + 5) * IMS - 1, _wh(65)) == []
    node.market._on_account(
        topics.account(me), AccountStatus(account=me, balance=500, held=0, t=2, h=4).sign(validator), False
    )
    node.agent.tick((k0 + 5) * IMS + 100, _wh(85))
    assert node.agent.tick((k0 + 6) * IMS - 1, _wh(105)) == [OrderIntent(Side.BID, k0 + 6, 20, 2)]
