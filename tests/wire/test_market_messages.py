"""The market's message bodies (docs/PROTOCOL.md §9.2, §9.5): their round trips, the schema
of each new field type, who must sign each, and their topics. The valid messages are those
of tests/data/vectors-ext.json, made by its generator; each test varies one thing."""

from __future__ import annotations

from dataclasses import MISSING, fields
from hashlib import sha256

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.client import topic_matches_sub

from tests.data.make_vectors_ext import BUYER_METER, EXPORT_K, NONCE, VALIDATOR, fill_document, market_messages
from tests.support.ext import SIGNER
from tests.support.wire import (
    ALICE,
    BOB,
    CA,
    M1,
    M2,
    NOW,
    ROGUE_CA,
    VALID,
    body_map,
    devcert,
    pk,
    reason,
    sign_map,
    sign_payload,
)
from wire import topics
from wire.cose import encode
from wire.market import commitment, fill_id, open_fill, order_id, order_id_of
from wire.messages import (
    BODY_TYPES,
    SELL_SOURCES,
    Ask,
    Bid,
    Cleared,
    Export,
    Order,
    OrderState,
    Reveal,
    Seal,
    Side,
    Status,
    Withdraw,
    open_message,
)
from wire.verify import Verifier

MARKET = market_messages()
NEW_TYPS = ("ask", "bid", "seal", "reveal", "withdraw", "export", "order", "cleared")
# One vector per new typ.
BY_TYP = {body_map(raw)["typ"]: name for name, raw in reversed(MARKET.items())}


def verifier() -> Verifier:
    return Verifier([pk(CA)], validators=[pk(VALIDATOR)])


def changed(name: str, **changes: object) -> bytes:
    """Vector `name` with some body keys changed (None: removed), signed again by its signer."""
    m = {**body_map(MARKET[name]), **changes}
    return sign_map({k: v for k, v in m.items() if v is not None}, SIGNER[name])


def schema_reason(name: str, **changes: object) -> str:
    """The reason a verifier gives vector `name` with `changes`, checked as its own typ."""
    return reason(verifier().verify, changed(name, **changes), NOW, expect=body_map(MARKET[name])["typ"])


# -- round trips ---------------------------------------------------------------------------


def test_every_new_typ_has_its_body_class():
    assert {typ: BODY_TYPES[typ].typ for typ in NEW_TYPS} == {typ: typ for typ in NEW_TYPS}


@pytest.mark.parametrize("name", sorted(MARKET))
def test_each_market_message_opens_to_a_body_that_encodes_to_the_same_bytes(name):
    """bytes -> body -> bytes is the identity, and the body's map is the wire map."""
    raw = MARKET[name]
    opened = open_message(raw)
    assert opened.body.encode() == opened.envelope.payload
    assert opened.body.to_map() == body_map(raw)
    assert open_message(raw, type(opened.body)).body == opened.body


def test_enum_fields_decode_to_their_members_and_encode_as_text():
    """Order's side and state come back as Side/OrderState members, and the wire has their text."""
    body = open_message(MARKET["order_sealed_bid"], Order).body
    assert (type(body.side), type(body.state)) == (Side, OrderState)
    assert (body.side, body.state) == (Side.BID, OrderState.SEALED)
    assert body_map(MARKET["order_sealed_bid"])["state"] == "sealed"


def test_an_order_without_its_optional_keys_round_trips_and_leaves_them_off_the_wire():
    order = Order(id=bytes(16), k=7, side=Side.ASK, state=OrderState.OPEN, filled=0, t=NOW, h=3)
    raw = order.sign(VALIDATOR)
    assert set(body_map(raw)) == {"v", "typ", "id", "k", "side", "state", "filled", "t", "h"}
    assert verifier().verify(raw, NOW, expect=Order).body == order


def test_a_status_without_payer_and_payee_is_the_v1_status_byte_for_byte():
    """The new optional keys change no v1 status: absent keys are not encoded."""
    plain = Status(ctp=bytes(16), state="held", t=NOW, h=1)
    assert set(plain.to_map()) == {"v", "typ", "ctp", "state", "t", "h"}
    both = Status(ctp=bytes(16), state="held", t=NOW, h=1, payer=pk(ALICE), payee=pk(BOB))
    opened = verifier().verify(both.sign(VALIDATOR), NOW, expect=Status).body
    assert (opened.payer, opened.payee) == (pk(ALICE), pk(BOB))


