"""The market's derived values (docs/PROTOCOL.md §9): order ids, fill ids, sealed-bid
commitments and the fill document. Ledger, meters and tools each need them, and a second
implementation checks them against tests/data/vectors-ext.json, so each is computed here once.
"""

from __future__ import annotations

from hashlib import sha256

from wire.cose import load, message_hash, require_canonical
from wire.messages import VERSION, FillDocument, shown
from wire.reasons import Reject

ID_BYTES = 16


def order_id(message_hash: bytes) -> bytes:
    """An ask's, bid's or seal's id: the first 16 bytes of its message hash (a revealed bid
    keeps the id of its `bid` message, not of the reveal)."""
    if len(message_hash) != 32:
        raise ValueError("a message hash is 32 bytes")
    return message_hash[:ID_BYTES]


def order_id_of(raw: bytes) -> bytes:
    """The order id of a signed ask, bid or seal, from its bytes."""
    return order_id(message_hash(raw))


def fill_id(bid_hash: bytes, ask_hash: bytes, n: int = 0) -> bytes:
    """A fill's trade id: first 16 bytes of SHA-256(bid message hash || ask message hash).
    Both hashes, so one bid filled by two asks (or the reverse) gives two trades. If a CTP
    took that id first (its id is the payer's choice and the book is public), the ledger
    uses candidate n >= 1: SHA-256(bid hash || ask hash || n as 4 bytes, big-endian)[:16]."""
    if len(bid_hash) != 32 or len(ask_hash) != 32:
        raise ValueError("message hashes are 32 bytes")
    if not 0 <= n < 1 << 32:
        raise ValueError("a fill id candidate is numbered in 0..2^32-1")
    suffix = n.to_bytes(4, "big") if n else b""
    return sha256(bid_hash + ask_hash + suffix).digest()[:ID_BYTES]


def commitment(bid_raw: bytes, nonce: bytes) -> bytes:
    """A seal's `c`: SHA-256 of the signed bid message's bytes followed by the 32-byte nonce."""
    if len(nonce) != 32:
        raise ValueError("a seal's nonce is 32 bytes")
    return sha256(bid_raw + nonce).digest()


def open_fill(data: bytes) -> FillDocument:
    """A fill document's bytes back as a FillDocument, or Reject with the §4 reason a
    message would get (decode, noncanonical, type, schema): a record read from a chain or
    a proof is checked like any input."""
    m = load(data)
    try:
        body = _fill_body(m)
    except Reject:
        require_canonical(data, m)  # noncanonical outranks type and schema, as for messages
        raise
    require_canonical(data, m, schema_checked=True)
    return body


def _fill_body(m: object) -> FillDocument:
    if not isinstance(m, dict):
        raise Reject("type", "a fill document is a map")
    v, typ = m.get("v"), m.get("typ")
    if type(v) is not int or v != VERSION or typ != FillDocument.typ:
        raise Reject("type", f"v {shown(v)} typ {shown(typ)} is not a v{VERSION} fill document")
    body = FillDocument.from_map(m)
    assert isinstance(body, FillDocument)
    return body
