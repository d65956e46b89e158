"""The decoder and the stateless checks of docs/PROTOCOL.md §4 against hostile input: whatever the
bytes, `open_message` and `Verifier.verify` answer with a Reject carrying a §4 reason and
never another exception; and each kind of malformed message gets the reason §4 gives it."""

from __future__ import annotations

from hashlib import sha256

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.wire import (
    ALICE,
    BOB,
    CA,
    FIELDS,
    INVALID,
    M1,
    M2,
    NOW,
    OTK_PKS,
    OTKS,
    ROGUE_CA,
    SIGNER,
    TYP,
    VALID,
    VALIDATOR,
    birth,
    canonical_items,
    coe,
    devcert,
    erc,
    flip_bit,
    pk,
    raw_map,
    reading,
    reason,
    sign_map,
    sign_payload,
    verifier,
    verify,
)
from wire.cose import MAX_MESSAGE, PROTECTED, encode
from wire.merkle import MerkleTree
from wire.messages import BODY_TYPES, Birth, DevCert, Erc, Rejection, Status, open_message
from wire.reasons import REASONS, Reject
from wire.verify import Verifier

DECODE_OR_NONCANONICAL = {"decode", "noncanonical"}


def rejected_or_opened(raw: bytes) -> None:
    """open_message either opens `raw` or raises a Reject with a §4 reason; nothing else."""
    rejected = None
    try:
        open_message(raw)
    except Reject as exc:
        rejected = exc.reason
    assert rejected is None or rejected in REASONS


# ---- arbitrary bytes and mutations of the valid vectors ----------------------------------


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_are_rejected_with_a_reason(raw):
    """Random bytes never crash the decoder and never pass verification."""
    reason(verify, raw)
    reason(open_message, raw)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_after_a_cose_prefix(tail):
    """Bytes that start like a COSE_Sign1 (array of 4, our protected header) get a reason."""
    raw = bytes.fromhex("8443a10127a0") + tail
    reason(verify, raw)
    rejected_or_opened(raw)


@st.composite
def mutated_vector(draw):
    name = draw(st.sampled_from(sorted(VALID)))
    raw = VALID[name]
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "append", "overwrite"]))
    if kind == "flip":
        return name, flip_bit(raw, draw(st.integers(0, len(raw) * 8 - 1)))
    if kind == "truncate":
        return name, raw[: draw(st.integers(0, len(raw) - 1))]
    if kind == "insert":
        at = draw(st.integers(0, len(raw)))
        return name, raw[:at] + draw(st.binary(min_size=1, max_size=8)) + raw[at:]
    if kind == "delete":
        at = draw(st.integers(0, len(raw) - 1))
        return name, raw[:at] + raw[at + draw(st.integers(1, 8)) :]
    if kind == "append":
        return name, raw + draw(st.binary(min_size=1, max_size=16))
    at = draw(st.integers(0, len(raw) - 1))
    patch = draw(st.binary(min_size=1, max_size=4))
    out = raw[:at] + patch + raw[at + len(patch) :]
    return name, out if out != raw else flip_bit(raw, at * 8)


@settings(max_examples=500, deadline=None)
@given(mutated_vector())
def test_mutated_vectors_are_rejected(case):
    """Any change to a valid message's bytes is rejected with a reason, never an exception."""
    name, raw = case
    assert raw != VALID[name]
    reason(verify, raw)
    reason(verify, raw, expect=TYP[name])
    rejected_or_opened(raw)


@pytest.mark.parametrize("name", sorted(VALID))
def test_every_truncation_is_decode(name):
    """Every proper prefix of a message (including the empty one) is `decode`."""
    raw = VALID[name]
    bad = [n for n in range(len(raw)) if reason(verify, raw[:n]) != "decode"]
    assert bad == []


@pytest.mark.parametrize("name", ["erc", "birth", "ctp"])
def test_every_single_bit_flip_is_rejected(name):
    """Flipping any one bit of a valid message makes it fail verification."""
    raw = VALID[name]
    v = verifier()  # shared and warm: a cached CoE must not let a flipped message through
    v.verify(raw, NOW, device_key=pk(M1))
    for bit in range(len(raw) * 8):
        with pytest.raises(Reject):
            v.verify(flip_bit(raw, bit), NOW, device_key=pk(M1))


@pytest.mark.parametrize("name", sorted(VALID))
@pytest.mark.parametrize(
    "tail",
    [b"\x00", b"\xff", b"\xf6", b"\x84", b"\x40", VALID["reading"]],
    ids=["00", "ff", "null", "array-head", "empty-bstr", "a-whole-reading"],
)
def test_trailing_bytes_after_a_valid_message(name, tail):
    """A valid message followed by anything is `noncanonical` or `decode`, never accepted."""
    assert reason(verify, VALID[name] + tail) in DECODE_OR_NONCANONICAL
    assert reason(open_message, VALID[name] + tail) in DECODE_OR_NONCANONICAL