def test_a_cleared_product_with_nothing_filled_is_null_and_zero():
    raw = Cleared(k=1, green=[None, 0], open=[7, 30], fills=1, t=NOW, h=2).sign(VALIDATOR)
    body = verifier().verify(raw, NOW, expect=Cleared).body
    assert (body.green, body.open) == ([None, 0], [7, 30])


UINT = st.integers(0, (1 << 64) - 1)
POSITIVE = st.integers(1, (1 << 64) - 1)
ORDER_WH = st.integers(1, (1 << 32) - 1)  # an order's Wh (§9.2)
COUNTER = st.integers(0, (1 << 63) - 1)  # an export's wh and total (§9.2)
KEY = st.binary(min_size=32, max_size=32)
ID = st.binary(min_size=16, max_size=16)
PRODUCT = st.one_of(st.just([None, 0]), st.lists(POSITIVE, min_size=2, max_size=2).map(lambda p: [p[0] - 1, p[1]]))
BODIES = st.one_of(
    st.builds(
        Ask, seller=KEY, meter=st.text(), wh=ORDER_WH, price=UINT, k=UINT, src=st.sampled_from(SELL_SOURCES), t=UINT
    ),
    st.builds(Bid, buyer=KEY, wh=ORDER_WH, price=UINT, k=UINT, green=st.booleans(), meter=KEY, t=UINT),
    st.builds(Seal, buyer=KEY, k=UINT, c=KEY, deposit=POSITIVE, t=UINT),
    st.builds(Reveal, buyer=KEY, seal=ID, bid=st.binary(max_size=300), nonce=KEY, t=UINT),
    st.builds(Withdraw, by=KEY, order=ID, t=UINT),
    st.builds(Export, meter=st.text(), cert=st.binary(max_size=300), k=UINT, wh=COUNTER, total=COUNTER, t=UINT),
    st.builds(
        Order,
        id=ID,
        k=UINT,
        side=st.sampled_from(Side),
        state=st.sampled_from(OrderState),
        filled=UINT,
        t=UINT,
        h=UINT,
        wh=st.none() | POSITIVE,
        price=st.none() | UINT,
        src=st.none() | st.sampled_from(SELL_SOURCES),
        green=st.none() | st.booleans(),
        deposit=st.none() | POSITIVE,
        msg=st.none() | KEY,
    ),
    st.builds(Cleared, k=UINT, green=PRODUCT, open=PRODUCT, fills=UINT, t=UINT, h=UINT),
)


@settings(max_examples=300, deadline=None)
@given(BODIES)
def test_any_market_body_the_classes_build_opens_to_itself(body):
    """Whatever fits the schema encodes, and the bytes open to an equal body of the same class."""
    opened = open_message(sign_payload(body.encode(), ALICE))
    assert type(opened.body) is type(body) and opened.body == body
    assert opened.body.encode() == body.encode()


# -- schema: each new field type -----------------------------------------------------------


@pytest.mark.parametrize(
    "name, key",
    [("ask_m0002", "wh"), ("bid_green", "wh"), ("seal", "deposit"), ("order_filled_ask", "wh")],
)
@pytest.mark.parametrize("value", [0, -1, True, 1 << 64, "5"])
def test_positive_fields_refuse_zero_negative_and_non_integers(name, key, value):
    assert schema_reason(name, **{key: value}) == "schema"


def test_an_order_deposit_of_zero_is_schema():
    assert schema_reason("order_sealed_bid", deposit=0) == "schema"


@pytest.mark.parametrize("value", [1, 0, "true", None])
def test_green_must_be_a_cbor_bool(value):
    """1 and 0 are integers, not booleans; None here removes the required key."""
    assert schema_reason("bid_green", green=value) == "schema"


def test_green_false_is_a_bool_and_valid():
    raw = changed("bid_green", green=False)
    assert verifier().verify(raw, NOW, expect=Bid).body.green is False


@pytest.mark.parametrize("src", ["nuclear", "", "gas", "coal", "any", "Solar", 1])
def test_an_ask_names_only_a_registered_sell_source(src):
    """§9.1's sources only: the v1 CTP sources gas/coal/any are not sell sources, and ""
    (registered without a source) cannot be asked."""
    assert schema_reason("ask_m0002", src=src) == "schema"


