"""The monitor's verified view: messages/s it takes off the bus, against raw Ed25519.

Every message a monitor shows is verified first (monitor.view), so its cost per message is
at least one signature check. The bound is pynacl's own verify rate measured in the same
run; the ratio says what the view adds (decoding, the JSON record, keeping the latest). The
community size a monitor keeps up with follows: a meter sends a reading every 10 s, so
readings/s x 10 is the number of meters one monitor process can watch on one core.
Run: `make bench` or `python -m bench.monitor [--seconds S]`.
"""

from __future__ import annotations

import argparse

from nacl.signing import VerifyKey

from bench.protocol import best_rates
from ledger.workload import SimCommunity
from monitor.view import CommunityView
from wire import topics
from wire.messages import Birth, CtpState, Reading, Status
from wire.verify import Verifier

NOW = 1_800_000_000_000
READING_PERIOD_S = 10  # a meter's default --reading-s


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per benchmark (default 2)")
    args = parser.parse_args(argv)
    c = SimCommunity(2, NOW)
    genesis = c.genesis(1_000, validators=4)
    house, validator = c.households[0], c.validator_keys[0]
    birth = Birth(meter=house.meter_id, cert=house.devcert, fw="bench", boot=1, t=NOW).sign(house.device)
    readings = [
        Reading(meter=house.meter_id, seq=seq, t=NOW + seq, wh_in=seq, wh_out=0, w=100).sign(house.device)
        for seq in range(1, 2001)
    ]
    statuses = [Status(ctp=n.to_bytes(16, "big"), state=CtpState.HELD, t=NOW, h=1).sign(validator) for n in range(2000)]
    view = CommunityView(genesis)
    # A monitor sees each message once: no memo of good signatures, as for a new message.
    view.verifier = Verifier(cas=genesis.cas, validators=genesis.validators, signed_cache_size=0)
    view.peers.verifier = Verifier(cas=genesis.cas, signed_cache_size=0)
    view.apply(topics.meter(house.meter_id, "birth"), birth, NOW)
    reading_topic = topics.meter(house.meter_id, "reading")
    key = VerifyKey(bytes(house.device.verify_key))
    signed = [house.device.sign(r) for r in readings[:200]]

    def a_reading(raw: bytes) -> None:
        view.peers.peers[house.meter_id].last_seq = None  # each copy counts as new, not a replay
        view.apply(reading_topic, raw, NOW)

    def a_status(raw: bytes) -> None:
        view.apply(f"{topics.ROOT}/status/{raw[-16:].hex()}", raw, NOW)

    rates = best_rates(
        {"raw Ed25519 verify": key.verify, "view: reading": a_reading, "view: status": a_status},
        {"raw Ed25519 verify": signed, "view: reading": readings[:200], "view: status": statuses[:200]},
        args.seconds,
    )
    bound = rates["raw Ed25519 verify"]
    print(f"{'raw Ed25519 verify (bound)':32} {bound:10,.0f} /s")
    for name in ("view: reading", "view: status"):
        print(f"{name:32} {rates[name]:10,.0f} /s   {rates[name] / bound:4.2f}x the bound")
    meters = int(rates["view: reading"] * READING_PERIOD_S)
    print(f"meters one monitor keeps up with at one reading per {READING_PERIOD_S} s: {meters:,} (one core)")


if __name__ == "__main__":
    main()