# ---- size limit ----------------------------------------------------------------------------


def _signed_unchecked(body: Birth) -> bytes:
    """A correctly signed, canonical envelope built without sign1's size guard."""
    payload = body.encode()
    signature = M1.sign(encode(["Signature1", PROTECTED, b"", payload])).signature
    return encode([PROTECTED, {}, payload, signature])


def _birth_of_size(size: int) -> bytes:
    """A valid birth padded through `fw` to exactly `size` bytes."""
    f = FIELDS["birth"]
    fw_len = size - len(birth(fw=""))
    for _ in range(8):
        raw = _signed_unchecked(Birth(meter="m0001", cert=devcert("m0001"), fw="x" * fw_len, boot=f["boot"], t=f["t"]))
        if len(raw) == size:
            return raw
        fw_len += size - len(raw)
    raise AssertionError(f"cannot pad a birth to {size} bytes")


def test_size_limit_is_64_kib():
    """A valid message of exactly 64 KiB passes; one byte more is `decode`."""
    at_limit = _birth_of_size(MAX_MESSAGE)
    assert MAX_MESSAGE == 65536 and len(at_limit) == 65536
    fw = verify(at_limit, expect="birth").body.fw
    assert len(fw) > 65000 and set(fw) == {"x"}
    over = _birth_of_size(MAX_MESSAGE + 1)
    assert reason(verify, over) == "decode"
    assert reason(open_message, over) == "decode"


def test_signing_refuses_a_message_over_the_limit():
    """A sender never produces what every receiver rejects; the limit itself can be signed."""
    at_limit = _birth_of_size(MAX_MESSAGE)
    body = open_message(at_limit).body
    assert Birth(**_fields_of(body)).sign(M1) == at_limit
    with pytest.raises(ValueError, match="over the 65536-byte limit"):
        Birth(**{**_fields_of(body), "fw": body.fw + "x"}).sign(M1)


def _fields_of(body: Birth) -> dict:
    return {k: v for k, v in body.to_map().items() if k not in ("v", "typ")}


@pytest.mark.parametrize(
    "raw",
    [b"\x00" * (MAX_MESSAGE + 1), b"\x84" + b"\xff" * MAX_MESSAGE, VALID["ctp"] + b"\x00" * MAX_MESSAGE],
    ids=["zeros", "array-then-junk", "valid-then-padding"],
)
def test_anything_over_64_kib_is_decode(raw):
    """The size limit comes first: over 64 KiB is `decode` whatever the content."""
    assert reason(verify, raw) == "decode"
    assert reason(open_message, raw) == "decode"


# ---- tags, indefinite lengths, duplicate keys, non-shortest forms --------------------------


@pytest.mark.parametrize(
    "prefix,expected",
    [
        (b"\xd2", "noncanonical"),  # tag 18, COSE_Sign1_Tagged: a valid item, another byte form
        (b"\xd2\xd2", "decode"),  # under one tag 18 is not a COSE_Sign1 array
        (b"\xd8\x62", "decode"),  # tag 98, COSE_Sign
        (b"\xd8\x3d", "decode"),  # tag 61, CWT
        (b"\xd9\xd9\xf7", "decode"),  # tag 55799, self-described CBOR
        (b"\xd8\x1c", "decode"),  # tag 28, shareable: kept raw, not unwrapped
        (b"\xc1", "decode"),  # tag 1, epoch time
        (b"\xc2", "decode"),  # tag 2, bignum
        (b"\xda\x00\x01\x00\x00", "decode"),
    ],
    ids=["tag18", "tag18x2", "tag98", "tag61", "tag55799", "tag28", "tag1", "tag2", "tag65536"],
)
@pytest.mark.parametrize("name", ["ctp", "erc", "reading"])
def test_valid_message_wrapped_in_a_tag_is_rejected(prefix, expected, name):
    """§1: the message is an untagged COSE_Sign1; tag 18 is `noncanonical`, any other wrapper
    means the item is not a COSE_Sign1 at all (`decode`), whatever cbor2 makes of the tag."""
    raw = prefix + VALID[name]
    assert reason(verify, raw) == expected
    assert reason(open_message, raw) == expected


def test_tagged_embedded_messages_are_rejected_as_their_field():
    """A tag-18 CoE inside an ERC is `coe`; a tag-18 devcert inside a birth is `cert`."""
    assert reason(verify, erc(coe_raw=b"\xd2" + coe())) == "coe"
    assert reason(verify, birth(cert=b"\xd2" + devcert("m0001"))) == "cert"


