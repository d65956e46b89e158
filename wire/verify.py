"""Stateless verification of docs/PROTOCOL.md §4, in its normative order, first failure wins.

Pure: the caller passes the clock (`now`, ms) and the trust anchors; nothing here reads a
file, a socket or the wall clock. Verified CoEs are memoised by their bytes, because every
ERC from one meter's key batch carries the same CoE; good signatures by message hash and
key, because a validator checks each transaction when it arrives and again in the block
that decides it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, overload

from wire.merkle import NodeMemo, verify_inclusion
from wire.messages import (
    AccountStatus,
    Ask,
    Bid,
    Birth,
    Body,
    BodyT,
    Cancel,
    Cleared,
    Coe,
    CoeRequest,
    Ctp,
    DevCert,
    Erc,
    Export,
    Fund,
    Opened,
    Order,
    Payout,
    Reading,
    Register,
    Rejection,
    Retire,
    Reveal,
    Revoke,
    Rotate,
    Seal,
    Statement,
    StatementRequest,
    Status,
    Withdraw,
    open_message,
    shown,
)
from wire.reasons import Reject

MAX_BATCH = 1024


@dataclass(frozen=True, slots=True)
class _VerifiedCoe:
    coe: Coe
    cert: DevCert
    nodes: NodeMemo  # inner nodes of this CoE's tree, shared by all its ERCs' proofs


class Verifier:
    """Checks messages against trusted CAs and validator keys."""

    def __init__(
        self,
        cas: Iterable[bytes],
        validators: Iterable[bytes] = (),
        operators: Iterable[bytes] = (),
        coe_cache_size: int = 4096,
        signed_cache_size: int = 16_384,
    ):
        self.cas = frozenset(cas)
        self.validators = tuple(validators)
        self.operators = frozenset(operators)
        self._coe_cache: dict[bytes, _VerifiedCoe] = {}
        self._coe_cache_size = coe_cache_size
        self._signed: dict[tuple[bytes, bytes], None] = {}  # (message hash, key) of signatures that verified
        self._signed_size = signed_cache_size

    @overload
    def verify(self, raw: bytes, now: int, expect: type[BodyT], device_key: bytes | None = None) -> Opened[BodyT]: ...
    @overload
    def verify(
        self, raw: bytes, now: int, expect: str | None = None, device_key: bytes | None = None
    ) -> Opened[Body]: ...
    def verify(
        self, raw: bytes, now: int, expect: type[Body] | str | None = None, device_key: bytes | None = None
    ) -> Opened[Any]:
        """Return the opened message or raise Reject with the §4 reason.

        `expect` is as for open_message: a typ, or the body class the message must have.
        `device_key` is the key from the sending meter's birth, needed for readings.
        """
        opened = open_message(raw, expect)
        for key in self._signing_keys(opened.body, now, device_key):
            if self._signed_by(opened, key):
                return opened
        raise Reject("signature", f"{opened.body.typ} not signed by the key it names")

    def _signed_by(self, opened: Opened, key: bytes) -> bool:
        """Step 6 for one key, remembered while it verifies: the message bytes and the key
        decide it, whatever the clock (a bounded memo, oldest dropped first)."""
        memo = (opened.envelope.hash, key)
        if memo in self._signed:
            return True
        if not opened.envelope.verifies(key):
            return False
        if self._signed_size:
            if len(self._signed) >= self._signed_size:
                del self._signed[next(iter(self._signed))]
            self._signed[memo] = None
        return True

    def _signing_keys(self, body: Body, now: int, device_key: bytes | None) -> tuple[bytes, ...]:
        """Steps 4-5 for the body's type; returns the keys step 6 may accept."""
        if isinstance(body, Erc):
            return (self._erc_key(body, now),)
        if isinstance(body, DevCert):
            self._trusted(body, now)
            return (body.iss,)
        if isinstance(body, (Birth, CoeRequest, Coe, Export)):
            cert = self.certificate(body.cert, now)
            if isinstance(body, (Birth, Export)) and body.meter != cert.meter:
                raise Reject("cert", f"{body.typ} of {shown(body.meter)} carries the devcert of {shown(cert.meter)}")
            if isinstance(body, Coe):
                _check_coe(body, now)
            return (cert.pk,)
        if isinstance(body, (Ctp, Cancel)):
            return (body.payer,)
        if isinstance(body, Ask):
            return (body.seller,)
        if isinstance(body, (Bid, Seal, Reveal)):
            return (body.buyer,)
        if isinstance(body, Withdraw):
            return (body.by,)
        if isinstance(body, (Status, Rejection, Order, Cleared, AccountStatus)):
            return self.validators
        if isinstance(body, Revoke):
            return (self._ca(body.iss, "revoke"),)
        if isinstance(body, (Register, Fund, Payout, Retire)):
            return (self._operator(body.op, body.typ),)
        if isinstance(body, Rotate):
            return (body.by if body.by == body.account else self._operator(body.by, body.typ),)
        if isinstance(body, StatementRequest):  # decision 0017
            return (body.account,)
        if isinstance(body, Statement):
            return self.validators
        assert isinstance(body, Reading)
        return () if device_key is None else (device_key,)

    def coe_of(self, erc: Erc) -> Coe:
        """The CoE inside an ERC that `verify` accepted (from the cache, normally)."""
        return self.coe_and_witness(erc)[0]

    def coe_and_witness(self, erc: Erc) -> tuple[Coe, DevCert]:
        """The CoE inside an ERC that `verify` accepted and its witness's devcert: the ERC
        names no witness, and the ledger checks revocations against it."""
        verified = self._coe_cache.get(erc.coe)
        if verified is not None:
            return verified.coe, verified.cert
        coe = open_message(erc.coe, Coe).body
        return coe, open_message(coe.cert, DevCert).body

    def certificate(self, raw: bytes, now: int) -> DevCert:
        """An embedded devcert signed by a trusted CA and valid at `now`; else `cert`."""
        try:
            opened = open_message(raw, DevCert)
        except Reject as exc:
            raise Reject("cert", f"devcert: {exc}") from None
        cert = self._trusted(opened.body, now)
        if not opened.envelope.verifies(cert.iss):
            raise Reject("cert", "devcert signature does not verify")
        return cert

    def _operator(self, pk: bytes, typ: str) -> bytes:
        """An operator key of the genesis (docs/PROTOCOL.md §10), or `not-operator`."""
        if pk not in self.operators:
            raise Reject("not-operator", f"{typ} signer is not an operator of this ledger")
        return pk

    def _ca(self, iss: bytes, typ: str) -> bytes:
        if iss not in self.cas:
            raise Reject("cert", f"{typ} issuer is not a trusted CA")
        return iss

    def _trusted(self, cert: DevCert, now: int) -> DevCert:
        self._ca(cert.iss, "devcert")
        if not cert.nbf <= now <= cert.exp:
            raise Reject("cert", f"devcert of {shown(cert.meter)} not valid at {now}")
        return cert

    def _erc_key(self, erc: Erc, now: int) -> bytes:
        """Steps 4-5 for an ERC: its CoE, the witness devcert, the Merkle proof."""
        verified = self._coe_cache.get(erc.coe)
        if verified is None:
            verified = self._verify_coe(erc.coe, now)
        else:
            self._trusted(verified.cert, now)
        coe = verified.coe
        _check_coe(coe, now)
        if not verify_inclusion(erc.pk, erc.idx, coe.size, erc.path, coe.root, verified.nodes):
            raise Reject("proof", f"pk at {erc.idx} not under the CoE root")
        return erc.pk

    def _verify_coe(self, raw: bytes, now: int) -> _VerifiedCoe:
        try:
            opened = open_message(raw, Coe)
        except Reject as exc:
            raise Reject("coe", f"embedded CoE: {exc}") from None
        coe = opened.body
        cert = self.certificate(coe.cert, now)
        if not opened.envelope.verifies(cert.pk):
            raise Reject("coe", "CoE witness signature does not verify")
        verified = _VerifiedCoe(coe, cert, NodeMemo(limit=2 * coe.size))
        if len(self._coe_cache) >= self._coe_cache_size:
            del self._coe_cache[next(iter(self._coe_cache))]
        self._coe_cache[raw] = verified
        return verified


def _check_coe(coe: Coe, now: int) -> None:
    if not 1 <= coe.size <= MAX_BATCH:
        raise Reject("coe", f"CoE size {coe.size} not in 1..{MAX_BATCH}")
    if not coe.t <= now <= coe.exp:
        raise Reject("coe", f"CoE not valid at {now}")
