"""tests/data/vectors-ext.json: the extensions docs/PROTOCOL.md adds to wire v1 (decision
0004's `revoke`, decision 0008's `busy` and 64 KiB limit, §9's market, §10's accounts), pinned
byte for byte like the v1 vectors, which stay untouched in tests/data/vectors.json. The
`accounts` section's vectors are checked in tests/wire/test_account_vectors.py.

tests/data/make_vectors_ext.py writes the file; here the file must be exactly what it writes
today, and each vector is also checked from the outside: it verifies (or is rejected with its
reason), and the derived values of `market` are recomputed from the bytes with hashlib alone,
as another implementation would.
"""

from __future__ import annotations

from hashlib import sha256

import cbor2
import pytest

from tests.data.make_vectors_ext import document
from tests.support.ext import EXT, EXT_PATH, EXT_VALID, EXT_VALIDATOR, SIGNER
from tests.support.wire import (
    CA,
    M2,
    NOW,
    VECTORS,
    body_map,
    pk,
    reason,
)
from wire.cose import MAX_MESSAGE
from wire.market import open_fill
from wire.messages import Rejection, Revoke
from wire.reasons import BUSY
from wire.verify import Verifier

VALIDATOR = EXT_VALIDATOR
MARKET = EXT["market"]


def ext_verifier() -> Verifier:
    return Verifier([pk(CA)], validators=[pk(VALIDATOR)])


def test_the_file_is_exactly_what_its_generator_writes():
    """Byte for byte: regenerate with `python -m tests.data.make_vectors_ext` after a change
    made on purpose; any other difference is a change of the wire bytes."""
    assert EXT_PATH.read_text() == document()


def test_the_validator_seed_gives_its_published_key():
    assert pk(VALIDATOR).hex() == EXT["keys"]["validator_v0"]["pk"]


def test_every_valid_vector_is_named_with_its_signer():
    assert set(EXT_VALID) == set(SIGNER)


@pytest.mark.parametrize("name", sorted(SIGNER))
def test_each_valid_vector_verifies_as_its_typ_under_its_signers_key(name):
    """Verified as the typ its topic carries; and the signature is its signer's, not merely
    one the verifier accepts."""
    raw = EXT_VALID[name]
    typ = body_map(raw)["typ"]
    opened = ext_verifier().verify(raw, NOW, expect=typ)
    assert opened.raw == raw and opened.envelope.verifies(pk(SIGNER[name]))


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
    vector = next(v for v in EXT["invalid"] if v["name"] == "ctp_over_64_kib")
    raw = bytes.fromhex(VECTORS["valid"][vector["base"]]) + b"\x00" * vector["pad"]
    assert len(raw) == MAX_MESSAGE + 1
    assert reason(ext_verifier().verify, raw, NOW, expect=vector["typ"]) == vector["reason"] == "decode"


MARKET_INVALID = [v for v in EXT["invalid"] if "hex" in v]


def test_the_market_invalid_vectors_cover_each_reason_asked_for():
    assert sorted({v["reason"] for v in MARKET_INVALID}) == ["cert", "schema", "signature"]
    assert len(MARKET_INVALID) == 7


@pytest.mark.parametrize("vector", MARKET_INVALID, ids=[v["name"] for v in MARKET_INVALID])
def test_each_invalid_market_vector_is_rejected_with_its_reason(vector):
    raw = bytes.fromhex(vector["hex"])
    assert reason(ext_verifier().verify, raw, NOW, expect=vector["typ"]) == vector["reason"]


# -- the derived values, recomputed with hashlib and cbor2 only --------------------------


def _hash(name: str) -> bytes:
    return sha256(EXT_VALID[name]).digest()


@pytest.mark.parametrize("name", sorted(MARKET["order_ids"]))
def test_each_order_id_is_the_first_16_bytes_of_its_message_hash(name):
    assert bytes.fromhex(MARKET["order_ids"][name]) == _hash(name)[:16]


def test_the_seal_commits_to_the_sealed_bid_and_nonce_and_the_reveal_opens_it():
    seal, reveal = body_map(EXT_VALID["seal"]), body_map(EXT_VALID["reveal"])
    nonce = bytes.fromhex(MARKET["seal"]["nonce"])
    c = sha256(EXT_VALID[MARKET["seal"]["bid"]] + nonce).digest()
    assert seal["c"] == c == bytes.fromhex(MARKET["seal"]["c"])
    assert (reveal["bid"], reveal["nonce"], reveal["seal"]) == (EXT_VALID["bid_sealed"], nonce, _hash("seal")[:16])
    bid = body_map(reveal["bid"])
    assert (bid["buyer"], bid["k"]) == (seal["buyer"], seal["k"]) and bid["wh"] * bid["price"] <= seal["deposit"]


