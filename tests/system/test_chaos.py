"""`spb-deploy chaos` with a short seed, end to end: Mosquitto over TLS, four validators, eight
meters trading by themselves and by direct CTPs, and one minute of faults. Seed 1's minute has
every kind (deploy.chaos.schedule puts each kind first in each of its two lanes): validators
and a meter killed with SIGKILL and restarted, a broker restart, a validator stopped for
seconds, the hostile client's garbage, oversized, replayed and forged messages, a meter
revoked while it trades, and beside those (overlapping them) a meter's link partitioned,
delayed and cut through its fault proxy and a meter's wall clock jumped.

The run must exit 0 (its own verdict: money conserved, nothing settled twice, every accepted
transaction ended, no reading lost or unverifiable, nothing of the revoked meter's accepted
after its revocation, one head, every audit passes), and the figures it wrote
beside the table must show that each of those promises was tested on real traffic. The
verdict's failing side is tested without processes (tests/deploy/test_chaos_schedule.py).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from broker.runtime import find_mosquitto
from deploy.chaos import KINDS
from deploy.chaos_run import REPORT_NAME, VALIDATORS
from tests.support.bus import REPO, child_env

SEED = 1


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed: apt-get install mosquitto", pytrace=False)
    community = tmp_path_factory.mktemp("chaos") / "community"
    result = subprocess.run(
        [sys.executable, "-m", "deploy.cli", "chaos", "--seed", str(SEED), "--minutes", "1", "--dir", str(community)],
        cwd=REPO,
        env={**child_env(), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = json.loads((community / REPORT_NAME).read_text()) if (community / REPORT_NAME).exists() else {}
    return result, report, community


def test_the_run_passes_its_own_verdict(run):
    result, _, community = run
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\nlogs in {community / 'logs'}"
    assert "chaos ok" in result.stdout and f"seed {SEED}" in result.stdout


def test_every_kind_of_fault_happened(run):
    _, report, _ = run
    kinds = {fault["kind"] for fault, _ in report["faults"]}
    assert kinds == set(KINDS) and len(KINDS) == 10
    outcomes = [outcome for _, outcome in report["faults"]]
    assert not [o for o in outcomes if "not acked" in o or "could not" in o or o.startswith("failed")], outcomes


def test_the_figures_show_real_traffic_through_the_faults(run):
    _, r, _ = run
    assert r["settled"] > 0 and r["fills"] > 0 and r["direct_accepted"] > 0, r
    assert r["settled"] + r["refunded"] == r["fills"] + r["direct_accepted"], "a trade neither settled nor refunded"
    assert r["unended"] == [] and r["settled_twice"] == [], r
    assert r["readings_sent"] > 0 and r["readings_lost"] == [] and r["readings_unverified"] == [], r
    assert r["readings_received"] == r["readings_sent"] - r["readings_pending"] - r["readings_refused"]


def test_the_revoked_meter_got_nothing_through_afterwards(run):
    """The broker drops what the revoked meter publishes (its ACL is gone; the connection it
    had stays open), so the monitor sees none of its readings or transactions afterwards."""
    _, r, _ = run
    assert r["revoked"], r
    assert r["revoked_accepted"] == [] and r["revoked_seen_after"] == 0
    assert r["readings_after_revocation"] == 0 and r["readings_refused"] > 0


def test_money_is_conserved_on_one_audited_head(run):
    _, r, _ = run
    validators = r["validators"]
    assert len(validators) == VALIDATORS
    assert {v["money"] for v in validators} == {r["money_start"] + v["funded"] - v["withdrawn"] for v in validators}
    assert len({(v["funded"], v["withdrawn"]) for v in validators}) == 1
    assert sum(n for outcome, n in r["money_outcomes"].items() if outcome.endswith("applied")) > 0, r["money_outcomes"]
    assert r["refs_unknown"] == r["refs_missing"] == []
    assert len({(v["height"], v["head"]) for v in validators}) == 1
    assert all(v["audit"].startswith("ok") for v in validators), validators


def test_the_ledger_refused_every_hostile_message(run):
    """Garbage and an oversized payload fail decoding, a forged CTP its signature; the replay
    of a CTP the ledger decided already is dropped as a copy (no new rejection)."""
    _, r, _ = run
    answers = dict(r["hostile"])
    assert answers["garbage"] == "rejected: decode"
    assert answers["oversized"] == "rejected: decode"
    assert answers["forged"] == "rejected: signature"
    assert answers["replay"] in {"no rejection published", "rejected: duplicate"}
    assert r["hostile_accepted"] == []
