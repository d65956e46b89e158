"""The operator's key and transactions without a bus: provision's operator key in the genesis,
the registers of households that join a running community, the signed messages of
`spb-ledger fund|withdraw|retire` and their arguments (ledger.operator, ledger.operator_cli).
On the bus: tests/system/test_grow_community.py."""

from __future__ import annotations

import pytest
from nacl.signing import SigningKey

from broker.keys import load_key, public_hex
from deploy.access import mark_applied, registrations
from deploy.bus import OPERATOR
from deploy.cli import main as deploy_main
from deploy.provision import community_genesis, provision
from ledger import operator
from ledger.cli import main as ledger_main
from ledger.genesis import Genesis, MarketTerms, read_genesis, write_genesis
from wire import topics
from wire.messages import Fund, Payout, Register, Retire, Rotate, open_message

NOW = 1_750_000_000_000


@pytest.fixture
def running(tmp_path):
    """A community of three households with its genesis (the chain is running, as far as files go)."""
    community = provision(tmp_path, meters=3, accounts=None, validators=1, now_ms=NOW, sources={"m0001": "solar"})
    write_genesis(tmp_path, community_genesis(community, 100, block_ms=200))
    return tmp_path


def test_provision_makes_an_operator_key_and_a_new_genesis_lists_it(running):
    assert operator.operator_key_path(running).parent == running / OPERATOR  # beside its TLS identity
    key = load_key(operator.operator_key_path(running))
    assert read_genesis(running).operators == (bytes(key.verify_key),)
    assert f'[operator]\npk = "{public_hex(key)}"' in (running / "community.toml").read_text()
    again = provision(running, meters=3, accounts=None, validators=1, now_ms=NOW + 1)
    assert again.operator_pk == public_hex(key)  # never replaced


def test_growing_keeps_the_genesis_and_registers_only_the_new_households(running, capsys):
    genesis = read_genesis(running)
    assert deploy_main(["provision", str(running), "--meters", "5", "--source", "m0005=wind"]) == 0
    out = capsys.readouterr().out
    assert "(kept: a chain's genesis never changes)" in out
    assert "register   a0004 a0005: not on the ledger yet; run again with --broker URL" in out
    assert read_genesis(running) == genesis
    community = provision(running, meters=5, accounts=None, validators=1, now_ms=NOW)
    pending = registrations(running, community, genesis, NOW + 5)
    assert [name for name, _ in pending] == ["a0004", "a0005"]
    op = bytes(load_key(operator.operator_key_path(running)).verify_key)
    for (_, expect), meter, source in zip(pending, ("m0004", "m0005"), ("", "wind"), strict=True):
        body = genesis.verifier().verify(expect.message, NOW, expect=Register).body
        account = operator.resolve_account(running, meter)
        assert (body.op, body.account, expect.appears, expect.topic) == (op, account, account, topics.TX_REGISTER)
        [[cert, sold]] = body.meters
        assert cert == (running / "meters" / meter / "devcert.cbor").read_bytes() and sold == source
    # Every run sends the very same bytes until the ledger applied them; then none.
    assert [e.message for _, e in registrations(running, community, genesis, NOW + 9)] == [
        e.message for _, e in pending
    ]
    mark_applied(running, "a0004")
    assert [name for name, _ in registrations(running, community, genesis, NOW + 9)] == ["a0005"]


def test_a_loose_account_is_registered_without_meters_and_an_adopted_one_gains_its_meter(tmp_path):
    community = provision(tmp_path, meters=1, accounts=2, validators=1, now_ms=NOW)  # a0002 has no meter
    genesis = community_genesis(community, 100, block_ms=200)
    assert registrations(tmp_path, community, genesis, NOW) == []  # all in the genesis
    grown = provision(tmp_path, meters=3, accounts=3, validators=1, now_ms=NOW)  # m0002 adopts a0002
    pending = dict(registrations(tmp_path, grown, genesis, NOW))
    assert sorted(pending) == ["a0002", "a0003"]
    # a0002 exists on the ledger already: gaining a meter moves no money, a sealed block shows it
    assert pending["a0002"].decided and pending["a0002"].appears is None
    assert pending["a0003"].appears == operator.resolve_account(tmp_path, "a0003")


