"""broker.clock's test hook (SPB_TEST_CLOCK_OFFSET_FILE), which the chaos run's clock jumps
use, in a child process: only there is the variable set, as in the run."""

from __future__ import annotations

import subprocess
import sys

from broker.clock import OFFSET_ENV
from tests.support.bus import REPO, child_env

# Prints real-before, wall_ms, real-after once the offset it is given on stdin shows, each time.
PROBE = """
import sys, time
from broker.clock import wall_ms
for line in sys.stdin:
    want = int(line)
    deadline = time.monotonic() + 10
    while True:
        before = time.time_ns() // 1_000_000
        wall = wall_ms()
        after = time.time_ns() // 1_000_000
        if before + want <= wall <= after + want or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    print(before, wall, after, flush=True)
"""


def test_the_offset_file_moves_wall_ms_forward_and_back(tmp_path):
    offset = tmp_path / "v0.offset"
    child = subprocess.Popen(
        [sys.executable, "-c", PROBE],
        cwd=REPO,
        env={**child_env(), OFFSET_ENV: str(offset)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        for ms in (0, 90_000, -3_600_000, 0):  # no file yet, a jump forward, one back, undone
            if ms or offset.exists():
                offset.write_text(f"{ms}\n")
            child.stdin.write(f"{ms}\n")
            child.stdin.flush()
            before, wall, after = map(int, child.stdout.readline().split())
            assert before + ms <= wall <= after + ms, (ms, before, wall, after)
    finally:
        child.stdin.close()
        child.wait(10)
        child.stdout.close()


def test_without_the_variable_it_is_the_system_clock():
    out = subprocess.run(
        [sys.executable, "-c", "import broker.clock as c; print(c._offset_file)"],
        cwd=REPO,
        env={k: v for k, v in child_env().items() if k != OFFSET_ENV},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "None"
