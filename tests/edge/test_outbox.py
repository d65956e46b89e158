"""edge.outbox.OutboxPump: the durable outbox published in order, `window` rows at a time,
each row deleted only after the broker's PUBACK; on a recording bus and on a real Mosquitto."""

from __future__ import annotations

import threading

import pytest

from edge.outbox import OutboxPump
from edge.store import TX, MeterStore
from tests.support.bus import Inbox, connected, wait_for

TOPIC = "spb/test/outbox"


@pytest.fixture
def store(tmp_path):
    s = MeterStore(tmp_path / "meter.db")
    yield s
    s.close()


def fill(store: MeterStore, n: int, start: int = 0) -> list[bytes]:
    payloads = [b"row %03d" % i for i in range(start, start + n)]
    for p in payloads:
        store.enqueue(TOPIC, p, TX)
    return payloads


def remaining(store: MeterStore) -> list[bytes]:
    return [r.payload for r in store.outbox_after(0, 100_000)]


# ---- on a recording bus ------------------------------------------------------------------


class RecordingBus:
    """Records publish() calls; the test fires each one's on_ack, as paho's thread would."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []
        self.acks: list = []
        self.connected = threading.Event()  # as BusClient's: set while connected and ready
        self.connected.set()

    def publish(self, topic, payload, retain=False, on_ack=None):
        self.published.append((topic, payload))
        self.acks.append(on_ack)

    def ack(self, i: int) -> None:
        self.acks[i](i + 1)


def test_kick_hands_over_at_most_window_rows_in_order(store):
    """Only `window` rows are with paho at a time, oldest first; more kicks add nothing until acks."""
    rows = fill(store, 7)
    bus = RecordingBus()
    pump = OutboxPump(store, bus, window=3)
    for _ in range(5):
        pump.kick()
    assert [p for _, p in bus.published] == rows[:3]
    assert pump.in_flight == 3
    assert {t for t, _ in bus.published} == {TOPIC}


def test_rows_are_deleted_only_after_their_puback(store):
    """Published but unacknowledged rows stay in the store; an ack deletes exactly its row (at
    the next kick, not on paho's thread) and frees one place in the window."""
    rows = fill(store, 5)
    bus = RecordingBus()
    pump = OutboxPump(store, bus, window=3)
    pump.kick()
    assert remaining(store) == rows
    bus.ack(1)  # PUBACKs come on paho's thread: only queued there
    assert remaining(store) == rows
    pump.kick()
    assert remaining(store) == rows[:1] + rows[2:]
    assert [p for _, p in bus.published] == rows[:4]
    for i in (0, 2, 3):
        bus.ack(i)
    pump.forget_acked()
    assert remaining(store) == rows[4:]
    assert pump.in_flight == 0
    pump.kick()
    assert [p for _, p in bus.published] == rows
    bus.ack(4)
    pump.kick()
    assert remaining(store) == [] and pump.in_flight == 0


def test_nothing_goes_to_paho_before_the_connection_is_ready(store):
    """Rows wait in SQLite until the bus is connected (its birth published): a peer must never
    get a reading it cannot verify yet. Acks that arrive meanwhile are still applied."""
    rows = fill(store, 3)
    bus = RecordingBus()
    pump = OutboxPump(store, bus, window=2)
    pump.kick()
    bus.connected.clear()
    bus.ack(0)
    pump.kick()
    assert [p for _, p in bus.published] == rows[:2]
    assert remaining(store) == rows[1:]
    bus.connected.set()
    pump.kick()
    assert [p for _, p in bus.published] == rows


def test_rows_added_later_follow_in_order(store):
    """Rows queued while others are in flight go out after them, never before, never twice."""
    first = fill(store, 2)
    bus = RecordingBus()
    pump = OutboxPump(store, bus, window=10)
    pump.kick()
    later = fill(store, 3, start=2)
    pump.kick()
    pump.kick()
    assert [p for _, p in bus.published] == first + later


def test_acks_from_another_thread_are_all_kept(store):
    """PUBACKs reported concurrently from paho's thread while the loop kicks are none of them lost."""
    rows = fill(store, 200)
    bus = RecordingBus()
    pump = OutboxPump(store, bus, window=20)
    acked = 0
    done = threading.Event()

    def paho():
        nonlocal acked
        while not done.is_set():
            while acked < len(bus.acks):
                bus.ack(acked)
                acked += 1

    thread = threading.Thread(target=paho)
    thread.start()
    try:
        wait_for(lambda: (pump.kick(), store.outbox_size() == 0)[1], 10, "an empty outbox")
    finally:
        done.set()
        thread.join()
    assert [p for _, p in bus.published] == rows


def test_a_new_pump_sends_unacknowledged_rows_again(store):
    """After a restart (a new pump on the same store) every row not acknowledged is sent again,
    from the first; acknowledged ones are not."""
    rows = fill(store, 4)
    bus = RecordingBus()
    pump = OutboxPump(store, bus, window=3)
    pump.kick()
    bus.ack(0)
    pump.forget_acked()
    again = RecordingBus()
    OutboxPump(store, again, window=10).kick()
    assert [p for _, p in again.published] == rows[1:]


# ---- on a real broker --------------------------------------------------------------------


class HeldAcks:
    """Wraps a BusClient's publish: counts calls, and holds back each on_ack until released."""

    def __init__(self, bus) -> None:
        self.bus, self.publish_calls, self.held = bus, 0, []
        self._real = bus.publish
        self.hold = True
        bus.publish = self.publish

    def publish(self, topic, payload, retain=False, on_ack=None):
        self.publish_calls += 1
        if self.hold:
            self.held.append(on_ack)
            return self._real(topic, payload, retain)
        return self._real(topic, payload, retain, on_ack=on_ack)

    def release(self) -> None:
        for on_ack in self.held:
            on_ack(0)
        self.held.clear()


def subscriber(mosquitto, make_client, name: str = "sub") -> Inbox:
    inbox = Inbox()
    client = make_client(mosquitto.port, name)
    granted = client.subscribe(TOPIC, inbox)
    connected(client)
    assert granted.wait(10)
    return inbox


def drain(pump: OutboxPump, store: MeterStore, timeout: float = 10) -> None:
    wait_for(
        lambda: (pump.kick(), store.outbox_size() == 0)[1],
        timeout,
        lambda: f"an empty outbox; {store.outbox_size()} left, {pump.in_flight} in flight",
    )


@pytest.mark.integration
def test_rows_arrive_in_order_and_leave_the_store_after_puback(mosquitto, make_client, store):
    """On a real broker: every row arrives once, in order; a delivered row stays in the store
    until the pump learns of its PUBACK."""
    inbox = subscriber(mosquitto, make_client)
    bus = connected(make_client(mosquitto.port, "meter"))
    rows = fill(store, 5)
    held = HeldAcks(bus)
    pump = OutboxPump(store, bus, window=10)
    pump.kick()
    inbox.wait_count(5)
    pump.kick()
    assert remaining(store) == rows  # the broker has them; the pump was not told yet
    held.hold = False
    held.release()
    pump.kick()
    assert remaining(store) == []
    more = fill(store, 30, start=5)
    drain(pump, store)
    inbox.wait_count(35)
    assert inbox.payloads() == rows + more


@pytest.mark.integration
def test_broker_outage_keeps_at_most_window_with_paho_and_loses_nothing(mosquitto, make_client, store):
    """While the broker is down only `window` rows are handed to paho (the rest wait in SQLite)
    and none is deleted; after it comes back everything arrives, in order, and the outbox empties."""
    inbox = subscriber(mosquitto, make_client)
    bus = connected(make_client(mosquitto.port, "meter"))
    before = fill(store, 3)
    pump = OutboxPump(store, bus, window=4)
    drain(pump, store)
    inbox.wait_count(3)
    counting = HeldAcks(bus)
    counting.hold = False
    mosquitto.stop()
    wait_for(lambda: not bus.connected.is_set(), 10, "the meter to notice the outage")
    during = fill(store, 20, start=3)
    for _ in range(50):
        pump.kick()
    assert counting.publish_calls <= 4
    assert pump.in_flight <= 4
    assert remaining(store) == during
    mosquitto.restart()
    drain(pump, store, timeout=15)
    assert counting.publish_calls == 20  # each row handed to paho once
    wait_for(
        lambda: set(inbox.payloads()) >= set(before + during),
        15,
        lambda: f"every row at the subscriber; got {inbox.payloads()}",
    )
    # The subscriber's own PUBACK of the last row before the stop may not have reached the
    # broker: it may get that row again (QoS 1). Apart from that: in order, nothing missing.
    assert list(dict.fromkeys(inbox.payloads())) == before + during
    assert inbox.payloads()[-20:] == during


@pytest.mark.integration
def test_a_restarted_meter_sends_the_remaining_rows_again(mosquitto, make_client, store, tmp_path):
    """A meter that dies before the pump learnt of PUBACKs sends those rows again after its
    restart (a new store connection, bus and pump): duplicates are possible, losses are not."""
    inbox = subscriber(mosquitto, make_client)
    bus = connected(make_client(mosquitto.port, "meter"))
    rows = fill(store, 6)
    held = HeldAcks(bus)
    first = OutboxPump(store, bus, window=3)
    first.kick()
    inbox.wait_count(3)
    held.held[0](0)  # only the first row's PUBACK reached the pump before the "crash"
    first.forget_acked()
    bus.close()
    assert remaining(store) == rows[1:]

    reopened = MeterStore(tmp_path / "meter.db")
    try:
        bus2 = connected(make_client(mosquitto.port, "meter"))
        second = OutboxPump(reopened, bus2, window=3)
        drain(second, reopened)
    finally:
        reopened.close()
    inbox.wait_count(3 + 5)
    assert inbox.payloads() == rows[:3] + rows[1:]
