"""The consensus simulation with market traffic (ledger.sim --market, ledger.sim_market):
a few seeds, Byzantine validators among them, keep the consensus properties, end with one
market state on every honest validator that keeps the market's invariants and that a
replay of the blocks gives again; the traffic really trades; and the market checks fail on
states that break them. A failing seed is replayed with `make sim SEED=n MARKET=1`."""

from __future__ import annotations

import re
from dataclasses import replace
from functools import lru_cache

import pytest

from ledger import sim
from ledger.market import MarketState
from ledger.state import LedgerState
from tests.support.consensus import market_sims
from wire.messages import CtpState

SEEDS = range(8)  # about half a second each; seeds 0-7 have every kind of Byzantine validator


def market(state: LedgerState) -> MarketState:
    assert state.market is not None, "a market chain's state"
    return state.market


@lru_cache(maxsize=1)
def runs() -> tuple[list[sim.Sim], list[str]]:
    return market_sims(SEEDS)


def test_market_seeds_keep_safety_liveness_and_the_market_invariants():
    sims, failures = runs()
    assert failures == [], "\n".join(failures)
    assert {s.byzantine for s in sims} >= {"twins", "forge", "silent"}, [s.describe() for s in sims]


def test_the_market_traffic_trades_across_the_seeds():
    """Every kind of market message is accepted in some seed and each kind of refusal the
    traffic provokes comes up; fills of the market settle, and oversold ERCs are refused."""
    sims, _ = runs()
    decided: dict = {}
    for s in sims:
        for key, count in s.decided().items():
            decided[key] = decided.get(key, 0) + count
    expected = [
        *((typ, None) for typ in ("ask", "bid", "seal", "reveal", "withdraw", "export", "erc")),
        ("ask", "not-source"),
        ("ask", "gate-closed"),
        ("bid", "insufficient-funds"),
        ("reveal", "reveal-mismatch"),
        ("withdraw", "not-owner"),
        ("export", "too-early"),
        ("erc", "oversold"),
    ]
    assert [key for key in expected if not decided.get(key)] == [], decided
    settled_fills = sum(
        record.fill is not None and record.state == CtpState.SETTLED
        for s in sims
        for record in s.honest_states()[0].ctps.values()
    )
    assert settled_fills > 0


def test_the_market_checks_catch_a_replica_whose_market_differs():
    s = next(s for s in runs()[0] if s.byzantine == "none")
    s.market_checks()
    exports = market(s.honest_states()[1])._exports  # in RAM: what the checks read first
    (key, export), *_ = exports.items()
    exports[key] = replace(export, used=export.used + 1)
    with pytest.raises(sim.Violation, match="exports differ"):
        s.market_checks()
    exports[key] = export


def test_the_market_checks_catch_holds_that_are_not_the_escrow_and_oversold_exports():
    s = next(s for s in runs()[0] if s.byzantine == "forge")
    states = s.honest_states()
    (key, export), *_ = market(states[0]).exports.items()
    for state in states:  # all alike: only the invariants can tell
        market(state)._exports[key] = replace(export, used=export.wh + 1)
    with pytest.raises(sim.Violation, match=f"{export.wh + 1} Wh used of {export.wh} proved"):
        s.market_checks()
    for state in states:
        market(state)._exports[key] = export
    account = next(iter(states[0].held))
    for state in states:
        state.held[account] += 1
        state.balances[account] -= 1
    with pytest.raises(sim.Violation, match="its escrow and held trades are"):
        s.market_checks()
    for state in states:
        state.held[account] -= 1
        state.balances[account] += 1
    s.market_checks()


def test_the_market_checks_catch_a_state_the_blocks_do_not_replay_to():
    s = next(s for s in runs()[0] if s.byzantine == "silent")
    states = s.honest_states()
    a, b = list(states[0].balances)[:2]
    for state in states:  # money moved outside any block, alike everywhere
        state.balances[a] -= 1
        state.balances[b] += 1
    with pytest.raises(sim.Violation, match="replaying the blocks gives other balances"):
        s.market_checks()


def test_a_market_seed_replays_exactly():
    def trace(seed: int):
        s = sim.Sim(seed, market=True)
        steps = s.run()
        return steps, [[b.chain_bytes() for b in n.chain] for n in s.nodes]

    assert trace(3) == trace(3)


def test_make_sim_market_replays_one_seed(capsys):
    assert sim.main(["--seed", "5", "--market"]) == 0
    assert re.fullmatch(r"seed 5 ok: byzantine .*, market; \d+ steps, height \d+\n", capsys.readouterr().out)