def _envelope(items: list[bytes], head: bytes = b"\x84", tail: bytes = b"") -> bytes:
    return head + b"".join(items) + tail


def _indefinite_variants() -> dict[str, bytes]:
    prot, unprot, payload, sig = cbor2.loads(VALID["ctp"])
    parts = [encode(prot), encode(unprot), encode(payload), encode(sig)]
    ctp_items = canonical_items(FIELDS["ctp"])
    erc_items = dict(canonical_items(FIELDS["erc"]))
    erc_items["path"] = b"\x9f" + b"".join(encode(p) for p in FIELDS["erc"]["path"]) + b"\xff"
    return {
        "array": _envelope(parts, b"\x9f", b"\xff"),
        "unprotected-map": _envelope([parts[0], b"\xbf\xff", parts[2], parts[3]]),
        "payload-chunks": _envelope(
            [parts[0], parts[1], b"\x5f" + encode(payload[:100]) + encode(payload[100:]) + b"\xff", parts[3]]
        ),
        "signature-chunks": _envelope([*parts[:3], b"\x5f" + encode(sig[:32]) + encode(sig[32:]) + b"\xff"]),
        "protected-chunks": _envelope([b"\x5f" + encode(prot) + b"\xff", *parts[1:]]),
        "body-map": sign_payload(b"\xbf" + b"".join(encode(k) + v for k, v in ctp_items) + b"\xff", ALICE),
        "typ-text": sign_payload(
            raw_map([(k, b"\x7f\x62ct\x61p\xff" if k == "typ" else v) for k, v in ctp_items]), ALICE
        ),
        "erc-path-list": sign_payload(raw_map(sorted(erc_items.items(), key=lambda kv: encode(kv[0]))), OTKS[5]),
    }


INDEFINITE = _indefinite_variants()


@pytest.mark.parametrize("variant", sorted(INDEFINITE))
def test_indefinite_length_encodings_are_rejected(variant):
    """§1 deterministic CBOR has definite lengths only: `noncanonical` or `decode`."""
    raw = INDEFINITE[variant]
    assert reason(verify, raw) in DECODE_OR_NONCANONICAL
    assert reason(open_message, raw) in DECODE_OR_NONCANONICAL


def test_duplicate_map_keys_are_rejected():
    """A body with a key twice (same or different value), or a non-empty duplicated
    unprotected map, is `decode` or `noncanonical`, never read as either value."""
    items = canonical_items(FIELDS["ctp"])
    wh = next(i for i, (k, _) in enumerate(items) if k == "wh")
    same = [*items[: wh + 1], items[wh], *items[wh + 1 :]]
    other = [*items[: wh + 1], ("wh", encode(999)), *items[wh + 1 :]]
    prot, _, payload, sig = cbor2.loads(VALID["ctp"])
    dup_unprot = _envelope([encode(prot), b"\xa2\x01\x26\x01\x26", encode(payload), encode(sig)])
    for raw in (sign_payload(raw_map(same), ALICE), sign_payload(raw_map(other), ALICE), dup_unprot):
        assert reason(verify, raw) in DECODE_OR_NONCANONICAL
        assert reason(open_message, raw) in DECODE_OR_NONCANONICAL


def _with_value(name: str, key: str, encoded: bytes) -> bytes:
    """Vector `name` re-signed with `key`'s value replaced by raw encoded bytes."""
    items = [(k, encoded if k == key else v) for k, v in canonical_items(FIELDS[name])]
    return sign_payload(raw_map(items), SIGNER[name])


def test_non_deterministic_forms_are_noncanonical():
    """Well-formed but not §4.2.1 bytes: unsorted keys, long integer or length heads, a
    padded payload length. A bignum is a tag, and tags are never interpreted: `schema`."""
    items = canonical_items(FIELDS["ctp"])
    unsorted = sign_payload(raw_map(list(reversed(items))), ALICE)
    long_int = _with_value("ctp", "amount", b"\x1a\x00\x00\x05\xdc")
    long_len = _with_value("ctp", "id", b"\x58\x10" + FIELDS["ctp"]["id"])
    small_bignum = _with_value("ctp", "amount", b"\xc2\x42\x05\xdc")
    prot, unprot, payload, sig = cbor2.loads(VALID["ctp"])
    long_payload = _envelope([encode(prot), encode(unprot), b"\x59\x00" + bytes([len(payload)]) + payload, encode(sig)])
    assert _with_value("ctp", "amount", encode(FIELDS["ctp"]["amount"])) == VALID["ctp"]  # the helper is exact
    for raw in (unsorted, long_int, long_len, long_payload):
        assert reason(verify, raw) == "noncanonical"
    assert reason(verify, small_bignum) == "schema"


