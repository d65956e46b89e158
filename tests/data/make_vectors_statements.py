"""Writes tests/data/vectors-statements.json: the byte-exact vectors of statements
(docs/PROTOCOL.md §10.4, decision 0017). Run by hand from the repository root after changing
a vector on purpose:

    .venv/bin/python -m tests.data.make_vectors_statements

tests/wire/test_statement_vectors.py requires the committed file to be exactly `document()`.
Keys are tests/data/vectors.json's (alice, bob) and vectors-ext.json's validator; times and
the nonce are fixed. The story: alice asks for her statement of the day before `now`; she
was funded 5,000 units, bought 400 Wh of solar from bob's m0002 at 13 in a market fill,
sold 100 Wh to bob by a CTP for 1,200, and had a CTP refunded; validator v0 answers. A
second answer refuses a request of 40 days (`period`).
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.data.make_vectors_ext import VALIDATOR
from tests.support.wire import ALICE, BOB, NOW, pk
from wire.cose import message_hash
from wire.messages import StatementRequest
from wire.statement import AccountStatement, Line

PATH = Path(__file__).with_name("vectors-statements.json")
DAY = 86_400_000
START, END = NOW - DAY, NOW
NONCE = bytes(range(16))


def request(start: int = START, end: int = END) -> bytes:
    return StatementRequest(account=pk(ALICE), start=start, end=end, nonce=NONCE, t=NOW).sign(ALICE)


def alice_statement() -> AccountStatement:
    lines = (
        Line("fund", 10, START + 60_000, bytes([1]) * 32, 5_000, ref="bank-2026-001"),
        Line("bought", 12, START + 3_600_000, bytes([2]) * 16, 5_200, 400, "settled", "solar", pk(BOB), "m0002"),
        Line("bought", 13, START + 4_000_000, bytes([3]) * 16, 70, 5, "refunded", "", pk(BOB), "m0002"),
        Line("sold", 15, START + 7_200_000, bytes([4]) * 16, 1_200, 100, "settled", "", pk(BOB), "m0002"),
    )
    return AccountStatement(pk(ALICE), START, END, 15, (100_000, 0), (101_000, 0), lines).check()


def answers() -> dict[str, bytes]:
    statement = alice_statement().body(message_hash(request()), NOW + 500).sign(VALIDATOR)
    too_long = request(START, START + 40 * DAY)
    error = AccountStatement(pk(ALICE), START, START, 0, (0, 0), (0, 0), ()).body(message_hash(too_long), NOW + 500)
    refused = type(error).from_map(error.to_map() | {"error": "period"}).sign(VALIDATOR)
    return {
        "stmtreq_alice": request(),
        "statement_alice": statement,
        "stmtreq_too_long": too_long,
        "statement_period": refused,
    }


def document() -> str:
    doc = {
        "comment": "Statements (docs/PROTOCOL.md 10.4, decision 0017); written by make_vectors_statements.py",
        "valid": {name: raw.hex() for name, raw in answers().items()},
    }
    return json.dumps(doc, indent=1) + "\n"


if __name__ == "__main__":
    PATH.write_text(document())
