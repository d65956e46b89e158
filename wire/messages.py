"""One typed class per message body of docs/PROTOCOL.md §4, and steps 1-3 of its verification.

A body class knows its wire keys and their types; `open_message` turns bytes into a typed,
schema-checked body or raises Reject with the §4 reason. Signatures and certificates are
checked in wire.verify, which needs trust anchors and a clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from enum import StrEnum
from functools import cache
from typing import Any, ClassVar, Generic, NamedTuple, TypeVar, overload

from nacl.signing import SigningKey

from wire.cose import Sign1, encode, load, parse_sign1, require_canonical, sign1
from wire.reasons import REASONS, Reject

VERSION = 1
SOURCES = ("solar", "wind", "hydro", "gas", "coal", "any")  # a CTP's optional `src` (v1)
# The source a meter is registered with at provisioning, as an ask names it (Market, decision 0009).
SELL_SOURCES = ("solar", "wind", "hydro", "grid", "fossil")
RENEWABLE = frozenset({"solar", "wind", "hydro"})


class CtpState(StrEnum):
    """A CTP's state, as a status names it (docs/PROTOCOL.md §5, §7): the one vocabulary of
    ledger, meters and tools. The values are the wire's text, and a member encodes (CBOR,
    SQLite, f-strings) and compares exactly as that text."""

    HELD = "held"
    SETTLED = "settled"
    REFUNDED = "refunded"
    REJECTED = "rejected"


class OrderState(StrEnum):
    """A market order's state, as an `order` status names it (docs/PROTOCOL.md, Market).

    open -> withdrawn | filled | partial | unfilled; a sealed bid is `sealed` until its
    reveal makes it `open`, or `void` when the reveal window closes without one."""

    SEALED = "sealed"
    OPEN = "open"
    WITHDRAWN = "withdrawn"
    FILLED = "filled"
    PARTIAL = "partial"
    UNFILLED = "unfilled"
    VOID = "void"


class Side(StrEnum):
    ASK = "ask"
    BID = "bid"


Check = Callable[[object], bool]
_ABSENT = object()  # a key not in the map, unlike a key present with CBOR null


def shown(value: object) -> str:
    """A short, safe description of a hostile value for a reject's detail.

    Never repr() what a sender chose: a 5000-digit integer makes repr() raise, and a
    reject must never turn into another exception.
    """
    if (type(value) is str or type(value) is bytes) and len(value) <= 32:
        return repr(value)
    if type(value) is int and -(1 << 64) <= value < 1 << 64:
        return str(value)
    return f"<{type(value).__name__}>"


def _uint(x: object) -> bool:
    return type(x) is int and 0 <= x < 1 << 64


def _int(x: object) -> bool:
    return type(x) is int and -(1 << 64) <= x < 1 << 64


def _positive(x: object) -> bool:
    return type(x) is int and 0 < x < 1 << 64


def _order_wh(x: object) -> bool:
    """An order's Wh: > 0 and below 2^32, so that an interval's sums stay in 64-bit columns."""
    return type(x) is int and 0 < x < 1 << 32


def _counter(x: object) -> bool:
    """An export record's Wh: a signed 64-bit integer's range, as the ledger stores it."""
    return type(x) is int and 0 <= x < 1 << 63


def _bool(x: object) -> bool:
    return type(x) is bool


def _text(x: object) -> bool:
    return type(x) is str


def _bytes(x: object) -> bool:
    return type(x) is bytes


def _bstr(n: int) -> Check:
    return lambda x: type(x) is bytes and len(x) == n


def _list_of(check: Check) -> Check:
    return lambda x: type(x) is list and all(map(check, x))


def _one_of(values) -> Check:
    return lambda x: type(x) is str and x in values


def _product(x: object) -> bool:
    """[clearing price or null, Wh filled]: one product of a `cleared` result. The price is
    null exactly when nothing filled (every fill has Wh > 0 and sets the price), so
    [null, 5] or [13, 0] is no result any clearing gives."""
    return type(x) is list and len(x) == 2 and _uint(x[1]) and (x[0] is None if x[1] == 0 else _uint(x[0]))


def _req(check: Check):
    return field(metadata={"check": check})


class _MemberOf:
    """The check of a text that must name a member of a StrEnum; from_map decodes it to the
    member (`parse`), and a member encodes as its text."""

    def __init__(self, enum: type[StrEnum]):
        self.enum, self.members = enum, {member.value: member for member in enum}
        self.parse = self.members.__getitem__

    def __call__(self, x: object) -> bool:
        return type(x) in (str, self.enum) and x in self.members


def _opt(check: Check):
    return field(default=None, metadata={"check": check})


_BSTR16, _BSTR32 = _bstr(16), _bstr(32)
_CTP_STATE = _MemberOf(CtpState)
_ORDER_STATE = _MemberOf(OrderState)
_SIDE = _MemberOf(Side)


@dataclass(frozen=True, kw_only=True, slots=True)
class Body:
    """Base of every body: `v` and `typ` are implied by the class."""

    typ: ClassVar[str]

    def to_map(self) -> dict:
        m = {"v": VERSION, "typ": self.typ}
        for name, *_ in self._schema():
            value = getattr(self, name)
            if value is not None:
                m[name] = value
        return m

    def encode(self) -> bytes:
        """The body's deterministic CBOR; refuses a body that every receiver would reject."""
        m = self.to_map()
        for name, check, required, _ in self._schema():
            if (name in m or required) and not check(m.get(name)):
                raise ValueError(f"{self.typ}: {name}={shown(m.get(name))} does not fit the v{VERSION} schema")
        return encode(m)

    def sign(self, key: SigningKey) -> bytes:
        """The whole signed message, ready for the bus."""
        return sign1(self.encode(), key)

    @classmethod
    def from_map(cls, m: dict) -> Body:
        """Schema check (§1: v1 receivers reject missing keys or keys of the wrong type).

        Unknown keys are rejected too: see docs/decisions/0001-wire-v1-interpretation.md.
        """
        body = object.__new__(cls)
        present = 2  # v and typ, checked by open_message
        for name, check, required, set_slot in cls._schema():
            value = m.get(name, _ABSENT)
            if value is _ABSENT:
                if required:
                    raise Reject("schema", f"{cls.typ}: missing {name!r}")
                value = None
            elif not check(value):
                raise Reject("schema", f"{cls.typ}: {name!r} has the wrong type")
            else:
                present += 1
            set_slot(body, value)
        if len(m) != present:
            unknown = set(m) - {name for name, *_ in cls._schema()} - {"v", "typ"}
            raise Reject("schema", f"{cls.typ}: unknown keys {', '.join(sorted(map(shown, unknown)))}")
        return body

    @classmethod
    @cache
    def _schema(cls) -> tuple[tuple[str, Check, bool, Callable], ...]:
        """(key, type check, required, slot setter) per wire key, computed once per class.

        from_map fills the slots directly: the frozen dataclass __init__ costs 1.5 µs per
        message against 0.6 µs, on the path every message takes (bench/protocol.py).
        """
        return tuple((f.name, f.metadata["check"], f.default is MISSING, _setter(cls, f)) for f in fields(cls))


