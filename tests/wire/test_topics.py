"""wire.topics spells exactly the topic tree of docs/PROTOCOL.md §7."""

from __future__ import annotations

import pytest
from paho.mqtt.client import topic_matches_sub

from tests.support.wire import TYP
from wire import topics

CTP_ID = bytes(range(16))
METER_LEAVES = ("state", "birth", "reading", "coe/req", "coe/resp")


@pytest.mark.parametrize("leaf", METER_LEAVES)
def test_meter_topics_are_the_spec_topics(leaf):
    """spb/v1/meters/{meter}/{leaf}, character for character."""
    assert topics.meter("m0001", leaf) == f"spb/v1/meters/m0001/{leaf}"


def test_fixed_topics_are_the_spec_topics():
    """The transaction, ledger and rejection topics of the §7 table, with decision 0006's
    extension: one ledger/state topic per validator, and the consensus branch."""
    assert (topics.TX_CTP, topics.TX_ERC, topics.TX_CANCEL) == ("spb/v1/tx/ctp", "spb/v1/tx/erc", "spb/v1/tx/cancel")
    assert topics.REJECTS == "spb/v1/rejects"
    assert topics.LEDGER_BLOCKS == "spb/v1/ledger/blocks"
    assert (topics.ledger_state(0), topics.ledger_state(3)) == ("spb/v1/ledger/state/v0", "spb/v1/ledger/state/v3")
    assert topics.LEDGER_STATE_ALL == "spb/v1/ledger/state/+"
    assert topics.CONSENSUS == "spb/v1/consensus"
    assert (topics.CONSENSUS_ALL, topics.consensus_to(2)) == ("spb/v1/consensus/all", "spb/v1/consensus/v2")
    assert (topics.ONLINE, topics.OFFLINE) == (b"online", b"offline")


def test_status_topic_is_the_ctp_id_as_32_lowercase_hex():
    """spb/v1/status/{ctp id as 32 hex chars}."""
    ctp_id = bytes.fromhex("00ff10ab" * 4)
    assert topics.status(ctp_id) == "spb/v1/status/00ff10ab00ff10ab00ff10ab00ff10ab"
    assert topics.status(CTP_ID) == "spb/v1/status/000102030405060708090a0b0c0d0e0f"


@pytest.mark.parametrize("ctp_id", [b"", bytes(15), bytes(17), bytes(32)])
def test_status_refuses_ids_that_are_not_16_bytes(ctp_id):
    """Only a 16-byte CTP id names a status topic."""
    with pytest.raises(ValueError):
        topics.status(ctp_id)


@pytest.mark.parametrize("meter_id", ["", "m/0001", "m0001/", "+", "m+", "#", "m0001#", "m\0"])
def test_meter_ids_that_are_not_one_topic_level_are_refused(meter_id):
    """An id with /, + or # (or empty, or NUL) would address or match other topics: ValueError."""
    with pytest.raises(ValueError):
        topics.meter(meter_id, "reading")


@pytest.mark.parametrize("leaf", METER_LEAVES)
def test_every_meter_filter_matches_each_meters_topic_and_no_other_leaf(leaf):
    """every_meter(leaf) is spb/v1/meters/+/leaf: all meters, only that leaf."""
    assert topics.every_meter(leaf) == f"spb/v1/meters/+/{leaf}"
    for other in METER_LEAVES:
        assert topic_matches_sub(topics.every_meter(leaf), topics.meter("m0042", other)) == (other == leaf)