@pytest.mark.parametrize("src", SELL_SOURCES)
def test_every_sell_source_is_accepted_in_an_ask(src):
    assert verifier().verify(changed("ask_m0002", src=src), NOW, expect=Ask).body.src == src


@pytest.mark.parametrize("side", ["buy", "sell", "ASK", "", 0])
def test_an_order_side_is_ask_or_bid(side):
    assert schema_reason("order_filled_ask", side=side) == "schema"


@pytest.mark.parametrize("state", ["held", "settled", "FILLED", "cleared", 3])
def test_an_order_state_is_one_of_section_9_5s(state):
    assert schema_reason("order_filled_ask", state=state) == "schema"


@pytest.mark.parametrize("state", list(OrderState))
def test_every_order_state_is_accepted(state):
    assert verifier().verify(changed("order_filled_ask", state=state.value), NOW, expect=Order).body.state is state


@pytest.mark.parametrize(
    "product",
    [[13], [13, 400, 1], [None, 5], [13, 0], [-1, 5], [True, 5], [13, True], [13, -5], ["13", 5], 13, None, {}],
)
def test_a_cleared_product_is_price_and_wh_with_price_null_exactly_when_nothing_filled(product):
    assert schema_reason("cleared", green=product) == "schema"


@pytest.mark.parametrize(
    "name, key, length",
    [
        ("ask_m0002", "seller", 31),
        ("bid_green", "buyer", 33),
        ("bid_green", "meter", 16),
        ("seal", "c", 16),
        ("reveal", "seal", 32),
        ("reveal", "nonce", 16),
        ("withdraw_bid_open", "by", 16),
        ("withdraw_bid_open", "order", 32),
        ("order_filled_ask", "id", 32),
        ("order_filled_ask", "msg", 16),
        ("status_held_fill", "payer", 16),
        ("status_held_fill", "payee", 33),
    ],
)
def test_fixed_length_byte_strings_refuse_any_other_length(name, key, length):
    assert schema_reason(name, **{key: bytes(length)}) == "schema"


@pytest.mark.parametrize(
    "name, key",
    [("ask_m0002", "meter"), ("reveal", "bid"), ("export_m0002", "cert"), ("export_m0002", "total")],
)
def test_a_field_of_the_wrong_major_type_is_schema(name, key):
    wrong = 5 if isinstance(body_map(MARKET[name])[key], (str, bytes)) else "5"
    assert schema_reason(name, **{key: wrong}) == "schema"


@pytest.mark.parametrize("name", sorted(MARKET))
def test_a_missing_required_key_and_an_unknown_key_are_schema(name):
    body_class = BODY_TYPES[body_map(MARKET[name])["typ"]]
    required = next(f.name for f in fields(body_class) if f.default is MISSING)
    assert schema_reason(name, **{required: None}) == "schema"
    assert schema_reason(name, extra=1) == "schema"


def test_the_classes_refuse_to_build_what_receivers_reject():
    """encode() raises instead of sending a body every receiver would refuse."""
    with pytest.raises(ValueError, match="wh"):
        Ask(seller=pk(BOB), meter="m0002", wh=0, price=1, k=1, src="solar", t=NOW).encode()
    with pytest.raises(ValueError, match="green"):
        Bid(buyer=pk(ALICE), wh=1, price=1, k=1, green=1, meter=BUYER_METER, t=NOW).encode()  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="open"):
        Cleared(k=1, green=[None, 0], open=[None, 3], fills=0, t=NOW, h=1).encode()


# -- who signs ------------------------------------------------------------------------------


@pytest.mark.parametrize("typ", NEW_TYPS)
def test_each_new_typ_verifies_only_under_its_signers_key(typ):
    """§9.2: ask -> seller, bid/seal/reveal -> buyer, withdraw -> by, export -> its devcert's
    key, order/cleared -> a validator. The same body signed by anyone else is `signature`."""
    name = BY_TYP[typ]
    signer = SIGNER[name]
    assert verifier().verify(MARKET[name], NOW, expect=typ).body.typ == typ
    for other in {ALICE, BOB, M1, M2, VALIDATOR, CA} - {signer}:
        forged = sign_payload(open_message(MARKET[name]).envelope.payload, other)
        assert reason(verifier().verify, forged, NOW, expect=typ) == "signature"