def _setter(cls: type[Body], f) -> Callable:
    """How from_map fills field f's slot: with the decoded value, or what its "parse" makes of it."""
    set_slot, parse = getattr(cls, f.name).__set__, getattr(f.metadata["check"], "parse", None)
    if parse is None:
        return set_slot
    return lambda body, value: set_slot(body, value if value is None else parse(value))


@dataclass(frozen=True, kw_only=True, slots=True)
class DevCert(Body):
    typ: ClassVar[str] = "devcert"
    meter: str = _req(_text)
    pk: bytes = _req(_BSTR32)
    iss: bytes = _req(_BSTR32)
    nbf: int = _req(_uint)
    exp: int = _req(_uint)


@dataclass(frozen=True, kw_only=True, slots=True)
class CoeRequest(Body):
    typ: ClassVar[str] = "coereq"
    cert: bytes = _req(_bytes)
    root: bytes = _req(_BSTR32)
    size: int = _req(_uint)
    nonce: bytes = _req(_BSTR16)
    t: int = _req(_uint)


@dataclass(frozen=True, kw_only=True, slots=True)
class Coe(Body):
    typ: ClassVar[str] = "coe"
    root: bytes = _req(_BSTR32)
    size: int = _req(_uint)
    t: int = _req(_uint)
    exp: int = _req(_uint)
    cert: bytes = _req(_bytes)


