"""edge.outbox.OutboxPump: the durable outbox published in order, `window` rows at a time,
each row deleted only after the broker's PUBACK; on a recording bus here, on a real
Mosquitto in tests/system/test_meter_outbox_bus.py."""

from __future__ import annotations

import threading

import pytest

from edge.outbox import OutboxPump
from edge.store import MeterStore
from tests.support.bus import wait_for
from tests.support.meter import OUTBOX_TOPIC, fill_outbox, outbox_rows


@pytest.fixture
def store(tmp_path):
    s = MeterStore(tmp_path / "meter.db")
    yield s
    s.close()


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
    rows = fill_outbox(store, 7)
    bus = RecordingBus()
    pump = OutboxPump(store, bus, window=3)
    for _ in range(5):
        pump.kick()
    assert [p for _, p in bus.published] == rows[:3]
    assert pump.in_flight == 3
    assert {t for t, _ in bus.published} == {OUTBOX_TOPIC}


def test_rows_are_deleted_only_after_their_puback(store):
    """Published but unacknowledged rows stay in the store; an ack deletes exactly its row (at
    the next kick, not on paho's thread) and frees one place in the window."""
    rows = fill_outbox(store, 5)
    bus = RecordingBus()
    pump = OutboxPump(store, bus, window=3)
    pump.kick()
    assert outbox_rows(store) == rows
    bus.ack(1)  # PUBACKs come on paho's thread: only queued there
    assert outbox_rows(store) == rows
    pump.kick()
    assert outbox_rows(store) == rows[:1] + rows[2:]
    assert [p for _, p in bus.published] == rows[:4]
    for i in (0, 2, 3):
        bus.ack(i)
    pump.forget_acked()
    assert outbox_rows(store) == rows[4:]
    assert pump.in_flight == 0
    pump.kick()
    assert [p for _, p in bus.published] == rows
    bus.ack(4)
    pump.kick()
    assert outbox_rows(store) == [] and pump.in_flight == 0


def test_nothing_goes_to_paho_before_the_connection_is_ready(store):
    """Rows wait in SQLite until the bus is connected (its birth published): a peer must never
    get a reading it cannot verify yet. Acks that arrive meanwhile are still applied."""
    rows = fill_outbox(store, 3)
    bus = RecordingBus()
    pump = OutboxPump(store, bus, window=2)
    pump.kick()
    bus.connected.clear()
    bus.ack(0)
    pump.kick()
    assert [p for _, p in bus.published] == rows[:2]
    assert outbox_rows(store) == rows[1:]
    bus.connected.set()
    pump.kick()
    assert [p for _, p in bus.published] == rows


def test_rows_added_later_follow_in_order(store):
    """Rows queued while others are in flight go out after them, never before, never twice."""
    first = fill_outbox(store, 2)
    bus = RecordingBus()
    pump = OutboxPump(store, bus, window=10)
    pump.kick()
    later = fill_outbox(store, 3, start=2)
    pump.kick()
    pump.kick()
    assert [p for _, p in bus.published] == first + later


def test_acks_from_another_thread_are_all_kept(store):
    """PUBACKs reported concurrently from paho's thread while the loop kicks are none of them lost."""
    rows = fill_outbox(store, 200)
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
    rows = fill_outbox(store, 4)
    bus = RecordingBus()
    pump = OutboxPump(store, bus, window=3)
    pump.kick()
    bus.ack(0)
    pump.forget_acked()
    again = RecordingBus()
    OutboxPump(store, again, window=10).kick()
    assert [p for _, p in again.published] == rows[1:]