# ---- type and schema -----------------------------------------------------------------------

DROP = object()


def _ctp_with(**changes) -> bytes:
    """The ctp vector's body with keys changed (value ...) or removed (value DROP), signed by alice."""
    m = dict(FIELDS["ctp"])
    for k, v in changes.items():
        if v is DROP:
            m.pop(k)
        else:
            m[k] = v
    return sign_map(m, ALICE)


@pytest.mark.parametrize(
    "changes",
    [
        {"v": 2},
        {"v": 0},
        {"v": True},
        {"v": 1.0},
        {"v": "1"},
        {"v": DROP},
        {"typ": DROP},
        {"typ": "CTP"},
        {"typ": b"ctp"},
        {"typ": "trade"},
        {"typ": 3},
        {"v": 2, "amount": DROP},
        {"typ": DROP, "payer": b"short"},
    ],
    ids=repr,
)
def test_bad_version_or_typ_is_type(changes):
    """§1/§4: wrong or missing `v`/`typ` is `type`, checked before the schema."""
    raw = _ctp_with(**changes)
    assert reason(verify, raw) == "type"
    assert reason(verify, raw, expect="ctp") == "type"
    assert reason(open_message, raw) == "type"


@pytest.mark.parametrize(
    "payload", [encode([1, "ctp"]), encode(1), encode(b"ctp"), encode(None)], ids=["list", "int", "bytes", "null"]
)
def test_body_that_is_not_a_map_is_type(payload):
    """A payload that is CBOR but not a map has no v/typ: `type`."""
    assert reason(verify, sign_payload(payload, ALICE)) == "type"


@pytest.mark.parametrize(
    "name,expect", [("ctp", "erc"), ("erc", "ctp"), ("reading", "erc"), ("devcert_m0001", "birth"), ("coe", "coereq")]
)
def test_typ_other_than_expected_is_type(name, expect):
    """The topic's typ is checked before anything else: a valid message of another typ is `type`."""
    assert reason(verify, VALID[name], expect=expect) == "type"


@pytest.mark.parametrize("name,expect", [("ctp", "erc"), ("reading", "erc"), ("coe", "coereq")])
def test_expected_body_class_is_its_typ(name, expect):
    """`expect` may name the body class instead of its typ: the same check, and the body is of that class."""
    cls = BODY_TYPES[expect]
    assert reason(verify, VALID[name], expect=cls) == "type"
    assert reason(open_message, VALID[name], cls) == "type"
    own = BODY_TYPES[FIELDS[name]["typ"]]
    assert type(verify(VALID[name], expect=own).body) is own
    assert type(open_message(VALID[name], own).body) is own


STATUS = Status(ctp=FIELDS["ctp"]["id"], state="settled", t=NOW, h=7, msg=sha256(VALID["erc"]).digest())
REJECTION = Rejection(msg=sha256(VALID["erc"]).digest(), reason="replay", t=NOW)
BODIES = {**FIELDS, "status": STATUS.to_map(), "reject": REJECTION.to_map()}
SIGNERS = {**SIGNER, "status": VALIDATOR, "reject": VALIDATOR}
OPTIONAL = {("status", "h"), ("status", "msg"), ("status", "reason"), ("ctp", "src")}


def _verify_body(name: str, body: dict, key=None) -> object:
    raw = sign_map(body, key or SIGNERS[name])
    v = Verifier([pk(CA)], validators=[pk(VALIDATOR)])
    return v.verify(raw, NOW, expect=body.get("typ", BODIES[name]["typ"]), device_key=pk(M1))


def test_signed_maps_of_the_vector_bodies_are_the_vectors():
    """Positive control for the schema tests: re-signing the unchanged bodies gives the vectors."""
    for name, body in FIELDS.items():
        assert sign_map(body, SIGNER[name]) == VALID[name]
    assert _verify_body("status", BODIES["status"]).body == STATUS
    assert _verify_body("reject", BODIES["reject"]).body == REJECTION


@pytest.mark.parametrize("name,key", [(n, k) for n, b in BODIES.items() for k in sorted(b) if k not in ("v", "typ")])
def test_missing_key_is_schema(name, key):
    """Dropping any required key is `schema`; dropping an optional one is fine."""
    body = {k: v for k, v in BODIES[name].items() if k != key}
    if (name, key) in OPTIONAL:
        assert key not in _verify_body(name, body).body.to_map()
    else:
        assert reason(_verify_body, name, body) == "schema"


