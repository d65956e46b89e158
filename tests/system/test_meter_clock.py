"""A meter whose clock says 1970 at start (a Pi without a battery clock, before NTP) on a
real Mosquitto: it signs nothing and does not even connect until the clock is set, then its
birth and first reading carry the real time, and the energy counted while it waited."""

from __future__ import annotations

import logging
import threading

import pytest

from broker.clock import wall_ms
from deploy.provision import provision
from edge import meter
from edge.config import MeterConfig
from edge.state_dir import MeterIdentity
from edge.store import MeterStore
from tests.support.bus import Inbox, connected, wait_for
from wire import topics
from wire.messages import open_message

IMPORT_W = 36_000  # 10 Wh a second: a second of waiting is 10 Wh, a reading period 2 Wh


class PiClock:
    """1970 until set(), then the real time; counts the reads made before."""

    def __init__(self) -> None:
        self.synced = threading.Event()
        self.wrong_reads = 0
        self.set_at: int | None = None

    def __call__(self) -> int:
        if self.synced.is_set():
            return wall_ms()
        self.wrong_reads += 1
        return 0

    def set(self) -> None:
        self.set_at = wall_ms()
        self.synced.set()


@pytest.fixture
def pi(tmp_path, mosquitto, make_client, run_meter, monkeypatch):
    """(start, inbox, clock): a provisioned m0001 whose every clock read is a PiClock, a watcher
    of the meters' topics, and start() running its MeterNode."""
    provision(tmp_path, meters=1, accounts=None, validators=1, now_ms=wall_ms() - 60_000)
    identity = MeterIdentity.load(tmp_path / "meters/m0001")
    inbox = Inbox()
    watcher = make_client(mosquitto.port, "watcher")
    watcher.subscribe(topics.METERS_ALL, inbox)
    connected(watcher)
    clock = PiClock()
    monkeypatch.setattr(meter, "wall_ms", clock)  # every clock read of the meter's node

    def start():
        return run_meter(identity, MeterConfig(reading_s=0.2), lambda _elapsed: (IMPORT_W, 0))

    return start, inbox, clock, identity


def test_a_meter_waits_for_the_clock_before_signing(pi, caplog):
    start, inbox, clock, _ = pi
    with caplog.at_level(logging.INFO, "spb.meter"):
        running = start()
        wait_for(lambda: clock.wrong_reads >= 3, 10, "the meter checking its clock again")  # 2 s of waiting
        assert not running.node.bus.connected.is_set()
        assert inbox.messages == []  # no birth, no reading, not even `online`
        clock.set()
        inbox.wait_count(3)  # online, birth, a reading (any order between birth and reading)

        def first(leaf: str):
            return next(p for t, p, _ in inbox.messages if t == topics.meter("m0001", leaf))

        wait_for(lambda: any(t.endswith("/reading") for t, _, _ in inbox.messages), 10, "a reading")
        birth = open_message(first("birth"), "birth").body
        reading = open_message(first("reading"), "reading").body
        running.stop()

    assert clock.set_at is not None
    assert birth.t >= clock.set_at and reading.t >= clock.set_at
    assert reading.seq == 1  # the first reading of the meter's life: none was signed in 1970
    assert reading.wh_in >= 10  # at least a second of the 2 s waited was counted, not just the 0.2 s after
    waits = [r.getMessage() for r in caplog.records if r.getMessage().startswith("waiting for the clock")]
    assert len(waits) == 1, waits  # once, though it checked every second
    assert waits[0].startswith(
        "waiting for the clock: it says 1970-01-01 00:00:00 UTC, before this meter's certificate ("
    )


def test_a_meter_stopped_while_it_waits_stops_at_once(pi):
    """systemctl stop during the wait: the loop ends without signing anything (no reading
    of the energy so far, no `offline`: it never said `online`)."""
    start, inbox, clock, identity = pi
    running = start()
    wait_for(lambda: clock.wrong_reads >= 2, 10, "the meter checking its clock again")
    running.stop()
    assert inbox.messages == [] and clock.wrong_reads >= 2
    assert MeterStore(identity.db_path).totals().wms_in > 0  # what it counted is kept for the next start