@dataclass(frozen=True, kw_only=True, slots=True)
class Ctp(Body):
    typ: ClassVar[str] = "ctp"
    id: bytes = _req(_BSTR16)
    payer: bytes = _req(_BSTR32)
    payee: bytes = _req(_BSTR32)
    amount: int = _req(_uint)
    wh: int = _req(_uint)
    exp: int = _req(_uint)
    meter: bytes = _req(_BSTR32)
    t: int = _req(_uint)
    src: str | None = _opt(_one_of(SOURCES))


@dataclass(frozen=True, kw_only=True, slots=True)
class Erc(Body):
    typ: ClassVar[str] = "erc"
    ctp: bytes = _req(_BSTR16)
    wh: int = _req(_uint)
    t: int = _req(_uint)
    pk: bytes = _req(_BSTR32)
    idx: int = _req(_uint)
    path: list[bytes] = _req(_list_of(_BSTR32))
    coe: bytes = _req(_bytes)


@dataclass(frozen=True, kw_only=True, slots=True)
class Cancel(Body):
    typ: ClassVar[str] = "cancel"
    ctp: bytes = _req(_BSTR16)
    payer: bytes = _req(_BSTR32)
    t: int = _req(_uint)


@dataclass(frozen=True, kw_only=True, slots=True)
class Birth(Body):
    typ: ClassVar[str] = "birth"
    meter: str = _req(_text)
    cert: bytes = _req(_bytes)
    fw: str = _req(_text)
    boot: int = _req(_uint)
    t: int = _req(_uint)


@dataclass(frozen=True, kw_only=True, slots=True)
class Status(Body):
    typ: ClassVar[str] = "status"
    ctp: bytes = _req(_BSTR16)
    state: CtpState = _req(_CTP_STATE)
    t: int = _req(_uint)
    reason: str | None = _opt(_one_of(REASONS))
    h: int | None = _opt(_uint)
    msg: bytes | None = _opt(_BSTR32)
    # Extension (decision 0009): a `held` status names both parties, so the seller learns of
    # a sale, market fill or direct CTP, as soon as the buyer's money is held.
    payer: bytes | None = _opt(_BSTR32)
    payee: bytes | None = _opt(_BSTR32)
    # ... and what was sold: the Wh the buyer's meter waits for and the seller's meter must
    # export, and when the promise lapses (a fill's buyer never signed a CTP that says so).
    wh: int | None = _opt(_uint)
    exp: int | None = _opt(_uint)


@dataclass(frozen=True, kw_only=True, slots=True)
class Rejection(Body):
    typ: ClassVar[str] = "reject"
    msg: bytes = _req(_BSTR32)
    reason: str = _req(_one_of(REASONS))
    t: int = _req(_uint)


@dataclass(frozen=True, kw_only=True, slots=True)
class Reading(Body):
    typ: ClassVar[str] = "reading"
    meter: str = _req(_text)
    seq: int = _req(_uint)
    t: int = _req(_uint)
    wh_in: int = _req(_uint)
    wh_out: int = _req(_uint)
    w: int = _req(_int)


@dataclass(frozen=True, kw_only=True, slots=True)
class Revoke(Body):
    """The CA withdraws a device key: no CoE it witnessed from `t` on counts (decision 0004)."""

    typ: ClassVar[str] = "revoke"
    meter: str = _req(_text)
    pk: bytes = _req(_BSTR32)
    iss: bytes = _req(_BSTR32)
    t: int = _req(_uint)


# -- the market (docs/PROTOCOL.md "Market", docs/decisions/0009-market.md) --


@dataclass(frozen=True, kw_only=True, slots=True)
class Ask(Body):
    """An offer to sell `wh` from meter `meter` (its registered source `src`) in interval `k`
    for at least `price` units per Wh. Signed by the seller's account key."""

    typ: ClassVar[str] = "ask"
    seller: bytes = _req(_BSTR32)
    meter: str = _req(_text)
    wh: int = _req(_order_wh)
    price: int = _req(_uint)
    k: int = _req(_uint)
    src: str = _req(_one_of(SELL_SOURCES))
    t: int = _req(_uint)


@dataclass(frozen=True, kw_only=True, slots=True)
class Bid(Body):
    """An offer to buy `wh` in interval `k` for at most `price` units per Wh, delivered to the
    meter whose CoE root is `meter` (as a CTP names it). Signed by the buyer's account key."""

    typ: ClassVar[str] = "bid"
    buyer: bytes = _req(_BSTR32)
    wh: int = _req(_order_wh)
    price: int = _req(_uint)
    k: int = _req(_uint)
    green: bool = _req(_bool)
    meter: bytes = _req(_BSTR32)
    t: int = _req(_uint)


