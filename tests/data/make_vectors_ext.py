"""Writes tests/data/vectors-ext.json: the byte-exact vectors of this project's extensions
of wire v1 (docs/PROTOCOL.md: decision 0004's revoke, decision 0008's busy and size limit,
§9's market, §10's accounts). Run by hand from the repository root after changing a vector on purpose:

    .venv/bin/python -m tests.data.make_vectors_ext

tests/wire/test_extension_vectors.py runs `document()` and requires the committed file to
be exactly its output, so the file cannot drift from the code, and a change to the wire
bytes of an extension shows up as a diff of this file.

Everything is deterministic: Ed25519 signatures are, the keys are the seeds of
tests/data/vectors.json plus the validator seed below, and the nonce and times are fixed.
The market story the vectors tell (interval K = the one after vectors.json's `now`, with
the default genesis terms): bob sells 500 Wh of solar from m0002 at 12; alice bids 400 Wh
green at 15, 300 Wh open at 10, and 200 Wh at 14 in a sealed bid she reveals after the
gate, and withdraws the bid at 10 before the gate (it would not have filled). Clearing
fills 400 Wh green and 100 Wh open (the sealed bid), both at floor((15 + 12) / 2) =
floor((14 + 12) / 2) = 13: the ask is filled, the sealed bid partial. m0002 proves 700 Wh of
export for the last interval that ended before `now`. After the clearing alice's account
status (decision 0010) shows both fills' amounts held, 400·13 + 100·13 = 6500, and the rest
of her genesis 100,000 free: the withdrawn bid's and the sealed bid's unused escrow are back.

The accounts story (section `accounts`, §10), on a genesis with an operator and the market
above, one message a block: the operator registers carol with meter m0003 (wind), funds her
20,000 and pays bob out 5,000; alice rotates her key herself, the operator rotates bob's (he
lost it); the operator retires carol and pays her 20,000 out. After it: funded 20,000,
withdrawn 25,000, alice's new key holds her 100,000, bob's new key 95,000, the old keys and
carol 0.
"""

from __future__ import annotations

import json
from hashlib import sha256
from pathlib import Path

from nacl.signing import SigningKey

from ledger.genesis import Genesis, MarketTerms, MeterEntry
from tests.support.wire import ALICE, BOB, CA, M2, NOW, VALID, VECTORS, body_map, pk
from wire.cose import MAX_MESSAGE, encode, message_hash, sign1
from wire.market import commitment, fill_id, order_id
from wire.messages import (
    AccountStatus,
    Ask,
    Bid,
    Cleared,
    CtpState,
    DevCert,
    Export,
    FillDocument,
    Fund,
    Order,
    OrderState,
    Payout,
    Register,
    Rejection,
    Retire,
    Reveal,
    Revoke,
    Rotate,
    Seal,
    Side,
    Status,
    Withdraw,
)
from wire.reasons import BUSY

PATH = Path(__file__).with_name("vectors-ext.json")
VALIDATOR_SEED = bytes.fromhex("63b1a4a5c0d7340332a93bf5e1696f9d2429cf4f7d5867c7356407ed572381d6")
VALIDATOR = SigningKey(VALIDATOR_SEED)

# The genesis market terms the vectors assume: §9.1's defaults.
INTERVAL_S, GRACE, REVEAL_S = 300, 1, 60
INTERVAL_MS = INTERVAL_S * 1000
K = NOW // INTERVAL_MS + 1  # orders at `now` are for the next interval, whose gate is still ahead
GATE = K * INTERVAL_MS
EXPORT_K = NOW // INTERVAL_MS - 1  # the last interval that ended before `now`
REVEAL_T = GATE + 5_000
CLEAR_T = GATE + REVEAL_S * 1000 + 1_000  # a seal was accepted, so k clears after the reveal window
SEAL_H, CLEAR_H = 1200, 1262  # block heights of the seal's acceptance and of the clearing
NONCE = sha256(b"spb vectors-ext: seal nonce").digest()
ALICE_UNITS = 100_000  # alice's genesis balance in the story
BUYER_METER = bytes.fromhex(VECTORS["merkle"]["otk_root_64"])  # alice's m0001, as the v1 CTP names it


