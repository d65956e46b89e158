"""Shared material for the wire tests: the vectors, the keys made from their seeds, and
builders that make every vector message again with wire.messages' typed classes.

Keys, certificates, CoEs, Merkle roots and paths always come from the seeds; only plain
field values (times, nonce, CTP id, amounts...) are read from the decoded vector bodies.
The builders are checked byte for byte against the vectors in tests/wire/test_vectors.py, so the
other wire tests can use them to make valid messages and vary one thing at a time.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from hashlib import sha256
from pathlib import Path

import cbor2
import pytest
from nacl.signing import SigningKey

from wire.cose import encode, sign1
from wire.merkle import MerkleTree
from wire.messages import Birth, Cancel, Coe, CoeRequest, Ctp, DevCert, Erc, Reading
from wire.reasons import REASONS, Reject
from wire.verify import Verifier

VECTORS_PATH = Path(__file__).resolve().parents[1] / "data" / "vectors.json"
VECTORS: dict = json.loads(VECTORS_PATH.read_text())
NOW: int = VECTORS["now"]


def _key(name: str) -> SigningKey:
    return SigningKey(bytes.fromhex(VECTORS["keys"][name]["seed"]))


def pk(key: SigningKey) -> bytes:
    """The 32-byte public key that travels on the wire."""
    return bytes(key.verify_key)


CA = _key("ca")
M1 = _key("meter_m0001_device")
M2 = _key("meter_m0002_device")
ALICE = _key("account_alice")
BOB = _key("account_bob")
OTKS = tuple(SigningKey(bytes.fromhex(seed)) for seed in VECTORS["keys"]["otk_seeds_m0001"])
OTK_PKS = tuple(pk(k) for k in OTKS)
DEVICE = {"m0001": M1, "m0002": M2}
# Not in the vectors: a ledger validator and a CA nobody trusts, made from fixed seeds.
VALIDATOR = SigningKey(sha256(b"spb wire tests: validator").digest())
ROGUE_CA = SigningKey(sha256(b"spb wire tests: rogue CA").digest())

VALID: dict[str, bytes] = {name: bytes.fromhex(h) for name, h in VECTORS["valid"].items()}
INVALID: list[dict] = VECTORS["invalid"]


def body_map(raw: bytes) -> dict:
    """The body map inside a COSE_Sign1, decoded with plain cbor2 (no broker code)."""
    return cbor2.loads(cbor2.loads(raw)[2])


FIELDS: dict[str, dict] = {name: body_map(raw) for name, raw in VALID.items()}
# Who signs each valid vector (docs/PROTOCOL.md §4 table).
SIGNER: dict[str, SigningKey] = {
    "devcert_m0001": CA,
    "devcert_m0002": CA,
    "coereq": M1,
    "coe": M2,
    "ctp": ALICE,
    "erc": OTKS[5],
    "cancel": ALICE,
    "reading": M1,
    "birth": M1,
}
TYP: dict[str, str] = {name: FIELDS[name]["typ"] for name in VALID}


def verifier(**options) -> Verifier:
    """A fresh Verifier trusting the vectors' CA (and nothing else unless told)."""
    return Verifier([pk(CA)], **options)


def verify(raw: bytes, now: int = NOW, **kw):
    """Verify with a fresh verifier; readings get m0001's device key unless told otherwise."""
    kw.setdefault("device_key", pk(M1))
    return verifier().verify(raw, now, **kw)


def reason(fn: Callable, *args, **kwargs) -> str:
    """Call fn, require a Reject (any other exception fails the test), return its reason."""
    with pytest.raises(Reject) as info:
        fn(*args, **kwargs)
    assert info.value.reason in REASONS
    return info.value.reason


