"""What a meter (or a monitor) knows of the other meters: their births and device keys.

Sans-IO: messages and the clock come in, verified bodies or Reject come out. Births are
how device keys become known, so a reading can only be checked after its meter's birth.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wire.messages import Birth, DevCert, Reading, open_message, shown
from wire.reasons import Reject
from wire.verify import Verifier


@dataclass
class Peer:
    meter: str
    device_pk: bytes
    boot: int
    fw: str
    online: bool = False  # only a retained or live `online` state says so; a birth alone does not
    last_seq: int | None = None


@dataclass
class PeerTable:
    verifier: Verifier
    peers: dict[str, Peer] = field(default_factory=dict)
    # Last state of every meter id, births known or not: a retained state may arrive before
    # the retained birth, since they come on different subscriptions.
    states: dict[str, bool] = field(default_factory=dict)

    def on_birth(self, topic_meter: str, raw: bytes, now: int) -> Birth:
        birth = self.verifier.verify(raw, now, expect=Birth).body
        if birth.meter != topic_meter:
            raise Reject("cert", f"birth of {shown(birth.meter)} on the topic of {topic_meter!r}")
        device_pk = open_message(birth.cert, DevCert).body.pk  # verify() checked the cert
        known = self.peers.get(birth.meter)
        # seq never repeats across a meter's reboots, so a new birth keeps what we saw of it
        last_seq = known.last_seq if known and known.device_pk == device_pk else None
        self.peers[birth.meter] = Peer(
            birth.meter, device_pk, birth.boot, birth.fw, online=self.states.get(birth.meter, False), last_seq=last_seq
        )
        return birth

    def on_reading(self, topic_meter: str, raw: bytes, now: int) -> Reading:
        peer = self.peers.get(topic_meter)
        reading = self.verifier.verify(raw, now, expect=Reading, device_key=peer.device_pk if peer else None).body
        assert peer is not None, "without its meter's device key, verify() rejects a reading as unsigned"
        if reading.meter != topic_meter:
            raise Reject("signature", f"reading names {shown(reading.meter)} but {topic_meter!r} signed it")
        if peer.last_seq is not None and reading.seq <= peer.last_seq:
            # seq never repeats (§4), so an old one is a replay or a QoS 1 redelivery
            raise Reject("replay", f"seq {reading.seq} of {topic_meter!r} is not above {peer.last_seq}")
        peer.last_seq = reading.seq
        return reading

    def on_state(self, topic_meter: str, payload: bytes) -> None:
        self.states[topic_meter] = payload == b"online"
        if topic_meter in self.peers:
            self.peers[topic_meter].online = self.states[topic_meter]

    def online(self) -> list[str]:
        """Peers whose last state was `online`: the candidates for a CoE witness."""
        return sorted(m for m, p in self.peers.items() if p.online)