def _bid(wh: int, price: int, green: bool) -> bytes:
    return Bid(buyer=pk(ALICE), wh=wh, price=price, k=K, green=green, meter=BUYER_METER, t=NOW).sign(ALICE)


def market_messages() -> dict[str, bytes]:
    """The valid market vectors, in the order of the story above."""
    ask = Ask(seller=pk(BOB), meter="m0002", wh=500, price=12, k=K, src="solar", t=NOW).sign(BOB)
    bid_green, bid_open, bid_sealed = _bid(400, 15, True), _bid(300, 10, False), _bid(200, 14, False)
    seal = Seal(buyer=pk(ALICE), k=K, c=commitment(bid_sealed, NONCE), deposit=3000, t=NOW).sign(ALICE)
    seal_id = order_id(message_hash(seal))
    fill = fill_document(bid_green, ask)
    return {
        "ask_m0002": ask,
        "bid_green": bid_green,
        "bid_open": bid_open,
        "bid_sealed": bid_sealed,
        "seal": seal,
        "reveal": Reveal(buyer=pk(ALICE), seal=seal_id, bid=bid_sealed, nonce=NONCE, t=REVEAL_T).sign(ALICE),
        "withdraw_bid_open": Withdraw(by=pk(ALICE), order=order_id(message_hash(bid_open)), t=NOW + 5_000).sign(ALICE),
        "export_m0002": Export(
            meter="m0002", cert=VALID["devcert_m0002"], k=EXPORT_K, wh=700, total=12_345, t=NOW
        ).sign(M2),
        "order_sealed_bid": Order(
            id=seal_id,
            k=K,
            side=Side.BID,
            state=OrderState.SEALED,
            filled=0,
            t=NOW,
            h=SEAL_H,
            deposit=3000,
            msg=message_hash(seal),
        ).sign(VALIDATOR),
        "order_filled_ask": Order(
            id=order_id(message_hash(ask)),
            k=K,
            side=Side.ASK,
            state=OrderState.FILLED,
            filled=500,
            t=CLEAR_T,
            h=CLEAR_H,
            wh=500,
            price=12,
            src="solar",
            msg=message_hash(ask),
        ).sign(VALIDATOR),
        "cleared": Cleared(k=K, green=[13, 400], open=[13, 100], fills=2, t=CLEAR_T, h=CLEAR_H).sign(VALIDATOR),
        "status_held_fill": Status(
            ctp=fill.id,
            state=CtpState.HELD,
            t=CLEAR_T,
            h=CLEAR_H,
            msg=sha256(fill.encode()).digest(),
            payer=fill.payer,
            payee=fill.payee,
            wh=fill.wh,
            exp=fill.exp,
        ).sign(VALIDATOR),
        # Nobody confirmed it by its expiry: the refund names the parties too (§9, issue 17).
        "status_refunded_fill": Status(
            ctp=fill.id,
            state=CtpState.REFUNDED,
            t=fill.exp + 1,
            h=CLEAR_H + 700,
            payer=fill.payer,
            payee=fill.payee,
            wh=fill.wh,
            exp=fill.exp,
        ).sign(VALIDATOR),
        "account_alice": account_after_clearing(),
    }


def account_after_clearing() -> bytes:
    """alice's account status of the clearing block: both fills' amounts held, the rest free."""
    held = 400 * 13 + 100 * 13
    return AccountStatus(account=pk(ALICE), balance=ALICE_UNITS - held, held=held, t=CLEAR_T, h=CLEAR_H).sign(VALIDATOR)


def fill_document(bid: bytes, ask: bytes) -> FillDocument:
    """The green fill: 400 Wh of `bid` (alice's green bid) from `ask` (bob's) at 13."""
    bid_hash, ask_hash = message_hash(bid), message_hash(ask)
    return FillDocument(
        id=fill_id(bid_hash, ask_hash),
        k=K,
        bid=bid_hash,
        ask=ask_hash,
        payer=pk(ALICE),
        payee=pk(BOB),
        wh=400,
        amount=400 * 13,
        exp=(K + 1 + GRACE) * INTERVAL_MS,
        meter=BUYER_METER,
        t=CLEAR_T,
    )


