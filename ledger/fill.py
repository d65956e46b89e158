"""The fill document: what stands in a market fill's trade for a payer-signed CTP
(docs/PROTOCOL.md §9.3).

A fill is made by the ledger at clearing, not signed by anyone: every replica derives the
same document from the ordered inputs, and the block that holds it vouches for it. Its
deterministic CBOR is the record's `raw`, SHA-256 of it the record's `hash`, and it is
the first half of the fill's on-chain trade once it settles, where a CTP's bytes would be.
"""

from __future__ import annotations

from dataclasses import dataclass
from hashlib import sha256

from wire.cose import encode, load
from wire.messages import Ctp, open_message
from wire.reasons import Reject

_KEYS = ("v", "typ", "id", "k", "bid", "ask", "payer", "payee", "wh", "amount", "exp", "meter", "t")
_BYTES = {"id": 16, "bid": 32, "ask": 32, "payer": 32, "payee": 32, "meter": 32}
_UINTS = ("k", "wh", "amount", "exp", "t")


@dataclass(frozen=True, slots=True)
class FillDoc:
    id: bytes  # the trade's id: first 16 bytes of SHA-256(bid hash || ask hash)
    k: int  # the interval it was cleared for
    bid: bytes  # hash of the bid message
    ask: bytes  # hash of the ask message
    payer: bytes  # the buyer
    payee: bytes  # the seller
    wh: int
    amount: int
    exp: int
    meter: bytes  # the bid's CoE root: only that meter's one-time keys confirm delivery
    t: int  # the block time of the clearing

    def encode(self) -> bytes:
        return encode({"v": 1, "typ": "fill", **{name: getattr(self, name) for name in _KEYS[2:]}})

    def ctp(self) -> Ctp:
        """The CTP body the fill acts as: settlement, expiry and statuses treat both alike."""
        return Ctp(
            id=self.id,
            payer=self.payer,
            payee=self.payee,
            amount=self.amount,
            wh=self.wh,
            exp=self.exp,
            meter=self.meter,
            t=self.t,
        )

    @classmethod
    def parse(cls, raw: bytes) -> FillDoc:
        """A fill document in its deterministic encoding; ValueError for anything else."""
        try:
            m = load(raw)
        except Reject:
            raise ValueError("not CBOR") from None
        if type(m) is not dict or tuple(sorted(m)) != tuple(sorted(_KEYS)) or (m["v"], m["typ"]) != (1, "fill"):
            raise ValueError("not a fill document")
        for name, size in _BYTES.items():
            if type(m[name]) is not bytes or len(m[name]) != size:
                raise ValueError(f"fill {name} is not {size} bytes")
        for name in _UINTS:
            if type(m[name]) is not int or not 0 <= m[name] < 1 << 64:
                raise ValueError(f"fill {name} is not an unsigned integer")
        doc = cls(**{name: m[name] for name in _KEYS[2:]})
        if doc.encode() != raw:
            raise ValueError("fill document is not in its deterministic encoding")
        return doc


def fill_id(bid_hash: bytes, ask_hash: bytes, taken) -> bytes:
    """The id of the fill of this bid by this ask: SHA-256(bid hash || ask hash)[:16], or,
    if a CTP chose that id before (CTP ids are the payer's choice, and the book is public),
    SHA-256(bid hash || ask hash || n as 4 bytes)[:16] for the smallest n >= 1 that is free."""
    base, n = bid_hash + ask_hash, 0
    candidate = sha256(base).digest()[:16]
    while taken(candidate):
        n += 1
        candidate = sha256(base + n.to_bytes(4, "big")).digest()[:16]
    return candidate


def trade_ctp(raw: bytes) -> tuple[Ctp, FillDoc | None]:
    """The CTP body of an on-chain trade's first half, with its fill document if it is one
    (unsigned) rather than a payer-signed CTP. Reject or ValueError if it is neither."""
    if raw[:1] and raw[0] >> 5 == 5:  # a CBOR map: a COSE_Sign1 is an array (or a tagged one)
        doc = FillDoc.parse(raw)
        return doc.ctp(), doc
    return open_message(raw, Ctp).body, None
