"""`spb-deploy demo`: a two-meter community on this machine, end to end, with either broker."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.helpers import REPO, child_env

pytestmark = pytest.mark.integration

METERS = {"m0001": "m0002", "m0002": "m0001"}  # each meter and the peer it must verify


def run_demo(community, *broker_args) -> tuple[subprocess.CompletedProcess, str]:
    """One bounded demo run; (result, a report to show when an assertion fails)."""
    result = subprocess.run(
        [sys.executable, "-m", "deploy.cli", "demo", "--dir", str(community), "--seconds", "3",
         "--reading-s", "0.5", *broker_args],
        cwd=REPO, env={**child_env(), "COLUMNS": "200"}, capture_output=True, text=True, timeout=60)
    return result, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


@pytest.mark.parametrize("broker_args", [[], ["--embedded"]], ids=["mosquitto", "embedded-amqtt"])
def test_demo_runs_a_community_and_exits_0(tmp_path, broker_args):
    """Both meters come online, publish births and readings, verify each other, and go offline cleanly."""
    community = tmp_path / "demo"
    result, report = run_demo(community, *broker_args)
    out = result.stdout

    assert result.returncode == 0, report
    assert "demo ok" in out, report
    assert ("broker embedded" if broker_args else "broker mosquitto") in out, report
    assert "rejected" not in out, report
    assert (community / "community.toml").is_file()
    # The households traded through the ledger: one trade settled, one promise expired.
    assert re.search(r"ledger: 1 trade settled, 1 expired promise refunded, \d+ blocks, 0 rejects, "
                     r"state\s+offline \d+; audit ok", out), report
    assert re.search(r"◆ ledger\s+status\s+CTP \w+… settled in block #\d+\s+validator signature ✓", out), report
    for meter, peer in METERS.items():
        assert re.search(rf"★ {meter}\s+birth\s+fw \S+, boot 1;", out), report
        seqs = [int(s) for s in re.findall(rf"^\s*{meter}\s+reading\s+#(\d+)", out, re.M)]
        assert len(seqs) >= 2 and seqs == sorted(set(seqs)), report
        assert re.search(rf"{meter} verified reading #\d+ of {peer}", out), report
        assert re.search(rf"● {meter}\s+state\s+online", out), report
        assert re.search(rf"● {meter}\s+state\s+offline", out), report


def test_a_rerun_judges_itself_only_on_live_messages(tmp_path):
    """The broker keeps the first run's retained births and `offline` states; the second run
    shows them as such, passes on its own live births (boot 2), and keys and seqs carry on."""
    community = tmp_path / "demo"
    first, report = run_demo(community)
    assert first.returncode == 0, report
    second, report = run_demo(community)
    assert second.returncode == 0 and "demo ok" in second.stdout, report
    assert "(retained, from before)" in second.stdout, report
    for meter in METERS:
        assert re.search(rf"★ {meter}\s+birth\s+fw \S+, boot 2;", second.stdout), report
        first_seqs = [int(s) for s in re.findall(rf"^\s*{meter}\s+reading\s+#(\d+)", first.stdout, re.M)]
        second_seqs = [int(s) for s in re.findall(rf"^\s*{meter}\s+reading\s+#(\d+)", second.stdout, re.M)]
        assert min(second_seqs) > max(first_seqs), report
