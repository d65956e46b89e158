"""ledger.statement_service.answer (decision 0017): a validator answers a household's signed
request with the statement `spb-ledger statement` prints, refuses to answer what is not
such a request, names what is wrong with one it cannot serve, and splits an answer too
large for one message at a block boundary."""

from __future__ import annotations

import pytest

from edge.statement import join
from ledger import statement_service
from ledger.statement import build_statement
from ledger.statement_service import answer
from ledger.workload import _key, pk
from tests.support.statement import NOW, StatementChain
from wire import topics
from wire.cose import encode, message_hash
from wire.messages import Statement, StatementRequest, open_message
from wire.statement import AccountStatement

FAR = NOW + 86_400_000


@pytest.fixture
def chain(tmp_path):
    chain = StatementChain(tmp_path)
    chain.trade()
    return chain


def ask(chain: StatementChain, start: int = NOW, end: int = FAR, t: int = NOW, signer=None) -> tuple[str, bytes]:
    key = signer or chain.c.households[0].account
    raw = StatementRequest(account=pk(key), start=start, end=end, nonce=bytes(16), t=t).sign(key)
    return topics.statement_request(pk(key)), raw


def answered(chain: StatementChain, topic: str, raw: bytes, now: int = NOW) -> Statement | None:
    key, verifier = chain.node.key, chain.store.genesis.verifier()
    out = answer(chain.store, key, verifier, topic, raw, now)
    if out is None:
        return None
    assert out[0] == topics.statement(open_message(raw, StatementRequest).body.account)
    body = verifier.verify(out[1], now, expect="statement").body
    assert isinstance(body, Statement) and body.req == message_hash(raw)
    return body


def test_a_request_is_answered_with_the_statement_of_the_database(chain):
    body = answered(chain, *ask(chain))
    assert body is not None and body.error is None
    assert AccountStatement.from_body(body) == build_statement(chain.store, chain.account(0), NOW, FAR)


def test_what_is_not_the_account_s_own_request_gets_no_answer(chain):
    topic, raw = ask(chain)
    assert answered(chain, topics.statement_request(chain.account(1)), raw) is None  # not its topic
    forged = StatementRequest(account=chain.account(0), start=NOW, end=FAR, nonce=bytes(16), t=NOW)
    assert answered(chain, topic, forged.sign(chain.c.households[1].account)) is None  # not its key
    assert answered(chain, topic, b"junk") is None


@pytest.mark.parametrize(
    ("start", "end", "t", "error"),
    [
        (NOW, NOW, NOW, "period"),
        (NOW, NOW + 31 * 86_400_000 + 1, NOW, "period"),
        (NOW, FAR, NOW - 300_001, "stale"),
        (NOW, FAR, NOW + 300_001, "stale"),
    ],
)
def test_a_request_it_cannot_serve_is_answered_with_the_reason(chain, start, end, t, error):
    body = answered(chain, *ask(chain, start, end, t))
    assert body is not None and (body.error, body.lines, body.end) == (error, [], start)


def test_an_account_the_ledger_does_not_know_is_told_so(chain):
    body = answered(chain, *ask(chain, signer=_key(b"nobody")))
    assert body is not None and body.error == "unknown-account"


def test_an_answer_too_large_ends_at_a_block_and_the_meter_asks_again_from_there(chain, monkeypatch):
    full = build_statement(chain.store, chain.account(0), NOW, FAR)
    per_block: dict[int, int] = {}
    for ln in full.lines:
        per_block[ln.height] = per_block.get(ln.height, 0) + len(encode(ln.wire()))
    assert len(per_block) == 3
    monkeypatch.setattr(statement_service, "MAX_LINES_BYTES", max(per_block.values()))  # one block fits
    pieces, cursor = [], NOW
    while cursor < FAR:
        body = answered(chain, *ask(chain, start=cursor))
        assert body is not None and body.error is None and body.end > cursor
        pieces.append(AccountStatement.from_body(body))
        cursor = body.end
    assert len(pieces) >= 2 and join(pieces) == full
    monkeypatch.setattr(statement_service, "MAX_LINES_BYTES", 10)
    body = answered(chain, *ask(chain))  # up to the first block with lines: they do not fit
    assert body is not None and body.error is None and (body.end, body.lines) == (full.lines[0].t, [])
    body = answered(chain, *ask(chain, start=body.end))
    assert body is not None and body.error == "too-many-lines"  # one block's lines: nothing to cut