def _with(raw: bytes, key: SigningKey, **changes: object) -> bytes:
    """A vector's body with some keys changed, signed again by `key`: for the bodies the
    typed classes refuse to build."""
    return sign1(encode({**body_map(raw), **changes}), key)


def invalid_vectors(market: dict[str, bytes]) -> list[dict]:
    """Each invalid vector with the reason §4 gives it, checked as the typ its topic carries."""
    ask, bid = market["ask_m0002"], market["bid_green"]
    cases = [
        ("ask_wh_zero", "schema", _with(ask, BOB, wh=0)),
        ("bid_wh_zero", "schema", _with(bid, ALICE, wh=0)),
        ("bid_green_as_integer_1", "schema", _with(bid, ALICE, green=1)),
        ("ask_unknown_source", "schema", _with(ask, BOB, src="nuclear")),
        ("bid_unknown_key", "schema", _with(bid, ALICE, note="hi")),
        ("export_meter_not_its_devcerts", "cert", _with(market["export_m0002"], M2, meter="m0001")),
        ("ask_not_signed_by_seller", "signature", _with(ask, ALICE)),
    ]
    oversize = {"name": "ctp_over_64_kib", "typ": "ctp", "reason": "decode", "base": "ctp"}
    return [
        {**oversize, "pad": MAX_MESSAGE + 1 - len(VALID["ctp"])},
        *(
            {"name": name, "typ": body_map(raw)["typ"], "reason": reason, "hex": raw.hex()}
            for name, reason, raw in cases
        ),
    ]


# -- §10: accounts after launch -------------------------------------------------------------


def _seeded(label: str) -> tuple[bytes, SigningKey]:
    seed = sha256(b"spb vectors-ext: " + label.encode()).digest()
    return seed, SigningKey(seed)


OPERATOR_SEED, OPERATOR = _seeded("operator")
CAROL_SEED, CAROL = _seeded("account carol")
M3_SEED, M3 = _seeded("meter m0003 device")
ALICE_NEW_SEED, ALICE_NEW = _seeded("account alice, rotated")
BOB_NEW_SEED, BOB_NEW = _seeded("account bob, rotated")
STRANGER_SEED, STRANGER = _seeded("no operator")
BOB_UNITS = 100_000  # bob's genesis balance in the accounts story
FUNDED, PAID_BOB = 20_000, 5_000
ACCOUNT_KEYS = {  # the keys the accounts section publishes, by name
    "operator": (OPERATOR_SEED, OPERATOR),
    "account_carol": (CAROL_SEED, CAROL),
    "meter_m0003_device": (M3_SEED, M3),
    "account_alice_new": (ALICE_NEW_SEED, ALICE_NEW),
    "account_bob_new": (BOB_NEW_SEED, BOB_NEW),
    "stranger": (STRANGER_SEED, STRANGER),
}


def accounts_genesis(operators: tuple[bytes, ...] = (pk(OPERATOR),)) -> Genesis:
    """The market chain of the vectors (§9.1's default terms; m0001 alice's without a
    source, m0002 bob's solar) with one operator."""
    meters = (MeterEntry("m0001", pk(ALICE), ""), MeterEntry("m0002", pk(BOB), "solar"))
    terms = MarketTerms(meters, INTERVAL_S, 288, GRACE, REVEAL_S)
    accounts = {pk(ALICE): ALICE_UNITS, pk(BOB): BOB_UNITS}
    return Genesis.build([pk(CA)], accounts, [pk(VALIDATOR)], market=terms, operators=operators)


def devcert_m0003() -> bytes:
    """carol's meter's devcert, valid when m0001's is."""
    m1 = body_map(VALID["devcert_m0001"])
    return DevCert(meter="m0003", pk=pk(M3), iss=pk(CA), nbf=m1["nbf"], exp=m1["exp"]).sign(CA)


