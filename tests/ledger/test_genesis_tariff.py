"""The genesis market's optional flat tariff (docs/PROTOCOL.md §9.1): informational, absent when 0."""

from __future__ import annotations

import dataclasses

import pytest

from ledger.genesis import Genesis, GenesisError, MarketTerms

KEY = bytes(range(32))


def _genesis(market: MarketTerms) -> Genesis:
    return Genesis.build([KEY], {KEY: 10}, [KEY], market=market)


def test_no_tariff_is_absent_from_the_encoding_so_older_hashes_stay():
    plain = _genesis(MarketTerms(interval_s=10, reveal_s=5))
    assert "tariff" not in plain.market.to_map()
    assert b"tariff" not in plain.encode()
    assert Genesis.decode(plain.encode()) == plain


def test_a_tariff_round_trips_and_changes_the_hash():
    plain = _genesis(MarketTerms(interval_s=10, reveal_s=5))
    priced = _genesis(dataclasses.replace(plain.market, tariff=7))
    assert Genesis.decode(priced.encode()).market.tariff == 7
    assert priced.hash != plain.hash


@pytest.mark.parametrize("tariff", [0, -1, "7", True])
def test_a_present_tariff_must_be_a_positive_integer(tariff):
    m = MarketTerms(interval_s=10, reveal_s=5).to_map() | {"tariff": tariff}
    with pytest.raises(GenesisError, match="tariff"):
        MarketTerms.from_map(m)


def test_an_unknown_market_key_is_still_refused():
    m = MarketTerms(interval_s=10, reveal_s=5).to_map() | {"tarif": 7}
    with pytest.raises(GenesisError, match="optionally tariff"):
        MarketTerms.from_map(m)
