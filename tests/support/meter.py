"""Helpers for meter tests: a MeterNode running on a thread, a key batch with a CoE, the
meter's store read while it runs, and `spb-meter` as a command."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from edge import coe
from edge.keyring import Batch
from edge.meter import MeterNode
from edge.state_dir import MeterIdentity
from edge.store import TX, MeterStore
from tests.support.bus import REPO, child_env
from wire.verify import Verifier


class RunningMeter:
    """A MeterNode's run() on a thread, with the Event that stops it."""

    def __init__(self, node: MeterNode) -> None:
        self.node = node
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=node.run, args=(self.stop_event,), name=node.id.meter, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(15)
        assert not self.thread.is_alive(), f"{self.node.id.meter} did not stop"


def add_witnessed_batch(store: MeterStore, me: MeterIdentity, witness: MeterIdentity, now: int, size: int = 4) -> Batch:
    """A key batch of `me` in `store` whose CoE `witness` signed, as the running meter would
    have fetched it over coe/req and coe/resp."""
    batch = store.add_batch(Batch.new(os.urandom(32 * size), now))
    answering = coe.Witness(
        witness.meter,
        witness.devcert,
        witness.device_key,
        Verifier(cas=[witness.ca_pk]),
        valid_ms=86_400_000,
        per_hour=12,
    )
    _, raw = answering.answer(coe.request(batch, me.devcert, me.device_key, os.urandom(16), now), set(), now)
    got = coe.accept(Verifier(cas=[me.ca_pk]), raw, batch, me.meter, now)
    store.set_coe(batch.id, raw, got.t, got.exp)
    return store.batch(batch.id)


OUTBOX_TOPIC = "spb/test/outbox"


def fill_outbox(store: MeterStore, n: int, start: int = 0) -> list[bytes]:
    """n rows queued in store's outbox on OUTBOX_TOPIC, b"row 000" on; their payloads."""
    payloads = [b"row %03d" % i for i in range(start, start + n)]
    for p in payloads:
        store.enqueue(OUTBOX_TOPIC, p, TX)
    return payloads


def outbox_rows(store: MeterStore) -> list[bytes]:
    """The payloads still in store's outbox, oldest first."""
    return [r.payload for r in store.outbox_after(0, 100_000)]


def in_store(state_dir: Path, read):
    """read(MeterStore) on a meter's database, opened for this one read (the meter may be running)."""
    store = MeterStore(state_dir / "meter.db")
    try:
        return read(store)
    finally:
        store.close()


def spb_meter(*args: object) -> subprocess.CompletedProcess:
    """`spb-meter ARGS` as a separate process (it writes into the running meter's SQLite file)."""
    return subprocess.run(
        [sys.executable, "-m", "edge.cli", *map(str, args)],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
