"""edge.peers.PeerTable: births make device keys known, readings verify only under them."""

from __future__ import annotations

import pytest

from deploy.provision import provision
from edge import FIRMWARE_VERSION
from edge.peers import PeerTable
from edge.state_dir import MeterIdentity
from tests.support.wire import reason
from wire.messages import Birth, Reading, open_message
from wire.verify import Verifier

NOW = 1_750_000_000_000
LATER = NOW + 60_000  # the clock the table verifies at: inside every devcert's validity


def identities(root) -> dict[str, MeterIdentity]:
    """Each meter of a community provisioned at NOW, as its state dir describes it."""
    provision(root, meters=2, accounts=None, validators=1, now_ms=NOW)
    return {m: MeterIdentity.load(root / "meters" / m) for m in ("m0001", "m0002")}


@pytest.fixture
def meters(tmp_path) -> dict[str, MeterIdentity]:
    return identities(tmp_path / "community")


@pytest.fixture
def table(meters) -> PeerTable:
    """A PeerTable trusting the community's CA and knowing no peer yet."""
    return PeerTable(Verifier(cas=[meters["m0001"].ca_pk]))


def birth(
    identity: MeterIdentity, *, meter: str | None = None, boot: int = 1, signer: MeterIdentity | None = None
) -> bytes:
    """identity's birth (its own devcert), optionally naming another meter or signed by another key."""
    body = Birth(meter=meter or identity.meter, cert=identity.devcert, fw=FIRMWARE_VERSION, boot=boot, t=NOW)
    return body.sign((signer or identity).device_key)


def reading(identity: MeterIdentity, seq: int = 1, *, meter: str | None = None) -> bytes:
    """A reading signed by identity's device key, naming `meter` (default: identity's own id)."""
    body = Reading(meter=meter or identity.meter, seq=seq, t=NOW, wh_in=3, wh_out=1, w=1500)
    return body.sign(identity.device_key)


def test_reading_before_any_birth_is_rejected_as_signature(table, meters):
    """Without a birth there is no device key to check a reading against: `signature`."""
    assert reason(table.on_reading, "m0001", reading(meters["m0001"]), LATER) == "signature"
    assert table.peers == {}


def test_birth_makes_the_device_key_known_and_readings_verify(table, meters):
    """A verified birth records the peer (device key from its devcert); its readings then verify."""
    m1 = meters["m0001"]
    body = table.on_birth("m0001", birth(m1, boot=7), LATER)
    assert (body.meter, body.boot, body.fw) == ("m0001", 7, FIRMWARE_VERSION)
    peer = table.peers["m0001"]
    assert (peer.device_pk, peer.boot, peer.fw, peer.last_seq) == (
        bytes(m1.device_key.verify_key),
        7,
        FIRMWARE_VERSION,
        None,
    )

    r = table.on_reading("m0001", reading(m1, seq=41), LATER)
    assert (r.meter, r.seq, r.wh_in, r.wh_out, r.w) == ("m0001", 41, 3, 1, 1500)
    assert table.peers["m0001"].last_seq == 41
    table.on_reading("m0001", reading(m1, seq=42), LATER)
    assert table.peers["m0001"].last_seq == 42


def test_reading_signed_by_another_meter_on_this_topic_is_rejected(table, meters):
    """m0002 cannot speak for m0001: its reading on m0001's topic fails as `signature`, either way it names itself."""
    m1, m2 = meters["m0001"], meters["m0002"]
    table.on_birth("m0001", birth(m1), LATER)
    table.on_birth("m0002", birth(m2), LATER)
    assert reason(table.on_reading, "m0001", reading(m2, meter="m0002"), LATER) == "signature"
    assert reason(table.on_reading, "m0001", reading(m2, meter="m0001"), LATER) == "signature"
    assert table.peers["m0001"].last_seq is None


def test_own_reading_naming_another_meter_is_rejected(table, meters):
    """A reading whose body names m0002 but is m0001's, on m0001's topic, is refused as `signature`."""
    m1 = meters["m0001"]
    table.on_birth("m0001", birth(m1), LATER)
    assert reason(table.on_reading, "m0001", reading(m1, meter="m0002"), LATER) == "signature"
    assert table.peers["m0001"].last_seq is None


def test_birth_on_another_meters_topic_is_rejected_as_cert(table, meters):
    """m0001's valid birth posted on m0002's topic is `cert`, and nobody is recorded."""
    assert reason(table.on_birth, "m0002", birth(meters["m0001"]), LATER) == "cert"
    assert table.peers == {}


