"""Two Mosquittos bridged over TLS (spb-deploy bridge): meters on both, the ledger on one,
and a whole trade across the bridge, every process a real one on loopback."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from broker import secure
from broker.client import TlsFiles
from broker.clock import wall_ms
from broker.runtime import find_mosquitto, free_port
from deploy.bus import broker_dir
from deploy.cli import main as deploy_main
from deploy.provision import community_genesis, provision
from edge.store import MeterStore
from ledger.genesis import write_genesis
from tests.support.bus import REPO, Inbox, child_env, connected, wait_for
from tests.support.meter import in_store, spb_meter
from wire import topics
from wire.verify import Verifier


def test_a_trade_settles_across_two_bridged_brokers(tmp_path, procs, make_client):
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed: apt-get install mosquitto", pytrace=False)
    root = tmp_path / "community"
    # 5 s market intervals: the trade settles once the producer proved its export (§9.4).
    community = provision(root, meters=3, accounts=None, validators=1, now_ms=wall_ms() - 60_000, interval_s=5)
    write_genesis(root, community_genesis(community, 1_000, block_ms=200))
    main_port, east_port = free_port(), free_port()
    assert (
        deploy_main(["bridge", str(root), "east", "--to", f"127.0.0.1:{main_port}", "--tls-port", str(east_port)]) == 0
    )
    assert "user bridge-east" in (broker_dir(root) / secure.ACL_NAME).read_text()
    main = secure.start_secure(broker_dir(root), main_port)
    east = secure.start_secure(broker_dir(root, "east"), east_port)
    try:
        # A monitor on the east broker sees what the ledger on the main one says.
        inbox = Inbox()
        monitor = make_client(
            east_port, "monitor", clean_session=True, tls=TlsFiles.in_dir(root / "monitoring/monitor")
        )
        for topic_filter in (topics.STATUS_ALL, topics.ledger_state(0)):
            monitor.subscribe(topic_filter, inbox)
        connected(monitor)

        urls = {"main": f"mqtts://127.0.0.1:{main_port}", "east": f"mqtts://127.0.0.1:{east_port}"}
        procs.start("ledger", "ledger.cli", "run", root, "--broker", urls["main"])
        producer, consumer, third = community.meters
        for meter, where, watts in ((producer, "main", "-4000"), (consumer, "east", "3600"), (third, "east", "0")):
            procs.start(
                meter.id,
                "edge.cli",
                "run",
                "--state-dir",
                root / "meters" / meter.id,
                "--broker",
                urls[where],
                "--adc",
                "fake",
                f"--fake-w={watts}",
                "--reading-s",
                "0.5",
                "--resend-s",
                "2",
            )
        wait_for(
            lambda: any(p.startswith(b"online") for t, p, _ in inbox.messages if t == topics.ledger_state(0)),
            30,
            lambda: f"the ledger online, seen on the east broker{procs.logs()}",
        )
        consumer_dir = root / "meters" / consumer.id
        wait_for(
            lambda: any(b.coe for b in in_store(consumer_dir, MeterStore.batches)),
            30,
            lambda: f"the consumer's CoE{procs.logs()}",
            interval=0.1,
        )

        done = spb_meter("ctp", consumer_dir, producer.account_pk, 25, 3, "--expiry", 120)
        assert done.returncode == 0, done.stderr
        ctp_id = bytes.fromhex(done.stdout.strip())
        verifier = Verifier(
            cas=[bytes.fromhex(community.ca_pk)], validators=[bytes.fromhex(v.pk) for v in community.validators]
        )

        def states() -> list[str]:
            return [
                verifier.verify(p, wall_ms(), "status").body.state
                for t, p, _ in list(inbox.messages)
                if t == topics.status(ctp_id)
            ]

        wait_for(lambda: "settled" in states(), 60, lambda: f"settled: {states()}{procs.logs()}")
        # The consumer reads the same status on its own connection: it may record it a moment
        # after the monitor saw it.
        wait_for(
            lambda: in_store(consumer_dir, lambda store: store.trade(ctp_id)).state == "settled",
            10,
            lambda: f"the consumer's trade settled{procs.logs()}",
            interval=0.1,
        )
        assert states() == ["held", "settled"]
        for proc in procs.procs:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0, procs.logs()
    finally:
        east.stop()
        main.stop()
    audited = subprocess.run(
        [sys.executable, "-m", "ledger.cli", "audit", str(root)],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert audited.returncode == 0 and "1 trades" in audited.stdout, audited.stdout + audited.stderr
