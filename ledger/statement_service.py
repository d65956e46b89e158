"""A validator's answers to household statement requests on the bus (docs/PROTOCOL.md §10.4,
docs/decisions/0017-statements.md).

A meter publishes a `stmtreq` signed by its account key on spb/v1/statement/{account}/req;
every validator answers with a `statement` it signs, on spb/v1/statement/{account}, which
only that household's meter (and monitoring) may read. Every validator, not one: the
meter takes the first answer that verifies, so a validator that is down, behind or silent
costs nothing, and no validator needs to know which others are online.

`answer` is the core: (request bytes, topic, time) -> the answer to publish, or None for
a request not worth one (not a signed `stmtreq` of the account its topic names). It reads
a committed snapshot of the store and nothing else. StatementService runs it on a thread of
its own with a read connection of its own, so a statement never delays consensus: the
validator's loop only hands the request over, and a full queue drops it (the meter asks
again after its timeout).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from nacl.signing import SigningKey

from broker.client import BusClient
from ledger.statement import StatementError, build_statement
from ledger.store import LedgerStore
from ledger.validator import ValidatorIdentity
from wire import topics
from wire.cose import MAX_MESSAGE, encode
from wire.messages import Statement, StatementRequest
from wire.reasons import Reject
from wire.statement import AccountStatement
from wire.verify import Verifier

log = logging.getLogger("spb.ledger.statement")
MAX_PERIOD_MS = 31 * 86_400_000  # a request covers at most 31 days
MAX_SKEW_MS = 300_000  # a request's t is within 5 minutes of the validator's clock
MAX_LINES_BYTES = MAX_MESSAGE - 4096  # an answer stays under the 64 KiB of any message (§4)
MAX_PENDING = 16  # requests waiting for the worker; more are dropped
# Errors an answer names (`error`), with nothing else in it but the period asked for.
PERIOD, STALE, UNKNOWN, TOO_MANY = "period", "stale", "unknown-account", "too-many-lines"


def answer(store: LedgerStore, key: SigningKey, verifier: Verifier, topic: str, raw: bytes, now: int):
    """(answer topic, signed `statement`) for a request, or None if it deserves no answer."""
    try:
        opened = verifier.verify(raw, now, expect="stmtreq")
    except Reject as exc:
        log.info("statement request refused: %s (%s)", exc.reason, exc.detail)
        return None
    req: StatementRequest = opened.body  # type: ignore[assignment]  # expect="stmtreq" opened one
    if topic != topics.statement_request(req.account):
        log.info("statement request of %s on %s: not its topic", req.account.hex(), topic)
        return None
    body = _statement(store, req, opened.hash, now)
    return topics.statement(req.account), body.sign(key)


def _statement(store: LedgerStore, req: StatementRequest, digest: bytes, now: int) -> Statement:
    def error(code: str) -> Statement:
        empty = AccountStatement(req.account, req.start, req.start, 0, (0, 0), (0, 0), ())
        return _replace_error(empty.body(digest, now), code)

    if abs(now - req.t) > MAX_SKEW_MS:
        return error(STALE)
    if not req.start < req.end <= req.start + MAX_PERIOD_MS:
        return error(PERIOD)
    try:
        statement = build_statement(store, req.account, req.start, req.end)
    except StatementError:
        return error(UNKNOWN)
    end = _fitting_end(store, statement)
    if end is None:
        return error(TOO_MANY)
    if end != statement.end:
        statement = build_statement(store, req.account, req.start, end)
    return statement.body(digest, now)


def _fitting_end(store: LedgerStore, statement: AccountStatement) -> int | None:
    """`statement.end`, or an earlier end whose lines fit in an answer (a whole number of
    blocks: the time of the first block whose lines do not fit); None if not even the first
    block's lines fit."""
    size = 0
    for line in statement.lines:
        size += len(encode(line.wire()))
        if size > MAX_LINES_BYTES:
            t = store.block_time(line.height)
            return t if t > statement.start else None
    return statement.end


def _replace_error(body: Statement, code: str) -> Statement:
    m = body.to_map() | {"error": code}
    return Statement.from_map(m)  # type: ignore[return-value]  # from_map of Statement's own map


class StatementService:
    """Answers statement requests for one validator: `receive` is the bus handler (a
    subscribe_deferred one: it acknowledges at once, a request is not worth keeping)."""

    def __init__(self, identity: ValidatorIdentity, bus: BusClient, clock: Callable[[], int]):
        assert identity.key is not None, "a validator that answers signs"
        self.key, self.bus, self.clock = identity.key, bus, clock
        self.identity = identity
        self.verifier = identity.genesis.verifier()
        self.requests: queue.Queue[tuple[str, bytes] | None] = queue.Queue(MAX_PENDING)
        self.dropped = 0
        # Started by the first request (receive runs on the bus's one network thread): a
        # validator nobody asks opens no second connection to its database.
        self.thread: threading.Thread | None = None

    def receive(self, topic: str, payload: bytes, retained: bool, ack: Callable[[], None]) -> None:
        ack()
        if retained:  # a stale copy someone left: the meter that asked is long gone
            return
        if self.thread is None:
            self.thread = threading.Thread(target=self._work, name="statements", daemon=True)
            self.thread.start()
        try:
            self.requests.put_nowait((topic, payload))
        except queue.Full:
            self.dropped += 1
            log.warning("statement request dropped: %d waiting (%d dropped in all)", MAX_PENDING, self.dropped)

    def close(self, timeout_s: float = 5.0) -> None:
        if self.thread is None:
            return
        try:
            self.requests.put_nowait(None)
        except queue.Full:
            return  # the thread is a daemon: it ends with the process
        self.thread.join(timeout_s)

    def _work(self) -> None:
        store = LedgerStore(self.identity.db_path, self.identity.genesis, readonly=True)
        try:
            while (request := self.requests.get()) is not None:
                topic, raw = request
                try:
                    out = answer(store, self.key, self.verifier, topic, raw, self.clock())
                except Exception:  # a bug must not end the answers, nor the validator
                    log.exception("statement request on %s failed", topic)
                    continue
                if out is not None:
                    self.bus.publish(*out)
        finally:
            store.close()
