"""Retained junk on transaction topics (issue 17, item 2): a client that publishes a CTP with
the retain flag leaves it on the broker, which delivers it again to every validator at every
subscribe. A validator takes only live transactions: the retained copy is acknowledged,
counted and never decided, at the first start or after a restart; a live copy of the very
same bytes is decided as usual."""

from __future__ import annotations

from broker.clock import wall_ms
from ledger.workload import SimCommunity
from tests.support.bus import Inbox, connected
from tests.support.ledger import RunningLedger, ledger_dir, wait_online, wait_status
from wire import topics
from wire.messages import open_message


def test_a_retained_ctp_is_never_decided_at_any_start(tmp_path, mosquitto, make_client):
    now = wall_ms()
    community = SimCommunity(3, now)
    root = ledger_dir(tmp_path / "ledger", community)
    junk = community.ctp(0, 1, amount=7, wh=1, exp=now + 600_000)
    junk_id = open_message(junk, "ctp").body.id
    household = connected(make_client(mosquitto.port, "household"))
    assert household.wait_acked(household.publish(topics.TX_CTP, junk, retain=True), 10)
    inbox = Inbox()
    watcher = make_client(mosquitto.port, "watcher")
    for topic in (topics.STATUS_ALL, topics.REJECTS, topics.ledger_state(0)):
        watcher.subscribe(topic, inbox)
    connected(watcher)

    for start in range(2):
        mark = len(inbox.messages)
        ledger = RunningLedger(root, mosquitto.port)
        wait_online(inbox, since=mark)
        # A live CTP after the retained one: its status proves the validator took in what the
        # broker delivered on subscribe (the retained copy came first) and decided a block.
        live = community.ctp(1, 2, amount=3, wh=1, exp=now + 600_000)
        household.publish(topics.TX_CTP, live)
        wait_status(inbox, open_message(live, "ctp").body.id, "held")
        ledger.stop()
        seen = [t for t, _, _ in inbox.messages]
        assert topics.status(junk_id) not in seen, f"start {start}: the retained CTP was decided"
        assert topics.REJECTS not in seen, f"start {start}: something was rejected"
        assert ledger.service.retained_ignored == 1, f"start {start}"

    # The same bytes, live: a transaction like any other.
    ledger = RunningLedger(root, mosquitto.port)
    household.publish(topics.TX_CTP, junk)
    wait_status(inbox, junk_id, "held")
    ledger.stop()
