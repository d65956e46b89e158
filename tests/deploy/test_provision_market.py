"""spb-deploy provision and the market: sources and interval recorded, kept, checked, and in the genesis."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from deploy.cli import main
from deploy.provision import ProvisionError, community_genesis, provision
from ledger.genesis import Genesis, MarketTerms, MeterEntry, read_genesis, write_genesis

NOW = 1_750_000_000_000


def _toml(path: Path) -> dict:
    return tomllib.loads(path.read_text())


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _provision(root: Path, **kwargs):
    kwargs = {"meters": 3, "accounts": None, "validators": 1, "now_ms": NOW, **kwargs}
    return provision(root, **kwargs)


def test_the_genesis_lists_every_household_meter_with_its_account_and_source(tmp_path):
    """Meters without an account cannot be paid, so they are not in the market."""
    community = _provision(tmp_path, meters=2, sources={"m0001": "solar", "m0002": "grid"}, interval_s=10)
    community = _provision(tmp_path, meters=4, accounts=2)  # m0003 and m0004 without an account; sources kept
    raw = community_genesis(community, 500, block_ms=200).encode()
    genesis = Genesis.decode(raw)  # the deterministic encoding round-trips
    account = {m.id: bytes.fromhex(m.account_pk) for m in community.meters if m.account_pk}
    assert set(account) == {"m0001", "m0002"} and len(community.meters) == 4
    assert genesis.market == MarketTerms(
        (MeterEntry("m0001", account["m0001"], "solar"), MeterEntry("m0002", account["m0002"], "grid")),
        interval_s=10,
        reveal_s=5,
    )


def test_an_account_without_a_meter_is_in_the_genesis_but_not_in_the_market(tmp_path):
    community = _provision(tmp_path, meters=2, accounts=3)
    genesis = community_genesis(community, 500, block_ms=200)
    assert len(genesis.accounts) == 3 and genesis.total == 1_500
    assert genesis.market is not None and [m.meter for m in genesis.market.meters] == ["m0001", "m0002"]


def test_sources_and_terms_are_recorded_in_community_toml_and_each_meter_toml(tmp_path):
    community = _provision(tmp_path, sources={"m0002": "wind"}, interval_s=60, reveal_s=20)
    doc = _toml(community.toml_path)
    assert doc["market"] == {"interval_s": 60, "reveal_s": 20}
    assert [m.get("source") for m in doc["meters"]] == [None, "wind", None]
    for meter, source in (("m0001", {}), ("m0002", {"source": "wind"})):
        config = _toml(tmp_path / "meters" / meter / "meter.toml")
        assert config["market"] == {"interval_s": 60, "reveal_s": 20, "grace": 1, **source}


def test_a_rerun_keeps_what_it_is_not_told_and_changes_what_it_is(tmp_path):
    _provision(tmp_path, sources={"m0001": "solar", "m0002": "wind"}, interval_s=60, reveal_s=20)
    before = _files(tmp_path)
    again = _provision(tmp_path)
    assert _files(tmp_path) == before  # byte for byte: the recorded choices were kept
    assert [m.source for m in again.meters] == ["solar", "wind", None]
    changed = _provision(tmp_path, sources={"m0001": "", "m0003": "hydro"}, interval_s=30)
    assert [m.source for m in changed.meters] == [None, "wind", "hydro"]
    # A new interval without a reveal window gets the default for it, not the old window.
    assert (changed.market.interval_s, changed.market.reveal_s) == (30, 15)
    assert _provision(tmp_path, reveal_s=29).market.reveal_s == 29
    assert _provision(tmp_path).market.reveal_s == 29


def test_a_community_without_choices_gets_the_defaults(tmp_path):
    community = _provision(tmp_path)
    assert community_genesis(community, 1, 200).market == MarketTerms(
        tuple(MeterEntry(m.id, bytes.fromhex(m.account_pk), "") for m in community.meters if m.account_pk)
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "why"),
    [
        ({"sources": {"m0003": "solar"}, "accounts": 2}, ProvisionError, "m0003 cannot be given a source: it has no"),
        ({"sources": {"m0009": "solar"}}, ProvisionError, "m0009 cannot be given a source: no such meter"),
        ({"sources": {"m0001": "sun"}}, ValueError, "a source is one of solar"),
        ({"interval_s": 0}, ValueError, "interval_s must be in 1..86400"),
        ({"interval_s": 10, "reveal_s": 10}, ValueError, "reveal_s is shorter"),
    ],
)
def test_bad_choices_are_refused_before_a_key_is_written(tmp_path, kwargs, error, why):
    with pytest.raises(error, match=why):
        _provision(tmp_path / "c", **kwargs)
    assert _files(tmp_path / "c") == {}


def test_choices_that_contradict_the_chains_genesis_are_refused(tmp_path):
    """A meter told to sell wind by a genesis that registers it without a source would have
    every ask refused: the genesis in DIR wins, and nothing is rewritten."""
    community = _provision(tmp_path, sources={"m0001": "solar"}, interval_s=10)
    write_genesis(tmp_path, community_genesis(community, 100, 200))
    before = _files(tmp_path)
    for kwargs, why in (
        ({"sources": {"m0002": "wind"}}, "registers m0002 with source none"),
        ({"sources": {"m0001": ""}}, "registers m0001 with source solar"),
        ({"interval_s": 20}, "fixes interval_s 10 and reveal_s 5"),
        ({"reveal_s": 4}, "fixes interval_s 10 and reveal_s 5"),
    ):
        with pytest.raises(ProvisionError, match=why):
            _provision(tmp_path, **kwargs)
        assert _files(tmp_path) == before
    _provision(tmp_path, sources={"m0001": "solar"}, interval_s=10)  # the same choices again: fine


def test_an_unreadable_record_is_refused(tmp_path):
    _provision(tmp_path)
    (tmp_path / "community.toml").write_text("[market]\ninterval_s = 'ten'\nreveal_s = 5\n")
    with pytest.raises(ProvisionError, match="cannot read the recorded market"):
        _provision(tmp_path)


def test_cli_records_sources_and_writes_them_into_the_genesis(tmp_path, capsys):
    args = ["provision", str(tmp_path), "--meters", "2", "--genesis-units", "100"]
    assert main([*args, "--source", "m0001=solar", "--interval-s", "10"]) == 0
    out = capsys.readouterr().out
    assert "market     interval 10 s, reveal 5 s" in out and "sellers    m0001 solar" in out
    market = read_genesis(tmp_path).market
    assert market is not None and (market.interval_s, market.reveal_s) == (10, 5)
    assert [(m.meter, m.source) for m in market.meters] == [("m0001", "solar"), ("m0002", "")]
    assert main(args) == 0  # recorded: the same genesis
    assert "(unchanged)" in capsys.readouterr().out
    assert main([*args, "--source", "m0002=none"]) == 0  # none is none
    assert main([*args, "--source", "m0001=none"]) == 1
    assert "registers m0001 with source solar" in capsys.readouterr().err


@pytest.mark.parametrize(
    "bad", [["--source", "m0001=sun"], ["--source", "m0001"], ["--source", "x1=solar"], ["--interval-s", "0"]]
)
def test_cli_bad_market_args_exit_2(tmp_path, capsys, bad):
    with pytest.raises(SystemExit) as exc:
        main(["provision", str(tmp_path / "c"), "--meters", "1", *bad])
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
