"""The fill document: what stands in a market fill's trade for a payer-signed CTP
(docs/PROTOCOL.md §9.3).

A fill is made by the ledger at clearing, not signed by anyone: every replica derives the
same document from the ordered inputs, and the block that holds it vouches for it. Its
deterministic CBOR is the record's `raw`, SHA-256 of it the record's `hash`, and it is
the first half of the fill's on-chain trade once it settles, where a CTP's bytes would be.
"""

from __future__ import annotations

from collections.abc import Callable

from wire.market import fill_id, open_fill
from wire.messages import Ctp, FillDocument, open_message

FillDoc = FillDocument  # the wire's class: one definition of the document's keys and types


def fill_ctp(doc: FillDoc) -> Ctp:
    """The CTP body a fill acts as: settlement, expiry and statuses treat both alike."""
    return Ctp(
        id=doc.id,
        payer=doc.payer,
        payee=doc.payee,
        amount=doc.amount,
        wh=doc.wh,
        exp=doc.exp,
        meter=doc.meter,
        t=doc.t,
    )


def free_fill_id(bid_hash: bytes, ask_hash: bytes, taken: Callable[[bytes], bool]) -> bytes:
    """The fill's id (wire.market.fill_id), or its first numbered candidate that no CTP took."""
    n = 0
    while taken(candidate := fill_id(bid_hash, ask_hash, n)):
        n += 1
    return candidate


def trade_ctp(raw: bytes) -> tuple[Ctp, FillDoc | None]:
    """The CTP body of an on-chain trade's first half, with its fill document if it is one
    (unsigned) rather than a payer-signed CTP; Reject if it is neither."""
    if raw[:1] and raw[0] >> 5 == 5:  # a CBOR map: a COSE_Sign1 is an array (or a tagged one)
        doc = open_fill(raw)
        return fill_ctp(doc), doc
    return open_message(raw, Ctp).body, None
