"""`spb-ledger` init, balance, show, audit, proof and check-proof, and `spb-deploy provision
--genesis-units`, on real files."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest

from broker.keys import public_hex
from deploy.cli import main as deploy_main
from ledger.cli import main
from ledger.genesis import read_genesis
from ledger.store import LedgerStore, StoreError
from ledger.workload import SimCommunity
from tests.support.bus import REPO, child_env
from tests.support.ledger import NOW, Chain
from wire.cose import encode, load
from wire.messages import open_message

CA = "11" * 32


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_init_writes_genesis_and_private_validator_keys(tmp_path, capsys):
    alice, bob = "aa" * 32, "bb" * 32
    code, out, _ = run(
        capsys,
        "init",
        tmp_path,
        "--ca",
        CA,
        "--account",
        f"{alice}=700",
        "--account",
        f"{bob}=300",
        "--validators",
        "1",
        "--block-ms",
        "100",
    )
    assert code == 0 and "(written)" in out
    genesis = read_genesis(tmp_path)
    assert genesis.cas == (bytes.fromhex(CA),) and genesis.block_ms == 100
    assert dict(genesis.accounts) == {bytes.fromhex(alice): 700, bytes.fromhex(bob): 300}
    key_file = tmp_path / "validators" / "v0" / "validator.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "validators" / "v0").stat().st_mode & 0o777 == 0o700
    assert f"validator  0 {genesis.validators[0].hex()}" in out
    # The same init again changes nothing; a different one is refused, the genesis kept.
    assert (
        run(
            capsys,
            "init",
            tmp_path,
            "--ca",
            CA,
            "--account",
            f"{alice}=700",
            "--account",
            f"{bob}=300",
            "--block-ms",
            "100",
        )[1].count("(unchanged)")
        == 1
    )
    code, _, err = run(capsys, "init", tmp_path, "--ca", CA, "--account", f"{alice}=701")
    assert code == 1 and "different genesis" in err
    assert read_genesis(tmp_path) == genesis


@pytest.mark.parametrize("bad", ["aa=1", f"{'aa' * 32}", f"{'aa' * 32}=-1", f"{'aa' * 32}=1.5", f"{'aa' * 32}={2**63}"])
def test_init_refuses_malformed_accounts(tmp_path, capsys, bad):
    with pytest.raises(SystemExit) as exit_info:
        main(["init", str(tmp_path), "--ca", CA, "--account", bad])
    assert exit_info.value.code == 2
    assert not (tmp_path / "genesis.cbor").exists()


def test_provision_writes_the_genesis_of_the_community(tmp_path, capsys):
    assert (
        deploy_main(
            [
                "provision",
                str(tmp_path),
                "--meters",
                "2",
                "--accounts",
                "3",
                "--genesis-units",
                "250",
                "--block-ms",
                "80",
            ]
        )
        == 0
    )
    community = (tmp_path / "community.toml").read_text()
    genesis = read_genesis(tmp_path)
    assert genesis.total == 750 and genesis.block_ms == 80
    assert all(pk.hex() in community for pk, _ in genesis.accounts)
    assert genesis.validators[0].hex() in community and genesis.cas[0].hex() in community
    # Growing the community would change the genesis of a running chain: refused.
    assert deploy_main(["provision", str(tmp_path), "--meters", "3", "--accounts", "4", "--genesis-units", "250"]) == 1
    assert "different genesis" in capsys.readouterr().err
    assert read_genesis(tmp_path) == genesis


@pytest.fixture
def chain(tmp_path):
    """Block 1: two CTPs held; block 2: one settles; block 3: the other is refunded at expiry."""
    community = SimCommunity(3, NOW)
    chain = Chain(tmp_path / "ledger", community, balance=1_000)
    first = community.ctp(0, 1, amount=120, wh=4, exp=NOW + 1_000)
    second = community.ctp(0, 2, amount=30, wh=2, exp=NOW + 1_000)
    assert chain.block(NOW, ("ctp", first), ("ctp", second)) == [None, None]
    assert chain.block(NOW + 10, ("erc", community.erc(first))) == [None]
    assert chain.block(NOW + 2_000) == []
    chain.store.close()
    chain.first, chain.second, chain.community = first, second, community
    return chain


def ctp_id(raw: bytes) -> str:
    return open_message(raw, "ctp").body.id.hex()


def test_balance_and_show(chain, capsys):
    root, households = chain.identity.root, chain.community.households
    assert run(capsys, "balance", root, public_hex(households[0].account))[1] == "balance 880 held 0\n"
    assert run(capsys, "balance", root, public_hex(households[1].account))[1] == "balance 1120 held 0\n"
    code, _, err = run(capsys, "balance", root, "cc" * 32)
    assert code == 1 and "not an account" in err
    code, out, _ = run(capsys, "show", root, ctp_id(chain.first))
    assert code == 0 and "state settled\nheight 2\n" in out and "amount 120\n" in out
    assert "by expiry" in run(capsys, "show", root, ctp_id(chain.second))[1]
    assert run(capsys, "show", root, "00" * 16)[0] == 1


def test_show_reports_a_rejected_ctp_with_its_reason(tmp_path, capsys):
    community = SimCommunity(2, NOW)
    chain = Chain(tmp_path, community, balance=10)
    greedy = community.ctp(0, 1, amount=11, wh=1, exp=NOW + 1_000)
    assert chain.block(NOW, ("ctp", greedy)) == ["insufficient-funds"]
    out = run(capsys, "show", tmp_path, ctp_id(greedy))[1]
    assert "state rejected\nreason insufficient-funds\n" in out


def test_audit_passes_on_an_honest_chain(chain, capsys):
    assert run(capsys, "audit", chain.identity.root) == (0, "audit ok: height 3, 1 trades, 2 CTPs\n", "")


def tamper(chain, sql: str, *params) -> None:
    db = sqlite3.connect(chain.identity.db_path)
    with db:
        db.execute(sql, params)
    db.close()


def retrade(chain) -> bytes:
    """Block 2's chain bytes with its trade's ERC hash changed."""
    db = sqlite3.connect(chain.identity.db_path)
    raw = db.execute("SELECT chain FROM blocks WHERE height = 2").fetchone()[0]
    db.close()
    block = load(raw)
    ctp_raw, _erc_hash = load(block["trades"][0])
    block["trades"] = [encode([ctp_raw, bytes(32)])]
    return encode(block)


@pytest.mark.parametrize(
    "sql, params, height, what",
    [
        ("UPDATE accounts SET balance = balance + 1 WHERE rowid = 1", (), 3, "stored balances differ"),
        ("UPDATE ctps SET state = 'held' WHERE leaf = 0", (), 3, "stored CTP database differs"),
        ("UPDATE blocks SET t = t, chain = ? WHERE height = 2", ("retrade",), 2, "trades differ"),
        ("UPDATE blocks SET inputs = ? WHERE height = 2", (encode([]),), 2, "changes nothing"),
        ("DELETE FROM blocks WHERE height = 2", (), 3, "follows height 1"),
        ("UPDATE trades SET idx = 1", (), 3, "stored trade index"),
        ("UPDATE ctps SET raw = ? WHERE leaf = 1", ("other-ctp",), 3, "stored CTP database differs"),
        ("UPDATE blocks SET t = t + 36000000 WHERE height = 3", (), 3, "height, hash or time differ"),
        ("UPDATE blocks SET chain = x'00' WHERE height = 2", (), 2, "does not decode"),
    ],
)
def test_audit_names_the_first_bad_height(chain, capsys, sql, params, height, what):
    params = tuple(retrade(chain) if p == "retrade" else chain.first if p == "other-ctp" else p for p in params)
    tamper(chain, sql, *params)
    code, out, _ = run(capsys, "audit", chain.identity.root)
    assert code == 1
    assert out.startswith(f"audit failed at height {height}: ") and what in out


def test_a_restart_refuses_a_ctp_row_whose_bytes_were_altered(chain):
    """The store reads CTPs from their rows, held ones at start-up and finished ones when a
    block asks about them: bytes that no longer hash to the committed hash must not become
    what an ERC settles or a duplicate check answers."""
    tamper(chain, "UPDATE ctps SET raw = ? WHERE leaf = 1", chain.first)
    identity = chain.identity
    store = LedgerStore(identity.db_path, identity.genesis)
    [ctp_id] = store.db.execute("SELECT id FROM ctps WHERE leaf = 1").fetchone()
    with pytest.raises(StoreError, match="altered"):
        store.load().record(ctp_id)


def test_a_restart_refuses_balances_that_are_not_the_genesis_total(chain):
    """The money invariant holds for the state a validator restarts from, not only for the
    blocks it commits afterwards."""
    tamper(chain, "UPDATE accounts SET balance = balance + 1 WHERE rowid = 1")
    identity = chain.identity
    with pytest.raises(StoreError, match="genesis total"):
        LedgerStore(identity.db_path, identity.genesis).load()


def test_audit_rejects_a_block_not_sealed_by_the_validator(chain, capsys):
    db = sqlite3.connect(chain.identity.db_path)
    raw = db.execute("SELECT chain FROM blocks WHERE height = 1").fetchone()[0]
    block = load(raw)
    block["seals"] = [[0, bytes(64)]]
    with db:
        db.execute("UPDATE blocks SET chain = ? WHERE height = 1", (encode(block),))
    db.close()
    assert run(capsys, "audit", chain.identity.root)[1] == (
        "audit failed at height 1: not sealed by a quorum of the genesis validators\n"
    )


def test_proof_of_a_settled_ctp_checks_offline(chain, capsys, tmp_path):
    code, out, _ = run(capsys, "proof", chain.identity.root, ctp_id(chain.first))
    assert code == 0
    doc = json.loads(out)
    assert doc["height"] == 2 and doc["ctp"] == ctp_id(chain.first)
    proof_file = tmp_path / "proof.json"
    proof_file.write_text(out)
    genesis_file = chain.identity.root / "genesis.cbor"
    code, out, _ = run(capsys, "check-proof", proof_file, "--genesis", genesis_file)
    assert code == 0 and out.startswith(f"proof ok: CTP {ctp_id(chain.first)} (120 units for 4 Wh) settled in block 2")
    # Every part of the proof matters.
    for field, value in (
        ("index", 1),
        ("size", 2),
        ("path", ["00" * 32]),
        ("header", doc["header"][:-2] + "00"),
        ("seals", []),
        ("trade", encode([chain.second, bytes(32)]).hex()),
        ("ctp", "00" * 16),
    ):
        proof_file.write_text(json.dumps({**doc, field: value}))
        code, _, err = run(capsys, "check-proof", proof_file, "--genesis", chain.identity.root)
        assert code == 1 and err.startswith("spb-ledger: "), field
    # A refunded CTP has no proof.
    code, _, err = run(capsys, "proof", chain.identity.root, ctp_id(chain.second))
    assert code == 1 and "has not settled" in err


def test_queries_need_a_validator_that_has_run(tmp_path, capsys):
    Chain(tmp_path, SimCommunity(2, NOW)).store.close()
    (tmp_path / "validators" / "v0" / "ledger.db").unlink()
    for command in (["audit", tmp_path], ["balance", tmp_path, "aa" * 32]):
        code, _, err = run(capsys, *command)
        assert code == 1 and "has this validator run yet" in err
    code, _, err = run(capsys, "audit", tmp_path / "nowhere")
    assert code == 1 and "spb-ledger init" in err


def test_entry_point_runs_audit(chain):
    """The installed command, as an operator types it."""
    result = subprocess.run(
        [sys.executable, "-m", "ledger.cli", "audit", str(chain.identity.root)],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("audit ok: height 3")