@dataclass(frozen=True, kw_only=True, slots=True)
class Seal(Body):
    """A sealed bid's commitment: c = SHA-256(bid message bytes || nonce), with `deposit`
    units held in escrow, the most the bid may cost."""

    typ: ClassVar[str] = "seal"
    buyer: bytes = _req(_BSTR32)
    k: int = _req(_uint)
    c: bytes = _req(_BSTR32)
    deposit: int = _req(_positive)
    t: int = _req(_uint)


@dataclass(frozen=True, kw_only=True, slots=True)
class Reveal(Body):
    """Opens the seal whose order id is `seal`: `bid` is the signed bid message committed to."""

    typ: ClassVar[str] = "reveal"
    buyer: bytes = _req(_BSTR32)
    seal: bytes = _req(_BSTR16)
    bid: bytes = _req(_bytes)
    nonce: bytes = _req(_BSTR32)
    t: int = _req(_uint)


@dataclass(frozen=True, kw_only=True, slots=True)
class Withdraw(Body):
    """Cancels the signer's own order (ask, bid or seal) before its interval's gate."""

    typ: ClassVar[str] = "withdraw"
    by: bytes = _req(_BSTR32)
    order: bytes = _req(_BSTR16)
    t: int = _req(_uint)


@dataclass(frozen=True, kw_only=True, slots=True)
class Export(Body):
    """A meter's proof of delivery: `wh` exported during interval `k`, its cumulative export
    counter `total` at the end of k. Signed by the device key of the embedded devcert."""

    typ: ClassVar[str] = "export"
    meter: str = _req(_text)
    cert: bytes = _req(_bytes)
    k: int = _req(_uint)
    wh: int = _req(_counter)
    total: int = _req(_counter)
    t: int = _req(_uint)


@dataclass(frozen=True, kw_only=True, slots=True)
class Order(Body):
    """A validator's retained word on one order (spb/v1/market/{k}/order/{id}). `wh` and
    `price` are absent while a bid is sealed: the book shows no more than the deposit."""

    typ: ClassVar[str] = "order"
    id: bytes = _req(_BSTR16)
    k: int = _req(_uint)
    side: Side = _req(_SIDE)
    state: OrderState = _req(_ORDER_STATE)
    filled: int = _req(_uint)
    t: int = _req(_uint)
    h: int = _req(_uint)
    wh: int | None = _opt(_positive)
    price: int | None = _opt(_uint)
    src: str | None = _opt(_one_of(SELL_SOURCES))
    green: bool | None = _opt(_bool)
    deposit: int | None = _opt(_positive)
    msg: bytes | None = _opt(_BSTR32)


@dataclass(frozen=True, kw_only=True, slots=True)
class Cleared(Body):
    """A validator's retained result of interval k's clearing (spb/v1/market/{k}/result):
    per product [clearing price or null, Wh filled], and the number of fills."""

    typ: ClassVar[str] = "cleared"
    k: int = _req(_uint)
    green: list = _req(_product)
    open: list = _req(_product)
    fills: int = _req(_uint)
    t: int = _req(_uint)
    h: int = _req(_uint)


@dataclass(frozen=True, kw_only=True, slots=True)
class AccountStatus(Body):
    """A validator's retained word on one account (spb/v1/account/{key hex}, decision 0010):
    its free `balance` and the units in its `held` (CTPs held and orders' escrow) after block
    `h` at block time `t`. A household's meter learns from it what its agent may bid."""

    typ: ClassVar[str] = "account"
    account: bytes = _req(_BSTR32)
    balance: int = _req(_uint)
    held: int = _req(_uint)
    t: int = _req(_uint)
    h: int = _req(_uint)


# -- accounts after launch (docs/PROTOCOL.md §10, docs/decisions/0016-accounts.md) --


def _money(x: object) -> bool:
    """Units that enter or leave the ledger: > 0 and below 2^63, as its columns hold them."""
    return type(x) is int and 0 < x < 1 << 63


def _ref(x: object) -> bool:
    """An external payment reference: 1 to 64 characters, so the ledger's memory of them is small."""
    return type(x) is str and 0 < len(x) <= 64


