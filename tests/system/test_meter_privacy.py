"""Privacy between neighbours (issue 17, docs/decisions/0012-neighbour-privacy.md), against a real
Mosquitto with the provisioned TLS config and ACL: a meter subscribed to `#` receives exactly
the topics docs/PROTOCOL.md §7's access table lets it read (tests.support.acl_table), so no
neighbour's reading, no other household's account and nothing of the mirror's JSON; a
monitoring user still receives everything, readings included.

Every identity allowed to write a kind of topic puts something on it, each as §7 has it
retained or not; each publish is acknowledged (Mosquitto routes a message before it
acknowledges it), then a sentinel closes what the watchers got (tests.support.acl_bus).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from broker.client import BusClient
from broker.clock import wall_ms
from deploy.provision import provision
from tests.support import acl_table
from tests.support.acl_bus import broker, bus, sentinel
from tests.support.bus import wait_for
from wire import topics

READER = "m0001"
METERS = ("m0001", "m0002", "m0003")
ID = bytes.fromhex("ab" * 16)
SENTINEL = topics.REJECTS  # a topic every watcher here may read


@pytest.fixture
def community(tmp_path) -> Path:
    root = tmp_path / "community"
    provision(root, meters=len(METERS), accounts=None, validators=1, now_ms=wall_ms())
    return root


def account_pk(community: Path, meter: str) -> str:
    """The household account key provisioning wrote for a meter."""
    return tomllib.loads((community / "meters" / meter / "meter.toml").read_text())["account_pk"]


def put(client: BusClient, messages: list[tuple[str, bool]], sent: list[str]) -> None:
    """Publish each (topic, retain) with the topic as payload, and wait for every PUBACK."""
    infos = [client.publish(topic, topic.encode(), retain=retain) for topic, retain in messages]
    for info in infos:
        assert client.wait_acked(info, 10)
    sent.extend(topic for topic, _ in messages)


def publish_every_kind(bus, clients: dict[str, BusClient], accounts: dict[str, str]) -> list[str]:
    """Something on every kind of topic of the table, each by an identity allowed to write it."""
    sent: list[str] = []
    for meter in METERS:
        own = [(topics.meter(meter, "state"), True), (topics.meter(meter, "birth"), True)]
        put(clients[meter], [*own, (topics.meter(meter, "reading"), False)], sent)
    coe = [(topics.meter(m, leaf), False) for m in ("m0001", "m0003") for leaf in ("coe/req", "coe/resp")]
    by_operator = [topics.TX_REVOKE, *(t for t in topics.OPERATOR_TXS if t != topics.TX_ROTATE)]
    put(clients["m0002"], [*coe, *((topic, False) for topic in topics.TX_TYPES if topic not in by_operator)], sent)
    put(bus("operator"), [(topic, False) for topic in by_operator], sent)
    for meter, client in clients.items():  # its own household's statement request (decision 0017)
        if meter in accounts:
            put(client, [(topics.statement_request(bytes.fromhex(accounts[meter])), False)], sent)
    put(clients["m0002"], [(topics.statement_request(bytes.fromhex(accounts[READER])), False)], [])  # denied
    ledger = [
        (topics.status(ID), True),
        (topics.REJECTS, False),
        (topics.ledger_state(0), True),
        (topics.LEDGER_BLOCKS, False),
        (topics.CONSENSUS_ALL, False),
        (topics.consensus_to(0), False),
        (topics.market_order(7, ID), True),
        (topics.market_result(7), True),
        *((topics.account(bytes.fromhex(pk)), True) for pk in accounts.values()),
        *((topics.statement(bytes.fromhex(pk)), False) for pk in accounts.values()),
    ]
    put(clients["v0"], ledger, sent)
    mirror = [("spb-json/v1/meters/m0002/reading", False), ("homeassistant/sensor/spb_m0002_power/config", True)]
    put(bus("mirror"), mirror, sent)
    return sent


def test_a_meter_subscribed_to_everything_gets_exactly_what_the_table_lets_it_read(bus, community):
    table = acl_table.rows()
    accounts = {meter: account_pk(community, meter) for meter in METERS}
    reader = bus(f"meters/{READER}", ("#",))
    monitor = bus("monitoring/monitor", ("#",))
    clients = {READER: reader, "m0002": bus("meters/m0002"), "m0003": bus("meters/m0003"), "v0": bus("validators/v0")}
    sent = publish_every_kind(bus, clients, accounts)

    got = [topic for topic, _ in sentinel(reader, clients["v0"], SENTINEL)]
    may = [topic for topic in sent if acl_table.readable(topic, table, READER, accounts[READER])]
    assert sorted(got) == sorted([*may, SENTINEL])
    # What the table's rows come to, spelled out: births, states and its own CoE traffic, the
    # ledger's statuses, rejects, state and market, and its own household's account.
    assert set(got) == {
        *(topics.meter(m, leaf) for m in METERS for leaf in ("state", "birth")),
        topics.meter(READER, "coe/req"),
        topics.meter(READER, "coe/resp"),
        topics.status(ID),
        topics.REJECTS,
        topics.ledger_state(0),
        topics.market_order(7, ID),
        topics.market_result(7),
        topics.account(bytes.fromhex(accounts[READER])),
        topics.statement(bytes.fromhex(accounts[READER])),  # the answers to its household's requests only
    }
    assert not [t for t in got if t.endswith("/reading")]  # no neighbour's, nor its own
    assert topics.account(bytes.fromhex(accounts["m0002"])) not in got
    assert not [t for t in got if t.startswith(("spb-json/", "homeassistant/", "spb/v1/tx/"))]

    # A monitoring user reads every tree: every meter's readings, and the mirror's JSON of them.
    wait_for(lambda: (SENTINEL, b"sentinel") in [m[:2] for m in monitor.inbox.messages])
    seen = [topic for topic, _, _ in monitor.inbox.messages]
    assert sorted(seen) == sorted([*sent, SENTINEL])
    assert {topics.meter(m, "reading") for m in METERS} <= set(seen)


def test_a_meter_that_subscribes_later_gets_only_the_retained_messages_it_may_read(bus, community):
    """Mosquitto checks the ACL on retained messages too: a late subscriber to `#` gets the
    retained births, states, statuses and market, and its own account only."""
    table = acl_table.rows()
    accounts = {meter: account_pk(community, meter) for meter in METERS}
    clients = {meter: bus(f"meters/{meter}") for meter in METERS} | {"v0": bus("validators/v0")}
    sent = publish_every_kind(bus, clients, accounts)
    clients[READER].close()  # one connection per identity: the reader's own comes next
    late = bus(f"meters/{READER}", ("#",))
    got = [topic for topic, _ in sentinel(late, clients["v0"], SENTINEL)]
    retained = {
        *(topics.meter(m, leaf) for m in METERS for leaf in ("state", "birth")),
        topics.status(ID),
        topics.ledger_state(0),
        topics.market_order(7, ID),
        topics.market_result(7),
        *(topics.account(bytes.fromhex(pk)) for pk in accounts.values()),
        "homeassistant/sensor/spb_m0002_power/config",
    }
    may = [t for t in sent if t in retained and acl_table.readable(t, table, READER, accounts[READER])]
    assert sorted(got) == sorted([*may, SENTINEL])
    assert topics.account(bytes.fromhex(accounts[READER])) in got
    assert topics.account(bytes.fromhex(accounts["m0002"])) not in got


__all__ = ["broker", "bus"]  # fixtures used by name
