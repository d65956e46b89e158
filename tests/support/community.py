"""A provisioned community running for a real-process test: `spb-deploy provision`'s DIR,
its TLS Mosquitto with the community's ACL, and one `spb-ledger run` (issue 18's tests:
households joining, rotating keys, trading after them)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from broker import secure
from broker.runtime import find_mosquitto, free_port
from deploy.bus import broker_dir
from deploy.cli import main as deploy_main
from tests.support.procs import Procs


@contextmanager
def running_community(
    tmp_path: Path, procs: Procs, units: int, block_ms: int = 50, interval_s: int | None = 2
) -> Iterator[tuple[Path, int, str]]:
    """Three households (m0001 sells solar) and one validator: (DIR, broker port, broker URL).
    `interval_s`: the market's interval, None for provision's default."""
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed: apt-get install mosquitto", pytrace=False)
    root = tmp_path / "community"
    args = ["provision", str(root), "--meters", "3", "--genesis-units", str(units), "--block-ms", str(block_ms)]
    args += ["--source", "m0001=solar"] + ([] if interval_s is None else ["--interval-s", str(interval_s)])
    assert deploy_main(args) == 0
    port = free_port()
    broker = secure.start_secure(broker_dir(root), port)
    url = f"mqtts://127.0.0.1:{port}"
    try:
        procs.start("ledger", "ledger.cli", "run", root, "--broker", url)
        yield root, port, url
    finally:
        broker.stop()
