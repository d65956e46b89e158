"""Inclusion proofs of settled trades, checkable offline with only the genesis.

`spb-ledger proof` writes a JSON document: the block header, its seals, the trade (the
CTP's bytes and its ERC's hash) and the RFC 9162 audit path from the trade to the header's
`txs` root. `check` needs nothing but the validator keys: the seals make the header final,
the path puts the trade under it, the payer's signature makes the CTP genuine. A market
fill's trade carries its unsigned fill document instead (docs/PROTOCOL.md §9.3): the
validators derived it from the orders they ordered, so the seals alone vouch for it.
"""

from __future__ import annotations

from ledger.block import Block, BlockError, Header, parse_trade, quorum, trade_hash
from ledger.fill import trade_ctp
from ledger.store import LedgerStore
from wire.merkle import MerkleTree, verify_inclusion
from wire.messages import Ctp, open_message
from wire.reasons import Reject


class ProofError(Exception):
    """A proof that does not check, or a trade that is not on chain."""


def make_proof(store: LedgerStore, ctp_id: bytes) -> dict:
    with store.snapshot():
        where = store.trade_at(ctp_id)
        if where is None:
            raise ProofError(f"CTP {ctp_id.hex()} has not settled on this chain")
        height, index = where
        block = store.block(height)
    assert block is not None, "trade_at found it in a block of this snapshot"
    tree = MerkleTree([trade_hash(trade) for trade in block.trades])
    return {
        "ctp": ctp_id.hex(),
        "height": height,
        "header": block.header.encode().hex(),
        "seals": [[i, sig.hex()] for i, sig in block.seals],
        "trade": block.trades[index].hex(),
        "index": index,
        "size": tree.size,
        "path": [p.hex() for p in tree.inclusion_proof(index)],
    }


def check_proof(doc: dict, validators: tuple[bytes, ...]) -> tuple[Header, Ctp]:
    """The header and CTP a proof vouches for; ProofError if any part fails."""
    try:
        header = Header.decode(bytes.fromhex(doc["header"]))
        seals = tuple((i, bytes.fromhex(sig)) for i, sig in doc["seals"])
        trade = bytes.fromhex(doc["trade"])
        ctp_raw, _erc_hash = parse_trade(trade)
        ctp, fill = trade_ctp(ctp_raw)
        path = [bytes.fromhex(p) for p in doc["path"]]
        index, size = doc["index"], doc["size"]
    except (BlockError, Reject, KeyError, TypeError, ValueError) as exc:
        raise ProofError(f"malformed proof: {exc}") from None
    if doc.get("ctp") != ctp.id.hex() or doc.get("height") != header.height:
        raise ProofError("the proof's ctp or height does not match its contents")
    if Block(header, (), seals).valid_seals(validators) < quorum(len(validators)):
        raise ProofError("the header is not sealed by a quorum of the validators")
    if not (
        type(index) is int and type(size) is int and verify_inclusion(trade_hash(trade), index, size, path, header.txs)
    ):
        raise ProofError("the trade is not under the header's txs root")
    if fill is None and not open_message(ctp_raw, Ctp).envelope.verifies(ctp.payer):
        raise ProofError("the CTP is not signed by its payer")
    return header, ctp
