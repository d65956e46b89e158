"""What a validator decides about a transaction before it pools it: docs/decisions/0008-bounded-inputs.md.

Pure. A message whose §4 rejection follows from its bytes and the genesis alone (no clock,
no ledger state) is rejected here, at the door, by every validator alike: it never enters a
pool or a block, so junk is neither stored nor sent between validators. Everything else is
pooled under its sender, the key that signed it, so that one sender's burst fills only its
own share of the pool. The door looks twice: `claim` decodes the message and names the
sender it claims, which is cheap, so a burst beyond the sender's share costs no signature
check; `check` verifies it before it takes a place in the pool, so no one fills another
sender's share with forgeries. The reject of a message refused here is published by one
validator, its announcer, not by each.
"""

from __future__ import annotations

from typing import NamedTuple

from ledger.accounts import ACCOUNT_TYPES
from ledger.market import MARKET_TYPES
from wire.cose import MAX_MESSAGE
from wire.messages import (
    Ask,
    Bid,
    Body,
    Cancel,
    Ctp,
    DevCert,
    Erc,
    Export,
    Fund,
    Payout,
    Register,
    Retire,
    Reveal,
    Revoke,
    Rotate,
    Seal,
    Withdraw,
    open_message,
)
from wire.reasons import STATELESS, Reject
from wire.verify import Verifier

# Checks of §4 that read neither a clock nor the ledger: steps 1-3 for every message; for
# every other type every stateless check, except an ERC's and an export's (their steps 4-6
# read the clock: a `cert` or `coe` failure comes before `proof` and `signature` in §4's
# order). On a chain without a market, a market message is `type` (docs/PROTOCOL.md §9).
# A `register`'s `cert` is its block's: the ledger checks its devcerts at the block time and
# against the revocations (§10.2), so a block that rejects one so is a valid block.
BY_BYTES = frozenset({"decode", "noncanonical", "type", "schema"})
BY_CLOCK = frozenset({"erc", "export"})
BY_BLOCK = frozenset({("register", "cert")})
UNVERIFIED = b""  # the share of ERCs the door could not verify at its clock: their block decides them


class Verdict(NamedTuple):
    reason: str | None  # a §4 reason: rejected at the door; None: it may be pooled
    sender: bytes  # whose share of the pool it takes: a public key, or UNVERIFIED


def decided_by_bytes(typ: str, reason: str | None) -> bool:
    """Whether every validator reaches this rejection from the message bytes alone."""
    return reason in BY_BYTES or (typ not in BY_CLOCK and reason in STATELESS and (typ, reason) not in BY_BLOCK)


def claim(verifier: Verifier, typ: str, raw: bytes, market: bool = False) -> Verdict:
    """§4's steps 1-3 (a size check first, before decoding a byte) and the sender the
    message names, unverified. `market`: whether the chain's genesis has a market; one
    without operators takes no §10 message either (`type`, as its blocks would decide)."""
    if len(raw) > MAX_MESSAGE:
        return Verdict("decode", UNVERIFIED)
    if (typ in MARKET_TYPES and not market) or (typ in ACCOUNT_TYPES and not verifier.operators):
        return Verdict("type", UNVERIFIED)
    try:
        return Verdict(None, _sender(verifier, open_message(raw, typ).body))
    except Reject as exc:
        return Verdict(exc.reason, UNVERIFIED)


def check(verifier: Verifier, typ: str, raw: bytes, now: int) -> Verdict:
    """Every stateless check at wall clock `now`: a rejection its bytes decide, or the
    verified sender (UNVERIFIED for an ERC that fails a check that reads the clock)."""
    try:
        body = verifier.verify(raw, now, expect=typ).body
    except Reject as exc:
        return Verdict(exc.reason if decided_by_bytes(typ, exc.reason) else None, UNVERIFIED)
    return Verdict(None, _sender(verifier, body))


def _sender(verifier: Verifier, body: Body) -> bytes:
    if isinstance(body, (Ctp, Cancel)):
        return body.payer
    if isinstance(body, Ask):
        return body.seller
    if isinstance(body, (Bid, Seal, Reveal)):
        return body.buyer
    if isinstance(body, Withdraw):
        return body.by
    if isinstance(body, Export):
        try:
            return open_message(body.cert, DevCert).body.pk  # the meter, as for a birth
        except Reject:
            return UNVERIFIED
    if isinstance(body, Erc):
        try:
            return verifier.coe_and_witness(body)[1].pk  # the meter that vouched for its one-time key
        except Reject:
            return UNVERIFIED
    if isinstance(body, (Register, Fund, Payout, Retire)):
        return body.op  # the operator: its share bounds a runaway script, not the households'
    if isinstance(body, Rotate):
        return body.by
    assert isinstance(body, Revoke)
    return body.iss


def announcer(digest: bytes, n: int) -> int:
    """The validator that publishes the reject of a message refused before any block: one
    copy, not n. Spread over the validators by the message hash."""
    return int.from_bytes(digest[:4], "big") % n


class Rates:
    """A token bucket per sender: how many of its transactions the door may still pool now.

    A sender may pool `burst` transactions at once and `per_s` a second after that; beyond
    it, its transactions are refused `busy` (docs/decisions/0014-rate-limits.md), so one
    identity gets at most that share of the blocks however fast it publishes. Tokens are
    taken only for a verified sender, so forgeries naming another sender cannot spend its
    rate. Kept in thousandths of a transaction: integers, exact. Each validator keeps its
    own buckets, as it keeps its own pool: `busy` is not a verdict, and need not agree.
    """

    def __init__(self, per_s: int, burst: int, senders: int) -> None:
        self.per_s, self.full, self.senders = per_s, burst * 1000, senders
        self.levels: dict[bytes, tuple[int, int]] = {}  # sender -> (thousandths, at ms)
        self.prune_at = senders  # doubles with what a pruning kept: each take costs O(1), amortized

    def allows(self, sender: bytes, now: int) -> bool:
        """Whether the sender may pool one more transaction at monotonic time `now` (ms)."""
        return self._level(sender, now) >= 1000

    def take(self, sender: bytes, now: int) -> None:
        """The sender pooled one: a token less. Buckets that refilled are forgotten once
        more than `senders` are kept (a full bucket is what a sender never seen gets); what
        is left is every sender that pooled within the last burst / per_s seconds."""
        self.levels[sender] = (self._level(sender, now) - 1000, now)
        if len(self.levels) > self.prune_at:
            self.levels = {s: v for s, v in self.levels.items() if self._level(s, now) < self.full}
            self.prune_at = max(self.senders, 2 * len(self.levels))

    def _level(self, sender: bytes, now: int) -> int:
        level, at = self.levels.get(sender, (self.full, now))
        return min(self.full, level + max(0, now - at) * self.per_s)
