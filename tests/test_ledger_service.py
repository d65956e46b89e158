"""The ledger service on a real Mosquitto: a trade from CTP to settled, statuses retained."""

from __future__ import annotations

import signal

import pytest

from broker import topics
from broker.clock import wall_ms
from broker.messages import open_message
from deploy.simulate import SimCommunity
from tests.helpers import Inbox, connected, wait_for
from tests.ledger_helpers import RunningLedger, ledger_dir, wait_status


def test_a_trade_is_held_then_settled_and_the_status_stays_retained(tmp_path, mosquitto, make_client, read_retained):
    now = wall_ms()
    community = SimCommunity(3, now)
    root = ledger_dir(tmp_path / "ledger", community)
    inbox = Inbox()
    watcher = make_client(mosquitto.port, "watcher")
    watcher.subscribe(topics.STATUS_ALL, inbox)
    watcher.subscribe(topics.LEDGER_STATE, inbox)
    connected(watcher)
    ledger = RunningLedger(root, mosquitto.port)
    wait_for(lambda: (topics.LEDGER_STATE, b"online 0", False) in inbox.messages, 10, "the ledger subscribed")
    household = connected(make_client(mosquitto.port, "household"))
    ctp = community.ctp(0, 1, amount=40, wh=5, exp=now + 600_000)
    ctp_id = open_message(ctp, "ctp").body.id
    household.publish(topics.TX_CTP, ctp)
    held = wait_status(inbox, ctp_id, "held")
    household.publish(topics.TX_ERC, community.erc(ctp))
    settled = wait_status(inbox, ctp_id, "settled")
    assert settled.h == held.h + 1
    ledger.stop()
    _, payload, retained = read_retained(mosquitto.port, topics.status(ctp_id))
    assert retained and open_message(payload, "status").body.state == "settled"
    _, payload, retained = read_retained(mosquitto.port, topics.LEDGER_STATE, "state-reader")
    assert payload == f"offline {settled.h}".encode()


@pytest.mark.parametrize("saved", [False, True], ids=["before-any-save", "after-a-save"])
def test_after_a_broker_crash_the_ledger_publishes_its_statuses_again(tmp_path, mosquitto, make_client,
                                                                     read_retained, saved):
    """Mosquitto saves sessions and retained messages every 60 s: a crash loses statuses the
    ledger saw acknowledged since. Whether the broker comes back without the ledger's session
    (no save yet) or with it (its last save), they are published again, byte for byte (same
    body, deterministic Ed25519)."""
    now = wall_ms()
    community = SimCommunity(3, now)
    root = ledger_dir(tmp_path / "ledger", community, balance=20)
    inbox = Inbox()
    watcher = make_client(mosquitto.port, "watcher")
    for topic in (topics.STATUS_ALL, topics.LEDGER_STATE):
        watcher.subscribe(topic, inbox)
    connected(watcher)
    ledger = RunningLedger(root, mosquitto.port)
    wait_for(lambda: (topics.LEDGER_STATE, b"online 0", False) in inbox.messages, 10, "the ledger subscribed")
    if saved:  # SIGUSR1: Mosquitto saves now, with the ledger's session and no status yet
        mosquitto._process.send_signal(signal.SIGUSR1)
        wait_for(lambda: any(mosquitto.data_dir.glob("*.db")), 10, "the broker's save")
    household = connected(make_client(mosquitto.port, "household"))
    settled, greedy = community.ctp(0, 1, amount=5, wh=1, exp=now + 600_000), community.ctp(1, 2, amount=50, wh=1, exp=now + 600_000)
    household.publish(topics.TX_CTP, settled)
    household.publish(topics.TX_CTP, greedy)
    wait_status(inbox, open_message(settled, "ctp").body.id, "held")
    household.publish(topics.TX_ERC, community.erc(settled))
    wait_status(inbox, open_message(settled, "ctp").body.id, "settled")
    wait_status(inbox, open_message(greedy, "ctp").body.id, "rejected")
    before = {t: p for t, p, _ in inbox.messages if t != topics.LEDGER_STATE}  # the last status per CTP
    for topic, payload in before.items():  # the broker has them all...
        assert read_retained(mosquitto.port, topic, f"early-{topic[-6:]}")[1:] == (payload, True)

    mosquitto._process.kill()  # kill -9: nothing saved since the broker started
    mosquitto._process.wait()
    mosquitto._process = None
    mosquitto.start(mosquitto.port, mosquitto.data_dir)
    wait_for(lambda: ledger.service.bus.connected.is_set(), 20, "the ledger reconnected")
    for topic, payload in before.items():  # ...and has them again after losing them
        assert read_retained(mosquitto.port, topic, f"late-{topic[-6:]}")[1:] == (payload, True)
    ledger.stop()
