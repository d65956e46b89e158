"""The ledger service on a real Mosquitto: a trade from CTP to settled, statuses retained."""

from __future__ import annotations

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