def test_wildcard_filters_match_what_they_name():
    """METERS_ALL, STATUS_ALL, TX_ALL and LEDGER_STATE_ALL each cover their subtree and
    nothing outside it."""
    assert all(topic_matches_sub(topics.METERS_ALL, topics.meter("m0001", leaf)) for leaf in METER_LEAVES)
    assert topic_matches_sub(topics.STATUS_ALL, topics.status(CTP_ID))
    assert all(topic_matches_sub(topics.TX_ALL, t) for t in (topics.TX_CTP, topics.TX_ERC, topics.TX_CANCEL))
    assert all(topic_matches_sub(topics.LEDGER_STATE_ALL, topics.ledger_state(i)) for i in (0, 1, 99))
    filters = (topics.METERS_ALL, topics.STATUS_ALL, topics.TX_ALL, topics.LEDGER_STATE_ALL)
    for outside in (
        topics.REJECTS,
        topics.LEDGER_BLOCKS,
        topics.CONSENSUS,
        topics.CONSENSUS_ALL,
        topics.consensus_to(0),
    ):
        assert not any(topic_matches_sub(f, outside) for f in filters)
    assert not any(topic_matches_sub(f, topics.ledger_state(0)) for f in filters[:3])


@pytest.mark.parametrize(
    "topic, typ",
    [
        ("spb/v1/tx/ctp", "ctp"),
        ("spb/v1/tx/erc", "erc"),
        ("spb/v1/tx/cancel", "cancel"),
        ("spb/v1/status/000102030405060708090a0b0c0d0e0f", "status"),
        ("spb/v1/rejects", "reject"),
        ("spb/v1/meters/m0001/birth", "birth"),
        ("spb/v1/meters/m0001/reading", "reading"),
        ("spb/v1/meters/m0001/coe/req", "coereq"),
        ("spb/v1/meters/m0001/coe/resp", "coe"),
    ],
)
def test_expected_type_of_each_signed_topic(topic, typ):
    """The body typ a receiver must insist on for each topic carrying a signed body."""
    assert topics.expected_type(topic) == typ


@pytest.mark.parametrize(
    "topic",
    [
        "spb/v1/meters/m0001/state",
        "spb/v1/ledger/state",
        "spb/v1/ledger/state/v0",
        "spb/v1/ledger/blocks",
        "spb/v1/consensus",
        "spb/v1/consensus/all",
        "spb/v1/consensus/v1",
        "spb/v1/tx/other",
        "spb/v1/meters/m0001/coe",
        "spb/v2/tx/ctp",
        "other/spb/v1/tx/ctp",
        "",
    ],
)
def test_topics_without_a_signed_body_expect_none(topic):
    """Plain-text state, ledger topics and unknown topics expect no body typ."""
    assert topics.expected_type(topic) is None


def test_expected_types_are_the_typs_of_the_vectors():
    """Each topic's typ is the typ its vector message really carries (no misspelt typ)."""
    assert topics.expected_type(topics.TX_CTP) == TYP["ctp"]
    assert topics.expected_type(topics.TX_ERC) == TYP["erc"]
    assert topics.expected_type(topics.TX_CANCEL) == TYP["cancel"]
    assert topics.expected_type(topics.meter("m0001", "birth")) == TYP["birth"]
    assert topics.expected_type(topics.meter("m0001", "reading")) == TYP["reading"]
    assert topics.expected_type(topics.meter("m0001", "coe/req")) == TYP["coereq"]
    assert topics.expected_type(topics.meter("m0002", "coe/resp")) == TYP["coe"]


@pytest.mark.parametrize("leaf", METER_LEAVES)
@pytest.mark.parametrize("meter_id", ["m0001", "m9999", "x"])
def test_parse_meter_topic_round_trips(meter_id, leaf):
    """parse_meter_topic(meter(id, leaf)) gives back (id, leaf)."""
    assert topics.parse_meter_topic(topics.meter(meter_id, leaf)) == (meter_id, leaf)


@pytest.mark.parametrize(
    "topic",
    [
        "spb/v1/tx/ctp",
        "spb/v1/meters/",
        "spb/v1/meters/m0001",
        "spb/v1/meters/m0001/",
        "spb/v1/meters//birth",
        "spb/v2/meters/m0001/birth",
        "x/spb/v1/meters/m0001/birth",
    ],
)
def test_parse_meter_topic_refuses_other_topics(topic):
    """Topics outside spb/v1/meters/{meter}/{leaf} parse to None."""
    assert topics.parse_meter_topic(topic) is None
