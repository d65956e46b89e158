"""tests/data/vectors-ext.json: the extensions docs/PROTOCOL.md adds to wire v1 (decision
0004's `revoke`, decision 0008's `busy` and 64 KiB limit), pinned byte for byte like the v1
vectors, which stay untouched in tests/data/vectors.json."""

from __future__ import annotations

import json
from pathlib import Path

from nacl.signing import SigningKey

from tests.support.wire import CA, M2, NOW, VECTORS, pk, reason
from wire.cose import MAX_MESSAGE
from wire.messages import Rejection, Revoke
from wire.reasons import BUSY
from wire.verify import Verifier

EXT = json.loads((Path(__file__).resolve().parents[1] / "data" / "vectors-ext.json").read_text())
VALIDATOR = SigningKey(bytes.fromhex(EXT["keys"]["validator_v0"]["seed"]))


def ext_verifier() -> Verifier:
    return Verifier([pk(CA)], validators=[pk(VALIDATOR)])


def test_the_validator_seed_gives_its_published_key():
    assert pk(VALIDATOR).hex() == EXT["keys"]["validator_v0"]["pk"]


def test_a_busy_reject_is_rebuilt_byte_for_byte_and_verifies():
    raw = Rejection(msg=bytes.fromhex(VECTORS["hashes"]["ctp"]), reason=BUSY, t=NOW).sign(VALIDATOR)
    assert raw.hex() == EXT["valid"]["reject_busy"]
    body = ext_verifier().verify(raw, NOW, expect=Rejection).body
    assert (body.reason, body.msg.hex()) == ("busy", VECTORS["hashes"]["ctp"])


def test_a_revoke_is_rebuilt_byte_for_byte_and_verifies():
    raw = Revoke(meter="m0002", pk=pk(M2), iss=pk(CA), t=NOW - 60_000).sign(CA)
    assert raw.hex() == EXT["valid"]["revoke_m0002"]
    assert ext_verifier().verify(raw, NOW, expect=Revoke).body.meter == "m0002"


def test_a_message_over_64_kib_is_refused_as_decode_unread():
    (vector,) = EXT["invalid"]
    raw = bytes.fromhex(VECTORS["valid"][vector["base"]]) + b"\x00" * vector["pad"]
    assert len(raw) == MAX_MESSAGE + 1
    assert reason(ext_verifier().verify, raw, NOW, expect=vector["typ"]) == vector["reason"] == "decode"
