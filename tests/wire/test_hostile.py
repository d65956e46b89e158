"""Hostile values that once escaped as other exceptions or gave decoder-dependent reasons."""

from __future__ import annotations

import cbor2
import pytest

from tests.support.wire import ALICE, CA, FIELDS, M1, NOW, VALID, pk, reason, sign_payload
from wire.cose import PROTECTED, encode
from wire.merkle import MerkleTree
from wire.messages import Birth, Ctp, Reading, open_message
from wire.reasons import Reject
from wire.verify import Verifier

HUGE = 1 << 20000  # str() of it raises ValueError in Python 3.11
VERIFIER = Verifier(cas=[pk(CA)])


def _verify(raw: bytes, **kwargs):
    return VERIFIER.verify(raw, NOW, **kwargs)


@pytest.mark.parametrize(
    "body",
    [
        {"v": HUGE, "typ": "reading"},
        {"v": 1, "typ": HUGE},
        {**FIELDS["ctp"], "v": 1, "typ": "ctp", "x" * 40: 1, "y": 2},
    ],
    ids=["huge-v", "huge-typ", "long-unknown-keys"],
)
def test_hostile_values_in_a_body_give_a_reject_never_another_exception(body):
    """A reject's detail never formats what the sender chose in full."""
    raw = sign_payload(encode(body), ALICE)
    with pytest.raises(Reject) as caught:
        _verify(raw)
    assert caught.value.reason in ("type", "schema") and len(str(caught.value)) < 200


def test_huge_unknown_key_is_schema():
    """A map key str() cannot format is still just an unknown key."""
    body = {**FIELDS["ctp"], "v": 1, "typ": "ctp"}
    assert _verify(sign_payload(encode(body), ALICE)).body.amount == FIELDS["ctp"]["amount"]
    hostile = sign_payload(encode({**body, HUGE: 1}), ALICE)
    assert reason(_verify, hostile) == "schema"


def test_a_semantic_tag_in_a_field_is_schema_for_every_tag_cbor2_knows():
    """Tags are kept raw: a datetime, bignum, shared value or IP address where an integer is
    expected is the wrong type, independent of what the decoder library interprets."""
    for tag in (0, 1, 2, 3, 4, 28, 29, 30, 52, 100, 258, 260, 1004, 55799):
        body = {**FIELDS["ctp"], "v": 1, "typ": "ctp", "t": cbor2.CBORTag(tag, 1)}
        assert reason(_verify, sign_payload(encode(body), ALICE)) == "schema", tag


def test_envelope_decode_checks_come_before_noncanonical_ones():
    """§4 orders decode before noncanonical: a 63-byte signature is `decode` even when the
    headers are also wrong."""
    _, _, payload, sig = cbor2.loads(VALID["ctp"])
    raw = encode([PROTECTED, {4: b""}, payload, sig[:63]])
    assert reason(_verify, raw) == "decode"
    tagged_short = bytes([0xD2]) + encode([PROTECTED, {}, payload, sig[:63]])
    assert reason(_verify, tagged_short) == "decode"


@pytest.mark.parametrize(
    "make",
    [
        lambda: Reading(meter="m0001", seq=1, t=NOW, wh_in=1 << 64, wh_out=0, w=0),
        lambda: Reading(meter="m0001", seq=-1, t=NOW, wh_in=0, wh_out=0, w=0),
        lambda: Ctp(**{**{k: v for k, v in FIELDS["ctp"].items() if k not in ("v", "typ")}, "src": "nuclear"}),
        lambda: Birth(meter="m0001", cert="not bytes", fw="1", boot=0, t=NOW),
    ],
    ids=["wh_in-over-64-bits", "negative-seq", "unknown-source", "text-cert"],
)
def test_a_body_every_receiver_would_reject_cannot_be_signed(make):
    """Senders check the schema too, so a meter never publishes what all its peers reject."""
    with pytest.raises(ValueError, match="schema"):
        make().sign(M1)


def test_merkle_root_refuses_sizes_outside_the_tree():
    tree = MerkleTree([b"a", b"b", b"c"])
    assert tree.root(0) == MerkleTree([]).root()
    for size in (-1, 4):
        with pytest.raises(ValueError):
            tree.root(size)


def test_open_message_of_a_valid_vector_still_works():
    assert open_message(VALID["ctp"]).body.amount == FIELDS["ctp"]["amount"]
