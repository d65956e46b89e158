"""`spb-meter`: bad arguments and state dirs are refused with one line; ctp, erc and status on a state dir."""

from __future__ import annotations

from contextlib import closing

import pytest

from broker.clock import wall_ms
from deploy.provision import provision
from edge.cli import main
from edge.state_dir import MeterIdentity
from edge.store import MeterStore
from tests.support.meter import add_witnessed_batch
from wire.messages import open_message


@pytest.mark.parametrize(
    "extra",
    [
        ["--reading-s", "0"],
        ["--reading-s", "-1"],
        ["--reading-s", "nan"],
        ["--fake-w", "1.5"],
        ["--fake-w", "200000000"],
        ["--broker", "nohost"],
    ],
)
def test_bad_arguments_exit_2(tmp_path, extra):
    args = ["run", "--state-dir", str(tmp_path), "--broker", "127.0.0.1:1883", "--fake-w", "100", *extra]
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2


def test_a_dir_that_is_no_meter_state_dir_is_one_line_and_exit_1(tmp_path, capsys):
    assert main(["run", "--state-dir", str(tmp_path / "missing"), "--broker", "127.0.0.1:1883", "--fake-w", "100"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("spb-meter: ") and err.count("\n") == 1


# ---- spb-meter ctp | erc | status on a state dir -------------------------------------------


def _community_with_a_coe(tmp_path):
    """A provisioned community where m0001 has a key batch whose CoE m0002 signed, as the
    running meter would have fetched it; (m0001's dir, m0002's account key hex)."""
    now = wall_ms()
    community = provision(tmp_path / "c", meters=2, accounts=None, validators=1, now_ms=now)
    m1, m2 = (MeterIdentity.load(community.root / "meters" / m) for m in ("m0001", "m0002"))
    with closing(MeterStore(m1.root / "meter.db")) as store:
        add_witnessed_batch(store, m1, m2, now)
    return m1.root, community.meters[1].account_pk


def test_ctp_without_a_coe_says_why_and_exits_1(tmp_path, capsys):
    """A meter that never got a CoE cannot name a root its ERC will be under: one line, exit 1."""
    community = provision(tmp_path / "c", meters=2, accounts=None, validators=1, now_ms=wall_ms())
    assert main(["ctp", str(community.root / "meters" / "m0001"), community.meters[1].account_pk, "30", "10"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("spb-meter: no key batch has a CoE yet") and err.count("\n") == 1


def test_ctp_then_erc_once_then_status(tmp_path, capsys):
    """ctp prints the new CTP id and queues it; erc refuses fewer Wh than promised (the ledger
    would refuse that ERC and the trade's one key would be spent), then signs its ERC once (a
    second is refused: the one-time key signs nothing else); status lists the trade, keys and outbox."""
    state_dir, payee = _community_with_a_coe(tmp_path)
    assert main(["ctp", str(state_dir), payee, "30", "10", "--expiry", "60"]) == 0
    ctp_id = capsys.readouterr().out.strip()
    assert len(bytes.fromhex(ctp_id)) == 16

    assert main(["erc", str(state_dir), ctp_id, "9"]) == 1  # short of the promise: the key would be wasted
    assert "less than the 10 Wh promised" in capsys.readouterr().err
    assert main(["erc", str(state_dir), ctp_id, "12"]) == 0
    assert "key #0 of batch #1" in capsys.readouterr().out
    assert main(["erc", str(state_dir), ctp_id, "12"]) == 1
    assert "signed already" in capsys.readouterr().err

    store = MeterStore(state_dir / "meter.db")
    try:
        queued = [(row.topic, open_message(row.payload).body) for row in store.outbox_after(0, 10)]
    finally:
        store.close()
    assert [topic for topic, _ in queued] == ["spb/v1/tx/ctp", "spb/v1/tx/erc"]
    ctp, erc = queued[0][1], queued[1][1]
    assert (ctp.id.hex(), ctp.amount, ctp.wh, ctp.payee.hex()) == (ctp_id, 30, 10, payee)
    assert (erc.ctp.hex(), erc.wh, erc.idx) == (ctp_id, 12, 0)

    assert main(["status", str(state_dir)]) == 0
    out = capsys.readouterr().out
    assert f"trade    {ctp_id}  sent  0/10 Wh" in out and "ERC sent" in out
    assert "batch #1: 3 of 4 one-time keys free" in out
    assert "outbox   2 message(s) waiting" in out


@pytest.mark.parametrize(
    "args",
    [
        ["ctp", "X", "zz", "30", "10"],
        ["ctp", "X", "00" * 32, "1.5", "10"],
        ["ctp", "X", "00" * 32, "30", "-1"],
        ["erc", "X", "00" * 15, "10"],
    ],
)
def test_trade_commands_refuse_malformed_arguments_with_exit_2(args):
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2


def test_erc_force_signs_what_the_ledger_will_refuse(tmp_path, capsys):
    """--force is the household's way to confirm less than promised anyway, knowingly."""
    state_dir, payee = _community_with_a_coe(tmp_path)
    assert main(["ctp", str(state_dir), payee, "30", "10"]) == 0
    ctp_id = capsys.readouterr().out.strip()
    assert main(["erc", str(state_dir), ctp_id, "3", "--force"]) == 0
    store = MeterStore(state_dir / "meter.db")
    try:
        assert open_message(store.trades()[0].erc, "erc").body.wh == 3
    finally:
        store.close()