def _meter_certs(x: object) -> bool:
    """[[devcert bytes, source]...]: the meters a `register` adds, each with its energy source
    (one of SELL_SOURCES, or "" for none), at most 64 of them."""
    return type(x) is list and len(x) <= 64 and all(map(_meter_cert, x))


def _meter_cert(m: object) -> bool:
    return type(m) is list and len(m) == 2 and type(m[0]) is bytes and m[1] in ("", *SELL_SOURCES)


@dataclass(frozen=True, kw_only=True, slots=True)
class Register(Body):
    """The operator opens `account` (balance 0) or adds meters to it: each meter's devcert,
    signed by a trusted CA, and the source it sells. Signed by operator key `op`."""

    typ: ClassVar[str] = "register"
    op: bytes = _req(_BSTR32)
    account: bytes = _req(_BSTR32)
    meters: list = _req(_meter_certs)
    t: int = _req(_uint)


@dataclass(frozen=True, kw_only=True, slots=True)
class Fund(Body):
    """Money enters: the operator credits `amount` to `account` against an external payment
    `ref`, which the ledger takes once (a fund sent twice is `duplicate`)."""

    typ: ClassVar[str] = "fund"
    op: bytes = _req(_BSTR32)
    account: bytes = _req(_BSTR32)
    amount: int = _req(_money)
    ref: str = _req(_ref)
    t: int = _req(_uint)


@dataclass(frozen=True, kw_only=True, slots=True)
class Payout(Body):
    """Money leaves: the operator debits `amount` from `account`'s free balance (never what is
    held) and pays it out under `ref`, taken once. The issue's `withdraw`: that typ is the
    market's order withdrawal (§9.2)."""

    typ: ClassVar[str] = "payout"
    op: bytes = _req(_BSTR32)
    account: bytes = _req(_BSTR32)
    amount: int = _req(_money)
    ref: str = _req(_ref)
    t: int = _req(_uint)


@dataclass(frozen=True, kw_only=True, slots=True)
class Retire(Body):
    """The operator closes `account`: no new trade or order, its open ones end normally,
    and a `payout` pays its balance out."""

    typ: ClassVar[str] = "retire"
    op: bytes = _req(_BSTR32)
    account: bytes = _req(_BSTR32)
    t: int = _req(_uint)


@dataclass(frozen=True, kw_only=True, slots=True)
class Rotate(Body):
    """Account key `account` is replaced by `new`, which takes over its balance, holds, open
    trades, orders and meters. Signed by `by`: the old key itself, or an operator when the
    household lost it."""

    typ: ClassVar[str] = "rotate"
    account: bytes = _req(_BSTR32)
    new: bytes = _req(_BSTR32)
    by: bytes = _req(_BSTR32)
    t: int = _req(_uint)


# -- statements (docs/PROTOCOL.md §10.4, docs/decisions/0017-statements.md) --

STATEMENT_KINDS = ("bought", "sold", "fund", "payout", "rotated-in", "rotated-out")


def _money_pair(x: object) -> bool:
    """[free balance, held]: an account's money at one instant."""
    return type(x) is list and len(x) == 2 and all(type(u) is int and 0 <= u < 1 << 63 for u in x)