def test_birth_naming_a_meter_its_devcert_does_not_is_rejected_as_cert(table, meters):
    """A birth claiming m0002 while carrying m0001's devcert is `cert`."""
    assert reason(table.on_birth, "m0002", birth(meters["m0001"], meter="m0002"), LATER) == "cert"
    assert table.peers == {}


def test_birth_with_a_devcert_from_another_ca_is_rejected_as_cert(table, tmp_path):
    """A devcert issued by another community's CA is not trusted here: `cert`."""
    stranger = identities(tmp_path / "other-community")["m0001"]
    assert stranger.ca_pk not in table.verifier.cas
    assert reason(table.on_birth, "m0001", birth(stranger), LATER) == "cert"
    assert table.peers == {}


def test_birth_not_signed_by_its_devcerts_key_is_rejected_as_signature(table, meters):
    """m0002 cannot replay m0001's devcert in a birth it signs itself: `signature`."""
    assert reason(table.on_birth, "m0001", birth(meters["m0001"], signer=meters["m0002"]), LATER) == "signature"
    assert table.peers == {}


def test_birth_outside_devcert_validity_is_rejected_as_cert(table, meters):
    """Before the devcert's nbf, or after its exp, the birth is `cert`."""
    cert = open_message(meters["m0001"].devcert).body
    assert reason(table.on_birth, "m0001", birth(meters["m0001"]), cert.nbf - 1) == "cert"
    assert reason(table.on_birth, "m0001", birth(meters["m0001"]), cert.exp + 1) == "cert"
    assert table.on_birth("m0001", birth(meters["m0001"]), cert.nbf).meter == "m0001"


def test_message_of_the_wrong_type_is_rejected_as_type(table, meters):
    """A reading on a birth topic, or a birth on a reading topic, is `type`."""
    m1 = meters["m0001"]
    assert reason(table.on_birth, "m0001", reading(m1), LATER) == "type"
    table.on_birth("m0001", birth(m1), LATER)
    assert reason(table.on_reading, "m0001", birth(m1), LATER) == "type"


def test_rebirth_updates_the_boot(table, meters):
    """A meter's next birth (after a reboot) replaces what the table knew, with the new boot."""
    m1 = meters["m0001"]
    table.on_birth("m0001", birth(m1, boot=1), LATER)
    table.on_birth("m0001", birth(m1, boot=2), LATER)
    assert table.peers["m0001"].boot == 2


def test_state_online_offline_is_reflected_in_online(table, meters):
    """A birth alone does not make a peer online (a retained birth outlives the meter); only
    its state does, whichever of the two arrives first; on_state flips it offline and back."""
    table.on_birth("m0001", birth(meters["m0001"]), LATER)
    assert table.online() == [] and table.peers["m0001"].online is False
    table.on_state("m0002", b"online")  # the retained state before the retained birth
    table.on_birth("m0002", birth(meters["m0002"]), LATER)
    assert table.online() == ["m0002"]
    table.on_state("m0001", b"online")
    assert table.online() == ["m0001", "m0002"]
    table.on_state("m0001", b"offline")
    assert table.online() == ["m0002"]
    assert table.peers["m0001"].online is False
    table.on_state("m0002", b"offline")
    assert table.online() == []
    table.on_state("m0001", b"online")
    assert table.online() == ["m0001"]
    table.on_state("m0003", b"online")
    assert "m0003" not in table.peers and table.online() == ["m0001"]


def test_a_new_birth_of_the_same_device_keeps_the_last_seq(table, meters):
    """A reboot's birth, arriving after readings queued for us, must not forget what we verified."""
    m1 = meters["m0001"]
    table.on_birth("m0001", birth(m1, boot=1), LATER)
    table.on_reading("m0001", reading(m1, seq=9), LATER)
    table.on_birth("m0001", birth(m1, boot=2), LATER)
    assert (table.peers["m0001"].boot, table.peers["m0001"].last_seq) == (2, 9)


def test_an_old_or_repeated_seq_is_a_replay_and_changes_nothing(table, meters):
    """seq never repeats (§4): a replayed or redelivered reading is refused, last_seq stays."""
    m1 = meters["m0001"]
    table.on_birth("m0001", birth(m1), LATER)
    table.on_reading("m0001", reading(m1, seq=5), LATER)
    for old in (5, 4):
        assert reason(table.on_reading, "m0001", reading(m1, seq=old), LATER) == "replay"
    assert table.peers["m0001"].last_seq == 5
    assert table.on_reading("m0001", reading(m1, seq=6), LATER).seq == 6
