"""Send signed transactions and learn from the bus what the ledger did with each
(docs/PROTOCOL.md §7, §9.6, §10): a validator-signed reject naming the message's hash, or the
account status that shows it applied.

The one place the commands that change accounts wait: `spb-deploy provision --broker`
(register), `spb-ledger fund|withdraw|retire` and `spb-meter rotate-key`. Transactions carry
no status of their own, so "applied" is read from the account they move:

- `appears`: a status of that account exists (a register opens it; a rotation opens the new key);
- `moves`: a status of that account newer (higher `h`) than the one retained when we sent
  (with `emptied`, one with nothing left: what a rotation leaves the old key);
- `decided`: the caller's test of a `spb/v1/ledger/blocks` message (a retire moves no money):
  applied once a sealed block made after the message's time is announced.

A reject of block h goes out before block h's account statuses and before its announcement,
on the proposer's one connection, so a reject is never overtaken by the status of its own
block. What stays open is a status (or block) of a block decided just before ours arrived
that also moves the account: it reads as ours (a known gap; `emptied` narrows it for rotations).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from broker.args import BrokerUrl
from broker.client import BusClient, TlsFiles
from wire import topics
from wire.cose import message_hash
from wire.messages import AccountStatus, Rejection
from wire.reasons import Reject
from wire.verify import Verifier


class NoOutcome(OSError):
    """The bus gave no answer in time: no connection, no baseline status, or no outcome."""


@dataclass(frozen=True, slots=True)
class Expect:
    """A signed transaction to send on `topic`, and how its outcome shows."""

    topic: str
    message: bytes
    appears: bytes | None = None  # applied once this account has a status
    moves: bytes | None = None  # applied once this account has a status newer than at sending
    emptied: bool = False  # ... and that status shows balance 0 and nothing held
    decided: bool = False  # applied once `block_time` names a block made at or after `t`
    t: int = 0  # the message's own time, for `decided`
    duplicate_is_applied: bool = False  # `duplicate` means "done already" (register, rotate)

    @property
    def hash(self) -> bytes:
        return message_hash(self.message)


@dataclass(frozen=True, slots=True)
class Outcome:
    hash: bytes
    reason: str | None  # None: applied
    status: AccountStatus | None = None  # the status that showed it, if one did

    @property
    def applied(self) -> bool:
        return self.reason is None


def bus_client(url: BrokerUrl, client_id: str, tls_dir: Path) -> BusClient:
    """A clean-session client for one command: over TLS with the identity in `tls_dir`
    (mqtt.crt, mqtt.key, ca.crt) for mqtts://, plain for HOST:PORT (development)."""
    tls = TlsFiles.in_dir(tls_dir) if url.tls else None
    return BusClient(url.host, url.port, client_id, clean_session=True, tls=tls)


def send_and_wait(
    client: BusClient,
    verifier: Verifier,
    expects: Sequence[Expect],
    timeout_s: float,
    now: Callable[[], int],
    block_time: Callable[[bytes], int | None] | None = None,
) -> list[Outcome]:
    """Connect `client` (not yet connected), send every message, and return their outcomes in order.

    Closes the client. NoOutcome names what did not answer within `timeout_s`; the messages
    are signed already, so the caller may send the very same bytes again.
    """
    watch = _Watch(verifier, expects, now)
    client.subscribe(topics.REJECTS, watch.on_reject)
    for pk in watch.accounts:
        client.subscribe(topics.account(pk), watch.on_status)
    if any(e.decided for e in expects):
        assert block_time is not None, "a `decided` expectation needs block_time"
        client.subscribe(topics.LEDGER_BLOCKS, lambda _t, payload, _r: watch.on_block(block_time(payload)))
    deadline = time.monotonic() + timeout_s
    client.connect()
    try:
        if not client.wait_connected(timeout_s):
            raise NoOutcome(f"cannot connect to {client.host}:{client.port} as {client.client_id} within {timeout_s} s")
        watch.wait_baselines(deadline, timeout_s)
        for expect in expects:
            client.publish(expect.topic, expect.message)
        return watch.wait_outcomes(deadline, timeout_s, client.client_id)
    finally:
        client.close()


