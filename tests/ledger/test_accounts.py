"""Accounts after launch in the ledger (docs/PROTOCOL.md §10, decision 0016), one block at a
time with real keys: each operator transaction's accept path and its reasons in order
(first failure wins), and what they do to trading: a registered meter sells from the next
block, a new account trades once funded, a retired account starts nothing while its open
trades and orders end normally, and a rotated key's account, open trades, orders and meters
follow the new key while the old key's messages are `rotated`. Every chain a test builds
audits and restarts to the same state. Built with tests/support/accounts.py: households
0 (solar), 1 (grid), 2 and 3 are in the genesis, 4 and 5 are registered later."""

from __future__ import annotations

from itertools import pairwise

import pytest

from ledger.audit import audit
from ledger.genesis import MAX_UNITS, MeterEntry
from ledger.state import LedgerState
from ledger.workload import SimCommunity, pk
from tests.support.accounts import AccountsChain, Operator, devcert, key, signing_as
from tests.support.ledger import NOW, revoke
from tests.support.market import BALANCE, I, K, Market, order_id
from wire import topics
from wire.messages import AccountStatus, CtpState, OrderState, Register, Rotate, open_message

GATE = K * I
FAR = NOW + 10 * I  # a CTP's expiry well after the blocks of a test


def accounts_of(state: LedgerState) -> tuple:
    """What §10 adds to a state, comparable between a live state and a restored one."""
    market = state.market
    assert market is not None
    return (
        (state.balances, state.held, state.funded, state.withdrawn, state.refs),
        (state.retired, state.rotated, state.registered, market.terms),
        (dict(market.exports), dict(market.tokens)),
    )


@pytest.fixture
def c() -> SimCommunity:
    return SimCommunity(6, NOW)


@pytest.fixture
def m(c) -> Market:
    return Market(c)


@pytest.fixture
def op(c) -> Operator:
    return Operator(c)


@pytest.fixture
def chain(tmp_path, c):
    chain = AccountsChain(tmp_path, c)
    yield chain
    assert audit(chain.store).height == chain.state.height, "every chain a test built audits"
    assert accounts_of(chain.store.load()) == accounts_of(chain.state), "and restarts to the same state"
    chain.store.close()


def acct(c: SimCommunity, h: int) -> bytes:
    return pk(c.households[h].account)


def statuses(chain: AccountsChain, account: bytes) -> list[tuple[int, int, int]]:
    """(balance, held, h) of every account status the chain published for `account`."""
    found = [open_message(p, AccountStatus).body for t, p, _ in chain.outputs if t == topics.account(account)]
    return [(s.balance, s.held, s.h) for s in found]


# -- register --


def test_a_registered_meter_asks_and_proves_export_from_the_next_block(chain, c, m, op):
    new = acct(c, 4)
    ask, export = m.ask(4, 10, 5, src="solar"), m.export(4, K - 2, 3, 3)
    reg = op.register(new, (4, "solar"))
    same_block = [("register", reg), ("ask", ask), ("export", export)]
    assert chain.block(NOW, *same_block) == [None, "not-source", "unknown-meter"]
    assert chain.money(new) == (0, 0) and statuses(chain, new) == [(0, 0, 1)]
    assert chain.state.registered == [MeterEntry("m0005", new, "solar")]
    assert chain.block(NOW + 1, ("ask", ask)) == ["duplicate"], "a rejected order is final until its gate"
    assert chain.block(NOW + 2, ("ask", m.ask(4, 10, 6, src="solar")), ("export", export)) == [None, None]
    assert chain.state.market.tokens[K - 2, "solar"] == [3, 0]


def test_register_adds_meters_to_an_existing_account(chain, c, m, op):
    reg = op.register(acct(c, 3), (4, "grid"), (5, ""))
    assert chain.block(NOW, ("register", reg)) == [None]
    assert chain.money(acct(c, 3)) == (BALANCE, 0), "an account it adds meters to keeps its money"
    assert chain.block(NOW + 1, ("ask", m.ask(3, 4, 5, src="grid", meter="m0005"))) == [None]
    assert chain.block(NOW + 2, ("register", reg)) == ["duplicate"]


