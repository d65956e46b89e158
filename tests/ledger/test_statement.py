"""ledger.statement and `spb-ledger statement` (docs/decisions/0017-statements.md): a
household's statement read from a database built by committing real blocks adds up, agrees
with the ledger's balances, names each trade's source and other side, and each of its lines
is provable with `spb-ledger proof`."""

from __future__ import annotations

import csv
import io
import json

import pytest

from ledger import cli
from ledger.proof import ProofError, check_input_proof, check_proof, make_proof
from ledger.statement import StatementError, account_of, build_statement
from tests.support.statement import NOW, I, K, StatementChain
from wire.messages import Statement, open_message
from wire.statement import AccountStatement, Line, StatementMismatch

FAR = NOW + 86_400_000


@pytest.fixture
def chain(tmp_path):
    return StatementChain(tmp_path)


def test_a_statement_lists_every_line_and_its_totals_equal_the_ledger(chain):
    ids = chain.trade()
    s = build_statement(chain.store, chain.account(0), NOW, FAR)
    lines = {(ln.kind, ln.id): ln for ln in s.lines}
    assert [(ln.kind, ln.state) for ln in s.lines] == [
        ("fund", ""),
        ("bought", "refunded"),  # block B: its expiry
        ("bought", "settled"),  # block C, by id: the CTP and the fill
        ("bought", "settled"),
        ("sold", "settled"),
        ("payout", ""),
    ]
    fill, ctp = lines["bought", ids.fill], lines["bought", ids.bought]
    assert (fill.wh, fill.amount, fill.price, fill.src, fill.meters) == (10, 40, 4, "solar", "m0002")
    assert (ctp.wh, ctp.amount, ctp.price, ctp.src, ctp.meters) == (8, 40, 5, "grid", "m0004")
    assert fill.party == chain.account(1) and ctp.party == chain.account(3)
    sold = lines["sold", ids.sold]
    assert (sold.wh, sold.amount, sold.src, sold.meters, sold.party) == (6, 24, "grid", "m0003", chain.account(2))
    assert lines["fund", ids.fund].ref == "bank-1" and lines["payout", ids.payout].amount == 100
    assert lines["bought", ids.refunded].effect == 0
    totals = s.totals()
    assert (totals.bought_wh, totals.bought_units, totals.sold_wh, totals.sold_units) == (18, 80, 6, 24)
    assert (totals.funded, totals.paid_out, totals.renewable_wh, totals.renewable_permille) == (500, 100, 10, 555)
    assert s.opening == (1_000, 0)
    state = chain.node.state
    assert s.closing == (state.balances[chain.account(0)], state.held[chain.account(0)]) == (1_344, 0)
    assert s.height == state.height == 3 and s.rotated is None


def test_a_period_covers_the_blocks_whose_time_is_in_it(chain):
    chain.trade()
    middle = build_statement(chain.store, chain.account(0), K * I, (K + 1) * I)  # block B only
    assert [(ln.kind, ln.state) for ln in middle.lines] == [("bought", "refunded")]
    # block A held the bid's escrow (50) and two CTPs (40, 7); block B refunds 7, clears the fill (40 of
    # the escrow stay held) and releases 10
    assert middle.opening == (1_000 + 500 - 50 - 40 - 7, 97) and middle.closing == (1_420, 80)
    assert build_statement(chain.store, chain.account(0), FAR, FAR + 1).lines == ()
    with pytest.raises(StatementError, match="empty"):
        build_statement(chain.store, chain.account(0), FAR, FAR)


def test_a_rotated_key_hands_its_money_to_the_new_one(chain):
    chain.trade()
    t = (K + 2) * I
    rotate, new = chain.rotate(0, t)
    chain.block(t, ("rotate", rotate))
    old_s = build_statement(chain.store, chain.account(0), NOW, FAR)
    assert old_s.rotated == new and old_s.closing == (0, 0)
    assert (old_s.lines[-1].kind, old_s.lines[-1].amount, old_s.lines[-1].party) == ("rotated-out", 1_344, new)
    new_s = build_statement(chain.store, new, NOW, FAR)
    assert [(ln.kind, ln.amount) for ln in new_s.lines] == [("rotated-in", 1_344)]
    assert new_s.opening == (0, 0) and new_s.closing == (1_344, 0)
    genesis = chain.store.genesis
    header, body = check_input_proof(make_proof(chain.store, new_s.lines[0].id), genesis.validators, ())
    assert header.height == 4 and body.typ == "rotate"  # signed by the old key: no operator needed