class _Watch:
    """What the bus said so far, filled in on the network thread."""

    def __init__(self, verifier: Verifier, expects: Sequence[Expect], now: Callable[[], int]):
        self.verifier, self.expects, self.now = verifier, list(expects), now
        self.accounts = sorted({pk for e in expects for pk in (e.appears, e.moves) if pk is not None})
        self.cond = threading.Condition()
        self.newest: dict[bytes, AccountStatus] = {}
        self.baseline: dict[bytes, int] | None = None  # account -> h when we sent
        self.rejects: dict[bytes, str] = {}
        self.newest_block_t = -1

    def on_status(self, topic: str, payload: bytes, _retained: bool) -> None:
        try:
            status = self.verifier.verify(payload, self.now(), expect=AccountStatus).body
        except Reject:
            return  # not a validator's word: ignore it
        if topic != topics.account(status.account):
            return
        with self.cond:
            old = self.newest.get(status.account)
            if old is None or status.h > old.h:
                self.newest[status.account] = status
            self.cond.notify_all()

    def on_reject(self, _topic: str, payload: bytes, _retained: bool) -> None:
        try:
            rejection = self.verifier.verify(payload, self.now(), expect=Rejection).body
        except Reject:
            return
        with self.cond:
            self.rejects.setdefault(rejection.msg, rejection.reason)
            self.cond.notify_all()

    def on_block(self, t: int | None) -> None:
        if t is None:
            return
        with self.cond:
            self.newest_block_t = max(self.newest_block_t, t)
            self.cond.notify_all()

    def wait_baselines(self, deadline: float, timeout_s: float) -> None:
        """The retained status of every account a `moves` waits on, before sending."""
        wanted = {e.moves for e in self.expects if e.moves is not None}
        with self.cond:
            self.cond.wait_for(lambda: wanted <= self.newest.keys(), max(0.0, deadline - time.monotonic()))
            missing = wanted - self.newest.keys()
            if missing:
                raise NoOutcome(
                    f"no account status for {', '.join(pk.hex() for pk in sorted(missing))} on the bus within "
                    f"{timeout_s} s: not an account of this ledger, or no validator has published yet"
                )
            self.baseline = {pk: s.h for pk, s in self.newest.items()}

    def wait_outcomes(self, deadline: float, timeout_s: float, who: str) -> list[Outcome]:
        with self.cond:
            self.cond.wait_for(
                lambda: all(self._outcome(e) for e in self.expects), max(0.0, deadline - time.monotonic())
            )
            outcomes = [self._outcome(e) for e in self.expects]
        missing = [e for e, o in zip(self.expects, outcomes, strict=True) if o is None]
        if missing:
            raise NoOutcome(
                f"no outcome within {timeout_s} s for "
                + ", ".join(f"{e.topic.rsplit('/', 1)[1]} {e.hash.hex()}" for e in missing)
                + f": is a validator running, and may {who} publish on the broker (its ACL)? "
                "Running the command again is safe: the ledger applies each at most once"
            )
        return [o for o in outcomes if o is not None]

    def _outcome(self, e: Expect) -> Outcome | None:
        """Under the lock: the outcome of e so far, or None."""
        reason = self.rejects.get(e.hash)
        if reason is not None and not (reason == "duplicate" and e.duplicate_is_applied):
            return Outcome(e.hash, reason)
        if e.appears is not None and e.appears in self.newest:
            return Outcome(e.hash, None, self.newest[e.appears])
        if e.moves is not None and self.baseline is not None:
            status = self.newest.get(e.moves)
            newer = status is not None and status.h > self.baseline.get(e.moves, -1)
            if newer and status is not None and (not e.emptied or (status.balance, status.held) == (0, 0)):
                return Outcome(e.hash, None, status)
        if e.decided and self.newest_block_t >= e.t:
            return Outcome(e.hash, None)
        if reason is not None:  # a `duplicate` that means done
            return Outcome(e.hash, None, self.newest.get(e.appears or e.moves or b""))
        return None
