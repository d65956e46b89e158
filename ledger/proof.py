"""Inclusion proofs of settled trades, checkable offline with only the genesis.

`spb-ledger proof` writes a JSON document: the block header, its seals, the trade (the
CTP's bytes and its ERC's hash) and the RFC 9162 audit path from the trade to the header's
`txs` root. `check` needs nothing but the validator keys: the seals make the header final,
the path puts the trade under it, the payer's signature makes the CTP genuine. A market
fill's trade carries its unsigned fill document instead (docs/PROTOCOL.md §9.3): the
validators derived it from the orders they ordered, so the seals alone vouch for it.

A block input (a fund, payout or rotate: the lines of a statement that are no trade,
docs/decisions/0017-statements.md) is proved the same way by its message hash: the path
runs from the input's leaf to the header's `inputs` root. An input is every message the
block decided, applied or rejected; the ledger's `money` and `rotations` tables name the
applied ones, and replaying the chain (`spb-ledger audit`) shows each verdict.
"""

from __future__ import annotations

from ledger.block import Block, BlockError, Header, input_hash, parse_trade, quorum, trade_hash
from ledger.fill import trade_ctp
from ledger.store import LedgerStore
from wire.cose import message_hash
from wire.merkle import MerkleTree, verify_inclusion
from wire.messages import Body, Ctp, Fund, Opened, Payout, Rotate, open_message
from wire.reasons import Reject


class ProofError(Exception):
    """A proof that does not check, or a trade that is not on chain."""


PROVABLE_INPUTS = {"fund": Fund, "payout": Payout, "rotate": Rotate}  # a statement's lines that are no trade


def make_proof(store: LedgerStore, ctp_id: bytes) -> dict:
    """The proof of a settled trade (a 16-byte CTP or fill id) or of a fund, payout or rotate
    the chain applied (its 32-byte message hash)."""
    if len(ctp_id) == 32:
        return make_input_proof(store, ctp_id)
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
    _check_seals(header, seals, validators)
    if not (
        type(index) is int and type(size) is int and verify_inclusion(trade_hash(trade), index, size, path, header.txs)
    ):
        raise ProofError("the trade is not under the header's txs root")
    if fill is None and not open_message(ctp_raw, Ctp).envelope.verifies(ctp.payer):
        raise ProofError("the CTP is not signed by its payer")
    return header, ctp


def _check_seals(header: Header, seals: tuple[tuple[int, bytes], ...], validators: tuple[bytes, ...]) -> None:
    if Block(header, (), seals).valid_seals(validators) < quorum(len(validators)):
        raise ProofError("the header is not sealed by a quorum of the validators")


def make_input_proof(store: LedgerStore, digest: bytes) -> dict:
    """The proof that block `height` decided the fund, payout or rotate with this message hash."""
    with store.snapshot():
        heights = [h for (h,) in store.db.execute("SELECT height FROM money WHERE hash = ?", (digest,))]
        heights += [h for (h,) in store.db.execute("SELECT height FROM rotations ORDER BY height")]
        for height in heights:
            block = store.block(height)
            assert block is not None, "the money and rotations tables name blocks of this snapshot"
            found = [i for i, (t, m) in enumerate(block.inputs) if t in PROVABLE_INPUTS and message_hash(m) == digest]
            if found:
                break
        else:
            raise ProofError(f"no fund, payout or rotate with message hash {digest.hex()} on this chain")
    index = found[0]
    typ, raw = block.inputs[index]
    tree = MerkleTree([input_hash(t, m) for t, m in block.inputs])
    return {
        "input": digest.hex(),
        "height": height,
        "header": block.header.encode().hex(),
        "seals": [[i, sig.hex()] for i, sig in block.seals],
        "typ": typ,
        "message": raw.hex(),
        "index": index,
        "size": tree.size,
        "path": [p.hex() for p in tree.inclusion_proof(index)],
    }


def check_input_proof(doc: dict, validators: tuple[bytes, ...], operators: tuple[bytes, ...]) -> tuple[Header, Body]:
    """The header and the fund, payout or rotate body an input proof vouches for: sealed by
    a quorum, under the header's `inputs` root, and signed by a genesis operator (or, for a
    rotate, by the old key itself)."""
    try:
        header = Header.decode(bytes.fromhex(doc["header"]))
        seals = tuple((i, bytes.fromhex(sig)) for i, sig in doc["seals"])
        typ, raw = doc["typ"], bytes.fromhex(doc["message"])
        opened: Opened[Body] = open_message(raw, PROVABLE_INPUTS[typ])
        path = [bytes.fromhex(p) for p in doc["path"]]
        index, size = doc["index"], doc["size"]
    except (BlockError, Reject, KeyError, TypeError, ValueError) as exc:
        raise ProofError(f"malformed proof: {exc}") from None
    if doc.get("input") != message_hash(raw).hex() or doc.get("height") != header.height:
        raise ProofError("the proof's input or height does not match its contents")
    _check_seals(header, seals, validators)
    if not (
        type(index) is int
        and type(size) is int
        and verify_inclusion(input_hash(typ, raw), index, size, path, header.inputs)
    ):
        raise ProofError("the message is not under the header's inputs root")
    body = opened.body
    assert isinstance(body, (Fund, Payout, Rotate)), "PROVABLE_INPUTS opened it as one"
    signer = body.by if isinstance(body, Rotate) else body.op
    own = isinstance(body, Rotate) and body.by == body.account
    if not ((own or signer in operators) and opened.envelope.verifies(signer)):
        raise ProofError(f"the {typ} is not signed by a genesis operator or the key it replaces")
    return header, body