def test_register_reasons_in_order(chain, c, op):
    taken, rotated, retired = acct(c, 4), acct(c, 2), acct(c, 3)
    setup = [
        ("register", op.register(taken, (4, "solar"))),
        ("retire", op.retire(retired)),
        ("rotate", op.rotate(rotated, pk(key("new 2")))),
        ("revoke", revoke(c, 5, NOW - 1)),  # household 5's device key
    ]
    assert chain.block(NOW, *setup) == [None] * 4
    fresh = devcert(c, "m0099", key("device 99"))
    forged = devcert(c, "m0098", key("device 98"), issuer=key("not the CA"))
    stranger = Operator(c, key("stranger"))
    cases = [
        op.register(rotated, (forged, "")),  # rotated, before cert
        op.register(retired, (forged, "")),  # retired, before cert
        op.register(acct(c, 5), (forged, ""), (0, "solar")),  # cert: not by a trusted CA, before meter-taken
        op.register(acct(c, 5), (5, "")),  # cert: the device key is revoked
        op.register(acct(c, 5), (fresh, ""), (fresh, "solar")),  # meter-taken: named twice
        op.register(taken, (4, "solar"), (0, "solar")),  # meter-taken: m0001 is household 0's, before duplicate
        op.register(taken, (4, "solar")),  # duplicate
        op.register(taken, (4, "grid")),  # duplicate: the meter is the account's already (its source stays)
        op.register(taken),  # duplicate: the account exists and names no new meter
        stranger.register(acct(c, 5)),  # not-operator
    ]
    assert chain.block(NOW + 1, *[("register", x) for x in cases]) == [
        "rotated",
        "retired",
        *["cert"] * 2,
        *["meter-taken"] * 2,
        *["duplicate"] * 3,
        "not-operator",
    ]
    assert acct(c, 5) not in chain.state.balances, "a rejected register opens nothing"
    assert chain.block(NOW + 2, ("register", op.register(acct(c, 5), (fresh, "solar"), (4, "solar")))) == [
        "meter-taken"
    ]
    assert chain.block(NOW + 3, ("register", op.register(acct(c, 5), (fresh, "solar")))) == [None]
    assert chain.state.market.terms.meter("m0099") == MeterEntry("m0099", acct(c, 5), "solar")


def test_an_operator_message_signed_by_another_key_is_a_bad_signature(chain, c, op):
    forged = Register(op=op.op, account=acct(c, 4), meters=[], t=NOW).sign(key("stranger"))
    assert chain.block(NOW, ("register", forged)) == ["signature"]


# -- fund and payout --


def test_fund_credits_once_per_reference_and_reasons_in_order(chain, c, op):
    chain.block(NOW, ("retire", op.retire(acct(c, 3))), ("rotate", op.rotate(acct(c, 2), pk(key("new 2")))))
    fund = op.fund(acct(c, 0), 25, "bank-1")
    assert chain.block(NOW + 1, ("fund", fund), ("fund", op.fund(acct(c, 1), 5, "bank-1"))) == [None, "duplicate"]
    assert chain.money(acct(c, 0)) == (BALANCE + 25, 0) and chain.state.funded == 25
    assert statuses(chain, acct(c, 0))[-1] == (BALANCE + 25, 0, 2)
    room = MAX_UNITS - chain.state.expected_total()
    cases = [
        fund,  # duplicate: the same message again
        op.fund(acct(c, 2), 1, "bank-1"),  # rotated, before duplicate
        op.fund(acct(c, 5), 1, "bank-1"),  # unknown-account, before duplicate
        op.fund(acct(c, 3), 1, "bank-1"),  # retired, before duplicate
        op.fund(acct(c, 1), room + 1, "bank-1"),  # duplicate, before over-limit
        op.fund(acct(c, 1), room + 1, "bank-2"),  # over-limit
        Operator(c, key("stranger")).fund(acct(c, 1), 1, "bank-3"),  # not-operator
    ]
    assert chain.block(NOW + 2, *[("fund", x) for x in cases]) == [
        "duplicate",
        "rotated",
        "unknown-account",
        "retired",
        "duplicate",
        "over-limit",
        "not-operator",
    ]
    assert chain.state.funded == 25
    both = [("fund", op.fund(acct(c, 1), room - 1, "bank-4")), ("fund", op.fund(acct(c, 1), 2, "bank-5"))]
    assert chain.block(NOW + 3, *both) == [None, "over-limit"], "the limit counts the block's funds so far"
    assert chain.state.total() == MAX_UNITS - 1 == chain.state.expected_total()
    assert chain.block(NOW + 4, ("payout", op.payout(acct(c, 1), room - 1, "bank-4"))) == [None], "refs are per type"


