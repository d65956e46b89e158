"""The chaos run's pure part (deploy.chaos): a seed's schedule, and the verdict on a run's figures."""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict

import pytest

from deploy.chaos import (
    BROKER_RESTART,
    CLOCK_JUMP,
    DELAY_MS,
    FIRST_LANE,
    JUMP_MS,
    KINDS,
    NET_DELAY,
    PARTITION,
    PAUSE_VALIDATOR,
    REVOKE_METER,
    SECOND_LANE,
    Fault,
    Report,
    ValidatorEnd,
    direct_ctps,
    down,
    money_moves,
    schedule,
    table,
    verdict,
)

METERS = tuple(f"m{i:04d}" for i in range(1, 9))


def plan(seed: int, minutes: float = 5) -> list[Fault]:
    return schedule(seed, minutes, 4, METERS, "m0009")


def test_the_same_seed_gives_the_same_schedule():
    assert plan(7) == plan(7)
    assert direct_ctps(7, 5, METERS[4:], METERS[:4]) == direct_ctps(7, 5, METERS[4:], METERS[:4])
    assert plan(7) != plan(8)


def test_the_operators_moves_are_the_seeds_own_in_order_each_reference_once():
    moves = money_moves(7, 5, METERS)
    assert moves == money_moves(7, 5, METERS) != money_moves(8, 5, METERS)
    assert [m.at_s for m in moves] == sorted(m.at_s for m in moves) and moves[-1].at_s < 300
    assert len({m.ref for m in moves}) == len(moves)
    assert {m.kind for m in moves} == {"fund", "withdraw"} and any(m.again for m in moves)
    assert {m.meter for m in moves} <= set(METERS) and all(m.amount > 0 for m in moves)


@pytest.mark.parametrize("seed", range(20))
def test_every_kind_comes_even_in_a_minute_and_a_lane_never_overlaps_itself(seed):
    faults = plan(seed, minutes=1)
    assert {f.kind for f in faults} == set(KINDS)
    for lane in (FIRST_LANE, SECOND_LANE):
        mine = [f for f in faults if f.kind in lane]
        assert all(f.end_s <= nxt.at_s for f, nxt in itertools.pairwise(mine)), mine
        assert mine[-1].end_s <= 60


@pytest.mark.parametrize("seed", range(40))
def test_never_two_validators_down_at_once(seed):
    """QBFT with 4 validators tolerates f = 1: the lanes overlap, but a kill, a pause, a cut,
    a partition or a delay of one validator never overlaps another validator's."""
    spans = [d for d in map(down, plan(seed, minutes=5)) if d]
    for i, (v, start, end) in enumerate(spans):
        for w, start2, end2 in spans[i + 1 :]:
            assert v == w or end <= start2 or end2 <= start, (v, start, end, w, start2, end2)


def test_the_lanes_do_overlap():
    faults = plan(2, minutes=5)
    first = [f for f in faults if f.kind in FIRST_LANE]
    second = [f for f in faults if f.kind in SECOND_LANE]
    assert any(a.at_s < b.end_s and b.at_s < a.end_s for a in first for b in second)


def test_a_meter_is_revoked_once_and_the_faults_have_their_sizes():
    faults = plan(5, minutes=5)
    revoked = [f for f in faults if f.kind == REVOKE_METER]
    assert len(revoked) == 1 and revoked[0].target in METERS
    for f in faults:
        if f.kind == NET_DELAY:
            assert DELAY_MS[0] <= f.amount <= DELAY_MS[1] and f.seconds > 0
        elif f.kind == CLOCK_JUMP:
            assert JUMP_MS[0] <= abs(f.amount) <= JUMP_MS[1] and f.seconds > 0
        elif f.kind in (PARTITION, PAUSE_VALIDATOR, BROKER_RESTART):
            assert f.seconds > 0
        else:
            assert f.seconds == 0 and f.amount == 0


def test_a_longer_run_draws_more_faults_on_real_targets():
    faults = plan(3, minutes=5)
    assert len(faults) > 2 * len(KINDS)
    assert {f.kind for f in faults} == set(KINDS)
    targets = {f.target for f in faults}
    assert targets <= {"v0", "v1", "v2", "v3", "broker", "m0009", *METERS}


def good() -> Report:
    r = Report(seed=1, minutes=1, money_start=900, settled=3, refunded=1, readings_sent=10, readings_received=10)
    r.validators = [ValidatorEnd(f"v{i}", 40, "ab" * 32, "ok: 4 trades", 950, 70, 20) for i in range(4)]
    r.exit_codes = {"v0": 0, "m0001": 0}
    return r


def test_a_run_that_kept_every_promise_passes():
    assert verdict(good()) == []


@pytest.mark.parametrize(
    "break_it, words",
    [
        (lambda r: setattr(r.validators[2], "money", 949), "money not conserved"),
        (lambda r: [setattr(v, "funded", 71) for v in r.validators], "money not conserved"),
        (lambda r: r.validators[1].__dict__.update(funded=71, money=951), "disagree on the money"),
        (lambda r: r.refs_unknown.append("1-7"), "never sent"),
        (lambda r: r.refs_missing.append("1-8"), "absent"),
        (lambda r: r.settled_twice.append("abc"), "settled twice"),
        (lambda r: r.unended.append("CTP abc held"), "never ended"),
        (lambda r: r.readings_lost.append("m0003 #17"), "lost"),
        (lambda r: setattr(r.validators[1], "height", 39), "heads differ"),
        (lambda r: setattr(r.validators[3], "audit", "failed at height 3: balance"), "v3 audit"),
        (lambda r: r.readings_unverified.append("m0002 signature"), "failed verification"),
        (lambda r: r.revoked_accepted.append("ctp ab12"), "revoked meter"),
        (lambda r: r.faults.append((Fault(3.0, REVOKE_METER, "m0001"), "failed: OSError")), "not applied"),
        (lambda r: r.hostile_accepted.append("forged"), "hostile"),
        (lambda r: r.exit_codes.update(m0001=-9), "did not stop cleanly"),
        (lambda r: r.__dict__.update(settled=0, refunded=0), "nothing was tested"),
    ],
)
def test_a_broken_invariant_fails_the_run(break_it, words):
    r = good()
    break_it(r)
    broken = verdict(r)
    assert len(broken) == 1 and words in broken[0], broken


def test_the_table_names_the_seed():
    r = good()
    r.faults = [(Fault(1.0, KINDS[0], "v1"), "killed")]
    rows = table(r).columns[0]._cells
    assert "seed" in rows and "readings sent" in rows


def test_the_report_is_json():
    """The run writes its figures beside the table (chaos-report.json) for tests and tools."""
    r = good()
    r.faults = [(Fault(1.0, KINDS[0], "v1"), "killed")]
    r.tx_sent, r.rejected, r.hostile = {"ctp": 3}, {"decode": 2}, [("garbage", "rejected: decode")]
    back = json.loads(json.dumps(asdict(r), default=str))
    assert back["tx_sent"] == {"ctp": 3} and back["faults"][0][0]["kind"] == KINDS[0]
