"""The deterministic simulation of four validators (ledger.sim): thousands of seeds, each a
different mix of delays, drops, duplicates, crashes, partitions, skewed clocks and one
Byzantine validator, must keep safety after every step and decide every transaction once
healed. A failing seed is replayed exactly with `make sim SEED=n`."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor

import pytest

from ledger import sim
from ledger.replica import Replica

SEEDS = 2000  # about 100 ms each; two worker processes on CI's two cores


def _run(seeds: range) -> list[str]:
    failures = []
    for seed in seeds:
        try:
            sim.run_seed(seed)
        except sim.Violation as exc:
            failures.append(f"{exc}  (replay: make sim SEED={seed})")
    return failures


def test_thousands_of_seeds_keep_safety_and_liveness():
    half = SEEDS // 2
    with ProcessPoolExecutor(2) as pool:
        failures = [f for part in pool.map(_run, (range(0, half), range(half, SEEDS))) for f in part]
    assert failures == [], "\n".join(failures[:20])


def test_the_seeds_cover_every_fault():
    """Across the seeds each kind of fault and of Byzantine behaviour comes up."""
    runs = [sim.Sim(seed) for seed in range(200)]
    assert {r.byzantine for r in runs} == set(sim.BYZANTINE)
    assert all(
        any(pred(r) for r in runs)
        for pred in (
            lambda r: r.drop > 0,
            lambda r: r.dup > 0,
            lambda r: r.crashes > 0,
            lambda r: r.partitioned,
            lambda r: r.max_delay >= 400,
            lambda r: len({n.skew for n in r.nodes}) > 1,
        )
    )


def test_a_seed_replays_exactly():
    def trace(seed: int):
        s = sim.Sim(seed)
        steps = s.run()
        return steps, [[b.chain_bytes() for b in n.chain] for n in s.nodes]

    assert trace(11) == trace(11)
    assert trace(11) != trace(12)


def test_the_checks_catch_a_validator_that_commits_in_a_round_it_left(monkeypatch):
    """A replica that still commits in a round it left after saying, in its round change,
    that it had prepared nothing there: the simulation finds the fork this allows."""

    def careless(self, now):
        if self.accepted is None:
            return
        r, d = self.accepted
        votes = self.prepares.get((r, d), {})
        if r in self.committed_in or len(votes) < self.q:
            return
        self.committed_in.add(r)
        self.prepared = (r, d, list(votes.values()))
        from ledger import consensus as c
        from ledger.block import seal

        commit_seal = seal(self.candidates[d].header.encode(), self.key)
        self._broadcast(c.make(self.key, self.index, c.COMMIT, self.h, r, d, seal=commit_seal), now)

    monkeypatch.setattr(Replica, "_check_prepared", careless)
    # Rare: one seed in 1200 or so makes the fork, and any change to the messages the replicas
    # send reshuffles which. With decisions 0007 and 0008 merged, seeds 1226 and 2744 do
    # (found with this mutant over seeds 0-2999).
    for seed in range(1200, 1500):
        try:
            sim.run_seed(seed)
        except sim.Violation as exc:
            if "fork" in str(exc):
                return
    pytest.fail("300 seeds did not catch a replica that commits in a round it left")


def test_make_sim_replays_one_seed(capsys):
    assert sim.main(["--seed", "5"]) == 0
    assert capsys.readouterr().out.startswith("seed 5 ok: byzantine ")
