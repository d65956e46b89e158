"""The topic tree of docs/PROTOCOL.md §7, so no other module spells a topic by hand."""

from __future__ import annotations

ROOT = "spb/v1"
TX_CTP = f"{ROOT}/tx/ctp"
TX_ERC = f"{ROOT}/tx/erc"
TX_CANCEL = f"{ROOT}/tx/cancel"
TX_REVOKE = f"{ROOT}/tx/revoke"  # an extension of v1: docs/decisions/0004-revocation.md
# The market (docs/decisions/0009-market.md): orders, sealed bids, proof of delivery.
TX_ASK = f"{ROOT}/tx/ask"
TX_BID = f"{ROOT}/tx/bid"
TX_SEAL = f"{ROOT}/tx/seal"
TX_REVEAL = f"{ROOT}/tx/reveal"
TX_WITHDRAW = f"{ROOT}/tx/withdraw"
TX_EXPORT = f"{ROOT}/tx/export"
# Accounts after launch (docs/decisions/0016-accounts.md): signed by an operator, `rotate`
# also by the household's old account key.
TX_REGISTER = f"{ROOT}/tx/register"
TX_FUND = f"{ROOT}/tx/fund"
TX_PAYOUT = f"{ROOT}/tx/payout"
TX_RETIRE = f"{ROOT}/tx/retire"
TX_ROTATE = f"{ROOT}/tx/rotate"
OPERATOR_TXS = (TX_REGISTER, TX_FUND, TX_PAYOUT, TX_RETIRE, TX_ROTATE)
TX_ALL = f"{ROOT}/tx/+"
REJECTS = f"{ROOT}/rejects"
LEDGER_STATE_ALL = f"{ROOT}/ledger/state/+"  # one retained state per validator: decision 0006
LEDGER_BLOCKS = f"{ROOT}/ledger/blocks"
CONSENSUS = f"{ROOT}/consensus"
CONSENSUS_ALL = f"{CONSENSUS}/all"  # to every validator
STATUS_ALL = f"{ROOT}/status/+"
METERS_ALL = f"{ROOT}/meters/#"
MARKET = f"{ROOT}/market"
MARKET_ALL = f"{MARKET}/#"
ACCOUNT = f"{ROOT}/account"  # one retained `account` status per account: decision 0010
ACCOUNT_ALL = f"{ACCOUNT}/#"

ONLINE = b"online"
OFFLINE = b"offline"

# Which body typ each transaction topic carries (a receiver checks typ against it, §1).
TX_TYPES = {
    TX_CTP: "ctp",
    TX_ERC: "erc",
    TX_CANCEL: "cancel",
    TX_REVOKE: "revoke",
    **{topic: topic.rsplit("/", 1)[1] for topic in (TX_ASK, TX_BID, TX_SEAL, TX_REVEAL, TX_WITHDRAW, TX_EXPORT)},
    **{topic: topic.rsplit("/", 1)[1] for topic in OPERATOR_TXS},
}
METER_TYPES = {"birth": "birth", "reading": "reading", "coe/req": "coereq", "coe/resp": "coe"}


def ledger_state(validator: int) -> str:
    """Validator I's retained `online <height>` / `offline [<height>]` (its will)."""
    return f"{ROOT}/ledger/state/v{validator}"


def consensus_to(validator: int) -> str:
    """Consensus messages for validator I alone (blocks for catching up)."""
    return f"{CONSENSUS}/v{validator}"


def meter(meter_id: str, leaf: str) -> str:
    """`spb/v1/meters/{meter}/{leaf}` for leaf in state, birth, reading, coe/req, coe/resp."""
    if not meter_id or any(c in meter_id for c in "/+#\0"):
        raise ValueError(f"meter id {meter_id!r} cannot be a topic level")
    return f"{ROOT}/meters/{meter_id}/{leaf}"


def every_meter(leaf: str) -> str:
    """Subscription filter for `leaf` of all meters."""
    return f"{ROOT}/meters/+/{leaf}"


def status(ctp_id: bytes) -> str:
    if len(ctp_id) != 16:
        raise ValueError("a CTP id is 16 bytes")
    return f"{ROOT}/status/{ctp_id.hex()}"


def market_order(k: int, order_id: bytes) -> str:
    """Retained `order` status of one order of interval k."""
    if len(order_id) != 16:
        raise ValueError("an order id is 16 bytes")
    return f"{_interval(k)}/order/{order_id.hex()}"


def market_result(k: int) -> str:
    """Retained `cleared` result of interval k."""
    return f"{_interval(k)}/result"


def account(pk: bytes) -> str:
    """Retained `account` status of the account whose key is `pk` (64 lowercase hex)."""
    if len(pk) != 32:
        raise ValueError("an account key is 32 bytes")
    return f"{ACCOUNT}/{pk.hex()}"


def _interval(k: int) -> str:
    """spb/v1/market/{k}: an interval is a uint, written in decimal as expected_type reads it."""
    if type(k) is not int or k < 0:
        raise ValueError(f"interval {k!r} is not a uint")
    return f"{MARKET}/{k}"


def parse_meter_topic(topic: str) -> tuple[str, str] | None:
    """(meter id, leaf) for a topic under spb/v1/meters/, else None."""
    prefix = f"{ROOT}/meters/"
    if not topic.startswith(prefix):
        return None
    meter_id, _, leaf = topic[len(prefix) :].partition("/")
    return (meter_id, leaf) if meter_id and leaf else None


def expected_type(topic: str) -> str | None:
    """The body typ a topic carries, or None for topics without a signed body."""
    if topic in TX_TYPES:
        return TX_TYPES[topic]
    if topic.startswith(f"{ROOT}/status/"):
        return "status"
    if topic == REJECTS:
        return "reject"
    if topic.startswith(f"{MARKET}/"):
        return _market_type(topic[len(MARKET) + 1 :].split("/"))
    if topic.startswith(f"{ACCOUNT}/"):
        key = topic[len(ACCOUNT) + 1 :]
        return "account" if len(key) == 64 and _lower_hex(key) else None
    parsed = parse_meter_topic(topic)
    return METER_TYPES.get(parsed[1]) if parsed else None


def _market_type(levels: list[str]) -> str | None:
    """`cleared` for {k}/result, `order` for {k}/order/{32 hex}, None for anything else under
    spb/v1/market/: a receiver insists on a typ only where a validator publishes one."""
    if not (levels[0].isdigit() and levels[0].isascii()):
        return None
    if levels[1:] == ["result"]:
        return "cleared"
    if len(levels) == 3 and levels[1] == "order" and len(levels[2]) == 32 and _lower_hex(levels[2]):
        return "order"
    return None


def _lower_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


# Statements (docs/decisions/0017-statements.md): a household's meter asks on the request
# topic of its own account, and the validators answer on the account's statement topic,
# which only that household's meter (and the monitoring identities) read. Neither retained.
STATEMENT = f"{ROOT}/statement"
STATEMENT_REQUESTS = f"{STATEMENT}/+/req"  # the validators' subscription


def statement(pk: bytes) -> str:
    """The answers to account `pk`'s statement requests (`statement` bodies)."""
    if len(pk) != 32:
        raise ValueError("an account key is 32 bytes")
    return f"{STATEMENT}/{pk.hex()}"


def statement_request(pk: bytes) -> str:
    """Where account `pk`'s meter sends its `stmtreq`."""
    return f"{statement(pk)}/req"