WRONG_TYPES = [
    ("ctp", "amount", True),
    ("ctp", "amount", -1),
    ("ctp", "amount", 1.5),
    ("ctp", "amount", "1500"),
    ("ctp", "amount", 2**64),
    ("ctp", "wh", False),
    ("ctp", "t", -(2**64)),
    ("ctp", "id", b"\x00" * 15),
    ("ctp", "id", b"\x00" * 17),
    ("ctp", "id", "0e9b30af5ab5e09ec10c62c61244383f"),
    ("ctp", "payer", "alice"),
    ("ctp", "payer", b"\x00" * 31),
    ("ctp", "meter", [b"\x00" * 32]),
    ("ctp", "exp", None),
    ("erc", "idx", -5),
    ("erc", "idx", True),
    ("erc", "path", b"\x00" * 32),
    ("erc", "path", [b"\x00" * 31]),
    ("erc", "path", [[b"\x00" * 32]]),
    ("erc", "coe", "coe"),
    ("erc", "coe", [b"\x00"]),
    ("erc", "pk", b"\x00" * 33),
    ("erc", "wh", 2**64 + 1),
    ("devcert_m0001", "meter", b"m0001"),
    ("devcert_m0001", "pk", b"\x00" * 31),
    ("devcert_m0001", "nbf", -1),
    ("coereq", "nonce", b"\x00" * 15),
    ("coereq", "size", -1),
    ("coereq", "cert", "cert"),
    ("coe", "size", True),
    ("coe", "root", b"\x00" * 16),
    ("coe", "exp", 1.0),
    ("cancel", "payer", b"\x00" * 31),
    ("cancel", "ctp", 7),
    ("birth", "boot", -1),
    ("birth", "fw", 1),
    ("birth", "meter", b"m0001"),
    ("reading", "w", True),
    ("reading", "w", -(2**64) - 1),
    ("reading", "w", 2**64),
    ("reading", "seq", -1),
    ("reading", "wh_in", 0.0),
    ("reading", "meter", 1),
    ("status", "state", "pending"),
    ("status", "state", "HELD"),
    ("status", "reason", "bogus"),
    ("status", "h", -1),
    ("status", "msg", b"\x00" * 16),
    ("reject", "reason", "refused"),
    ("reject", "reason", 1),
    ("reject", "msg", "hash"),
    ("ctp", "src", "nuclear"),
    ("ctp", "src", "Solar"),
    ("ctp", "src", ""),
    ("ctp", "src", 1),
    ("ctp", "src", b"solar"),
]


@pytest.mark.parametrize("name,key,value", WRONG_TYPES, ids=[f"{n}.{k}={v!r:.20}" for n, k, v in WRONG_TYPES])
def test_wrong_type_is_schema(name, key, value):
    """A key of the wrong type (bool for int, negative or bignum for uint, wrong-length
    byte string, text for bytes, `src` outside the listed sources...) is `schema`."""
    assert reason(_verify_body, name, {**BODIES[name], key: value}) == "schema"


@pytest.mark.parametrize("name", sorted(BODIES))
@pytest.mark.parametrize("extra", [("x", 0), ("src2", "solar"), (1, 1), ("V", 1)], ids=repr)
def test_unknown_extra_key_is_schema(name, extra):
    """Unknown keys are refused (docs/decisions/0001), `schema`."""
    k, v = extra
    assert reason(_verify_body, name, {**BODIES[name], k: v}) == "schema"


@pytest.mark.parametrize("src", ["solar", "wind", "hydro", "gas", "coal", "any"])
def test_listed_sources_are_accepted(src):
    """Positive control for `src`: each listed source verifies."""
    assert _verify_body("ctp", {**FIELDS["ctp"], "src": src}).body.src == src


def test_bignum_uint_is_schema():
    """A tag-2 bignum (2**64, the smallest value that needs one) where a uint is expected is `schema`."""
    assert encode(2**64)[:1] == b"\xc2"
    for name, key in [("ctp", "amount"), ("reading", "seq"), ("erc", "idx"), ("coe", "size")]:
        assert reason(_verify_body, name, {**BODIES[name], key: 2**64}) == "schema"


def test_negative_power_within_int_range_is_accepted():
    """Positive control: `w` is signed; an exporting meter's negative power verifies."""
    assert verify(reading(w=-1875)).body.w == -1875


