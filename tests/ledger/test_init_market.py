"""spb-ledger init --market/--meter/--interval-s: a genesis with the market section (docs/PROTOCOL.md §9.1)."""

from __future__ import annotations

import pytest

from ledger.cli import main
from ledger.genesis import Genesis, MarketTerms, MeterEntry, read_genesis

CA = "11" * 32
ALICE, BOB = "aa" * 32, "bb" * 32


def init(tmp_path, *extra: str) -> int:
    return main(["init", str(tmp_path), "--ca", CA, "--account", f"{ALICE}=700", "--account", f"{BOB}=300", *extra])


def test_meters_with_sources_reach_the_genesis_sorted_by_id(tmp_path, capsys):
    assert init(tmp_path, "--meter", f"m0002={BOB}", "--meter", f"m0001={ALICE}:solar", "--interval-s", "10") == 0
    assert "market     interval 10 s, reveal 5 s, 2 meter(s)" in capsys.readouterr().out
    genesis = read_genesis(tmp_path)
    assert genesis.market == MarketTerms(
        (MeterEntry("m0001", bytes.fromhex(ALICE), "solar"), MeterEntry("m0002", bytes.fromhex(BOB), "")),
        interval_s=10,
        reveal_s=5,
    )
    assert Genesis.decode((tmp_path / "genesis.cbor").read_bytes()) == genesis


def test_market_alone_takes_the_defaults(tmp_path):
    assert init(tmp_path, "--market") == 0
    assert read_genesis(tmp_path).market == MarketTerms()


def test_without_market_options_the_chain_is_v1(tmp_path):
    assert init(tmp_path) == 0
    assert read_genesis(tmp_path).market is None


@pytest.mark.parametrize(
    "extra",
    [
        ["--meter", f"m0001={ALICE}:sun"],
        ["--meter", f"m0001{ALICE}"],
        ["--meter", "m0001=aa:solar"],
        ["--meter", f"m/1={ALICE}"],
        ["--interval-s", "ten"],
    ],
)
def test_malformed_market_options_exit_2(tmp_path, capsys, extra):
    with pytest.raises(SystemExit) as exit_info:
        init(tmp_path, *extra)
    assert exit_info.value.code == 2
    assert not (tmp_path / "genesis.cbor").exists()


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        (["--meter", f"m0001={'cc' * 32}"], "not in the genesis"),
        (["--meter", f"m0001={ALICE}", "--meter", f"m0001={BOB}"], "unique"),
        (["--interval-s", "10", "--reveal-s", "10"], "shorter"),
        (["--interval-s", "0"], "at least 1"),
    ],
)
def test_market_the_genesis_cannot_take_is_one_line_and_exit_1(tmp_path, capsys, extra, why):
    assert init(tmp_path, *extra) == 1
    err = capsys.readouterr().err
    assert err.startswith("spb-ledger: ") and why in err and err.count("\n") == 1
    assert not (tmp_path / "genesis.cbor").exists()