def test_payout_pays_free_money_once_per_reference_and_reasons_in_order(chain, c, m, op):
    chain.block(NOW, ("bid", m.bid(0, 10, 7)), ("rotate", op.rotate(acct(c, 2), pk(key("new 2")))))
    assert chain.money(acct(c, 0)) == (BALANCE - 70, 70)
    cases = [
        op.payout(acct(c, 0), BALANCE - 69, "out-1"),  # insufficient-funds: held money is not paid out
        op.payout(acct(c, 0), BALANCE - 70, "out-1"),  # all that is free
        op.payout(acct(c, 1), 1, "out-1"),  # duplicate
        op.payout(acct(c, 2), 1, "out-2"),  # rotated
        op.payout(acct(c, 5), 1, "out-2"),  # unknown-account
        op.payout(acct(c, 1), BALANCE + 1, "out-1"),  # duplicate, before insufficient-funds
    ]
    assert chain.block(NOW + 1, *[("payout", x) for x in cases]) == [
        "insufficient-funds",
        None,
        "duplicate",
        "rotated",
        "unknown-account",
        "duplicate",
    ]
    assert chain.money(acct(c, 0)) == (0, 70)
    assert (chain.state.withdrawn, chain.state.expected_total()) == (BALANCE - 70, 4 * BALANCE - (BALANCE - 70))
    assert chain.state.refs == {("payout", "out-1")}


def test_a_retired_account_is_paid_out(chain, c, op):
    chain.block(NOW, ("retire", op.retire(acct(c, 3))))
    assert chain.block(NOW + 1, ("payout", op.payout(acct(c, 3), BALANCE, "close-3"))) == [None]
    assert chain.money(acct(c, 3)) == (0, 0) and chain.state.withdrawn == BALANCE


# -- retire --


def test_retire_reasons_in_order(chain, c, op):
    assert chain.block(NOW, ("retire", op.retire(acct(c, 3)))) == [None]
    assert chain.state.retired == {acct(c, 3): 1}
    chain.block(NOW + 1, ("rotate", op.rotate(acct(c, 2), pk(key("new 2")))))
    cases = [op.retire(acct(c, 3)), op.retire(acct(c, 3), t=NOW + 1), op.retire(acct(c, 2)), op.retire(acct(c, 5))]
    assert chain.block(NOW + 2, *[("retire", x) for x in cases]) == [
        "duplicate",
        "duplicate",
        "rotated",
        "unknown-account",
    ]


