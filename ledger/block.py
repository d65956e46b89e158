"""Blocks: the hash-chained log the ledger writes, and the part of it that is the chain.

A block has a header (height, previous hash, time, three RFC 9162 roots), the settled
trades (docs/PROTOCOL.md §5: only a settled CTP's bytes and its ERC's hash go on chain), the
validators' seals over the header, and, off chain, the inputs it decided: every message
consensus ordered into it, applied or rejected, with the transaction topic it came on,
which every validator keeps to replay and audit. Format: docs/decisions/0002-ledger-v1.md
and 0006-consensus.md (format v2).
"""

from __future__ import annotations

from dataclasses import dataclass
from hashlib import sha256

from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey

from wire.cose import encode, load
from wire.merkle import MerkleTree
from wire.reasons import Reject


class BlockError(ValueError):
    """Bytes that are not a block of this format."""


def trade_bytes(ctp_raw: bytes, erc_hash: bytes) -> bytes:
    """One on-chain transaction: [ctp message bytes, SHA-256 of the ERC that settled it]."""
    return encode([ctp_raw, erc_hash])


def trade_hash(trade: bytes) -> bytes:
    """A trade's leaf data under the header's `txs` root."""
    return sha256(trade).digest()


def parse_trade(raw: bytes) -> tuple[bytes, bytes]:
    try:
        pair = load(raw)
        if type(pair) is not list:
            raise ValueError
        ctp_raw, erc_hash = pair
        if type(ctp_raw) is not bytes or type(erc_hash) is not bytes or len(erc_hash) != 32:
            raise ValueError
    except (Reject, TypeError, ValueError):
        raise BlockError("a trade is [ctp bytes, 32-byte ERC hash]") from None
    return ctp_raw, erc_hash


BLOCK_V = 2  # 2: inputs are (typ, message) pairs, rejected ones included (decision 0006)
Input = tuple[str, bytes]  # (body typ of the tx topic it arrived on, the message bytes)


def input_hash(typ: str, raw: bytes) -> bytes:
    """An input's leaf data under the header's `inputs` root: the topic is part of it."""
    return sha256(encode([typ, raw])).digest()


def encode_inputs(inputs: tuple[Input, ...]) -> bytes:
    return encode([[typ, raw] for typ, raw in inputs])


def decode_inputs(raw: bytes) -> tuple[Input, ...]:
    try:
        pairs = load(raw)
        if type(pairs) is not list:
            raise ValueError
        inputs = tuple((typ, msg) for typ, msg in pairs)
        if not all(type(typ) is str and type(msg) is bytes for typ, msg in inputs):
            raise ValueError
    except (Reject, TypeError, ValueError):
        raise BlockError("inputs are [[typ, message bytes]...]") from None
    return inputs


def merkle_root(hashes: list[bytes]) -> bytes:
    """RFC 9162 root whose leaves are the given 32-byte hashes."""
    return MerkleTree(hashes).root()


def quorum(n_validators: int) -> int:
    """Seals that make a block final (docs/PROTOCOL.md §6): ceil(2n/3)."""
    return -(-2 * n_validators // 3)


@dataclass(frozen=True, slots=True)
class Header:
    height: int
    prev: bytes  # hash of the previous header; the genesis hash for height 1
    t: int  # block time, ms: the clock every check of this block uses
    txs: bytes  # RFC 9162 root over the hashes of this block's trades
    ctps: bytes  # RFC 9162 root of the CTP database after this block
    inputs: bytes  # RFC 9162 root over input_hash of each decided input, in order

    def encode(self) -> bytes:
        return encode(
            {
                "v": BLOCK_V,
                "typ": "header",
                "h": self.height,
                "prev": self.prev,
                "t": self.t,
                "txs": self.txs,
                "ctps": self.ctps,
                "inputs": self.inputs,
            }
        )

    @property
    def hash(self) -> bytes:
        return sha256(self.encode()).digest()

    @classmethod
    def decode(cls, raw: bytes) -> Header:
        try:
            m = load(raw)
            if type(m) is not dict:
                raise TypeError
            header = cls(m["h"], m["prev"], m["t"], m["txs"], m["ctps"], m["inputs"])
            ok = m["v"] == BLOCK_V and m["typ"] == "header" and len(m) == 8
        except (Reject, KeyError, TypeError, AttributeError):
            ok = False
        if not ok or header.encode() != raw:
            raise BlockError("not a v2 block header in its deterministic encoding")
        return header


@dataclass(frozen=True, slots=True)
class Block:
    header: Header
    trades: tuple[bytes, ...]  # trade_bytes(...) in the order they settled
    seals: tuple[tuple[int, bytes], ...]  # (validator index, Ed25519 signature over the header bytes)
    inputs: tuple[Input, ...] = ()  # off chain: the decided messages, in order

    @property
    def hash(self) -> bytes:
        return self.header.hash

    def chain_bytes(self) -> bytes:
        """What goes on chain and on spb/v1/ledger/blocks: everything but the inputs."""
        return encode(
            {
                "v": BLOCK_V,
                "typ": "block",
                "header": self.header.encode(),
                "trades": list(self.trades),
                "seals": [[i, sig] for i, sig in self.seals],
            }
        )

    @classmethod
    def from_chain_bytes(cls, raw: bytes, inputs: tuple[Input, ...] = ()) -> Block:
        try:
            m = load(raw)
            if type(m) is not dict:
                raise TypeError
            header = Header.decode(m["header"])
            trades = tuple(m["trades"])
            seals = tuple((i, sig) for i, sig in m["seals"])
            ok = m["v"] == BLOCK_V and m["typ"] == "block" and len(m) == 5
        except (Reject, KeyError, TypeError, ValueError, AttributeError):
            ok = False
        if not ok:
            raise BlockError("not a v2 block")
        block = cls(header, trades, seals, inputs)
        if block.chain_bytes() != raw:
            raise BlockError("block is not in its deterministic encoding")
        return block

    def sealed(self, index: int, key: SigningKey) -> Block:
        return self.with_seals({*self.seals, (index, seal(self.header.encode(), key))})

    def with_seals(self, seals) -> Block:
        return Block(self.header, self.trades, tuple(sorted(seals)), self.inputs)

    def valid_seals(self, validators: tuple[bytes, ...]) -> int:
        """How many distinct genesis validators sealed this header."""
        return len({index for index, _ in self.good_seals(validators)})

    def good_seals(self, validators: tuple[bytes, ...]) -> set[tuple[int, bytes]]:
        """The seals that are genesis validators' signatures over this header."""
        header = self.header.encode()
        return {(index, sig) for index, sig in self.seals if seal_valid(header, index, sig, validators)}


def seal(header: bytes, key: SigningKey) -> bytes:
    """A validator's commit seal: its Ed25519 signature over the header bytes."""
    return key.sign(header).signature


def seal_valid(header: bytes, index: object, sig: object, validators: tuple[bytes, ...]) -> bool:
    if not (type(index) is int and 0 <= index < len(validators) and type(sig) is bytes and len(sig) == 64):
        return False
    try:
        crypto_sign_open(sig + header, validators[index])
    except BadSignatureError:
        return False
    return True
