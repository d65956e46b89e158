"""broker.pacing.PublishWindow, the in-flight count the meter's outbox and the ledger's
announcements share, on a bus that records publishes and acknowledges when told."""

from __future__ import annotations

from broker.pacing import PublishWindow


class RecordingBus:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, bool]] = []
        self.acks: list = []

    def publish(self, topic, payload, retain=False, on_ack=None):
        self.published.append((topic, payload, retain))
        self.acks.append(on_ack)

    def ack(self, i: int) -> None:
        self.acks[i](i + 1)  # paho's mids start at 1


def test_room_shrinks_per_publish_and_grows_per_puback():
    bus = RecordingBus()
    window = PublishWindow(bus, 2)
    assert (window.in_flight, window.room) == (0, 2)
    window.publish("a", b"1", retain=True)
    window.publish("a", b"2")
    assert (window.in_flight, window.room) == (2, 0)
    assert bus.published == [("a", b"1", True), ("a", b"2", False)]
    bus.ack(1)
    assert (window.in_flight, window.room) == (1, 1)


def test_each_puback_runs_its_own_on_ack_then_the_windows():
    """The message's on_ack(mid) first (say, forget its outbox row), then the window's (say,
    wake the loop that has more to hand over): the loop must see the row gone when it wakes."""
    calls = []
    bus = RecordingBus()
    window = PublishWindow(bus, 5, on_ack=lambda: calls.append(("room", window.in_flight)))
    window.publish("t", b"x", on_ack=lambda mid: calls.append(("row", mid)))
    window.publish("t", b"y")
    bus.ack(1)
    bus.ack(0)
    assert calls == [("room", 1), ("row", 1), ("room", 0)]