def _statement_line(x: object) -> bool:
    """[kind, height, t, id, amount, wh, state, src, party, meters, ref]: one line of a
    statement (wire.statement.Line), integers for money and energy."""
    return (
        type(x) is list
        and len(x) == 11
        and x[0] in STATEMENT_KINDS
        and all(type(u) is int and 0 <= u < 1 << 64 for u in (x[1], x[2], x[4], x[5]))
        and type(x[3]) is bytes
        and len(x[3]) in (0, 16, 32)
        and x[6] in ("", CtpState.SETTLED, CtpState.REFUNDED)
        and all(type(s) is str for s in (x[7], x[9], x[10]))
        and type(x[8]) is bytes
        and len(x[8]) in (0, 32)
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class StatementRequest(Body):
    """A household asks the ledger for its account's statement over block times
    [start, end), on spb/v1/statement/{account hex}/req. Signed by the account key: only the
    household (or its meter, which holds the key) asks, and `nonce` ties the answer to it."""

    typ: ClassVar[str] = "stmtreq"
    account: bytes = _req(_BSTR32)
    start: int = _req(_uint)
    end: int = _req(_uint)
    nonce: bytes = _req(_BSTR16)
    t: int = _req(_uint)


@dataclass(frozen=True, kw_only=True, slots=True)
class Statement(Body):
    """A validator's answer to a `stmtreq` (`req`: its message hash), on
    spb/v1/statement/{account hex}, which only that household's meter reads: the account's
    money at `start` (`open`) and at `end` (`close`), and every line between, read at block
    height `h`. `end` may be earlier than asked when the lines would not fit (the meter asks
    again from there); `error` names why there is no statement, and then `lines` is empty."""

    typ: ClassVar[str] = "statement"
    account: bytes = _req(_BSTR32)
    req: bytes = _req(_BSTR32)
    start: int = _req(_uint)
    end: int = _req(_uint)
    open: list = _req(_money_pair)
    close: list = _req(_money_pair)
    lines: list = _req(_list_of(_statement_line))
    h: int = _req(_uint)
    t: int = _req(_uint)
    rotated: bytes | None = _opt(_BSTR32)  # the key that replaced this one, if it was replaced
    error: str | None = _opt(_text)


@dataclass(frozen=True, kw_only=True, slots=True)
class FillDocument(Body):
    """What a market fill's trade record carries in place of a payer-signed CTP (§9.3):
    unsigned, because every replica derives the same bytes from the ordered inputs. Not in
    BODY_TYPES: no one sends it, so no topic or verifier may accept one (wire.market.open_fill
    reads it back)."""

    typ: ClassVar[str] = "fill"
    id: bytes = _req(_BSTR16)
    k: int = _req(_uint)
    bid: bytes = _req(_BSTR32)
    ask: bytes = _req(_BSTR32)
    payer: bytes = _req(_BSTR32)
    payee: bytes = _req(_BSTR32)
    wh: int = _req(_positive)
    amount: int = _req(_uint)
    exp: int = _req(_uint)
    meter: bytes = _req(_BSTR32)
    t: int = _req(_uint)


BODY_TYPES: dict[str, type[Body]] = {
    cls.typ: cls
    for cls in (
        *(DevCert, CoeRequest, Coe, Ctp, Erc, Cancel, Birth, Status, Rejection, Reading, Revoke),
        *(Ask, Bid, Seal, Reveal, Withdraw, Export, Order, Cleared),
        AccountStatus,
        *(Register, Fund, Payout, Retire, Rotate),
        *(StatementRequest, Statement),
    )
}


BodyT = TypeVar("BodyT", bound=Body, covariant=True)


class Opened(NamedTuple, Generic[BodyT]):
    """A message that passed steps 1-3: well-formed, canonical, of a known type and schema.

    Generic in its body class, so `open_message(raw, Ctp).body` is a Ctp to the type checker.
    """

    envelope: Sign1
    body: BodyT

    @property
    def raw(self) -> bytes:
        return self.envelope.raw

    @property
    def hash(self) -> bytes:
        return self.envelope.hash


@overload
def open_message(raw: bytes, expect: type[BodyT]) -> Opened[BodyT]: ...
@overload
def open_message(raw: bytes, expect: str | None = None) -> Opened[Body]: ...
def open_message(raw: bytes, expect: type[Body] | str | None = None) -> Opened[Any]:
    """§4 steps 1-3. `expect` is the typ the topic or field carries, or the body class
    whose typ it is (then the body is of that class: BODY_TYPES maps its typ to it)."""
    envelope = parse_sign1(raw)
    m = load(envelope.payload)
    try:
        body = _typed_body(m, expect if expect is None or isinstance(expect, str) else expect.typ)
    except Reject:
        require_canonical(envelope.payload, m)  # noncanonical outranks type and schema
        raise
    require_canonical(envelope.payload, m, schema_checked=True)
    return Opened(envelope, body)


def _typed_body(m: object, expect: str | None) -> Body:
    if not isinstance(m, dict):
        raise Reject("type", "body is not a map, so it has no v/typ")
    v, typ = m.get("v"), m.get("typ")
    if type(v) is not int or v != VERSION:
        raise Reject("type", f"v is {shown(v)}, not {VERSION}")
    if type(typ) is not str or typ not in BODY_TYPES:
        raise Reject("type", f"unknown typ {shown(typ)}")
    if expect is not None and typ != expect:
        raise Reject("type", f"typ {typ!r} where {expect!r} was expected")
    return BODY_TYPES[typ].from_map(m)
