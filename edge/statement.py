"""`spb-meter statement`: the household's statement, fetched by its own meter over the bus
from the validators (docs/PROTOCOL.md §10.4, docs/decisions/0017-statements.md), without
access to a validator's host.

The meter signs a `stmtreq` with the household's account key, for at most 31 days at a
time, and takes the first `statement` answering it (by request hash) that a genesis
validator signed and that adds up. An answer ending before the end asked for (its lines
filled the 64 KiB an answer may hold) is followed by a request from there on, and the
pieces are joined into one statement: the same one `spb-ledger statement` prints.
"""

from __future__ import annotations

import os
import queue
import time
from dataclasses import replace

from broker.client import BusClient, TlsFiles
from broker.clock import wall_ms
from edge.state_dir import MeterIdentity
from wire import topics
from wire.cose import message_hash
from wire.messages import Statement, StatementRequest
from wire.reasons import Reject
from wire.statement import AccountStatement, StatementMismatch
from wire.verify import Verifier

MAX_PERIOD_MS = 31 * 86_400_000  # what one request may cover (the validators refuse more)
CONNECT_S = 30.0  # how long to wait for the broker, whatever the wait for an answer


class StatementFetchError(Exception):
    """No statement: the validators said why, or none answered in time."""


def fetch_statement(
    identity: MeterIdentity,
    host: str,
    port: int,
    tls: TlsFiles | None,
    start: int,
    end: int,
    timeout_s: float = 30.0,
) -> AccountStatement:
    """The statement of the meter's household over [start, end); `timeout_s` is the wait
    for each answer (StatementFetchError when none comes, or the ledger names an error)."""
    if end <= start:
        raise StatementFetchError(f"the period is empty: to ({end}) is not after from ({start})")
    key = identity.account_key()
    account = key.verify_key.encode()
    verifier = Verifier(cas=[identity.ca_pk], validators=identity.validators)
    answers: queue.Queue[bytes] = queue.Queue()
    nonce = os.urandom(16)
    bus = BusClient(host, port, f"stmt-{identity.meter}-{nonce.hex()[:8]}", clean_session=True, tls=tls)
    granted = bus.subscribe(topics.statement(account), lambda _topic, payload, _retained: answers.put(payload))
    bus.connect()
    try:
        if not (bus.wait_connected(CONNECT_S) and granted.wait(CONNECT_S)):
            raise StatementFetchError(f"no connection to the broker at {host}:{port} within {CONNECT_S:.0f} s")
        pieces: list[AccountStatement] = []
        cursor = start
        while cursor < end:
            asked = StatementRequest(
                account=account, start=cursor, end=min(end, cursor + MAX_PERIOD_MS), nonce=os.urandom(16), t=wall_ms()
            ).sign(key)
            bus.publish(topics.statement_request(account), asked)
            piece = _answer(answers, verifier, asked, timeout_s)
            if piece.end <= cursor:
                raise StatementFetchError("the ledger's answer covers nothing: ask for a shorter period")
            pieces.append(piece)
            cursor = piece.end
    finally:
        bus.close()
    return join(pieces)


def _answer(answers: queue.Queue[bytes], verifier: Verifier, asked: bytes, timeout_s: float) -> AccountStatement:
    """The first answer to `asked` that a genesis validator signed and that adds up."""
    digest = message_hash(asked)
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        try:
            raw = answers.get(timeout=left)
        except queue.Empty:
            break
        try:
            body = verifier.verify(raw, wall_ms(), expect="statement").body
        except Reject:
            continue  # not a validator's: the topic's ACL should have kept it out
        assert isinstance(body, Statement)
        if body.req != digest:
            continue  # an answer to an earlier request
        if body.error is not None:
            raise StatementFetchError(f"the ledger answered: {body.error}")
        try:
            return AccountStatement.from_body(body)
        except StatementMismatch:
            continue  # a validator whose answer does not add up: wait for another
    raise StatementFetchError(f"no validator answered within {timeout_s:.0f} s")


def join(pieces: list[AccountStatement]) -> AccountStatement:
    """Consecutive statements of one account as one: the first's opening, the last's closing."""
    first, last = pieces[0], pieces[-1]
    lines = tuple(line for piece in pieces for line in piece.lines)
    return replace(last, start=first.start, opening=first.opening, lines=lines).check()
