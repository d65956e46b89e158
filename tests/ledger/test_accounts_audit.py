"""`spb-ledger audit` and a restart against a validator's §10 tables (docs/PROTOCOL.md §10):
each table altered by hand makes the audit fail naming it, and a restart refuses balances
that are not genesis + funded - withdrawn."""

from __future__ import annotations

import pytest

from ledger.audit import AuditFailure, audit
from ledger.store import StoreError
from ledger.workload import SimCommunity, pk
from tests.support.accounts import AccountsChain, Operator, key
from tests.support.ledger import NOW

TAMPERS = [
    ("UPDATE money SET amount = amount + 1 WHERE typ = 'fund'", r"add up to 26 funded and 5 withdrawn, .* 25 and 5"),
    ("UPDATE money SET ref = 'other' WHERE typ = 'payout'", r"stored money row \(1, 1\) is \('payout', .*'other'"),
    ("UPDATE money SET account = x'00' WHERE typ = 'payout'", r"stored money row \(1, 1\)"),
    ("DELETE FROM retired", r"stored retired lack the replay's row"),
    ("INSERT INTO retired VALUES (x'00', 1)", r"stored retired row \(00\) is \(1\), the replay's is none"),
    ("UPDATE rotations SET height = 2", r"stored rotations row .* is \(.*, 2, 0\), the replay's is \(.*, 1, 0\)"),
    ("UPDATE meters SET source = 'grid'", r"stored meters row \('m0005'\) is \(.*, 'grid', 1, 0\)"),
    ("DELETE FROM meters", r"stored meters lack the replay's row \('m0005'\)"),
    ("UPDATE balances SET held = 1 WHERE height = 1 AND balance = 0", r"stored balances row \(.*, 1\) is \(0, 1\)"),
    ("DELETE FROM balances WHERE height = 2", r"stored balances lack the replay's row \(.*, 2\)"),
]


def built(root, c: SimCommunity) -> AccountsChain:
    """A chain whose block 1 writes a row of every §10 table, block 2 moves money."""
    op = Operator(c)
    chain = AccountsChain(root, c)
    block = [
        ("register", op.register(pk(c.households[4].account), (4, "solar"))),
        ("fund", op.fund(pk(c.households[0].account), 25, "in")),
        ("payout", op.payout(pk(c.households[1].account), 5, "out")),
        ("retire", op.retire(pk(c.households[3].account))),
        ("rotate", op.rotate(pk(c.households[2].account), pk(key("new 2")))),
    ]
    assert chain.block(NOW, *block) == [None] * 5
    assert chain.block(NOW + 1, ("ctp", c.ctp(0, 1, amount=3, wh=0, exp=NOW + 10_000))) == [None]
    assert audit(chain.store).height == 2
    return chain


@pytest.mark.parametrize(("sql", "message"), TAMPERS, ids=[t[0] for t in TAMPERS])
def test_the_audit_names_an_altered_accounts_table(tmp_path, sql, message):
    chain = built(tmp_path, SimCommunity(6, NOW))
    chain.store.db.execute(sql)
    with pytest.raises(AuditFailure, match=message) as failure:
        audit(chain.store)
    assert failure.value.height == 2
    chain.store.close()


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE money SET amount = amount + 1 WHERE typ = 'fund'",
        "UPDATE money SET amount = amount - 1 WHERE typ = 'payout'",
        "UPDATE accounts SET balance = balance + 1 WHERE balance > 0",
        "DELETE FROM money WHERE typ = 'payout'",
    ],
)
def test_a_restart_refuses_balances_that_are_not_genesis_plus_funded_minus_withdrawn(tmp_path, sql):
    chain = built(tmp_path, SimCommunity(6, NOW))
    chain.store.db.execute(sql)
    with pytest.raises(StoreError, match=r"not the genesis total \+ funded - withdrawn .*run `spb-ledger audit`"):
        chain.store.load()
    with pytest.raises(AuditFailure):
        audit(chain.store)
    chain.store.close()