def test_a_retired_account_starts_nothing_and_its_open_trades_end_normally(chain, c, m, op):
    settles = c.ctp(3, 0, amount=10, wh=0, exp=FAR)
    refunds = c.ctp(3, 1, amount=20, wh=0, exp=NOW + 5)
    cancelled = c.ctp(3, 1, amount=30, wh=0, exp=NOW + 5)
    paid = c.ctp(0, 3, amount=7, wh=0, exp=FAR)
    bid, ask = m.bid(3, 10, 7), m.ask(0, 10, 5)
    opened = [("ctp", x) for x in (settles, refunds, cancelled, paid)] + [("bid", bid), ("ask", ask)]
    assert chain.block(NOW, *opened) == [None] * 6
    assert chain.block(NOW + 1, ("retire", op.retire(acct(c, 3)))) == [None]
    seal, _ = m.seal(3, m.bid(3, 1, 1), deposit=5)
    starts = [
        ("ctp", c.ctp(3, 0, amount=1, wh=0, exp=FAR)),
        ("ctp", c.ctp(0, 3, amount=1, wh=0, exp=FAR)),
        ("ask", m.ask(3, 1, 1, src="solar")),
        ("bid", m.bid(3, 1, 1)),
        ("seal", seal),
        ("fund", op.fund(acct(c, 3), 1, "f")),
        ("register", op.register(acct(c, 3), (4, "solar"))),
        ("rotate", op.rotate(acct(c, 3), pk(key("new 3")))),
    ]
    assert chain.block(NOW + 2, *starts) == ["retired"] * len(starts)
    assert chain.block(NOW + 3, ("erc", c.erc(settles)), ("erc", c.erc(paid))) == [None, None]
    assert chain.block(NOW + 6, ("cancel", c.cancel(cancelled))) == [None], "a retired payer cancels"
    assert chain.state.record(open_message(refunds).body.id).state == CtpState.REFUNDED
    chain.block(GATE)  # the retired buyer's bid clears against the ask
    assert chain.state.market.orders[order_id(bid)].state == OrderState.FILLED
    [fill] = [r for r in chain.state.ctps.values() if r.fill is not None]
    end = (K + 1) * I
    assert chain.block(end, ("export", m.export(0, K, 10, 10)), ("erc", m.erc(3, fill.ctp.id, 10))) == [None, None]
    left = BALANCE - 10 + 7 - fill.ctp.amount
    assert chain.money(acct(c, 3)) == (left, 0)
    assert chain.block(end + 1, ("payout", op.payout(acct(c, 3), left, "close-3"))) == [None]
    assert chain.money(acct(c, 3)) == (0, 0)


# -- rotate --


def test_rotate_by_the_old_key_or_an_operator_and_reasons_in_order(chain, c, op):
    new0, new1 = key("new 0"), key("new 1")
    old0 = c.households[0].account
    chain.block(NOW, ("retire", op.retire(acct(c, 3))), ("register", op.register(acct(c, 4))))
    by_self = op.rotate(acct(c, 0), pk(new0), by=old0)
    assert chain.block(NOW + 1, ("rotate", by_self), ("rotate", op.rotate(acct(c, 1), pk(new1)))) == [None, None]
    assert chain.money(acct(c, 0)) == (0, 0) and chain.money(pk(new0)) == (BALANCE, 0)
    assert statuses(chain, acct(c, 0))[-1] == (0, 0, 2) and statuses(chain, pk(new0)) == [(BALANCE, 0, 2)]
    assert chain.state.rotated == {acct(c, 0): pk(new0), acct(c, 1): pk(new1)}
    stranger = key("stranger")
    cases = [
        by_self,  # duplicate: the same message
        op.rotate(acct(c, 0), pk(new0)),  # duplicate: the same rotation, signed by the operator
        op.rotate(acct(c, 0), pk(key("other")), by=old0),  # rotated
        op.rotate(acct(c, 2), acct(c, 4)),  # key-taken: an account
        op.rotate(acct(c, 2), acct(c, 1)),  # key-taken: a replaced key
        op.rotate(acct(c, 2), pk(new0)),  # key-taken: a rotation's new key
        op.rotate(acct(c, 2), acct(c, 2)),  # key-taken: itself
        op.rotate(acct(c, 3), pk(key("new 3"))),  # retired
        op.rotate(acct(c, 5), pk(key("new 5"))),  # unknown-account
        Rotate(account=acct(c, 2), new=pk(key("x")), by=pk(stranger), t=NOW).sign(stranger),  # not-operator
        op.rotate(acct(c, 2), pk(key("x")), by=c.households[1].account),  # not-operator: another household
        Rotate(account=acct(c, 2), new=pk(key("x")), by=acct(c, 2), t=NOW).sign(stranger),  # signature
    ]
    assert chain.block(NOW + 2, *[("rotate", x) for x in cases]) == [
        "duplicate",
        "duplicate",
        "rotated",
        *["key-taken"] * 4,
        "retired",
        "unknown-account",
        "not-operator",
        "not-operator",
        "signature",
    ]


