"""Deterministic CBOR and untagged COSE_Sign1 with EdDSA (docs/PROTOCOL.md §1).

One signed content has exactly one byte form: decoding re-encodes and compares, so the
SHA-256 of the bytes is a stable message id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import lru_cache
from hashlib import sha256
from typing import NamedTuple

import cbor2
from nacl.bindings import crypto_sign_open, crypto_sign_PUBLICKEYBYTES
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey

from wire.reasons import Reject

PROTECTED = bytes.fromhex("a10127")  # {1: -8}: alg EdDSA
MAX_MESSAGE = 64 * 1024
COSE_SIGN1_TAG = 18
# Sig_structure ["Signature1", protected, h'', payload] up to the payload's own header.
_SIG_PREFIX = b"\x84\x6aSignature1\x43" + PROTECTED + b"\x40"
# COSE_Sign1 array head, protected bstr, empty unprotected map: fixed by §1.
_ENVELOPE_PREFIX = b"\x84\x43" + PROTECTED + b"\xa0"


def encode(obj: object) -> bytes:
    """RFC 8949 §4.2.1 core deterministic encoding."""
    return cbor2.dumps(obj, canonical=True)


class _RawTags(Mapping):
    """Every CBOR tag decodes to a plain CBORTag, never to a datetime, bignum or shared value.

    cbor2 interprets a set of tags that differs between its versions; keeping them all raw
    makes the reason for a tagged value (it re-encodes to itself, then fails the schema)
    the same for every receiver. Lazy, because cbor2 looks tags up only as it meets them.
    """

    def __getitem__(self, tag: int) -> Callable[[object, bool], cbor2.CBORTag]:
        return lambda value, _immutable: cbor2.CBORTag(tag, value)

    def __contains__(self, tag: object) -> bool:
        return True

    def __iter__(self) -> Iterator[int]:
        return iter(())

    def __len__(self) -> int:
        return 0


_RAW_TAGS = _RawTags()


def load(data: bytes) -> object:
    """One CBOR item, or Reject('decode'); the byte comparisons after it catch trailing bytes.

    Refused here: indefinite lengths, maps with duplicate keys (compared as decoded values:
    all v1 maps have text keys, for which that is byte equality) and nesting over 16 deep.
    """
    try:
        return cbor2.loads(
            data, semantic_decoders=_RAW_TAGS, allow_indefinite=False, allow_duplicate_keys=False, max_depth=16
        )
    except Exception as exc:  # the decoder raises many kinds on hostile input
        raise Reject("decode", f"not CBOR: {type(exc).__name__}") from None


def require_canonical(data: bytes, obj: object, schema_checked: bool = False) -> None:
    """Reject('noncanonical') unless `data` is the deterministic encoding of `obj`.

    `schema_checked` says `obj` is a body map that passed its schema (text keys; ints,
    strings and lists of byte strings), so only its key order needs looking at.
    """
    try:
        plain = (
            _text_keys_in_order(tuple(obj)) if schema_checked and isinstance(obj, dict) else _plain_is_canonical(obj)
        )
        again = cbor2.dumps(obj) if plain else encode(obj)
    except Exception as exc:
        raise Reject("noncanonical", f"cannot re-encode: {type(exc).__name__}") from None
    if again != data:
        raise Reject("noncanonical", "bytes differ from the deterministic encoding")


_SCALARS = (int, bytes, str)


def _plain_is_canonical(obj: object) -> bool:
    """True when cbor2's plain encoding of `obj` is already the deterministic one.

    That holds for ints, byte and text strings and lists of them (cbor2 always writes
    shortest heads and definite lengths), under at most one map whose keys are text in
    deterministic order. Floats, tags and nested maps take the slower canonical encoder.
    This is the hot path of every message, measured by bench/protocol.py.
    """
    values: Iterable[object]
    if isinstance(obj, dict):
        if not _text_keys_in_order(tuple(obj)):
            return False
        values = obj.values()
    elif isinstance(obj, list):
        values = obj
    else:
        return type(obj) in _SCALARS
    for value in values:
        if type(value) is list:
            if not all(type(item) in _SCALARS for item in value):
                return False
        elif type(value) not in _SCALARS:
            return False
    return True


@lru_cache(maxsize=1024)
def _text_keys_in_order(keys: tuple) -> bool:
    """All keys are text, in RFC 8949 §4.2.1 order (encoded length first, then bytes).

    Cached: each message type has one or two key sets, so this is a lookup in practice.
    """
    if not all(type(k) is str for k in keys):
        return False
    encoded = [(len(b), b) for b in (k.encode() for k in keys)]
    return encoded == sorted(encoded)


def _bstr_head(length: int) -> bytes:
    """Deterministic CBOR head of a byte string (major type 2), shortest form."""
    if length < 24:
        return bytes((0x40 | length,))
    if length < 0x100:
        return bytes((0x58, length))
    if length < 0x10000:
        return b"\x59" + length.to_bytes(2, "big")
    return b"\x5a" + length.to_bytes(4, "big")  # parse_sign1 caps messages at 64 KiB


def _sig_structure(payload: bytes) -> bytes:
    return _SIG_PREFIX + _bstr_head(len(payload)) + payload


def _envelope(payload: bytes, signature: bytes) -> bytes:
    """The one deterministic byte form of [PROTECTED, {}, payload, signature]."""
    return _ENVELOPE_PREFIX + _bstr_head(len(payload)) + payload + _bstr_head(len(signature)) + signature


def message_hash(raw: bytes) -> bytes:
    """H(m) of §1: the stable identifier of a message."""
    return sha256(raw).digest()


class Sign1(NamedTuple):
    """An untagged COSE_Sign1 in its one byte form (a tuple: built for every message)."""

    raw: bytes
    payload: bytes
    signature: bytes

    @property
    def hash(self) -> bytes:
        return message_hash(self.raw)

    def verifies(self, public_key: bytes) -> bool:
        if len(public_key) != crypto_sign_PUBLICKEYBYTES:
            return False
        try:
            # pynacl's binding under VerifyKey.verify, without its per-call wrapper objects
            crypto_sign_open(self.signature + _sig_structure(self.payload), public_key)
        except BadSignatureError:
            return False
        return True


def sign1(payload: bytes, key: SigningKey) -> bytes:
    """Sign and encode; refuses a message every receiver would reject as over 64 KiB."""
    raw = _envelope(payload, key.sign(_sig_structure(payload)).signature)
    if len(raw) > MAX_MESSAGE:
        raise ValueError(f"a {len(raw)}-byte message is over the {MAX_MESSAGE}-byte limit")
    return raw


def parse_sign1(raw: bytes) -> Sign1:
    """Steps 1-2 of §4 for the envelope: every `decode` check, then every `noncanonical` one."""
    if not isinstance(raw, (bytes, bytearray)):
        raise Reject("decode", "not bytes")
    if len(raw) > MAX_MESSAGE:
        raise Reject("decode", "over the 64 KiB limit")
    raw = bytes(raw)
    obj = load(raw)
    tagged = isinstance(obj, cbor2.CBORTag)
    if isinstance(obj, cbor2.CBORTag):
        if obj.tag != COSE_SIGN1_TAG:
            raise Reject("decode", f"tag {obj.tag} around the message")
        obj = obj.value
    if not (isinstance(obj, list) and len(obj) == 4):
        raise Reject("decode", "not a 4-element COSE_Sign1 array")
    protected, unprotected, payload, signature = obj
    if not (
        type(protected) is bytes and type(unprotected) is dict and type(payload) is bytes and type(signature) is bytes
    ):
        raise Reject("decode", "COSE_Sign1 element of the wrong type")
    if len(signature) != 64:
        raise Reject("decode", "signature is not 64 bytes")
    if tagged:
        raise Reject("noncanonical", "tag 18: v1 messages are untagged")
    if protected != PROTECTED or unprotected:
        raise Reject("noncanonical", "headers other than {1: -8} / {}")
    # Rebuilding the one byte form catches longer heads and trailing bytes.
    if raw != _envelope(payload, signature):
        raise Reject("noncanonical", "bytes differ from the deterministic encoding")
    return Sign1(raw, payload, signature)