def test_operator_messages_are_signed_by_the_operator_and_say_how_they_show():
    key = SigningKey(b"o" * 32)
    genesis_verifier = Genesis.build(
        [b"c" * 32], {b"a" * 32: 1}, [b"v" * 32], 200, MarketTerms(()), operators=[bytes(key.verify_key)]
    ).verifier()
    account = b"a" * 32
    fund = operator.fund(key, account, 500, "bank-1", NOW)
    body = genesis_verifier.verify(fund.message, NOW, expect=Fund).body
    assert (body.amount, body.ref, body.account, fund.moves, fund.topic) == (
        500,
        "bank-1",
        account,
        account,
        topics.TX_FUND,
    )
    payout = operator.payout(key, account, 7, "pay-1", NOW)
    assert genesis_verifier.verify(payout.message, NOW, expect=Payout).body.amount == 7
    assert payout.topic == topics.TX_PAYOUT and payout.moves == account
    retire = operator.retire(key, account, NOW)
    assert genesis_verifier.verify(retire.message, NOW, expect=Retire).body.account == account
    assert retire.decided and retire.t == NOW and not retire.duplicate_is_applied
    assert open_message(fund.message, Fund).hash == fund.hash
    new = b"n" * 32
    rotate = operator.rotate(key, account, new, NOW)
    body = genesis_verifier.verify(rotate.message, NOW, expect=Rotate).body
    assert (body.account, body.new, body.by) == (account, new, bytes(key.verify_key))
    assert rotate.appears == new and rotate.duplicate_is_applied and rotate.topic == topics.TX_ROTATE


def test_accounts_are_named_by_meter_account_id_or_key(running):
    m2 = operator.resolve_account(running, "m0002")
    assert operator.resolve_account(running, "0002") == m2 == operator.resolve_account(running, "a0002")
    assert operator.resolve_account(running, m2.hex()) == m2
    for bad in ("0042", "x", "ab" * 31 + "zz"):
        with pytest.raises(ValueError):
            operator.resolve_account(running, bad)


@pytest.mark.parametrize(
    "args",
    [
        ["fund", "DIR", "0001", "0", "--ref", "r", "--broker", "127.0.0.1:1"],
        ["fund", "DIR", "0001", "-5", "--ref", "r", "--broker", "127.0.0.1:1"],
        ["fund", "DIR", "0001", str(1 << 63), "--ref", "r", "--broker", "127.0.0.1:1"],
        ["fund", "DIR", "0001", "5", "--ref", "x" * 65, "--broker", "127.0.0.1:1"],
        ["fund", "DIR", "0001", "5", "--broker", "127.0.0.1:1"],  # no --ref
        ["withdraw", "DIR", "0001", "5", "--ref", "r"],  # no --broker
        ["retire", "DIR", "0001", "5", "--broker", "127.0.0.1:1"],  # retire takes no amount
        ["rotate", "DIR", "0001", "ab" * 31, "--broker", "127.0.0.1:1"],  # a key is 32 bytes
        ["fund", "DIR", "0001", "5", "--ref", "r", "--broker", "127.0.0.1:1", "--timeout", "0"],
    ],
)
def test_bad_arguments_exit_2(running, capsys, args):
    with pytest.raises(SystemExit) as exc:
        ledger_main([str(running) if a == "DIR" else a for a in args])
    assert exc.value.code == 2 and "error:" in capsys.readouterr().err


def test_an_unknown_account_exits_2_and_a_key_the_genesis_does_not_list_exits_1(running, capsys):
    assert ledger_main(["fund", str(running), "0042", "5", "--ref", "r", "--broker", "127.0.0.1:1"]) == 2
    assert "'0042' is no household meter" in capsys.readouterr().err
    path = operator.operator_key_path(running)
    path.unlink()
    path.write_text("11" * 32 + "\n")  # another operator than the genesis lists
    assert ledger_main(["retire", str(running), "0001", "--broker", "127.0.0.1:1"]) == 1
    assert "is not an operator of" in capsys.readouterr().err