def account_messages() -> dict[str, bytes]:
    """The valid §10 vectors, in the order of the accounts story (one a block)."""
    op = pk(OPERATOR)
    return {
        "register_carol": Register(op=op, account=pk(CAROL), meters=[[devcert_m0003(), "wind"]], t=NOW).sign(OPERATOR),
        "fund_carol": Fund(op=op, account=pk(CAROL), amount=FUNDED, ref="bank-2026-12-0001", t=NOW + 1_000).sign(
            OPERATOR
        ),
        "payout_bob": Payout(op=op, account=pk(BOB), amount=PAID_BOB, ref="payout-2026-12-0001", t=NOW + 2_000).sign(
            OPERATOR
        ),
        "rotate_alice_by_alice": Rotate(account=pk(ALICE), new=pk(ALICE_NEW), by=pk(ALICE), t=NOW + 3_000).sign(ALICE),
        "rotate_bob_by_operator": Rotate(account=pk(BOB), new=pk(BOB_NEW), by=op, t=NOW + 4_000).sign(OPERATOR),
        "retire_carol": Retire(op=op, account=pk(CAROL), t=NOW + 5_000).sign(OPERATOR),
        "payout_carol": Payout(op=op, account=pk(CAROL), amount=FUNDED, ref="payout-2026-12-0002", t=NOW + 6_000).sign(
            OPERATOR
        ),
    }


def account_invalid_vectors(valid: dict[str, bytes]) -> list[dict]:
    """Each invalid §10 vector with the reason §4 and §10.1 give it, checked as its typ."""
    fund, payout, register = valid["fund_carol"], valid["payout_bob"], valid["register_carol"]
    rotate, retire = valid["rotate_alice_by_alice"], valid["retire_carol"]
    cert = devcert_m0003()
    cases = [
        ("fund_amount_zero", "schema", _with(fund, OPERATOR, amount=0)),
        ("fund_amount_2_pow_63", "schema", _with(fund, OPERATOR, amount=1 << 63)),
        ("fund_ref_empty", "schema", _with(fund, OPERATOR, ref="")),
        ("payout_ref_65_chars", "schema", _with(payout, OPERATOR, ref="r" * 65)),
        ("register_unknown_source", "schema", _with(register, OPERATOR, meters=[[cert, "nuclear"]])),
        ("register_65_meters", "schema", _with(register, OPERATOR, meters=[[cert, "wind"]] * 65)),
        ("register_meter_not_a_pair", "schema", _with(register, OPERATOR, meters=[[cert]])),
        ("fund_by_a_stranger", "not-operator", _with(fund, STRANGER, op=pk(STRANGER))),
        ("rotate_by_a_stranger", "not-operator", _with(rotate, STRANGER, by=pk(STRANGER))),
        ("rotate_by_its_new_key", "not-operator", _with(rotate, ALICE_NEW, by=pk(ALICE_NEW))),
        ("retire_not_signed_by_op", "signature", _with(retire, STRANGER)),
        ("rotate_not_signed_by_old_key", "signature", _with(rotate, BOB)),
    ]
    return [
        {"name": name, "typ": body_map(raw)["typ"], "reason": reason, "hex": raw.hex()} for name, reason, raw in cases
    ]


def accounts_section() -> dict:
    """The `accounts` section: keys, the genesis, the valid and invalid vectors, and the
    money of each account after the story."""
    genesis, valid = accounts_genesis(), account_messages()
    after = {
        "account_alice": [0, 0],
        "account_alice_new": [ALICE_UNITS, 0],
        "account_bob": [0, 0],
        "account_bob_new": [BOB_UNITS - PAID_BOB, 0],
        "account_carol": [0, 0],
    }
    return {
        "keys": {name: {"seed": seed.hex(), "pk": pk(key).hex()} for name, (seed, key) in ACCOUNT_KEYS.items()},
        "genesis": {
            "hex": genesis.encode().hex(),
            "hash": genesis.hash.hex(),
            "hash_without_operators": accounts_genesis(operators=()).hash.hex(),
        },
        "valid": {name: raw.hex() for name, raw in valid.items()},
        "invalid": account_invalid_vectors(valid),
        "after": {"funded": FUNDED, "withdrawn": PAID_BOB + FUNDED, "accounts": after},
    }


