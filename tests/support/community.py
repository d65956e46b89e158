"""A provisioned community running for a real-process test: `spb-deploy provision`'s DIR,
its TLS Mosquitto with the community's ACL, and one `spb-ledger run` (issue 18's tests:
households joining, rotating keys, trading after them)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from broker import secure
from broker.client import TlsFiles
from broker.runtime import find_mosquitto, free_port
from deploy.bus import broker_dir
from deploy.cli import main as deploy_main
from tests.support.bus import Inbox, connected, wait_for
from tests.support.procs import Procs
from wire import topics


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


def watching(root: Path, port: int, make_client, procs: Procs) -> Inbox:
    """A monitor's inbox of account and trade statuses and validator 0's state, returned once
    the ledger is online (before that, a transaction reaches no one)."""
    inbox = Inbox()
    monitor = make_client(port, "monitor", clean_session=True, tls=TlsFiles.in_dir(root / "monitoring/monitor"))
    for topic_filter in (topics.ACCOUNT_ALL, topics.STATUS_ALL, topics.ledger_state(0)):
        monitor.subscribe(topic_filter, inbox)
    connected(monitor)
    wait_for(
        lambda: any(t == topics.ledger_state(0) and p.startswith(b"online") for t, p, _ in list(inbox.messages)),
        60,
        lambda: f"the ledger online{procs.logs()}",
    )
    return inbox
