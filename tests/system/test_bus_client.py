"""BusClient against a real Mosquitto: QoS 1 acks, wills, reconnects and re-subscription (its
callbacks driven by hand, with no broker: tests/broker/test_client.py)."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import threading

from broker.runtime import LOG_NAME, Mosquitto, free_port
from tests.support.bus import REPO, Inbox, child_env, connected, wait_for
from wire import topics

TEST_TOPIC = f"{topics.ROOT}/test"


def test_a_handler_that_raises_does_not_stop_later_messages(mosquitto, make_client, caplog):
    """Handlers run on paho's network thread, where an exception would end all traffic."""
    inbox = Inbox()

    def handler(topic: str, payload: bytes, retained: bool) -> None:
        inbox(topic, payload, retained)
        if payload == b"poison":
            raise ValueError("cannot handle poison")

    subscriber = make_client(mosquitto.port, "sub")
    subscriber.subscribe(TEST_TOPIC, handler)
    connected(subscriber)
    publisher = connected(make_client(mosquitto.port, "pub"))
    publisher.publish(TEST_TOPIC, b"poison")
    publisher.publish(TEST_TOPIC, b"after")

    assert inbox.wait_count(2) == [(TEST_TOPIC, b"poison", False), (TEST_TOPIC, b"after", False)]
    assert "ValueError: cannot handle poison" in caplog.text


def test_publish_subscribe_round_trip_with_puback(mosquitto, make_client):
    inbox = Inbox()
    subscriber = make_client(mosquitto.port, "sub")
    subscriber.subscribe(f"{TEST_TOPIC}/#", inbox)
    connected(subscriber)
    publisher = connected(make_client(mosquitto.port, "pub"))

    acked_mids, acked = [], threading.Event()
    info = publisher.publish(
        f"{TEST_TOPIC}/a", b"\x00reading", on_ack=lambda mid: (acked_mids.append(mid), acked.set())
    )

    assert acked.wait(10)
    assert acked_mids == [info.mid]
    assert publisher.wait_acked(info, 0)
    assert inbox.wait_count(1) == [(f"{TEST_TOPIC}/a", b"\x00reading", False)]


def test_subscribe_while_connected_is_granted_then_receives(mosquitto, make_client):
    inbox = Inbox()
    subscriber = connected(make_client(mosquitto.port, "sub"))
    assert subscriber.subscribe(TEST_TOPIC, inbox).wait(10)
    connected(make_client(mosquitto.port, "pub")).publish(TEST_TOPIC, b"x")
    assert inbox.wait_count(1) == [(TEST_TOPIC, b"x", False)]


# A meter in a child process, so that SIGKILL makes it vanish without a DISCONNECT.
DYING_METER = """
import sys
from broker.client import BusClient
port, state = int(sys.argv[1]), sys.argv[2]
client = BusClient("127.0.0.1", port, "m1", will=(state, b"offline", True))
client.on_connect.append(lambda: client.publish(state, b"online", retain=True))
client.connect()
sys.stdin.read()
"""


def test_will_is_delivered_when_a_client_dies(mosquitto, make_client, read_retained):
    state = topics.meter("m1", "state")
    inbox = Inbox()
    observer = make_client(mosquitto.port, "observer")
    observer.subscribe(state, inbox)
    connected(observer)

    with subprocess.Popen(
        [sys.executable, "-c", DYING_METER, str(mosquitto.port), state],
        cwd=REPO,
        stdin=subprocess.PIPE,
        env=child_env(),
    ) as meter:
        inbox.wait_count(1)
        meter.kill()  # SIGKILL: the kernel closes the socket and no DISCONNECT is sent
    assert inbox.wait_count(2) == [(state, b"online", False), (state, b"offline", False)]

    assert read_retained(mosquitto.port, state) == (state, b"offline", True)


def test_will_is_not_sent_on_close(mosquitto, make_client):
    state, fence = topics.meter("m1", "state"), f"{TEST_TOPIC}/fence"
    inbox = Inbox()
    observer = make_client(mosquitto.port, "observer")
    observer.subscribe(state, inbox)
    observer.subscribe(fence, inbox)
    connected(observer)

    meter = connected(make_client(mosquitto.port, "m1", will=(state, b"offline", True)))
    assert meter.wait_acked(meter.publish(state, b"online", retain=True), 10)
    meter.close()
    # Once Mosquitto has logged the end of m1's connection, it has published any will it was
    # going to: a will, had it been sent, would arrive before this later publish.
    log = mosquitto.data_dir / LOG_NAME
    wait_for(
        lambda: re.search(r"^\d+: Client m1 (disconnected|closed its connection)", log.read_text(), re.M),
        message=lambda: f"the end of m1's connection in {log}",
    )
    observer.publish(fence, b"fence")

    assert inbox.wait_count(2) == [(state, b"online", False), (fence, b"fence", False)]


