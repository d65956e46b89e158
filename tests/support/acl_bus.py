"""Clients of a provisioned community's Mosquitto (its TLS config and ACL) for the tests of
who may say what. Mosquitto acknowledges a publish it denies like any other and routes a
message before acknowledging it, so a test publishes what must be refused, waits for those
PUBACKs, then has an allowed sender publish a sentinel, and looks at everything the watcher
got up to it: never a timing.

The test module provides the `community` fixture (a provisioned dir); `broker` and `bus`
come from here (import them into the module).
"""

from __future__ import annotations

import itertools

import pytest

from broker import secure
from broker.client import BusClient, TlsFiles
from broker.runtime import find_mosquitto, free_port
from tests.support.bus import Inbox, connected, wait_for

LOCAL = "local"  # `who` for an anonymous client of the loopback listener
FORGED = b"forged"


@pytest.fixture
def broker(community):
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed: apt-get install mosquitto", pytrace=False)
    running = secure.start_secure(community / "broker", free_port(), local_port=free_port())
    yield running
    running.stop()


@pytest.fixture
def bus(broker, community, make_client):
    """bus(who, subscribe=()): a connected client, its subscriptions feeding its .inbox. `who`
    is a dir of the community holding TLS files (e.g. "meters/m0001", "mirror"), or LOCAL."""
    anonymous = itertools.count()

    def connect(who: str, subscribe: tuple[str, ...] = ()) -> BusClient:
        if who == LOCAL:
            client = make_client(broker.local_port, f"anonymous-{next(anonymous)}")
        else:
            tls = TlsFiles.in_dir(community / who)
            client = make_client(broker.port, who.replace("/", "-"), clean_session=True, tls=tls)
        client.inbox = Inbox()
        for topic_filter in subscribe:
            client.subscribe(topic_filter, client.inbox)
        return connected(client)

    return connect


def publish_all(client: BusClient, topics: list[str], payload: bytes = FORGED) -> None:
    for info in [client.publish(topic, payload) for topic in topics]:
        assert client.wait_acked(info, 10)


def sentinel(watcher: BusClient, sender: BusClient, topic: str) -> list[tuple[str, bytes]]:
    """Send an allowed message and return everything the watcher got up to and including it."""
    publish_all(sender, [topic], b"sentinel")
    wait_for(
        lambda: (topic, b"sentinel") in [m[:2] for m in watcher.inbox.messages],
        message=lambda: f"the sentinel on {topic}; got {watcher.inbox.messages}",
    )
    got = [m[:2] for m in watcher.inbox.messages]
    return got[: got.index((topic, b"sentinel")) + 1]