def test_the_key_a_body_names_is_the_key_that_must_sign():
    """Naming someone else is not enough: an ask whose seller is alice, signed by alice, is
    fine; the same ask signed by bob (the previous seller) is not."""
    alices = {**body_map(MARKET["ask_m0002"]), "seller": pk(ALICE)}
    assert verifier().verify(sign_map(alices, ALICE), NOW, expect=Ask).body.seller == pk(ALICE)
    assert reason(verifier().verify, sign_map(alices, BOB), NOW, expect=Ask) == "signature"


def test_a_withdraw_is_signed_by_its_by_key_whoever_owns_the_order():
    """Ownership is stateful (`not-owner`); statelessly the signer must be `by`."""
    raw = Withdraw(by=pk(BOB), order=order_id_of(MARKET["bid_open"]), t=NOW).sign(BOB)
    assert verifier().verify(raw, NOW, expect=Withdraw).body.by == pk(BOB)
    assert reason(verifier().verify, Withdraw(by=pk(BOB), order=bytes(16), t=NOW).sign(ALICE), NOW) == "signature"


def test_order_and_cleared_need_a_configured_validator():
    """A verifier that knows no validator accepts no market status."""
    bare = Verifier([pk(CA)])
    assert reason(bare.verify, MARKET["cleared"], NOW, expect=Cleared) == "signature"
    assert reason(bare.verify, MARKET["order_filled_ask"], NOW, expect=Order) == "signature"


def export_with(cert: bytes, meter: str = "m0002", key=M2) -> bytes:
    return Export(meter=meter, cert=cert, k=EXPORT_K, wh=700, total=12_345, t=NOW).sign(key)


def test_an_export_is_checked_like_a_birth():
    """cert: untrusted CA, outside its validity, or another meter's; signature: not its key."""
    assert reason(verifier().verify, export_with(devcert("m0002", ca=ROGUE_CA)), NOW) == "cert"
    assert (
        reason(verifier().verify, export_with(VALID["devcert_m0002"]), body_map(VALID["devcert_m0002"])["exp"] + 1)
        == "cert"
    )
    assert reason(verifier().verify, export_with(VALID["devcert_m0002"], meter="m0001"), NOW) == "cert"
    assert reason(verifier().verify, export_with(VALID["devcert_m0002"], key=M1), NOW) == "signature"
    assert reason(verifier().verify, export_with(b"not a devcert"), NOW) == "cert"


def test_a_reveal_is_checked_statelessly_without_its_inner_bid():
    """The inner bid is checked at the block time by the ledger (`reveal-mismatch`, §9.2):
    a reveal carrying garbage still passes §4, signed by its buyer."""
    raw = Reveal(buyer=pk(ALICE), seal=bytes(16), bid=b"garbage", nonce=NONCE, t=NOW).sign(ALICE)
    assert verifier().verify(raw, NOW, expect=Reveal).body.bid == b"garbage"


# -- derivations (wire.market) ---------------------------------------------------------------


def test_ids_and_commitment_are_the_documented_hashes():
    bid_hash, ask_hash = sha256(MARKET["bid_green"]).digest(), sha256(MARKET["ask_m0002"]).digest()
    assert order_id(bid_hash) == order_id_of(MARKET["bid_green"]) == bid_hash[:16]
    assert fill_id(bid_hash, ask_hash) == sha256(bid_hash + ask_hash).digest()[:16] != fill_id(ask_hash, bid_hash)
    assert commitment(MARKET["bid_sealed"], NONCE) == body_map(MARKET["seal"])["c"]
    assert commitment(MARKET["bid_open"], NONCE) != body_map(MARKET["seal"])["c"]


@pytest.mark.parametrize(
    "call",
    [
        lambda: order_id(bytes(16)),
        lambda: fill_id(bytes(32), bytes(16)),
        lambda: fill_id(bytes(31), bytes(32)),
        lambda: commitment(b"bid", bytes(16)),
    ],
)
def test_derivations_refuse_inputs_of_the_wrong_length(call):
    with pytest.raises(ValueError):
        call()


