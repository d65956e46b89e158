"""`spb-monitor watch --once` against the running street: one frame with every meter and
validator, read off the bus and verified, as an operator sees it over ssh."""

from __future__ import annotations

import re

from tests.support.bus import wait_for
from tests.support.street import STREET, VALIDATORS


def test_one_frame_shows_every_meter_and_validator(street, local_url, monitor_process):
    wait_for(lambda: street.results(), 60, lambda: f"an interval cleared{street.procs.logs()}", interval=0.2)
    proc, _ = monitor_process("watch", "--broker", local_url, "--once")
    assert proc.wait(60) == 0, street.procs.logs()
    frame = next(street.procs.log_dir.glob("monitor-watch-*.log")).read_text()
    for h in STREET:
        row = next(line for line in frame.splitlines() if f" {h.meter} " in line)
        assert "●" in row, row  # online
        assert re.search(rf"\b{abs(h.watts) // 100}\d\d\b", row), row  # its power, within a hundred watts
    for i in range(VALIDATORS):
        assert re.search(rf"\bv{i}\b.*●", frame), frame
    assert "market: last clearings" in frame and "unverified, not shown: none" in frame, frame