def test_rotations_chain_within_one_block(chain, c, op):
    a, b = key("a"), key("b")
    steps = [op.rotate(acct(c, 2), pk(a)), op.rotate(acct(c, 2), pk(b)), op.rotate(pk(a), pk(b), by=a)]
    assert chain.block(NOW, *[("rotate", x) for x in steps]) == [None, "rotated", None]
    assert chain.state.current(acct(c, 2)) == chain.state.current(pk(a)) == pk(b)
    assert [chain.money(x) for x in (acct(c, 2), pk(a), pk(b))] == [(0, 0), (0, 0), (BALANCE, 0)]
    assert chain.block(NOW + 1, ("rotate", op.rotate(pk(a), pk(key("c"))))) == ["rotated"]


def test_a_rotated_key_is_rotated_and_the_new_key_takes_over_its_trades_and_orders(chain, c, m, op):
    old, new = c.households[0].account, key("new 0")
    expired = c.ctp(0, 1, amount=10, wh=0, exp=NOW + 5)
    held = c.ctp(0, 1, amount=20, wh=0, exp=FAR)
    to_old = c.ctp(1, 0, amount=30, wh=0, exp=FAR)
    ask, bid, later = m.ask(0, 10, 5), m.bid(3, 10, 7), m.bid(0, 2, 3, k=K + 1)
    opened = [("ctp", expired), ("ctp", held), ("ctp", to_old), ("ask", ask), ("bid", bid), ("bid", later)]
    assert chain.block(NOW, *opened) == [None] * 6
    before = chain.money(acct(c, 0))
    assert before == (BALANCE - 30 - 6, 30 + 6)
    assert chain.block(NOW + 1, ("rotate", op.rotate(pk(old), pk(new), by=old))) == [None]
    assert chain.money(pk(old)) == (0, 0) and chain.money(pk(new)) == before, "balance and holds move"
    by_old = [
        ("ctp", c.ctp(0, 1, amount=1, wh=0, exp=FAR)),  # rotated: as payer
        ("ctp", c.ctp(1, 0, amount=1, wh=0, exp=FAR)),  # rotated: as payee
        ("cancel", c.cancel(expired)),  # rotated, before too-early
        ("ask", m.ask(0, 1, 1, k=K + 1)),
        ("bid", m.bid(0, 1, 1, k=K + 1)),
        ("withdraw", m.withdraw(0, later)),
        ("rotate", op.rotate(pk(old), pk(key("other")), by=old)),
    ]
    assert chain.block(NOW + 2, *by_old) == ["rotated"] * len(by_old)
    with signing_as(c, 0, new):
        assert chain.block(NOW + 3, ("withdraw", m.withdraw(0, later))) == [None], "the new key owns the old's orders"
        assert chain.block(NOW + 6, ("cancel", c.cancel(expired, by=0))) == [None], "and cancels its CTPs"
        assert chain.block(NOW + 7, ("ask", m.ask(0, 3, 4, k=K + 1))) == [None], "and sells from its meters"
    assert chain.money(pk(new)) == (BALANCE - 20, 20)
    assert chain.block(NOW + 8, ("erc", c.erc(held)), ("erc", c.erc(to_old))) == [None, None]
    assert chain.money(pk(new)) == (BALANCE - 20 + 30, 0), "the payer's hold and the old payee's pay moved"
    chain.block(GATE)  # the old key's ask fills
    [fill] = [r for r in chain.state.ctps.values() if r.fill is not None]
    assert (fill.ctp.payer, fill.ctp.payee) == (acct(c, 3), pk(old)), "a fill names its orders' signers"
    end = (K + 1) * I
    assert chain.block(end, ("export", m.export(0, K, 10, 10)), ("erc", m.erc(3, fill.ctp.id, 10))) == [None, None]
    assert chain.money(pk(new)) == (BALANCE + 10 + fill.ctp.amount, 0) and chain.money(pk(old)) == (0, 0)
    assert all(s[:2] == (0, 0) for s in statuses(chain, pk(old))[1:]), "the old key's status stays empty"