def test_every_line_is_provable(chain):
    chain.trade()
    validators = chain.store.genesis.validators
    s = build_statement(chain.store, chain.account(0), NOW, FAR)
    for ln in s.lines:
        if ln.kind in ("bought", "sold") and ln.state == "settled":
            header, ctp = check_proof(make_proof(chain.store, ln.id), validators)
            assert (header.height, ctp.id, ctp.amount) == (ln.height, ln.id, ln.amount)
        elif ln.kind in ("fund", "payout"):
            doc = make_proof(chain.store, ln.id)
            header, body = check_input_proof(doc, validators, chain.store.genesis.operators)
            assert (header.height, body.typ, body.amount) == (ln.height, ln.kind, ln.amount)
            with pytest.raises(ProofError, match="operator"):
                check_input_proof(doc, validators, ())
            doc["index"] ^= 1
            with pytest.raises(ProofError, match="inputs root"):
                check_input_proof(doc, validators, chain.store.genesis.operators)
    with pytest.raises(ProofError, match="no fund"):
        make_proof(chain.store, bytes(32))


def test_a_statement_that_does_not_add_up_is_refused():
    line = Line("fund", 1, NOW, bytes(32), 10)
    s = AccountStatement(bytes(32), NOW, FAR, 1, (0, 0), (11, 0), (line,))
    with pytest.raises(StatementMismatch, match=r"opening 0 \+ lines \+10 != closing 11"):
        s.check()


def test_csv_json_and_the_wire_body_carry_the_same_statement(chain):
    chain.trade()
    s = build_statement(chain.store, chain.account(0), NOW, FAR)
    rows = list(csv.DictReader(io.StringIO(s.to_csv())))
    assert [r["kind"] for r in rows] == [ln.kind for ln in s.lines] + [
        "opening",
        "closing",
        "total-bought",
        "total-sold",
        "total-funded",
        "total-paid-out",
        "renewable",
    ]
    assert rows[-7]["balance"] == "1000" and rows[-6]["balance"] == "1344" and rows[-1]["ref"] == "555/1000"
    assert (rows[-5]["wh"], rows[-5]["amount"]) == ("18", "80")
    doc = json.loads(json.dumps(s.to_json()))
    assert doc["totals"]["renewable_permille"] == 555 and doc["closing"] == {"balance": 1344, "held": 0}
    assert [line["id"] for line in doc["lines"]] == [ln.id.hex() for ln in s.lines]
    key = chain.c.validator_keys[0]
    raw = s.body(bytes(32), NOW).sign(key)
    assert AccountStatement.from_body(open_message(raw, Statement).body) == s


def test_the_command_prints_the_statement_of_an_account_or_a_meter(chain, capsys):
    chain.trade()
    chain.node.close()
    args = [str(chain.root), "m0001", "--from", "2027-01-15", "--to", "2027-01-16T00:00:00", "--format", "json"]
    assert cli.main(["statement", *args]) == 0
    by_meter = json.loads(capsys.readouterr().out)
    assert cli.main(["statement", str(chain.root), chain.account(0).hex(), *args[2:]]) == 0
    assert json.loads(capsys.readouterr().out) == by_meter
    assert by_meter["totals"]["bought_wh"] == 18 and len(by_meter["lines"]) == 6
    assert cli.main(["statement", str(chain.root), "m0001", *args[2:6]]) == 0
    text = capsys.readouterr().out
    assert "bought (settled)" in text and "renewable 55.5%" in text
    assert cli.main(["statement", str(chain.root), "m9999", *args[2:]]) == 1
    assert "neither an account key" in capsys.readouterr().err
    fund = by_meter["lines"][0]["id"]
    assert cli.main(["proof", str(chain.root), fund]) == 0
    proof = capsys.readouterr().out
    (chain.root / "proof.json").write_text(proof)
    assert cli.main(["check-proof", str(chain.root / "proof.json"), "--genesis", str(chain.root)]) == 0
    assert f"proof ok: fund {fund} decided in block 1" in capsys.readouterr().out


def test_an_unknown_account_has_no_statement(chain):
    with pytest.raises(StatementError, match="not an account"):
        build_statement(chain.store, bytes(32), NOW, FAR)
    assert account_of(chain.store, chain.account(2).hex()) == chain.account(2)
