"""Helpers for meter tests: a MeterNode running on a thread, and a key batch with a CoE."""

from __future__ import annotations

import os
import threading

from broker.verify import Verifier
from edge import coe
from edge.keyring import Batch
from edge.meter import MeterNode
from edge.state_dir import MeterIdentity
from edge.store import MeterStore


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


def add_witnessed_batch(store: MeterStore, me: MeterIdentity, witness: MeterIdentity, now: int,
                        size: int = 4) -> Batch:
    """A key batch of `me` in `store` whose CoE `witness` signed, as the running meter would
    have fetched it over coe/req and coe/resp."""
    batch = store.add_batch(Batch.new(os.urandom(32 * size), now))
    answering = coe.Witness(witness.meter, witness.devcert, witness.device_key, Verifier(cas=[witness.ca_pk]),
                            valid_ms=86_400_000, per_hour=12)
    _, raw = answering.answer(coe.request(batch, me.devcert, me.device_key, os.urandom(16), now), set(), now)
    got = coe.accept(Verifier(cas=[me.ca_pk]), raw, batch, me.meter, now)
    store.set_coe(batch.id, raw, got.t, got.exp)
    return store.batch(batch.id)