def test_a_fill_document_round_trips_and_is_no_message():
    """open_fill reads it back; as a signed message it is `type`: no topic carries one."""
    doc = fill_document(MARKET["bid_green"], MARKET["ask_m0002"])
    assert open_fill(doc.encode()) == doc
    assert "fill" not in BODY_TYPES
    assert reason(verifier().verify, sign_payload(doc.encode(), ALICE), NOW) == "type"


@pytest.mark.parametrize(
    "data, why",
    [
        (encode([1, 2]), "type"),
        (encode({"v": 1, "typ": "ctp"}), "type"),
        (encode({"v": 2, "typ": "fill"}), "type"),
        (b"\xff", "decode"),
    ],
)
def test_open_fill_refuses_what_is_not_a_fill_document(data, why):
    assert reason(open_fill, data) == why


def test_open_fill_checks_the_schema_and_the_canonical_form():
    m = fill_document(MARKET["bid_green"], MARKET["ask_m0002"]).to_map()
    assert reason(open_fill, encode({**m, "wh": 0})) == "schema"
    assert reason(open_fill, encode({k: v for k, v in m.items() if k != "meter"})) == "schema"
    assert reason(open_fill, cbor2.dumps(dict(sorted(m.items())))) == "noncanonical"


# -- topics ---------------------------------------------------------------------------------


@pytest.mark.parametrize("typ", ["ask", "bid", "seal", "reveal", "withdraw", "export"])
def test_each_market_transaction_has_its_tx_topic_carrying_its_typ(typ):
    topic = f"spb/v1/tx/{typ}"
    assert topics.TX_TYPES[topic] == typ and typ in BODY_TYPES
    assert topics.expected_type(topic) == typ
    assert topic_matches_sub(topics.TX_ALL, topic)


def test_tx_types_are_exactly_the_ledger_inputs():
    """Statuses, results and fill documents are outputs: never a transaction topic."""
    assert sorted(topics.TX_TYPES.values()) == sorted(
        [
            *("ctp", "erc", "cancel", "revoke", "ask", "bid", "seal", "reveal", "withdraw", "export"),
            *("register", "fund", "payout", "retire", "rotate"),
        ]
    )


def test_market_topics_are_the_spec_topics():
    oid = bytes.fromhex("00ff10ab" * 4)
    assert topics.market_order(5966668, oid) == "spb/v1/market/5966668/order/00ff10ab00ff10ab00ff10ab00ff10ab"
    assert topics.market_result(5966668) == "spb/v1/market/5966668/result"
    assert topic_matches_sub(topics.MARKET_ALL, topics.market_order(0, oid))
    assert topic_matches_sub(topics.MARKET_ALL, topics.market_result(0))
    assert not topic_matches_sub(topics.MARKET_ALL, topics.status(oid))


@pytest.mark.parametrize("order", [b"", bytes(15), bytes(17), bytes(32)])
def test_market_order_refuses_ids_that_are_not_16_bytes(order):
    with pytest.raises(ValueError):
        topics.market_order(1, order)


@pytest.mark.parametrize("k", [-1, True, "5", 5.0])
def test_market_topics_refuse_an_interval_that_is_not_a_uint(k):
    """-1 would publish under spb/v1/market/-1/, which expected_type gives no typ."""
    with pytest.raises(ValueError):
        topics.market_result(k)
    with pytest.raises(ValueError):
        topics.market_order(k, bytes(16))


def test_market_topics_expect_order_and_cleared():
    oid = order_id_of(MARKET["ask_m0002"])
    assert topics.expected_type(topics.market_order(5966668, oid)) == "order"
    assert topics.expected_type(topics.market_result(5966668)) == "cleared"


@pytest.mark.parametrize(
    "topic",
    [
        "spb/v1/market",
        "spb/v1/market/",
        "spb/v1/market/5",
        "spb/v1/market/x/result",
        "spb/v1/market/-1/result",
        "spb/v1/market/5/result/x",
        "spb/v1/market/5/book",
        "spb/v1/market/5/order",
        "spb/v1/market/5/order/00ff",
        "spb/v1/market/5/order/00FF10AB00FF10AB00FF10AB00FF10AB",
        "spb/v1/market/5/order/00ff10ab00ff10ab00ff10ab00ff10ab/x",
        "spb/v1/market/٣/result",
    ],
)
def test_other_topics_under_market_expect_no_typ(topic):
    """Only what a validator publishes there has a typ; a receiver ignores the rest."""
    assert topics.expected_type(topic) is None