def document() -> str:
    """The whole file's text."""
    market = market_messages()
    hashes = {name: message_hash(market[name]) for name in ("ask_m0002", "bid_green", "bid_open", "bid_sealed", "seal")}
    fill = fill_document(market["bid_green"], market["ask_m0002"])
    valid = {
        "reject_busy": Rejection(msg=bytes.fromhex(VECTORS["hashes"]["ctp"]), reason=BUSY, t=NOW).sign(VALIDATOR),
        "revoke_m0002": Revoke(meter="m0002", pk=pk(M2), iss=pk(CA), t=NOW - 60_000).sign(CA),
        **market,
    }
    doc = {
        "about": ABOUT,
        "keys": {"validator_v0": {"seed": VALIDATOR_SEED.hex(), "pk": pk(VALIDATOR).hex()}},
        "valid": {name: raw.hex() for name, raw in valid.items()},
        "market": {
            "terms": {"interval_s": INTERVAL_S, "ahead": 288, "grace": GRACE, "reveal_s": REVEAL_S},
            "k": K,
            "gate": GATE,
            "seal": {"bid": "bid_sealed", "nonce": NONCE.hex(), "c": commitment(market["bid_sealed"], NONCE).hex()},
            "order_ids": {name: order_id(h).hex() for name, h in hashes.items()},
            "fill": {
                "bid": "bid_green",
                "ask": "ask_m0002",
                "bid_hash": hashes["bid_green"].hex(),
                "ask_hash": hashes["ask_m0002"].hex(),
                "id": fill.id.hex(),
                "document": fill.encode().hex(),
                "document_hash": sha256(fill.encode()).hexdigest(),
            },
        },
        "invalid": invalid_vectors(market),
        "accounts": accounts_section(),
    }
    return json.dumps(doc, indent=1) + "\n"


ABOUT = (
    "Extensions of wire v1 owned by this project (docs/PROTOCOL.md): decision 0004's revoke, decision 0008's busy "
    "and size limit, section 9's market, section 10's accounts. Keys, hashes and 'now' of vectors.json apply; "
    "validator_v0 signs reject, "
    "order, cleared, status and account vectors; hex strings are raw bytes. The oversize vector is given as the v1 ctp "
    "vector's bytes followed by 'pad' zero bytes. 'market' holds what a reader recomputes: the genesis terms "
    "assumed, interval k of the orders and its gate (ms), the sealed bid's nonce and commitment c = "
    "SHA-256(bid_sealed bytes || nonce), each order's id (first 16 bytes of its message hash), and the green "
    "fill of bid_green against ask_m0002: id = first 16 bytes of SHA-256(bid hash || ask hash), its fill "
    "document (deterministic CBOR, unsigned) and that document's SHA-256, the msg of status_held_fill. "
    "status_refunded_fill is that fill's refund at its expiry, a block after which nobody confirmed it: "
    "like every status of a market chain's trade it names payer, payee, wh and exp; no msg (no message "
    "caused it). "
    "account_alice is alice's account status (decision 0010) of the clearing block, her genesis balance being "
    "100000: both fills' amounts held, the rest free. "
    "'accounts' holds section 10's vectors: the keys they use (seeds and public keys), a genesis with an "
    "operator (the market terms above, alice and bob with 100000 each, validator_v0; its hash, and the hash of "
    "the same genesis without operators, which has no 'operators' key), the valid messages of its story in "
    "order, one a block (carol registered with meter m0003 and funded, bob paid out, alice's key rotated by "
    "alice, bob's by the operator, carol retired and paid out), the invalid ones with the reason each gets "
    "from a verifier that trusts the operator, and each account's [balance, held] after the story. "
    "Made by tests/data/make_vectors_ext.py."
)


if __name__ == "__main__":
    PATH.write_text(document())