def test_checks_run_in_section_4_order():
    """First failure wins, for each pair of neighbouring steps of §4."""
    assert reason(verify, b"\xd2" + VALID["reading"][:-1], expect="erc") == "decode"
    assert reason(verify, b"\xd2" + VALID["reading"], expect="erc") == "noncanonical"
    unsorted_bad_v = sign_payload(raw_map(list(reversed(canonical_items({**FIELDS["ctp"], "v": 2})))), ALICE)
    assert reason(verify, unsorted_bad_v) == "noncanonical"
    assert reason(_verify_body, "ctp", {**FIELDS["ctp"], "v": 2, "amount": "x"}) == "type"
    assert reason(_verify_body, "ctp", {**FIELDS["ctp"], "amount": "x"}, BOB) == "schema"
    expired_cert = devcert("m0002", exp=NOW - 1)
    assert reason(verify, erc(coe_raw=coe(cert=expired_cert, exp=NOW - 1, size=0))) == "cert"
    assert reason(verify, erc(coe_raw=coe(exp=NOW - 1), key=OTKS[6])) == "coe"
    f = FIELDS["erc"]
    wrong_leaf = Erc(ctp=f["ctp"], wh=f["wh"], t=f["t"], pk=OTK_PKS[6], idx=5, path=f["path"], coe=f["coe"])
    assert reason(verify, wrong_leaf.sign(BOB)) == "proof"


# ---- certificates ----------------------------------------------------------------------------


def test_birth_with_another_meters_devcert_is_cert():
    """A birth for m0001 carrying m0002's (CA-signed, valid) devcert is `cert`, whoever signs it."""
    assert reason(verify, birth("m0001", cert=devcert("m0002"), key=M2)) == "cert"
    assert reason(verify, birth("m0001", cert=devcert("m0002"), key=M1)) == "cert"
    assert verify(birth("m0002", cert=devcert("m0002"), key=M2)).body.meter == "m0002"


def test_devcert_problems_inside_birth_are_cert():
    """Rogue issuer, forged CA signature, outside nbf..exp, garbage bytes: all `cert`."""
    nbf_exp = {"nbf": FIELDS["devcert_m0001"]["nbf"], "exp": FIELDS["devcert_m0001"]["exp"]}
    forged = DevCert(meter="m0001", pk=pk(M1), iss=pk(CA), **nbf_exp).sign(ROGUE_CA)
    for cert in (
        devcert("m0001", ca=ROGUE_CA),
        forged,
        devcert("m0001", exp=NOW - 1),
        devcert("m0001", nbf=NOW + 1),
        b"",
        b"\xa0",
        VALID["ctp"],
    ):
        assert reason(verify, birth(cert=cert)) == "cert"
    assert verify(birth(cert=devcert("m0001", nbf=NOW, exp=NOW))).body.meter == "m0001"


def test_birth_and_coereq_signed_by_another_device_are_signature():
    """The embedded cert's pk must have signed the message."""
    assert reason(verify, birth(key=M2)) == "signature"
    assert reason(verify, sign_map(FIELDS["coereq"], M2)) == "signature"


def test_top_level_devcert():
    """A devcert verifies under its issuer if the issuer is a trusted CA."""
    nbf_exp = {"nbf": FIELDS["devcert_m0001"]["nbf"], "exp": FIELDS["devcert_m0001"]["exp"]}
    forged = DevCert(meter="m0001", pk=pk(M1), iss=pk(CA), **nbf_exp).sign(ROGUE_CA)
    assert reason(verify, forged) == "signature"
    assert reason(verify, devcert("m0001", ca=ROGUE_CA)) == "cert"
    assert reason(verify, devcert("m0001", exp=NOW - 1)) == "cert"


# ---- validators and device keys ---------------------------------------------------------------


@pytest.mark.parametrize("body", [STATUS, REJECTION], ids=["status", "reject"])
def test_status_and_reject_need_a_validator_key(body):
    """Only a key given as a validator can sign status/reject; otherwise `signature`."""
    raw = body.sign(VALIDATOR)
    ok = Verifier([pk(CA)], validators=[pk(BOB), pk(VALIDATOR)]).verify(raw, NOW, expect=body.typ)
    assert ok.body == body
    assert reason(verifier().verify, raw, NOW, expect=body.typ) == "signature"
    assert reason(Verifier([pk(CA)], validators=[pk(BOB)]).verify, raw, NOW) == "signature"
    assert reason(Verifier([pk(CA), pk(VALIDATOR)]).verify, raw, NOW) == "signature"  # a CA is not a validator
    assert reason(Verifier([pk(CA)], validators=[pk(VALIDATOR)]).verify, body.sign(BOB), NOW) == "signature"


def test_reading_needs_the_device_key():
    """A reading verifies only under the device key from its meter's birth."""
    raw = VALID["reading"]
    assert verify(raw, device_key=pk(M1)).body.seq == FIELDS["reading"]["seq"]
    assert reason(verifier().verify, raw, NOW) == "signature"
    assert reason(verify, raw, device_key=None) == "signature"
    assert reason(verify, raw, device_key=pk(M2)) == "signature"
    assert reason(verify, raw, device_key=b"\x00" * 31) == "signature"


