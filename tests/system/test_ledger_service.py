"""The ledger service on a real Mosquitto: a trade from CTP to settled, statuses retained."""

from __future__ import annotations

import signal

import pytest

from broker.clock import wall_ms
from ledger.store import LedgerStore
from ledger.validator import ValidatorIdentity
from ledger.workload import SimCommunity
from tests.support.bus import Inbox, connected, wait_for
from tests.support.ledger import RunningLedger, ledger_dir, wait_online, wait_status
from wire import topics
from wire.messages import open_message


class Setup:
    """A community, its ledger dir, a watcher of statuses and ledger state, and the ledger
    running and subscribed."""

    def __init__(self, tmp_path, port: int, make_client, households: int = 3, balance: int = 1_000):
        self.now = wall_ms()
        self.community = SimCommunity(households, self.now)
        self.root = ledger_dir(tmp_path / "ledger", self.community, balance=balance)
        self.inbox = Inbox()
        watcher = make_client(port, "watcher")
        for topic in (topics.STATUS_ALL, topics.ledger_state(0)):
            watcher.subscribe(topic, self.inbox)
        connected(watcher)
        self.ledger = RunningLedger(self.root, port)
        wait_online(self.inbox)
        self.household = connected(make_client(port, "household"))


def test_a_trade_is_held_then_settled_and_the_status_stays_retained(tmp_path, mosquitto, make_client, read_retained):
    setup = Setup(tmp_path, mosquitto.port, make_client)
    community, inbox, ledger, household = setup.community, setup.inbox, setup.ledger, setup.household
    ctp = community.ctp(0, 1, amount=40, wh=5, exp=setup.now + 600_000)
    ctp_id = open_message(ctp, "ctp").body.id
    household.publish(topics.TX_CTP, ctp)
    held = wait_status(inbox, ctp_id, "held")
    household.publish(topics.TX_ERC, community.erc(ctp))
    settled = wait_status(inbox, ctp_id, "settled")
    assert settled.h == held.h + 1
    ledger.stop()
    _, payload, retained = read_retained(mosquitto.port, topics.status(ctp_id))
    assert retained and open_message(payload, "status").body.state == "settled"
    _, payload, retained = read_retained(mosquitto.port, topics.ledger_state(0), "state-reader")
    assert payload == f"offline {settled.h}".encode()


@pytest.mark.parametrize("saved", [False, True], ids=["before-any-save", "after-a-save"])
def test_after_a_broker_crash_the_ledger_publishes_its_statuses_again(
    tmp_path, mosquitto, make_client, read_retained, saved
):
    """Mosquitto saves sessions and retained messages every 60 s: a crash loses statuses the
    ledger saw acknowledged since. Whether the broker comes back without the ledger's session
    (no save yet) or with it (its last save), they are published again, byte for byte (same
    body, deterministic Ed25519)."""
    setup = Setup(tmp_path, mosquitto.port, make_client, balance=20)
    community, inbox, ledger, household, now = setup.community, setup.inbox, setup.ledger, setup.household, setup.now
    if saved:  # SIGUSR1: Mosquitto saves now, with the ledger's session and no status yet
        mosquitto._process.send_signal(signal.SIGUSR1)
        wait_for(lambda: any(mosquitto.data_dir.glob("*.db")), 10, "the broker's save")
    settled, greedy = (
        community.ctp(0, 1, amount=5, wh=1, exp=now + 600_000),
        community.ctp(1, 2, amount=50, wh=1, exp=now + 600_000),
    )
    household.publish(topics.TX_CTP, settled)
    household.publish(topics.TX_CTP, greedy)
    wait_status(inbox, open_message(settled, "ctp").body.id, "held")
    household.publish(topics.TX_ERC, community.erc(settled))
    wait_status(inbox, open_message(settled, "ctp").body.id, "settled")
    wait_status(inbox, open_message(greedy, "ctp").body.id, "rejected")
    before = {t: p for t, p, _ in inbox.messages if t != topics.ledger_state(0)}  # the last status per CTP
    for topic, payload in before.items():  # the broker has them all...
        assert read_retained(mosquitto.port, topic, f"early-{topic[-6:]}")[1:] == (payload, True)

    mosquitto._process.kill()  # kill -9: nothing saved since the broker started
    mosquitto._process.wait()
    mosquitto._process = None
    mark = len(inbox.messages)
    mosquitto.start(mosquitto.port, mosquitto.data_dir)
    # The ledger says `online` after publishing the statuses again, on the same connection.
    wait_for(
        lambda: any(
            t == topics.ledger_state(0) and p.startswith(b"online") and not retained
            for t, p, retained in inbox.messages[mark:]
        ),
        20,
        "the ledger online again",
    )
    for topic, payload in before.items():  # ...and has them again after losing them
        assert read_retained(mosquitto.port, topic, f"late-{topic[-6:]}")[1:] == (payload, True)
    ledger.stop()