def flip_bit(data: bytes, bit: int) -> bytes:
    """`data` with bit number `bit` (0 = most significant bit of byte 0) inverted."""
    out = bytearray(data)
    out[bit // 8] ^= 0x80 >> (bit % 8)
    return bytes(out)


def sign_map(m: dict, key: SigningKey) -> bytes:
    """A COSE_Sign1 over any body map, for bodies the typed classes refuse to build."""
    return sign1(encode(m), key)


def sign_payload(payload: bytes, key: SigningKey) -> bytes:
    """A canonical COSE_Sign1 envelope over payload bytes taken as they are."""
    return sign1(payload, key)


def raw_map(items: list[tuple[object, bytes]]) -> bytes:
    """A definite CBOR map of (key, already-encoded value) pairs in the given order."""
    n = len(items)
    head = bytes([0xA0 + n]) if n < 24 else bytes([0xB8, n])
    return head + b"".join(encode(k) + v for k, v in items)


def canonical_items(m: dict) -> list[tuple[object, bytes]]:
    """(key, encoded value) pairs of m in deterministic key order."""
    return sorted(((k, encode(v)) for k, v in m.items()), key=lambda kv: encode(kv[0]))


# ---- builders: one per valid vector ----------------------------------------------------


@cache
def otk_tree() -> MerkleTree:
    """The RFC 9162 tree over m0001's 64 one-time public keys."""
    return MerkleTree(OTK_PKS)


def devcert(
    meter: str = "m0001",
    device: SigningKey | None = None,
    *,
    ca: SigningKey = CA,
    nbf: int | None = None,
    exp: int | None = None,
) -> bytes:
    base = FIELDS["devcert_m0001"]
    return DevCert(
        meter=meter,
        pk=pk(device or DEVICE[meter]),
        iss=pk(ca),
        nbf=base["nbf"] if nbf is None else nbf,
        exp=base["exp"] if exp is None else exp,
    ).sign(ca)


def coereq() -> bytes:
    f = FIELDS["coereq"]
    return CoeRequest(
        cert=devcert("m0001"), root=otk_tree().root(), size=otk_tree().size, nonce=f["nonce"], t=f["t"]
    ).sign(M1)


def coe(
    *,
    root: bytes | None = None,
    size: int | None = None,
    t: int | None = None,
    exp: int | None = None,
    cert: bytes | None = None,
    witness: SigningKey = M2,
) -> bytes:
    f = FIELDS["coe"]
    return Coe(
        root=otk_tree().root() if root is None else root,
        size=otk_tree().size if size is None else size,
        t=f["t"] if t is None else t,
        exp=f["exp"] if exp is None else exp,
        cert=devcert("m0002") if cert is None else cert,
    ).sign(witness)


def ctp(**overrides) -> bytes:
    f = FIELDS["ctp"]
    values = {
        "id": f["id"],
        "payer": pk(ALICE),
        "payee": pk(BOB),
        "amount": f["amount"],
        "wh": f["wh"],
        "exp": f["exp"],
        "meter": otk_tree().root(),
        "t": f["t"],
        **overrides,
    }
    return Ctp(**values).sign(ALICE)


def erc(
    idx: int = 5,
    *,
    coe_raw: bytes | None = None,
    tree: MerkleTree | None = None,
    key: SigningKey | None = None,
    t: int | None = None,
) -> bytes:
    """The ERC of one-time key `idx`, proving it under `tree` (default: the 64 OTKs)."""
    f = FIELDS["erc"]
    key = key or OTKS[idx]
    tree = tree or otk_tree()
    return Erc(
        ctp=f["ctp"],
        wh=f["wh"],
        t=f["t"] if t is None else t,
        pk=pk(key),
        idx=idx,
        path=tree.inclusion_proof(idx),
        coe=coe() if coe_raw is None else coe_raw,
    ).sign(key)


def cancel() -> bytes:
    f = FIELDS["cancel"]
    return Cancel(ctp=f["ctp"], payer=pk(ALICE), t=f["t"]).sign(ALICE)


def reading(**overrides) -> bytes:
    f = FIELDS["reading"]
    values = {
        "meter": f["meter"],
        "seq": f["seq"],
        "t": f["t"],
        "wh_in": f["wh_in"],
        "wh_out": f["wh_out"],
        "w": f["w"],
        **overrides,
    }
    return Reading(**values).sign(M1)


def birth(meter: str = "m0001", *, cert: bytes | None = None, key: SigningKey = M1, fw: str | None = None) -> bytes:
    f = FIELDS["birth"]
    return Birth(
        meter=meter,
        cert=devcert("m0001") if cert is None else cert,
        fw=f["fw"] if fw is None else fw,
        boot=f["boot"],
        t=f["t"],
    ).sign(key)


BUILDERS: dict[str, Callable[[], bytes]] = {
    "devcert_m0001": lambda: devcert("m0001"),
    "devcert_m0002": lambda: devcert("m0002"),
    "coereq": coereq,
    "coe": coe,
    "ctp": ctp,
    "erc": erc,
    "cancel": cancel,
    "reading": reading,
    "birth": birth,
}