# ---- ERC and its CoE -----------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1025, 2**32])
def test_coe_size_outside_1_to_1024_is_coe(size):
    """§4 step 4: `size` not in 1..1024 is `coe`, for the ERC and for the CoE itself."""
    bad = coe(size=size)
    assert reason(verify, erc(coe_raw=bad)) == "coe"
    assert reason(verify, bad, expect="coe") == "coe"


def test_coe_sizes_1_and_1024_are_accepted():
    """Boundary sizes: a one-key batch and a full 1024-key batch both verify."""
    one = MerkleTree(OTK_PKS[:1])
    assert verify(erc(0, coe_raw=coe(root=one.root(), size=1), tree=one)).body.path == []
    full = MerkleTree([*OTK_PKS, *(sha256(i.to_bytes(2, "big")).digest() for i in range(1024 - 64))])
    full_coe = coe(root=full.root(), size=1024)
    for idx in (0, 5, 63):
        assert len(verify(erc(idx, coe_raw=full_coe, tree=full)).body.path) == 10


@pytest.mark.parametrize(
    "times,expected",
    [
        ({"exp": NOW - 1}, "coe"),
        ({"t": NOW + 1}, "coe"),
        ({"t": NOW + 1, "exp": NOW - 1}, "coe"),
        ({"exp": NOW}, None),
        ({"t": NOW}, None),
    ],
    ids=["expired", "not-yet", "inverted", "exp-is-now", "t-is-now"],
)
def test_coe_validity_window(times, expected):
    """An ERC whose CoE is outside t..exp at the verifier's clock is `coe`; the ends are inclusive."""
    raw = erc(coe_raw=coe(**times))
    if expected is None:
        assert verify(raw).body.idx == 5
    else:
        assert reason(verify, raw) == expected


def test_coe_not_signed_by_its_witness_is_coe():
    """A CoE signed by a key other than its devcert's pk is `coe`; a garbage CoE too."""
    assert reason(verify, erc(coe_raw=coe(witness=M1))) == "coe"
    assert reason(verify, erc(coe_raw=VALID["ctp"])) == "coe"
    assert reason(verify, erc(coe_raw=b"\x00")) == "coe"


def test_coe_witness_devcert_not_yet_valid_is_cert():
    """The witness devcert outside nbf..exp is `cert` even if the CoE itself is fine."""
    assert reason(verify, erc(coe_raw=coe(cert=devcert("m0002", nbf=NOW + 1)))) == "cert"
    assert reason(verify, erc(coe_raw=coe(cert=devcert("m0002", ca=ROGUE_CA)))) == "cert"


def test_coe_cache_accepts_every_key_of_the_batch_and_rechecks_the_clock():
    """One Verifier, one CoE: the same ERC twice and ERCs of other one-time keys pass; the
    cached CoE still gets its witness devcert and its own window checked at each `now`."""
    v = verifier()
    same_coe = FIELDS["erc"]["coe"]
    assert v.verify(VALID["erc"], NOW, expect="erc").body.idx == 5
    assert v.verify(VALID["erc"], NOW, expect="erc").body.idx == 5
    for idx in range(64):
        other = erc(idx)
        assert cbor2.loads(cbor2.loads(other)[2])["coe"] == same_coe
        assert v.verify(other, NOW, expect="erc").body.pk == OTK_PKS[idx]
    second = erc(6)
    cert_exp, cert_nbf = FIELDS["devcert_m0002"]["exp"], FIELDS["devcert_m0002"]["nbf"]
    assert reason(v.verify, second, cert_exp + 1) == "cert"
    assert reason(v.verify, second, cert_nbf - 1) == "cert"
    assert reason(v.verify, second, FIELDS["coe"]["exp"] + 1) == "coe"
    assert reason(v.verify, second, FIELDS["coe"]["t"] - 1) == "coe"
    assert v.verify(second, NOW).body.idx == 6


def test_invalid_vectors_keep_their_reasons_with_a_warm_cache():
    """A CoE cached by a valid ERC does not let any invalid vector through or change its reason."""
    v = verifier()
    v.verify(VALID["erc"], NOW)
    for vector in INVALID:
        got = reason(v.verify, bytes.fromhex(vector["hex"]), NOW, expect=vector["typ"], device_key=pk(M1))
        assert got == vector["reason"], vector["name"]


def test_small_coe_cache_evicts_without_changing_answers():
    """With room for one CoE, alternating two batches' CoEs still verifies both every time."""
    v = Verifier([pk(CA)], coe_cache_size=1)
    a, b = erc(5), erc(5, coe_raw=coe(t=NOW - 5))
    for _ in range(3):
        assert v.verify(a, NOW).body.coe != v.verify(b, NOW).body.coe
    assert reason(v.verify, erc(7, coe_raw=coe(t=NOW - 5)), FIELDS["devcert_m0002"]["exp"] + 1) == "cert"


