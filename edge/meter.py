"""A meter on the bus: birth on every connect, online/offline state, signed readings, peers.

The adapter around the pure parts (energy.Totals, peers.PeerTable, the message classes):
it owns the clock, the SQLite store and the MQTT connection.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from broker import topics
from broker.clock import wall_ms
from broker.client import BusClient
from broker.messages import Birth, Reading
from broker.reasons import Reject
from broker.verify import Verifier
from edge import FIRMWARE_VERSION
from edge.peers import PeerTable
from edge.state_dir import MeterIdentity
from edge.store import MeterStore

log = logging.getLogger("spb.meter")


class MeterNode:
    """One meter. `power` returns the instantaneous power in W (+import, -export)."""

    def __init__(self, identity: MeterIdentity, host: str, port: int, power: Callable[[], int],
                 reading_s: float = 10.0, reconnect_max_s: float = 30.0):
        self.id = identity
        self.power = power
        self.reading_s = reading_s
        self.store = MeterStore(identity.root / "meter.db")
        self.boot = self.store.next_boot()
        self.totals = self.store.totals()
        self.peers = PeerTable(Verifier(cas=[identity.ca_pk]))
        self._remember_peers()
        self.bus = BusClient(host, port, client_id=f"meter-{identity.meter}",
                             will=(topics.meter(identity.meter, "state"), topics.OFFLINE, True),
                             reconnect_max_delay=reconnect_max_s)
        self.bus.on_connect.append(self._announce)
        self.bus.subscribe(topics.every_meter("birth"), self._on_birth)
        self.bus.subscribe(topics.every_meter("reading"), self._on_reading)
        self.bus.subscribe(topics.every_meter("state"), self._on_state)

    def run(self, stop: threading.Event) -> None:
        """Publish a reading every reading_s until `stop` is set, then go offline cleanly."""
        log.info("%s boot %d, %d Wh in, %d Wh out so far", self.id.meter, self.boot,
                 self.totals.wh_in, self.totals.wh_out)
        self.bus.connect()
        last = time.monotonic_ns() // 1_000_000
        while not stop.wait(self.reading_s):
            now = time.monotonic_ns() // 1_000_000
            self.publish_reading(self.power(), now - last)
            last = now
        self.shutdown()

    def publish_reading(self, watts: int, dt_ms: int) -> Reading:
        self.totals = self.totals.add(watts, dt_ms)
        seq = self.store.commit_reading(self.totals)
        reading = Reading(meter=self.id.meter, seq=seq, t=wall_ms(), wh_in=self.totals.wh_in,
                          wh_out=self.totals.wh_out, w=watts)
        self.bus.publish(topics.meter(self.id.meter, "reading"), reading.sign(self.id.device_key))
        return reading

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Say `offline` ourselves: a clean DISCONNECT means the broker drops our will.

        The will says the same `offline`, so the rare close that still fires it (see
        BusClient.close) only repeats the retained state.
        """
        info = self.bus.publish(topics.meter(self.id.meter, "state"), topics.OFFLINE, retain=True)
        if not self.bus.wait_acked(info, timeout_s):
            log.warning("%s: broker did not acknowledge offline within %.0f s", self.id.meter, timeout_s)
        self.bus.close()
        self.store.close()

    def _announce(self) -> None:
        birth = Birth(meter=self.id.meter, cert=self.id.devcert, fw=FIRMWARE_VERSION, boot=self.boot, t=wall_ms())
        self.bus.publish(topics.meter(self.id.meter, "state"), topics.ONLINE, retain=True)
        self.bus.publish(topics.meter(self.id.meter, "birth"), birth.sign(self.id.device_key), retain=True)
        log.info("%s online, birth sent", self.id.meter)

    def _remember_peers(self) -> None:
        """Re-verify the births stored before this boot; a peer whose devcert lapsed is dropped."""
        for meter, raw in self.store.peer_births():
            try:
                self.peers.on_birth(meter, raw, wall_ms())
            except Reject as exc:
                log.warning("%s forgets %s: stored birth no longer verifies (%s)", self.id.meter, meter, exc)

    def _peer_message(self, topic: str, payload: bytes, handle) -> None:
        parsed = topics.parse_meter_topic(topic)
        if parsed is None or parsed[0] == self.id.meter:
            return
        try:
            handle(parsed[0], payload)
        except Reject as exc:
            log.warning("%s rejected %s: %s", self.id.meter, topic, exc)

    def _on_birth(self, topic: str, payload: bytes, retained: bool) -> None:
        def handle(peer: str, raw: bytes) -> None:
            birth = self.peers.on_birth(peer, raw, wall_ms())
            self.store.save_peer_birth(peer, raw)
            log.info("%s verified birth of %s (fw %s, boot %d)", self.id.meter, peer, birth.fw, birth.boot)
        self._peer_message(topic, payload, handle)

    def _on_reading(self, topic: str, payload: bytes, retained: bool) -> None:
        def handle(peer: str, raw: bytes) -> None:
            r = self.peers.on_reading(peer, raw, wall_ms())
            log.info("%s verified reading #%d of %s: %d Wh in, %d Wh out, %+d W",
                     self.id.meter, r.seq, peer, r.wh_in, r.wh_out, r.w)
        self._peer_message(topic, payload, handle)

    def _on_state(self, topic: str, payload: bytes, retained: bool) -> None:
        self._peer_message(topic, payload, self.peers.on_state)
