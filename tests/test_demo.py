"""`spb-deploy demo`: a two-meter community on this machine, end to end, with either broker."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.helpers import REPO, child_env

pytestmark = pytest.mark.integration

METERS = {"m0001": "m0002", "m0002": "m0001"}  # each meter and the peer it must verify


@pytest.mark.parametrize("broker_args", [[], ["--embedded"]], ids=["mosquitto", "embedded-amqtt"])
def test_demo_runs_a_community_and_exits_0(tmp_path, broker_args):
    """Both meters come online, publish births and readings, verify each other, and go offline cleanly."""
    community = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "deploy.cli", "demo", "--dir", str(community), "--seconds", "3",
         "--reading-s", "0.5", *broker_args],
        cwd=REPO, env={**child_env(), "COLUMNS": "200"}, capture_output=True, text=True, timeout=60)
    out = result.stdout
    report = f"exit {result.returncode}\nstdout:\n{out}\nstderr:\n{result.stderr}"

    assert result.returncode == 0, report
    assert "demo ok" in out, report
    assert ("broker embedded" if broker_args else "broker mosquitto") in out, report
    assert "rejected" not in out, report
    assert (community / "community.toml").is_file()
    for meter, peer in METERS.items():
        assert re.search(rf"★ {meter}\s+birth\s+fw \S+, boot 1;", out), report
        seqs = [int(s) for s in re.findall(rf"^\s*{meter}\s+reading\s+#(\d+)", out, re.M)]
        assert len(seqs) >= 2 and seqs == sorted(set(seqs)), report
        assert re.search(rf"{meter} verified reading #\d+ of {peer}", out), report
        assert re.search(rf"● {meter}\s+state\s+online", out), report
        assert re.search(rf"● {meter}\s+state\s+offline", out), report