def test_subscriptions_are_restored_after_a_broker_restart(mosquitto, make_client):
    inbox, connects = Inbox(), []
    # A clean session: the broker forgets our subscription when we drop, so only the
    # client's own re-subscription on reconnect can bring messages back.
    subscriber = make_client(mosquitto.port, "sub", clean_session=True)
    subscriber.on_connect.append(lambda: connects.append("up"))
    subscriber.subscribe(TEST_TOPIC, inbox)
    connected(subscriber)

    mosquitto.restart()
    wait_for(lambda: len(connects) == 2, message="the subscriber to reconnect")
    assert subscriber.wait_connected(10)

    connected(make_client(mosquitto.port, "pub")).publish(TEST_TOPIC, b"after restart")
    assert inbox.wait_count(1) == [(TEST_TOPIC, b"after restart", False)]


def test_client_started_while_broker_is_down_connects_when_it_comes_up(tmp_path, make_client):
    port = free_port()
    meter = make_client(port, "m1")
    acked = threading.Event()
    meter.connect()
    # Published while nothing listens: paho queues it and sends it after connecting.
    queued = meter.publish(topics.meter("m1", "state"), b"online", retain=True, on_ack=lambda mid: acked.set())

    with Mosquitto() as broker:
        broker.start(port, tmp_path / "late-broker")
        assert meter.wait_connected(10)
        assert acked.wait(10)
        assert meter.wait_acked(queued, 0)

        inbox = Inbox()
        observer = make_client(port, "observer")
        observer.subscribe(topics.meter("m1", "state"), inbox)
        connected(observer)
        assert inbox.wait_count(1) == [(topics.meter("m1", "state"), b"online", True)]


def test_an_unsubscribe_made_offline_reaches_the_broker_at_the_next_connect(mosquitto, make_client, caplog):
    """A filter dropped while the broker is down (a meter's settled trade) is unsubscribed at
    the reconnect, so the broker's kept session stops queueing its messages for us."""
    caplog.set_level(logging.DEBUG, logger="broker.client")
    inbox = Inbox()
    client = make_client(mosquitto.port, "dropper")
    client.subscribe(TEST_TOPIC, inbox)
    client.subscribe(TEST_TOPIC + "/still", inbox)
    connected(client)
    mosquitto.stop()
    wait_for(lambda: not client.connected.is_set(), message="the client to notice the broker is gone")
    client.unsubscribe(TEST_TOPIC)
    mosquitto.start(mosquitto.port, mosquitto.data_dir)
    connected(client)
    publisher = connected(make_client(mosquitto.port, "pub"))
    publisher.publish(TEST_TOPIC, b"dropped")
    publisher.publish(TEST_TOPIC + "/still", b"kept")
    assert inbox.wait_count(1) == [(TEST_TOPIC + "/still", b"kept", False)]
    assert not [r for r in caplog.records if r.getMessage() == f"no handler for message on {TEST_TOPIC}"], (
        "the broker still delivered the dropped filter"
    )


def test_a_manual_ack_client_acknowledges_what_no_filter_of_its_matches(mosquitto, make_client, caplog):
    """A validator's session kept a subscription its new run no longer has (a stand-in killed
    while it watched a status topic): what arrives on it is acknowledged anyway, so it holds
    no in-flight slot and is not sent again at the next connect."""
    caplog.set_level(logging.DEBUG, logger="broker.client")
    orphan = TEST_TOPIC + "/orphan"
    first = make_client(mosquitto.port, "validator", manual_ack=True)
    first.subscribe(orphan, lambda *_: None)
    connected(first)
    first.close()  # the session keeps the subscription

    second = connected(make_client(mosquitto.port, "validator", manual_ack=True))
    publisher = connected(make_client(mosquitto.port, "pub"))
    publisher.publish(orphan, b"unmatched")
    wait_for(
        lambda: any(r.getMessage() == f"no handler for message on {orphan}" for r in caplog.records),
        message="the message on the filter only the broker remembers",
    )
    second.close()

    inbox = Inbox()
    third = make_client(mosquitto.port, "validator", manual_ack=True)
    third.subscribe(orphan, inbox)
    connected(third)
    publisher.publish(orphan, b"after")
    assert inbox.wait_count(1) == [(orphan, b"after", False)]  # "unmatched" was acknowledged: not sent again
