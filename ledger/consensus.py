"""Consensus messages on spb/v1/consensus/... (docs/CONSENSUS.md): their bytes and signatures.

A message is deterministic CBOR `[body, sig]` or `[body, sig, attachments]`. `body` is the
CBOR map validator `from` signed (Ed25519 over the body bytes); `attachments` carry bulk
bytes the body commits to by the digest `d` (a proposed block, forwarded transactions,
blocks for a peer catching up) or messages that carry their own signatures (the round
changes and prepares that justify a proposal). Pure: decoding checks shape, sizes and the
signature; what a message means is ledger.replica's business.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from hashlib import sha256

from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey

from ledger.block import BlockError, Header, Input, decode_inputs, encode_inputs
from wire.cose import encode, load
from wire.reasons import Reject

PROPOSAL, PREPARE, COMMIT, ROUND_CHANGE = "proposal", "prepare", "commit", "round-change"
TXS, SYNC, BLOCKS = "txs", "sync", "blocks"  # forwarding and catching up, outside the rounds
KINDS = frozenset({PROPOSAL, PREPARE, COMMIT, ROUND_CHANGE, TXS, SYNC, BLOCKS})
_ATTACHMENTS = frozenset({"block", "rcs", "prepares", "txs", "blocks"})
MAX_ROUND = 1 << 20


class ConsensusError(ValueError):
    """Bytes that are not a well-formed consensus message signed by a genesis validator."""


@dataclass(frozen=True, slots=True)
class Signed:
    kind: str
    h: int  # height the message is about (SYNC: the first height wanted)
    r: int  # round
    sender: int  # validator index in the genesis
    d: bytes  # digest: a block's header hash, or SHA-256 of the bulk attachment
    pr: int  # ROUND_CHANGE: the round the sender prepared in, -1 if none
    seal: bytes  # COMMIT: the sender's seal over the header of block d
    signed: bytes  # [body, sig]: what a justification carries
    attachments: dict = field(default_factory=dict)


def digest(data: bytes) -> bytes:
    return sha256(data).digest()


def make(
    key: SigningKey,
    sender: int,
    kind: str,
    h: int,
    r: int = 0,
    d: bytes = b"",
    pr: int = -1,
    seal: bytes = b"",
    **attachments,
) -> Signed:
    body = encode({"v": 1, "typ": "qbft", "k": kind, "h": h, "r": r, "from": sender, "d": d, "pr": pr, "seal": seal})
    signed = encode([body, key.sign(body).signature])
    return Signed(kind, h, r, sender, d, pr, seal, signed, attachments)


def wire(message: Signed) -> bytes:
    """The bytes to publish."""
    parts = load(message.signed)
    assert type(parts) is list, "make() and open_signed() keep [body, sig]"
    body, sig = parts
    return encode([body, sig, message.attachments]) if message.attachments else message.signed


def open_signed(raw: object, validators: tuple[bytes, ...]) -> Signed:
    """The message, its signature checked against the sender's genesis key."""
    try:
        parts = load(raw) if type(raw) is bytes else None
        if type(parts) is not list or len(parts) not in (2, 3):
            raise ConsensusError("a consensus message is [body, sig] or [body, sig, attachments]")
        body, sig = parts[0], parts[1]
        attachments = parts[2] if len(parts) == 3 else {}
        m = load(body) if type(body) is bytes else None
        if not (
            type(m) is dict
            and set(m) == {"v", "typ", "k", "h", "r", "from", "d", "pr", "seal"}
            and m["v"] == 1
            and m["typ"] == "qbft"
            and m["k"] in KINDS
            and encode(m) == body
        ):
            raise ConsensusError("not a v1 consensus body in its deterministic encoding")
        h, r, sender, pr = m["h"], m["r"], m["from"], m["pr"]
        if not (
            _uint(h)
            and _uint(r)
            and r < MAX_ROUND
            and type(pr) is int
            and -1 <= pr < r
            and type(sender) is int
            and 0 <= sender < len(validators)
        ):
            raise ConsensusError("height, round or sender out of range")
        if not (
            type(m["d"]) is bytes
            and len(m["d"]) in (0, 32)
            and type(m["seal"]) is bytes
            and len(m["seal"]) in (0, 64)
            and type(sig) is bytes
            and len(sig) == 64
        ):
            raise ConsensusError("digest, seal or signature of the wrong size")
        if type(attachments) is not dict or not set(attachments) <= _ATTACHMENTS:
            raise ConsensusError("unknown attachments")
        crypto_sign_open(sig + body, validators[sender])
    except BadSignatureError:
        raise ConsensusError("not signed by the validator it names") from None
    except Reject as exc:
        raise ConsensusError(f"not CBOR: {exc}") from None
    assert type(raw) is bytes, "parts were loaded from it"
    signed = raw if len(parts) == 2 else encode([body, sig])
    return Signed(m["k"], h, r, sender, m["d"], pr, m["seal"], signed, attachments)


def _uint(value: object) -> bool:
    return type(value) is int and 0 <= value < 1 << 63


# -- attachments --


def block_bytes(header: Header, inputs: tuple[Input, ...]) -> bytes:
    """A proposed block: its header and the inputs to replay (trades and seals follow)."""
    return encode([header.encode(), encode_inputs(inputs)])


def parse_block(raw: object) -> tuple[Header, tuple[Input, ...]]:
    try:
        parts = load(raw) if type(raw) is bytes else None
        if type(parts) is not list:
            raise TypeError("not [header, inputs]")
        header_raw, inputs = parts
        return Header.decode(header_raw), decode_inputs(inputs)
    except (BlockError, Reject, TypeError, ValueError) as exc:
        raise ConsensusError(f"not a proposed block: {exc}") from None


def signed_list(raw: object, validators: tuple[bytes, ...], limit: int) -> list[Signed]:
    """A justification: up to `limit` signed messages ([body, sig] bytes); the ones that do
    not open are dropped, so a forged one only fails to count."""
    if type(raw) is not list or len(raw) > limit:
        raise ConsensusError("a justification is a list of at most one message per validator")
    found = []
    for item in raw:
        try:
            found.append(open_signed(item, validators))
        except ConsensusError:
            continue
    return found


def bulk(message: Signed, name: str) -> bytes:
    """A bulk attachment (forwarded transactions, blocks), checked against the digest the
    sender signed."""
    raw = message.attachments.get(name)
    if type(raw) is not bytes or digest(raw) != message.d:
        raise ConsensusError(f"the {name} attachment does not match the signed digest")
    return raw


def load_list(raw: object, what: str) -> list:
    """A bulk attachment (forwarded transactions, blocks) after its digest checked."""
    try:
        items = load(raw) if type(raw) is bytes else None
    except Reject:
        items = None
    if type(items) is not list:
        raise ConsensusError(f"{what} are not a CBOR list")
    return items
