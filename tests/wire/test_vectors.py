"""docs/PROTOCOL.md vectors: every valid vector rebuilt byte for byte from the seeds, every
valid vector accepted, every invalid vector rejected with the reason it names, and the
RFC 9162 Merkle vectors."""

from __future__ import annotations

from hashlib import sha256

import pytest

from tests.support.wire import (
    BUILDERS,
    FIELDS,
    INVALID,
    M1,
    NOW,
    OTK_PKS,
    OTKS,
    VALID,
    VECTORS,
    otk_tree,
    pk,
    reason,
    verifier,
)
from wire.merkle import MerkleTree, verify_inclusion
from wire.messages import Birth, Cancel, Coe, CoeRequest, Ctp, DevCert, Erc, Reading

BODY_CLASS = {
    "devcert_m0001": DevCert,
    "devcert_m0002": DevCert,
    "coereq": CoeRequest,
    "coe": Coe,
    "ctp": Ctp,
    "erc": Erc,
    "cancel": Cancel,
    "reading": Reading,
    "birth": Birth,
}


def test_every_valid_vector_has_a_builder():
    """No valid vector escapes the byte-for-byte rebuild below."""
    assert set(BUILDERS) == set(VALID) == set(BODY_CLASS)


def test_seeds_give_the_published_public_keys():
    """The keys rebuilt from the seeds are the ones the vectors name."""
    from tests.support import wire as wf

    named = {
        "ca": wf.CA,
        "meter_m0001_device": wf.M1,
        "meter_m0002_device": wf.M2,
        "account_alice": wf.ALICE,
        "account_bob": wf.BOB,
    }
    for name, key in named.items():
        assert pk(key).hex() == VECTORS["keys"][name]["pk"], name
    assert len(OTKS) == 64 and len(set(OTK_PKS)) == 64


@pytest.mark.parametrize("name", sorted(VALID))
def test_rebuild_valid_vector_byte_for_byte(name):
    """Our typed bodies + deterministic CBOR + COSE_Sign1 reproduce the independent implementation."""
    rebuilt = BUILDERS[name]()
    assert rebuilt.hex() == VALID[name].hex()


def test_vector_hashes():
    """H(m) = SHA-256 of the message bytes, for the rebuilt ctp and erc."""
    assert sha256(BUILDERS["ctp"]()).hexdigest() == VECTORS["hashes"]["ctp"]
    assert sha256(BUILDERS["erc"]()).hexdigest() == VECTORS["hashes"]["erc"]


def test_informative_sizes():
    """§8: ctp 265 B, coe 367 B, erc 750 B with a 64-key tree."""
    assert (len(BUILDERS["ctp"]()), len(BUILDERS["coe"]()), len(BUILDERS["erc"]())) == (265, 367, 750)


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_vector_verifies_to_its_typed_body(name):
    """A valid vector passes every stateless check and opens to the right typed body."""
    raw = VALID[name]
    device_key = pk(M1) if name == "reading" else None
    opened = verifier().verify(raw, NOW, expect=FIELDS[name]["typ"], device_key=device_key)
    assert type(opened.body) is BODY_CLASS[name]
    assert opened.body.to_map() == FIELDS[name]
    assert opened.raw == raw
    assert opened.hash == sha256(raw).digest()


@pytest.mark.parametrize("vector", INVALID, ids=[v["name"] for v in INVALID])
def test_invalid_vector_rejected_with_its_reason(vector):
    """Each invalid vector gets exactly the §4 reason it names (first failure wins)."""
    raw = bytes.fromhex(vector["hex"])
    assert reason(verifier().verify, raw, NOW, expect=vector["typ"], device_key=pk(M1)) == vector["reason"]


def test_invalid_vector_names_are_unique():
    """Parametrized ids are the vector names, so each must be unique."""
    names = [v["name"] for v in INVALID]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("size", range(9))
def test_ct_root_by_size(size):
    """RFC 9162 MTH over the first `size` CT reference leaves, as a tree and as a prefix root."""
    leaves = [bytes.fromhex(h) for h in VECTORS["merkle"]["ct_leaves"]]
    expected = VECTORS["merkle"]["ct_roots_by_size"][size]
    assert MerkleTree(leaves[:size]).root().hex() == expected
    assert MerkleTree(leaves).root(size).hex() == expected


def test_otk_root_and_path():
    """The CoE root over the 64 one-time keys and the audit path of key 5."""
    tree = otk_tree()
    root = bytes.fromhex(VECTORS["merkle"]["otk_root_64"])
    path = [bytes.fromhex(h) for h in VECTORS["merkle"]["otk_path_idx5"]]
    assert tree.root() == root
    assert tree.inclusion_proof(5) == path
    assert verify_inclusion(OTK_PKS[5], 5, 64, path, root)
    assert FIELDS["erc"]["path"] == path and FIELDS["coe"]["root"] == root
