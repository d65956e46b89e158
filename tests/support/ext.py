"""tests/data/vectors-ext.json as the tests read it: the project's own extensions of wire v1,
signed by its validator. Apart from tests.support.wire because tests/data/make_vectors_ext.py
imports that module, and must run even when the file it rewrites is missing or broken."""

from __future__ import annotations

import json

from nacl.signing import SigningKey

from tests.support.wire import ALICE, BOB, CA, M2, VECTORS_PATH

EXT_PATH = VECTORS_PATH.with_name("vectors-ext.json")
EXT: dict = json.loads(EXT_PATH.read_text())
EXT_VALID: dict[str, bytes] = {name: bytes.fromhex(h) for name, h in EXT["valid"].items()}
EXT_VALIDATOR = SigningKey(bytes.fromhex(EXT["keys"]["validator_v0"]["seed"]))
# Who signs each valid vector (docs/PROTOCOL.md §4 and §9.2's tables).
SIGNER: dict[str, SigningKey] = {
    "reject_busy": EXT_VALIDATOR,
    "revoke_m0002": CA,
    "ask_m0002": BOB,
    "bid_green": ALICE,
    "bid_open": ALICE,
    "bid_sealed": ALICE,
    "seal": ALICE,
    "reveal": ALICE,
    "withdraw_bid_open": ALICE,
    "export_m0002": M2,
    "order_sealed_bid": EXT_VALIDATOR,
    "order_filled_ask": EXT_VALIDATOR,
    "cleared": EXT_VALIDATOR,
    "status_held_fill": EXT_VALIDATOR,
    "status_refunded_fill": EXT_VALIDATOR,
    "account_alice": EXT_VALIDATOR,
}
