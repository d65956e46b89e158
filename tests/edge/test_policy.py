"""The trading policy in config.toml [policy]: checked like the rest, changed by `spb-meter policy`
atomically and all-or-nothing, the rest of config.toml kept byte for byte."""

from __future__ import annotations

import pytest

from edge import policy
from edge.cli import main
from edge.config import MeterConfig
from edge.policy import Policy

INSTALLER = '# calibrated by the installer\nimport_full_w = 4000  # pot 1\n\n[policy]\nmode = "manual"\n\n'


@pytest.fixture
def meter_dir(tmp_path):
    (tmp_path / "meter.toml").write_text('[market]\ninterval_s = 60\nsource = "solar"\n')
    (tmp_path / "config.toml").write_text(INSTALLER)
    return tmp_path


def test_the_default_is_manual_todays_behaviour(tmp_path):
    assert policy.load(tmp_path / "config.toml") == Policy() and Policy().mode == "manual"


@pytest.mark.parametrize(
    ("table", "reason"),
    [
        ('mode = "robot"', "mode must be one of manual, auto, not 'robot'"),
        ("sell_min_price = -1", "sell_min_price must be a whole number in 0..2^63-1, not -1"),
        ("buy_max_price = 1.5", "buy_max_price must be a whole number in 0..2^63-1, not 1.5"),
        ("reserve_w = true", "reserve_w must be a whole number in 0..2^63-1, not True"),
        ('green_only = "yes"', "green_only must be true or false, not 'yes'"),
        ("sealed = 1", "sealed must be true or false, not 1"),
        ("max_spend = 3", "unknown policy setting(s) max_spend"),
    ],
)
def test_a_bad_policy_is_refused_with_its_reason_by_the_meter_too(tmp_path, table, reason):
    (tmp_path / "config.toml").write_text(f"[policy]\n{table}\n")
    with pytest.raises(ValueError, match="policy") as refused:
        policy.load(tmp_path / "config.toml")
    assert reason in str(refused.value)
    with pytest.raises(ValueError) as at_start:
        MeterConfig.load(tmp_path)
    assert reason in str(at_start.value)


def test_the_meter_config_reads_beside_a_policy(meter_dir):
    config = MeterConfig.load(meter_dir)
    assert (config.import_full_w, config.interval_s, config.source) == (4000, 60, "solar")


def test_policy_shows_the_defaults(meter_dir, capsys):
    assert main(["policy", str(meter_dir)]) == 0
    assert capsys.readouterr().out == Policy().render()
    assert (meter_dir / "config.toml").read_text() == INSTALLER  # showing writes nothing


def test_policy_set_changes_only_the_table_and_keeps_the_rest(meter_dir, capsys):
    args = ["--set", "mode=auto", "--set", "buy_max_price=30", "--set", "green_only=true", "--set", "reserve_w=200"]
    assert main(["policy", str(meter_dir), *args]) == 0
    expected = Policy(mode="auto", buy_max_price=30, green_only=True, reserve_w=200)
    assert capsys.readouterr().out == expected.render()
    assert policy.load(meter_dir / "config.toml") == expected
    text = (meter_dir / "config.toml").read_text()
    assert text.startswith("# calibrated by the installer\nimport_full_w = 4000  # pot 1\n\n[policy]\n")
    assert MeterConfig.load(meter_dir).import_full_w == 4000
    assert not list(meter_dir.glob(".*.tmp"))


def test_policy_set_appends_the_table_to_a_config_without_one(tmp_path, capsys):
    (tmp_path / "meter.toml").write_text("")
    (tmp_path / "config.toml").write_text('display = "terminal"\n[other]\n')  # a table after: refused by the
    assert main(["policy", str(tmp_path), "--set", "sealed=true"]) == 0  # meter, but kept here as it was
    text = (tmp_path / "config.toml").read_text()
    assert text.startswith('display = "terminal"\n[other]\n\n[policy]\n')
    assert policy.load(tmp_path / "config.toml") == Policy(sealed=True)
    (tmp_path / "config.toml").unlink()
    assert main(["policy", str(tmp_path), "--set", "max_spend_per_day=500"]) == 0
    assert policy.load(tmp_path / "config.toml") == Policy(max_spend_per_day=500)


@pytest.mark.parametrize(
    ("assignment", "reason"),
    [
        ("mode=sometimes", "mode must be one of manual, auto, not 'sometimes'"),
        ("buy_max_price=-3", "buy_max_price must be a whole number in 0..2^63-1, not '-3'"),
        ("buy_max_price=2.5", "buy_max_price must be a whole number in 0..2^63-1, not '2.5'"),
        ("reserve_w=9223372036854775808", "reserve_w must be a whole number in 0..2^63-1, not 9223372036854775808"),
        ("sell_min_price=", "sell_min_price must be a whole number in 0..2^63-1, not ''"),
        ("green_only=yes", "green_only must be true or false, not 'yes'"),
        ("colour=red", "--set 'colour=red': expected KEY=VALUE with KEY one of mode,"),
        ("mode", "--set 'mode': expected KEY=VALUE"),
    ],
)
def test_policy_set_refuses_a_bad_value_precisely_and_changes_nothing(meter_dir, capsys, assignment, reason):
    assert main(["policy", str(meter_dir), "--set", "mode=auto", "--set", assignment]) == 1
    err = capsys.readouterr().err
    assert err.startswith("spb-meter: ") and reason in err and err.count("\n") == 1
    assert (meter_dir / "config.toml").read_text() == INSTALLER


def test_policy_refuses_a_dir_that_is_no_meter_state_dir(tmp_path, capsys):
    assert main(["policy", str(tmp_path), "--set", "mode=auto"]) == 1
    assert "not a meter state dir" in capsys.readouterr().err
    assert not (tmp_path / "config.toml").exists()


def test_a_policy_written_inline_is_not_rewritten(meter_dir, capsys):
    (meter_dir / "config.toml").write_text('policy = { mode = "auto" }\n')
    assert main(["policy", str(meter_dir), "--set", "sealed=true"]) == 1
    assert "edit it by hand" in capsys.readouterr().err
    assert (meter_dir / "config.toml").read_text() == 'policy = { mode = "auto" }\n'
