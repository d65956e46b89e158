"""tests/data/vectors-statements.json: `stmtreq` and `statement` (docs/PROTOCOL.md §10.4,
decision 0017) pinned byte for byte; each verifies under its signer, an answer names its
request by hash, and a statement's lines add up from `open` to `close`."""

from __future__ import annotations

import json

from tests.data.make_vectors_ext import VALIDATOR
from tests.data.make_vectors_statements import PATH, alice_statement, document
from tests.support.wire import ALICE, CA, NOW, pk
from wire.cose import message_hash
from wire.messages import Statement, StatementRequest, open_message
from wire.statement import AccountStatement
from wire.verify import Verifier

VALID = {name: bytes.fromhex(raw) for name, raw in json.loads(PATH.read_text())["valid"].items()}


def test_the_file_is_exactly_what_its_generator_writes():
    assert PATH.read_text() == document()


def test_requests_are_signed_by_the_account_and_answers_by_a_validator():
    verifier = Verifier([pk(CA)], validators=[pk(VALIDATOR)])
    for name in ("stmtreq_alice", "stmtreq_too_long"):
        opened = verifier.verify(VALID[name], NOW, expect="stmtreq")
        assert isinstance(opened.body, StatementRequest) and opened.envelope.verifies(pk(ALICE))
    answer = verifier.verify(VALID["statement_alice"], NOW, expect="statement").body
    assert isinstance(answer, Statement) and answer.req == message_hash(VALID["stmtreq_alice"])
    assert AccountStatement.from_body(answer) == alice_statement()
    refused = open_message(VALID["statement_period"], Statement).body
    assert (refused.error, refused.lines, refused.req) == ("period", [], message_hash(VALID["stmtreq_too_long"]))


def test_the_statement_s_totals():
    totals = alice_statement().totals()
    assert (totals.bought_wh, totals.bought_units, totals.sold_wh, totals.sold_units) == (400, 5_200, 100, 1_200)
    assert (totals.funded, totals.paid_out, totals.renewable_permille) == (5_000, 0, 1000)
