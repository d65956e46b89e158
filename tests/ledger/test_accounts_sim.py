"""The consensus simulation with accounts after launch (ledger.sim --market, whose genesis
lists an operator; ledger.sim_accounts): a few seeds, Byzantine validators, crashes and
partitions among them, keep the consensus properties and end with the same accounts on
every honest validator, balances + holds = genesis + funded - withdrawn as their blocks
funded and paid out, and a database of their blocks that `spb-ledger audit` passes; the
operator's traffic really registers, funds, pays out, retires and rotates, and provokes
each refusal of docs/PROTOCOL.md §10.2; and the checks fail on states that break them. A
failing seed is replayed with `make sim SEED=n MARKET=1`."""

from __future__ import annotations

from collections import Counter
from functools import lru_cache

import pytest

from ledger import sim
from ledger.store import LedgerStore
from tests.support.consensus import market_sims
from wire.messages import Ask, CtpState

# test_market_sim.py runs seeds 0-7 of this chain; these have every Byzantine kind, crashes, a partition.
SEEDS = range(11, 17)


@lru_cache(maxsize=1)
def runs() -> tuple[list[sim.Sim], list[str]]:
    return market_sims(SEEDS)


def test_operator_seeds_keep_safety_liveness_and_the_accounts_invariants():
    sims, failures = runs()
    assert failures == [], "\n".join(failures)
    assert {s.byzantine for s in sims} >= {"twins", "forge", "silent"}, [s.describe() for s in sims]
    assert any(s.crashes for s in sims) and any(s.partitioned for s in sims), [s.describe() for s in sims]


def test_the_operator_traffic_moves_accounts_and_provokes_every_refusal():
    """Across the seeds each §10 message is accepted, each refusal the traffic provokes comes
    up (the old keys' and the retired account's messages included), and the forged operator
    message is refused at the door by every honest validator."""
    sims, _ = runs()
    decided: Counter = Counter()
    for s in sims:
        decided.update(s.decided())
    expected = [
        *((typ, None) for typ in ("register", "fund", "payout", "retire", "rotate")),
        *(("register", r) for r in ("cert", "meter-taken", "duplicate", "retired")),
        *(("fund", r) for r in ("duplicate", "unknown-account", "over-limit", "retired", "rotated")),
        *(("payout", r) for r in ("duplicate", "insufficient-funds")),
        ("retire", "duplicate"),
        *(("rotate", r) for r in ("duplicate", "key-taken", "retired")),
        ("bid", "rotated"),
        ("reveal", "rotated"),
        ("ask", "retired"),
    ]
    assert [key for key in expected if not decided[key]] == [], decided
    for s in sims:
        refusals = {reason for node in s.honest() for (typ, _), reason in node.refused.items() if typ == "fund"}
        assert refusals == {"not-operator"}, s.describe()


def test_added_households_and_new_keys_trade():
    """Every seed moves money in and out, rotates two keys (which end with nothing),
    retires household 2 and registers the two new meters; in some seed the registered
    solar meter's fills of the fourth interval settle, bought by the new keys, and fills
    of the old keys' bids settle, paid by the keys that replaced them."""
    sims, _ = runs()
    assert len(sim.workload(True).genesis.operators) == 1
    sold_by_new_meter = bought_by_new_keys = paid_for_old_keys = 0
    for s in sims:
        state = s.honest_states()[0]
        assert state.market is not None
        assert state.funded > 0 and state.withdrawn > 0, s.describe()
        assert len(state.rotated) == 2 and len(state.retired) == 1, s.describe()
        assert sorted(m.meter for m in state.registered) == ["m0007", "m0008"], s.describe()
        assert all(state.balances[old] == state.held[old] == 0 for old in state.rotated), s.describe()
        for record in state.ctps.values():
            if record.fill is None or record.state != CtpState.SETTLED:
                continue
            ask = state.market.orders[record.fill.ask[:16]].body
            assert isinstance(ask, Ask)
            if ask.meter == "m0007":
                sold_by_new_meter += record.fill.wh
                bought_by_new_keys += record.ctp.payer in state.rotated.values()
            paid_for_old_keys += record.ctp.payer in state.rotated
    assert sold_by_new_meter > 0 and bought_by_new_keys > 0 and paid_for_old_keys > 0


def _settled(s: sim.Sim) -> sim.Sim:
    s.market_checks()
    return s


def test_the_checks_catch_a_replica_whose_accounts_differ():
    s = _settled(next(s for s in runs()[0] if s.byzantine in ("none", "forge")))
    state = s.honest_states()[1]
    old, new = next(iter(state.rotated.items()))
    state.rotated[old] = old
    with pytest.raises(sim.Violation, match="rotated differ"):
        s.market_checks()
    state.rotated[old] = new
    s.market_checks()


def test_the_checks_catch_money_that_no_fund_brought_in():
    """Every honest validator alike credits 5 units and counts them funded: the bookkeeping
    adds up, but the funds its blocks accepted do not."""
    s = _settled(next(s for s in runs()[0] if s.byzantine == "silent"))
    states = s.honest_states()
    account = next(iter(states[0].balances))
    for state in states:
        state.balances[account] += 5
        state.funded += 5
    with pytest.raises(sim.Violation, match=r"accounts: funded \d+ withdrawn \d+; its blocks say"):
        s.market_checks()
    for state in states:
        state.balances[account] -= 5
        state.funded -= 5
    s.market_checks()


def test_the_checks_catch_a_database_the_audit_fails(monkeypatch):
    """A validator database missing its rotations (a store that dropped them): the audit
    of the honest blocks fails and the simulation says so."""
    s = _settled(runs()[0][0])
    monkeypatch.setattr(LedgerStore, "_write_accounts", lambda self, changes, height: None)
    fails = r"the audit of v\d's blocks fails: height \d+: the stored funds and payouts add up to 0 funded"
    with pytest.raises(sim.Violation, match=fails):
        s.market_checks()