def test_the_fill_id_is_sha256_of_the_bid_hash_then_the_ask_hash():
    fill = MARKET["fill"]
    bid_hash, ask_hash = _hash(fill["bid"]), _hash(fill["ask"])
    assert (fill["bid_hash"], fill["ask_hash"]) == (bid_hash.hex(), ask_hash.hex())
    assert bytes.fromhex(fill["id"]) == sha256(bid_hash + ask_hash).digest()[:16]
    assert bytes.fromhex(fill["id"]) != sha256(ask_hash + bid_hash).digest()[:16]


def test_the_fill_document_is_the_held_trade_of_the_green_fill():
    """§9.3's fields: the parties and meter of its bid and ask, wh·price, exp = (k+1+grace)·I."""
    fill, terms = MARKET["fill"], MARKET["terms"]
    data = bytes.fromhex(fill["document"])
    doc = cbor2.loads(data)
    bid, ask = body_map(EXT_VALID[fill["bid"]]), body_map(EXT_VALID[fill["ask"]])
    cleared = body_map(EXT_VALID["cleared"])
    assert cbor2.dumps(doc, canonical=True) == data
    assert (doc["v"], doc["typ"], doc["id"], doc["k"]) == (1, "fill", bytes.fromhex(fill["id"]), MARKET["k"])
    assert (doc["bid"], doc["ask"]) == (_hash(fill["bid"]), _hash(fill["ask"]))
    assert (doc["payer"], doc["payee"], doc["meter"]) == (bid["buyer"], ask["seller"], bid["meter"])
    assert (doc["wh"], doc["amount"]) == (400, 400 * cleared["green"][0])
    assert doc["exp"] == (MARKET["k"] + 1 + terms["grace"]) * terms["interval_s"] * 1000
    assert doc["t"] == cleared["t"] >= MARKET["gate"] + terms["reveal_s"] * 1000
    assert open_fill(data).encode() == data


def test_the_held_status_of_the_fill_names_its_parties_and_document():
    status, fill = body_map(EXT_VALID["status_held_fill"]), MARKET["fill"]
    doc = cbor2.loads(bytes.fromhex(fill["document"]))
    assert (status["ctp"], status["state"]) == (doc["id"], "held")
    assert (status["payer"], status["payee"]) == (doc["payer"], doc["payee"])
    assert status["msg"] == sha256(bytes.fromhex(fill["document"])).digest() == bytes.fromhex(fill["document_hash"])


def test_the_refund_of_the_fill_names_its_parties_too():
    held, refunded = body_map(EXT_VALID["status_held_fill"]), body_map(EXT_VALID["status_refunded_fill"])
    assert (refunded["ctp"], refunded["state"], refunded["h"]) == (held["ctp"], "refunded", held["h"] + 700)
    assert {k: refunded[k] for k in ("payer", "payee", "wh", "exp")} == {
        k: held[k] for k in ("payer", "payee", "wh", "exp")
    }
    assert "msg" not in refunded and refunded["t"] == held["exp"] + 1


def test_the_order_statuses_show_what_section_9_5_allows():
    """The sealed bid's shows its deposit and neither wh nor price; the filled ask's all of it."""
    sealed, filled = body_map(EXT_VALID["order_sealed_bid"]), body_map(EXT_VALID["order_filled_ask"])
    assert sealed["id"] == _hash("seal")[:16] and sealed["state"] == "sealed"
    assert "wh" not in sealed and "price" not in sealed and sealed["deposit"] == body_map(EXT_VALID["seal"])["deposit"]
    ask = body_map(EXT_VALID["ask_m0002"])
    assert filled["id"] == _hash("ask_m0002")[:16] and filled["state"] == "filled"
    assert (filled["filled"], filled["wh"], filled["price"], filled["src"]) == (
        ask["wh"],
        ask["wh"],
        ask["price"],
        "solar",
    )


def test_the_orders_are_for_the_interval_after_now_and_the_export_for_one_that_ended():
    interval_ms = MARKET["terms"]["interval_s"] * 1000
    assert MARKET["gate"] == MARKET["k"] * interval_ms > NOW
    for name in ("ask_m0002", "bid_green", "bid_open", "bid_sealed", "seal"):
        assert body_map(EXT_VALID[name])["k"] == MARKET["k"]
    assert (body_map(EXT_VALID["export_m0002"])["k"] + 1) * interval_ms <= NOW