def test_a_full_status_restore_cut_short_by_a_crash_is_done_again(tmp_path, mosquitto, make_client, read_retained):
    """The ledger died while publishing every status again to a broker that had lost them:
    the durable flag makes the next start publish all of them again, even though the broker
    now has the ledger's session and the statuses are older than the recent window."""
    setup = Setup(tmp_path, mosquitto.port, make_client, households=2)
    community, inbox, ledger, root = setup.community, setup.inbox, setup.ledger, setup.root
    ctp = community.ctp(0, 1, amount=5, wh=1, exp=setup.now + 3_600_000)
    setup.household.publish(topics.TX_CTP, ctp)
    held = wait_status(inbox, open_message(ctp, "ctp").body.id, "held")
    ledger.stop()
    topic = topics.status(held.ctp)
    _, payload, _ = read_retained(mosquitto.port, topic, "before")
    eraser = connected(make_client(mosquitto.port, "eraser"))
    assert eraser.wait_acked(eraser.publish(topic, b"", retain=True), 10)  # the broker forgets it

    def on_topic() -> int:
        return sum(t == topic and p != b"" for t, p, _ in inbox.messages)  # not the eraser's

    def run_once(until=lambda: True) -> None:
        """Start, wait for its `online` (published after any statuses) and `until`, stop."""
        mark = len(inbox.messages)
        run = RunningLedger(root, mosquitto.port, clock=lambda: wall_ms() + 10 * 60_000)
        wait_online(inbox, mark)
        wait_for(until, 10, "the restore acknowledged")
        run.stop()

    seen = on_topic()
    run_once()  # ten minutes later: the status is older than the recent window, so not sent again
    assert on_topic() == seen
    identity = ValidatorIdentity.load(root, 0)
    store = LedgerStore(identity.db_path, identity.genesis)
    store.set_flag("restore-statuses", True)  # as a crash in the middle of a full restore leaves it
    store.close()
    reader = LedgerStore(identity.db_path, identity.genesis, readonly=True)
    run_once(until=lambda: not reader.flag("restore-statuses"))  # cleared once the broker has them all
    assert read_retained(mosquitto.port, topic, "after")[1:] == (payload, True)


def test_publishes_are_paced_by_the_window_and_all_arrive(tmp_path, mosquitto, make_client, monkeypatch):
    """paho refuses more than 65535 unacknowledged publishes, and an outbox or a full status
    restore can be larger: the service hands over at most WINDOW at a time (3 here)."""
    monkeypatch.setattr("ledger.service.WINDOW", 3)
    setup = Setup(tmp_path, mosquitto.port, make_client, households=2, balance=10_000)
    service = setup.ledger.service
    in_flight = []  # unacknowledged publishes, counting this one, at each hand-over to paho
    publish = service.bus.publish

    def recording(*args, **kwargs):
        in_flight.append(service._window.in_flight)
        return publish(*args, **kwargs)

    monkeypatch.setattr(service.bus, "publish", recording)
    ctps = [setup.community.ctp(0, 1, amount=1, wh=1, exp=setup.now + 600_000) for _ in range(40)]
    for ctp in ctps:
        setup.household.publish(topics.TX_CTP, ctp)
    for ctp in ctps:
        wait_status(setup.inbox, open_message(ctp, "ctp").body.id, "held")
    setup.ledger.stop()
    assert len(in_flight) > 40 and max(in_flight) == 3
