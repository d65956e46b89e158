"""broker.client.BusClient with no broker: the tests play paho's network thread, calling the
callbacks BusClient gave paho as paho would, to reach orderings a real broker makes rare
(on a real Mosquitto: tests/system/test_bus_client.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from paho.mqtt.client import ConnectFlags, DisconnectFlags
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from broker.client import AckTracker, BusClient
from broker.runtime import free_port
from tests.support.bus import Inbox
from wire import topics

TEST_TOPIC = f"{topics.ROOT}/test"


def test_ack_tracker_pairs_acks_that_arrive_before_the_mid_is_known():
    tracker, results = AckTracker(), []
    tracker.acked(7, "early")  # the network thread saw the PUBACK before publish() returned mid 7
    tracker.expect(7, results.append)
    tracker.expect(8, results.append)
    tracker.acked(8, "late")
    assert results == ["early", "late"]


# The tests below play paho's network thread: they call the callbacks BusClient gave paho,
# with what paho passes for a CONNACK, a lost connection, a SUBACK or a PUBACK.


def broker_accepts(client: BusClient) -> None:
    client._client.on_connect(client._client, None, ConnectFlags(False), ReasonCode(PacketTypes.CONNACK), None)


def connection_lost(client: BusClient) -> None:
    lost = ReasonCode(PacketTypes.DISCONNECT, "Unspecified error")
    client._client.on_disconnect(client._client, None, DisconnectFlags(False), lost, None)


def suback(client: BusClient, mid: int) -> None:
    client._client.on_subscribe(client._client, None, mid, [ReasonCode(PacketTypes.SUBACK, "Granted QoS 1")], None)


def puback(client: BusClient, mid: int) -> None:
    client._client.on_publish(client._client, None, mid, ReasonCode(PacketTypes.PUBACK), None)


def offline_client(
    monkeypatch, subscribe_mids: list[int], meanwhile: dict[int, Callable[[], None]] | None = None
) -> BusClient:
    """A BusClient that never connects; its n-th SUBSCRIBE gets mid subscribe_mids[n] (mids wrap, so any
    mid may come round again), and meanwhile[n]() runs before that subscribe() returns."""
    client = BusClient("127.0.0.1", free_port(), "m1")
    count = iter(range(len(subscribe_mids)))

    def subscribe(filters):
        n = next(count)
        if meanwhile and n in meanwhile:
            meanwhile[n]()
        return MQTTErrorCode.MQTT_ERR_SUCCESS, subscribe_mids[n]

    monkeypatch.setattr(client._client, "subscribe", subscribe)
    return client


def test_a_puback_never_reaches_a_subscribe_whose_connection_was_lost(monkeypatch, caplog):
    """Such a SUBACK never comes; once mids wrapped, an early PUBACK reusing the mid used to reach
    the subscribe's handler, and the TypeError it raised ended paho's thread: off the bus for good."""
    client = offline_client(monkeypatch, subscribe_mids=[1])
    granted = client.subscribe(TEST_TOPIC, Inbox())
    broker_accepts(client)  # re-subscribes with mid 1
    connection_lost(client)  # before the SUBACK
    paho_publish = client._client.publish

    def publish_acked_at_once(*args, **kwargs):
        info = paho_publish(*args, **kwargs)
        assert info.mid == 1  # paho's first mid stands in for one that came round again
        puback(client, info.mid)  # the network thread handles the PUBACK before publish() returns
        return info

    monkeypatch.setattr(client._client, "publish", publish_acked_at_once)
    acked = []

    client.publish(TEST_TOPIC, b"x", on_ack=acked.append)

    assert acked == [1]
    assert not granted.is_set()
    assert not any(record.exc_info for record in caplog.records)


def test_a_publish_waits_for_its_own_puback_across_reconnects(monkeypatch):
    """paho sends an unacknowledged message again after a reconnect, with the same mid; its
    PUBACK must still settle it, and a SUBACK that happens to share the mid must not."""
    client = offline_client(monkeypatch, subscribe_mids=[2, 1])
    acked = []
    info = client.publish(TEST_TOPIC, b"x", on_ack=acked.append)
    assert info.mid == 1
    granted = client.subscribe(TEST_TOPIC, Inbox())
    broker_accepts(client)
    connection_lost(client)
    broker_accepts(client)  # re-subscribes with mid 1, as if mids had wrapped meanwhile

    suback(client, 1)
    assert granted.is_set()
    assert acked == []
    puback(client, 1)
    assert acked == [1]


def test_a_subscribe_straddling_a_lost_connection_does_not_take_a_later_suback(monkeypatch):
    """subscribe() on an application thread may send SUBSCRIBE just before the connection drops
    and register for the SUBACK just after; a later SUBSCRIBE on that mid must still get its own."""
    client = offline_client(
        monkeypatch,
        subscribe_mids=[1, 2, 1],
        meanwhile={
            0: lambda: connection_lost(client),  # the network thread loses the connection
            2: lambda: suback(client, 1),  # the network thread handles the SUBACK before subscribe() returns
        },
    )
    broker_accepts(client)
    client.subscribe(f"{TEST_TOPIC}/a", Inbox())
    broker_accepts(client)  # re-subscribes .../a with mid 2
    suback(client, 2)

    assert client.subscribe(f"{TEST_TOPIC}/b", Inbox()).is_set()


PAHO_CALLBACKS = {
    "on_connect": "_handle_connect",
    "on_disconnect": "_handle_disconnect",
    "on_connect_fail": "_handle_connect_fail",
    "on_subscribe": "_handle_subscribe",
    "on_publish": "_handle_publish",
    "on_message": "_handle_unmatched",
}


@pytest.mark.parametrize("paho_callback", PAHO_CALLBACKS)
def test_an_exception_in_a_paho_callback_is_logged_not_raised(paho_callback, monkeypatch, caplog):
    """paho re-raises it, which ends its network thread and leaves the client off the bus for good."""

    def broken(self, *args):
        raise RuntimeError("bug in BusClient")

    monkeypatch.setattr(BusClient, PAHO_CALLBACKS[paho_callback], broken)
    client = BusClient("127.0.0.1", free_port(), "m1")

    getattr(client._client, paho_callback)(client._client, None, None, None, None)

    assert "RuntimeError: bug in BusClient" in caplog.text