def test_a_ctp_to_a_payee_rotated_in_the_block_of_its_erc_is_delivered_from_its_meters(chain, c, m, op):
    ctp = c.ctp(3, 0, amount=10, wh=6, exp=FAR)
    assert chain.block(NOW, ("ctp", ctp)) == [None]
    end = (K + 1) * I
    chain.block(end - I, ("export", m.export(0, K - 1, 4, 4)))  # interval K - 1 holds the CTP's block
    new = key("new 0")
    rotate = op.rotate(acct(c, 0), pk(new))
    with signing_as(c, 0, new):
        ask = m.ask(0, 1, 1, k=K + 2)
    same_block = [("rotate", rotate), ("export", m.export(0, K, 2, 6)), ("erc", c.erc(ctp)), ("ask", ask)]
    assert chain.block(end, *same_block) == [None] * 4, "the new key sells from its meter in the rotation's block"
    again = op.register(pk(new), (0, "solar"))
    assert chain.block(end + 1, ("register", again)) == ["duplicate"], "the meter is the new key's"
    assert chain.money(pk(new)) == (BALANCE + 10, 0)
    exports = chain.state.market.exports
    assert (exports["m0001", K - 1].used, exports["m0001", K].used) == (4, 2), "the meter now under the new key"


def test_a_ctp_to_a_rotated_payee_is_delivered_from_its_meters_after_the_rotation(chain, c, m, op):
    ctp = c.ctp(3, 0, amount=10, wh=6, exp=FAR)
    assert chain.block(NOW, ("ctp", ctp), ("rotate", op.rotate(acct(c, 0), pk(key("new 0"))))) == [None, None]
    assert chain.state.market.terms.meters_of(pk(key("new 0"))) == (MeterEntry("m0001", pk(key("new 0")), "solar"),)
    assert chain.state.market.terms.meters_of(acct(c, 0)) == ()
    end = (K + 1) * I
    assert chain.block(end, ("erc", c.erc(ctp))) == ["oversold"]
    assert chain.block(end + 1, ("export", m.export(0, K, 6, 6)), ("erc", c.erc(ctp, by=3))) == [None, None]
    assert chain.money(pk(key("new 0"))) == (BALANCE + 10, 0)


# -- a new account trades --


def test_a_new_account_trades_once_funded(chain, c, m, op):
    new = acct(c, 4)
    assert chain.block(NOW, ("register", op.register(new, (4, "solar")))) == [None]
    broke = c.ctp(4, 0, amount=10, wh=0, exp=FAR)
    assert chain.block(NOW + 1, ("ctp", broke)) == ["insufficient-funds"]
    buys, sells = c.ctp(4, 0, amount=10, wh=0, exp=FAR), c.ctp(0, 4, amount=5, wh=2, exp=FAR)
    block = [("fund", op.fund(new, 100, "bank-4")), ("ctp", buys), ("ctp", sells)]
    assert chain.block(NOW + 2, *block) == [None, None, None]
    assert chain.money(new) == (90, 10)
    end = (K + 1) * I
    assert chain.block(end, ("export", m.export(4, K, 2, 2)), ("erc", c.erc(buys)), ("erc", c.erc(sells))) == [None] * 3
    assert chain.money(new) == (95, 0)
    assert statuses(chain, new) == [(0, 0, 1), (90, 10, 3), (95, 0, 4)]


def test_a_household_rotating_its_key_a_hundred_times_in_one_block_moves_its_money_once(chain, c, op):
    """No chain of rotations is too long to follow: each key points at the account's current one."""
    held = c.ctp(0, 1, amount=10, wh=0, exp=NOW + 5)
    assert chain.block(NOW, ("ctp", held)) == [None]
    keys = [c.households[0].account, *(key(f"step {i}") for i in range(100))]
    steps = [op.rotate(pk(old), pk(new), by=old, t=NOW + 6) for old, new in pairwise(keys)]
    again = op.rotate(acct(c, 0), pk(key("other")), t=NOW + 6)
    reasons = chain.block(NOW + 6, *[("rotate", x) for x in steps], ("rotate", again))  # the CTP refunds too
    assert reasons == [None] * 100 + ["rotated"]
    assert chain.state.current(acct(c, 0)) == chain.state.current(pk(keys[50])) == pk(keys[-1])
    assert chain.money(pk(keys[-1])) == (BALANCE, 0) and all(chain.money(pk(k)) == (0, 0) for k in keys[:-1])
