"""Certificates of Existence between meters (docs/PROTOCOL.md §3-§4): asking for one, answering one.

Pure: messages, keys and the clock come in; signed bytes or an exception come out.
A meter never vouches for itself: the CoE exists so that a second device attests that
the batch's root existed at `t`, without learning which trade its keys will confirm.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nacl.signing import SigningKey

from edge.keyring import Batch
from wire.messages import Coe, CoeRequest, DevCert, open_message
from wire.reasons import Reject
from wire.verify import MAX_BATCH, Verifier

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
CLOCK_SKEW_MS = HOUR_MS  # a CoE is valid from an hour before it is signed, as devcerts are
REQUEST_AGE_MS = 10 * 60_000  # a request older (or newer) than this by our clock is not answered
MIN_LIFE_MS = HOUR_MS  # a CoE valid for less than this is of no use to a requester
BURST = 3  # requests a requester may make at once before the hourly rate applies


class Refused(Exception):
    """A well-formed request this witness will not answer (policy, not a §4 failure)."""


def request(batch: Batch, cert: bytes, device_key: SigningKey, nonce: bytes, now: int) -> bytes:
    return CoeRequest(cert=cert, root=batch.root, size=batch.size, nonce=nonce, t=now).sign(device_key)


def accept(verifier: Verifier, raw: bytes, waiting: Batch, me: str, now: int) -> Coe:
    """The CoE in a `coe/resp`, if it vouches for the batch we wait on; else Reject/Refused."""
    coe: Coe = verifier.verify(raw, now, expect=Coe).body
    if (coe.root, coe.size) != (waiting.root, waiting.size):
        raise Refused("the CoE is not for the batch this meter is waiting on")
    if open_message(coe.cert, DevCert).body.meter == me:
        raise Refused("a CoE signed by this meter itself")
    if coe.exp < now + MIN_LIFE_MS:
        raise Refused("the CoE expires within the hour")
    return coe


@dataclass
class Witness:
    """Answers other meters' CoE requests, at most `per_hour` per requester (burst of 3)."""

    me: str
    cert: bytes
    device_key: SigningKey
    verifier: Verifier
    valid_ms: int
    per_hour: int
    _buckets: dict[str, tuple[float, int]] = field(default_factory=dict)  # requester -> (tokens, at)

    def answer(self, raw: bytes, own_roots: set[bytes], now: int) -> tuple[str, bytes]:
        """(requester meter id, signed CoE) for a request; Reject if it does not verify,
        Refused if it is ours, stale, for an own root, or over the requester's rate."""
        req: CoeRequest = self.verifier.verify(raw, now, expect=CoeRequest).body
        requester = open_message(req.cert, DevCert).body.meter  # verify() checked the cert
        if not 1 <= req.size <= MAX_BATCH:
            raise Reject("schema", f"coereq size {req.size} not in 1..{MAX_BATCH}")
        if requester == self.me:
            raise Refused("a request from this meter itself")
        if req.root in own_roots:
            raise Refused("a request for the root of one of this meter's own batches")
        if abs(now - req.t) > REQUEST_AGE_MS:
            raise Refused(f"a request from {requester} made {(now - req.t) // 1000} s ago by our clock")
        self._spend(requester, now)
        own: DevCert = open_message(self.cert, DevCert).body
        coe = Coe(
            root=req.root, size=req.size, t=now - CLOCK_SKEW_MS, exp=min(now + self.valid_ms, own.exp), cert=self.cert
        )
        return requester, coe.sign(self.device_key)

    def _spend(self, requester: str, now: int) -> None:
        """Token bucket per requester: BURST tokens, refilled at per_hour per hour."""
        tokens, at = self._buckets.get(requester, (BURST, now))
        tokens = min(BURST, tokens + (now - at) * self.per_hour / HOUR_MS)
        if tokens < 1:
            raise Refused(f"{requester} asked for more than {self.per_hour} CoEs an hour")
        self._buckets[requester] = (tokens - 1, now)
