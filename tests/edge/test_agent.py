"""The agent against generated policies, forecasts, balances and orders: never outside the policy
or the budget, never more than the forecast surplus minus the reserve, one order an interval,
deterministic."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edge.agent import MAX_ORDER_WH, OrderIntent, plan, reserve_wh, spent_on_day
from edge.policy import Policy
from edge.store import SENT, OrderRow
from wire.messages import OrderState, Side

INTERVAL_S = 300
INTERVAL_MS = INTERVAL_S * 1000
PER_DAY = 288


def _order(side, k, wh, price, state=SENT, filled=0):
    return OrderRow(
        id=bytes(16), side=side, k=k, wh=wh, price=price, green=0, msg=b"", bid=None, nonce=None,
        reveal=None, withdraw=None, root=None, state=state, reason="", filled=filled, status_t=0,
        sent=0, created=0, changed=0,
    )  # fmt: skip


AUTO = Policy(mode="auto", sell_min_price=5, buy_max_price=10, reserve_w=120, max_spend_per_day=1000)


def test_manual_places_nothing():
    assert plan(Policy(buy_max_price=10, max_spend_per_day=10**6), 50, 10**6, [], 0, 7, INTERVAL_S, True) == []


def test_a_surplus_is_asked_at_the_floor_less_the_reserve():
    # 120 W over 300 s = 10 Wh kept
    assert plan(AUTO, -50, 0, [], 0, 7, INTERVAL_S, True) == [OrderIntent(Side.ASK, 7, 40, 5)]
    assert plan(AUTO, -10, 0, [], 0, 7, INTERVAL_S, True) == []
    assert plan(AUTO, -50, 0, [], 0, 7, INTERVAL_S, can_sell=False) == []


def test_the_reserve_rounds_up():
    assert reserve_wh(1, 300) == 1 and reserve_wh(12, 300) == 1 and reserve_wh(13, 300) == 2 and reserve_wh(0, 1) == 0


def test_a_shortfall_is_bid_at_the_limit_within_budget_and_balance():
    assert plan(AUTO, 50, 10**6, [], 0, 7, INTERVAL_S, True) == [OrderIntent(Side.BID, 7, 50, 10)]
    assert plan(AUTO, 500, 10**6, [], 0, 7, INTERVAL_S, True) == [OrderIntent(Side.BID, 7, 100, 10)]
    assert plan(AUTO, 500, 10**6, [], 950, 7, INTERVAL_S, True) == [OrderIntent(Side.BID, 7, 5, 10)]
    assert plan(AUTO, 500, 239, [], 0, 7, INTERVAL_S, True) == [OrderIntent(Side.BID, 7, 23, 10)]
    assert plan(AUTO, 500, 10**6, [], 995, 7, INTERVAL_S, True) == []
    assert plan(AUTO, 500, 10**6, [], 2000, 7, INTERVAL_S, True) == []  # over budget: nothing, no error


def test_no_order_is_over_the_wires_wh_limit():
    rich = Policy(mode="auto", buy_max_price=1, max_spend_per_day=10**12)
    assert plan(rich, 10**11, 10**12, [], 0, 7, INTERVAL_S, True)[0].wh == MAX_ORDER_WH
    assert plan(rich, -(10**11), 0, [], 0, 7, INTERVAL_S, True)[0].wh == MAX_ORDER_WH


def test_green_only_and_sealed_shape_the_bid():
    policy = Policy(mode="auto", buy_max_price=3, max_spend_per_day=30, green_only=True, sealed=True)
    assert plan(policy, 50, 100, [], 0, 7, INTERVAL_S, True) == [OrderIntent(Side.BID, 7, 10, 3, True, True)]


def test_a_buy_limit_of_0_never_buys():
    assert plan(Policy(mode="auto", max_spend_per_day=100), 50, 100, [], 0, 7, INTERVAL_S, True) == []


def test_an_interval_with_an_order_of_ours_gets_no_other():
    assert plan(AUTO, 50, 10**6, [_order(Side.ASK, 7, 1, 1, OrderState.WITHDRAWN)], 0, 7, INTERVAL_S, True) == []
    assert plan(AUTO, 50, 10**6, [_order(Side.BID, 6, 1, 1)], 0, 7, INTERVAL_S, True) != []


def test_spent_on_day_counts_held_and_filled_escrow_of_that_days_bids():
    orders = [
        _order(Side.BID, 1, 10, 3),  # sent: 30
        _order(Side.BID, 2, 10, 3, OrderState.SEALED),  # 30
        _order(Side.BID, 3, 10, 3, OrderState.PARTIAL, filled=4),  # 12
        _order(Side.BID, 4, 10, 3, OrderState.FILLED, filled=10),  # 30
        _order(Side.BID, 5, 10, 3, OrderState.UNFILLED),
        _order(Side.BID, 6, 10, 3, OrderState.WITHDRAWN),
        _order(Side.BID, 7, 10, 3, "rejected"),
        _order(Side.ASK, 8, 10, 3),
        _order(Side.BID, PER_DAY, 10, 3),  # tomorrow
    ]
    assert spent_on_day(orders, 0, INTERVAL_MS) == 102
    assert spent_on_day(orders, 1, INTERVAL_MS) == 30


policies = st.builds(
    Policy,
    mode=st.sampled_from(["auto", "manual"]),
    sell_min_price=st.integers(0, 1000),
    buy_max_price=st.integers(0, 1000),
    green_only=st.booleans(),
    reserve_w=st.integers(0, 20_000),
    max_spend_per_day=st.integers(0, 10**7),
    sealed=st.booleans(),
)
states = st.sampled_from([SENT, *OrderState, "rejected"])
order_rows = st.builds(
    _order, st.sampled_from([Side.ASK, Side.BID]), st.integers(0, 2 * PER_DAY), st.integers(1, 10**4),
    st.integers(0, 1000), states, st.integers(0, 10**4),
)  # fmt: skip


@given(
    policies,
    st.one_of(st.integers(-(10**6), 10**6), st.integers(-(10**11), 10**11)),
    st.integers(0, 10**13),
    st.lists(order_rows, max_size=8),
    st.integers(0, 2 * PER_DAY),
    st.booleans(),
)
def test_the_plan_never_leaves_the_policy_the_budget_or_the_forecast(policy, forecast_wh, balance, orders, k, can_sell):
    spent = spent_on_day(orders, k * INTERVAL_MS // 86_400_000, INTERVAL_MS)
    intents = plan(policy, forecast_wh, balance, orders, spent, k, INTERVAL_S, can_sell)
    assert intents == plan(policy, forecast_wh, balance, list(orders), spent, k, INTERVAL_S, can_sell)
    assert len(intents) <= 1
    if policy.mode == "manual" or any(o.k == k for o in orders):
        assert intents == []
    for intent in intents:
        assert intent.k == k and 0 < intent.wh <= MAX_ORDER_WH
        assert all(isinstance(v, int) for v in (intent.k, intent.wh, intent.price))
        if intent.side == Side.ASK:
            assert can_sell and intent.price >= policy.sell_min_price
            assert intent.wh <= -forecast_wh - policy.reserve_w * INTERVAL_S / 3600
            assert (intent.green, intent.sealed) == (False, False)
        else:
            assert forecast_wh > 0 and intent.wh <= forecast_wh
            assert 0 < intent.price <= policy.buy_max_price
            assert spent + intent.wh * intent.price <= policy.max_spend_per_day
            assert intent.wh * intent.price <= balance
            assert (intent.green, intent.sealed) == (policy.green_only, policy.sealed)
