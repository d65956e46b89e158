"""bench/wire.py runs and prints its ratio; speed itself is never asserted in the suite."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.helpers import REPO, child_env


def test_wire_bench_prints_rates_and_a_ratio_against_raw_verify():
    result = subprocess.run([sys.executable, "bench/wire.py", "--seconds", "0.05"], cwd=REPO,
                            env=child_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rates = dict(re.findall(r"^(raw Ed25519 verify|ERC sign\+encode|ERC decode\+verify)\s+(\d+) /s", result.stdout, re.M))
    assert len(rates) == 3 and all(int(r) > 0 for r in rates.values()), result.stdout
    ratio = float(re.search(r"^ratio verify/raw\s+([\d.]+)", result.stdout, re.M).group(1))
    assert abs(ratio - int(rates["ERC decode+verify"]) / int(rates["raw Ed25519 verify"])) < 0.01
