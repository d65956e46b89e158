"""The `account` status (docs/PROTOCOL.md §9.6, decision 0010): its body, round trip, schema,
signer and topic. The valid message is tests/data/vectors-ext.json's `account_alice`."""

from __future__ import annotations

import pytest
from paho.mqtt.client import topic_matches_sub

from tests.data.make_vectors_ext import ALICE_UNITS, CLEAR_H, CLEAR_T, VALIDATOR, account_after_clearing
from tests.support.ext import EXT, EXT_VALID
from tests.support.wire import ALICE, CA, NOW, body_map, pk, reason, sign_map
from wire import topics
from wire.messages import BODY_TYPES, AccountStatus, open_message
from wire.verify import Verifier

RAW = EXT_VALID["account_alice"]


def verifier() -> Verifier:
    return Verifier([pk(CA)], validators=[pk(VALIDATOR)])


def test_the_vector_is_rebuilt_byte_for_byte_and_opens_as_its_fields():
    assert account_after_clearing() == RAW
    body = verifier().verify(RAW, NOW, expect=AccountStatus).body
    assert (body.account, body.balance, body.held, body.t, body.h) == (pk(ALICE), 93_500, 6_500, CLEAR_T, CLEAR_H)
    assert body.balance + body.held == ALICE_UNITS
    assert AccountStatus.from_map(body_map(RAW)).sign(VALIDATOR) == RAW


def test_the_held_units_are_the_fills_of_the_clearing_that_the_vector_follows():
    """Both fills at the clearing price: the green 400 Wh and the sealed bid's 100 Wh."""
    cleared = body_map(EXT_VALID["cleared"])
    (green_price, green_wh), (open_price, open_wh) = cleared["green"], cleared["open"]
    account = body_map(RAW)
    assert account["held"] == green_price * green_wh + open_price * open_wh
    assert (account["t"], account["h"]) == (cleared["t"], cleared["h"])
    assert "account_alice" in EXT["valid"]


def test_it_is_a_body_type_and_only_a_validator_signs_it():
    assert BODY_TYPES["account"] is AccountStatus
    forged = AccountStatus(account=pk(ALICE), balance=1, held=0, t=NOW, h=1).sign(ALICE)
    assert reason(verifier().verify, forged, NOW, expect="account") == "signature"
    assert reason(Verifier([pk(CA)]).verify, RAW, NOW, expect="account") == "signature"


@pytest.mark.parametrize(
    "change, why",
    [
        ({"balance": -1}, "schema"),
        ({"held": 1.5}, "schema"),
        ({"account": bytes(31)}, "schema"),
        ({"h": None}, "schema"),
        ({"note": "hi"}, "schema"),
        ({"typ": "status"}, "type"),
    ],
)
def test_a_body_outside_the_schema_is_rejected_with_its_reason(change, why):
    m = body_map(RAW) | change
    assert reason(verifier().verify, sign_map(m, VALIDATOR), NOW, expect="account") == why


@pytest.mark.parametrize("missing", ["account", "balance", "held", "t", "h"])
def test_every_key_is_required(missing):
    m = {k: v for k, v in body_map(RAW).items() if k != missing}
    assert reason(open_message, sign_map(m, VALIDATOR), "account") == "schema"


def test_the_encoder_refuses_what_every_receiver_would_reject():
    with pytest.raises(ValueError, match="balance"):
        AccountStatus(account=pk(ALICE), balance=-5, held=0, t=NOW, h=1).encode()


def test_the_topic_is_the_account_key_as_64_lowercase_hex():
    topic = topics.account(pk(ALICE))
    assert topic == f"spb/v1/account/{pk(ALICE).hex()}"
    assert topics.expected_type(topic) == "account"
    assert topic_matches_sub(topics.ACCOUNT_ALL, topic)
    with pytest.raises(ValueError):
        topics.account(bytes(16))


@pytest.mark.parametrize(
    "topic",
    [
        "spb/v1/account",
        "spb/v1/account/",
        f"spb/v1/account/{'AB' * 32}",
        f"spb/v1/account/{'ab' * 31}",
        f"spb/v1/account/{'ab' * 32}/x",
    ],
)
def test_other_topics_under_account_expect_no_typ(topic):
    assert topics.expected_type(topic) is None
