"""Account statuses (docs/PROTOCOL.md §9.6, decision 0010) on a real Mosquitto: a LedgerService
of a provisioned market community publishes each account's money, the household's meter
(a MeterNode on the bus) takes its own and knows its balance; after the broker lost every
retained message, the ledger restores them and a meter that boots then finds its balance."""

from __future__ import annotations

import pytest

from broker.clock import wall_ms
from deploy.provision import community_genesis, provision
from edge.config import MeterConfig
from edge.meter import MeterNode
from edge.state_dir import MeterIdentity
from ledger.genesis import write_genesis
from tests.support.bus import Inbox, connected, wait_for
from tests.support.ledger import RunningLedger, wait_online
from wire import topics
from wire.messages import AccountStatus, Bid, open_message

UNITS = 1_000
INTERVAL_S = 60


@pytest.fixture
def community(tmp_path):
    """Three household meters, one validator; the community dir is also the ledger dir."""
    root = tmp_path / "community"
    made = provision(root, meters=3, accounts=None, validators=1, now_ms=wall_ms() - 60_000, interval_s=INTERVAL_S)
    write_genesis(root, community_genesis(made, UNITS, block_ms=50))
    return root


@pytest.fixture
def meters(community, mosquitto):
    """meters(id): m{id}'s MeterNode, connected to the broker (never sampling); closed after the test."""
    made: list[MeterNode] = []

    def start(meter: str) -> MeterNode:
        identity = MeterIdentity.load(community / "meters" / meter)
        config = MeterConfig(interval_s=INTERVAL_S, resend_s=1)
        node = MeterNode(identity, config, "127.0.0.1", mosquitto.port, sense=lambda _e: (0, 0))
        made.append(node)
        node.bus.connect()
        connected(node.bus)
        return node

    yield start
    for node in made:
        node.bus.close()
        node.store.close()


def bid(meter: MeterNode, wh: int, price: int) -> bytes:
    """A bid of the meter's household for the interval after next (its gate far enough ahead)."""
    k = wall_ms() // (INTERVAL_S * 1000) + 2
    key = meter.id.account_key()
    return Bid(buyer=bytes(key.verify_key), wh=wh, price=price, k=k, green=False, meter=bytes(32), t=wall_ms()).sign(
        key
    )


def newest(inbox: Inbox) -> dict[bytes, tuple[int, int, int]]:
    """Account -> (balance, held, h) of the newest account status seen for it."""
    out: dict[bytes, tuple[int, int, int]] = {}
    for topic, payload, _ in inbox.messages:
        if topics.expected_type(topic) == "account":
            body = open_message(payload, AccountStatus).body
            if body.account not in out or body.h >= out[body.account][2]:
                out[body.account] = (body.balance, body.held, body.h)
    return out


def test_the_meter_learns_its_balance_and_finds_it_again_after_the_broker_lost_everything(
    community, mosquitto, make_client, meters
):
    watcher = make_client(mosquitto.port, "watcher")
    watcher.inbox = Inbox()
    for topic_filter in (topics.ACCOUNT_ALL, topics.LEDGER_STATE_ALL):
        watcher.subscribe(topic_filter, watcher.inbox)
    connected(watcher)
    ledger = RunningLedger(community, mosquitto.port)
    try:
        wait_online(watcher.inbox)
        m1, m2 = meters("m0001"), meters("m0002")
        assert m1.market.balance() is None
        households = connected(make_client(mosquitto.port, "households"))
        households.publish(topics.TX_BID, bid(m1, 10, 3))  # block 1: every account, m0001's 30 held
        me, neighbour = m1.market.account_pk, m2.market.account_pk
        wait_for(lambda: m1.market.balance() == UNITS - 30, 10, lambda: f"m0001's balance; saw {newest(watcher.inbox)}")
        assert wait_for(lambda: m2.market.balance()) == UNITS
        households.publish(topics.TX_BID, bid(m1, 5, 4))  # block 2: m0001's account only
        wait_for(lambda: m1.market.balance() == UNITS - 50)
        accounts = newest(watcher.inbox)
        assert accounts[me] == (UNITS - 50, 50, 2) and accounts[neighbour] == (UNITS, 0, 1) and len(accounts) == 3
        per_block = [open_message(p).body.h for t, p, _ in watcher.inbox.messages if t == topics.account(me)]
        assert per_block == [1, 2], "one status per block that changed it"
        assert m1.store.account().h == 2 and m2.store.account().h == 1

        # The broker loses every retained message and session: the ledger restores them all.
        mosquitto.stop()
        for saved in mosquitto.data_dir.glob("*.db"):
            saved.unlink()
        mark = len(watcher.inbox.messages)
        mosquitto.start(mosquitto.port, mosquitto.data_dir)
        wait_online(watcher.inbox, since=mark)
        newcomer = make_client(mosquitto.port, "newcomer")
        newcomer.inbox = Inbox()
        newcomer.subscribe(topics.ACCOUNT_ALL, newcomer.inbox)
        connected(newcomer)
        wait_for(lambda: len(newest(newcomer.inbox)) == 3, 20, lambda: f"3 accounts; saw {newest(newcomer.inbox)}")
        assert newest(newcomer.inbox) == accounts
        assert all(retained for _, _, retained in newcomer.inbox.messages), "retained, as a booting meter gets them"

        m3 = meters("m0003")
        assert wait_for(lambda: m3.market.balance()) == UNITS, "a meter that boots later finds its balance"
    finally:
        ledger.stop()