def test_erc_index_outside_coe_size_is_proof():
    """An index at or beyond the CoE's size cannot be proven: `proof`."""
    path = FIELDS["erc"]["path"]
    for idx in (64, 2**63):
        body = Erc(ctp=FIELDS["erc"]["ctp"], wh=1, t=NOW, pk=OTK_PKS[5], idx=idx, path=path, coe=coe())
        assert reason(verify, body.sign(OTKS[5])) == "proof"


# ---- structured fuzz -------------------------------------------------------------------------

CBOR_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
ALL_KEYS = sorted({f for cls in BODY_TYPES.values() for f in cls.__dataclass_fields__} | {"v", "typ", "x"})


@st.composite
def fuzzed_body(draw):
    """A body of a real typ whose keys keep their vector value, take a random value, or go."""
    name = draw(st.sampled_from(sorted(BODIES)))
    body = {}
    for key in ALL_KEYS:
        choice = draw(st.sampled_from(["keep", "keep", "random", "drop"]))
        if choice == "keep" and key in BODIES[name]:
            body[key] = BODIES[name][key]
        elif choice == "random":
            body[key] = draw(CBOR_VALUES)
    return name, body, draw(st.sampled_from(["right", "bob"]))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fuzzed_body())
def test_fuzzed_bodies_get_a_reason_or_verify(case):
    """Random bodies of every typ get a §4 reason; a body that does verify round-trips."""
    name, body, signer = case
    raw = sign_map(body, SIGNERS[name] if signer == "right" else BOB)
    v = Verifier([pk(CA)], validators=[pk(VALIDATOR)])
    opened = rejected = None
    try:
        opened = v.verify(raw, NOW, device_key=pk(M1))
    except Reject as exc:
        rejected = exc.reason
    if opened is None:
        assert rejected in REASONS
    else:
        assert opened.body.to_map() == body
    rejected_or_opened(raw)


# ---- the deterministic decoder itself -------------------------------------------------------

MAP_KEYS = st.text(max_size=30) | st.integers(-30, 30) | st.binary(max_size=4)
DECODABLE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=30)
    | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(MAP_KEYS, inner, max_size=6),
    max_leaves=16,
)


@settings(max_examples=400, deadline=None)
@given(value=DECODABLE, order=st.randoms(use_true_random=False))
def test_payload_must_be_the_deterministic_form(value, order):
    """A body is accepted as far as the schema only in its RFC 8949 §4.2.1 byte form: the
    same map in another form (insertion-ordered keys, 64-bit floats...) is `noncanonical`,
    which outranks the `schema` an unknown key "x" gets."""
    items = list({**FIELDS["ctp"], "x": value}.items())
    order.shuffle(items)
    body = dict(items)
    canonical, plain = encode(body), cbor2.dumps(body)
    assert reason(open_message, sign_payload(canonical, ALICE)) == "schema"
    if plain != canonical:
        assert reason(open_message, sign_payload(plain, ALICE)) == "noncanonical"
        assert reason(verify, sign_payload(plain, ALICE)) == "noncanonical"


def test_weak_public_keys_are_signature():
    """All-zero (small-order) keys named by a body or given as device key never verify."""
    zero = b"\x00" * 32
    assert reason(verify, VALID["reading"], device_key=zero) == "signature"
    assert reason(_verify_body, "ctp", {**FIELDS["ctp"], "payer": zero}) == "signature"


def _shared_signature_envelope() -> bytes:
    """A reading whose 64-byte payload is marked shareable (tag 28) and whose signature is a
    reference to it (tag 29), padded with trailing bytes to the canonical envelope length."""
    body = sign_map(
        {**FIELDS["reading"], "meter": "m000001", "t": 2**32, "seq": 1, "wh_in": 1, "wh_out": 1, "w": 1}, M1
    )
    payload = cbor2.loads(body)[2]
    assert len(payload) == 64
    raw = bytes.fromhex("8443a10127a0") + b"\xd8\x1c" + encode(payload) + b"\xd8\x1d\x00"
    return raw + b"\x00" * (len(body) - len(raw))


def test_value_sharing_in_the_envelope_is_noncanonical():
    """§1/§4 step 2: an envelope that is not the deterministic encoding of its four items is
    `noncanonical` (or `decode`) before any signature is looked at."""
    raw = _shared_signature_envelope()
    assert cbor2.loads(raw)[2] == cbor2.loads(raw)[3]  # it does decode, to payload == signature
    assert reason(open_message, raw) in DECODE_OR_NONCANONICAL
    assert reason(verify, raw) in DECODE_OR_NONCANONICAL
