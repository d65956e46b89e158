"""The operator's transactions (docs/PROTOCOL.md §10) built from a command's arguments, pure:
which account a name means, the signed `register`, `fund`, `payout` and `retire`, and what
shows each one's outcome on the bus (broker.outcome), and the operator's `rotate` of a lost
household key. `spb-ledger fund|withdraw|retire|rotate` and `spb-deploy provision --broker`
send them.

The operator's signing key lives beside its TLS identity in the community dir
(DIR/operator/, deploy.bus), made by `spb-deploy provision`; its public key is in the
genesis' `operators`.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from nacl.signing import SigningKey

from broker.args import parse_hex
from broker.outcome import Expect
from ledger.block import Block, BlockError, quorum
from wire import topics
from wire.messages import Fund, Payout, Register, Retire, Rotate, open_message

OPERATOR = "operator"  # DIR/operator: the operator's TLS identity (deploy.bus.OPERATOR) and signing key
OPERATOR_KEY = "operator.key"
COMMUNITY_FILE = "community.toml"  # deploy.provision.COMMUNITY_NAME


class UnknownAccount(ValueError):
    """A name that is no account of the community: the command's usage error."""


def operator_key_path(root: Path) -> Path:
    return root / OPERATOR / OPERATOR_KEY


def resolve_account(root: Path, name: str) -> bytes:
    """An account key from a meter id (`0003`, `m0003`: its household's account), an account
    id (`a0007`), or the key itself in hex, looked up in DIR/community.toml."""
    if len(name) == 64:
        return parse_hex(name, 32, "32-byte account key")
    path = root / COMMUNITY_FILE
    try:
        community = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UnknownAccount(f"cannot read {path}: {exc}") from None
    wanted = f"m{name}" if name.isdecimal() else name
    for meter in community.get("meters", []):
        if meter.get("id") == wanted and "account_pk" in meter:
            return bytes.fromhex(meter["account_pk"])
    for account in community.get("accounts", []):
        if account.get("id") == wanted:
            return bytes.fromhex(account["pk"])
    raise UnknownAccount(
        f"{name!r} is no household meter (0003, m0003), account (a0007) or 64-hex account key of {path}"
    )


def register(key: SigningKey, account: bytes, meters: list[tuple[bytes, str]], t: int, opens: bool = True) -> Expect:
    """Open `account` and add meters (devcert bytes, source or ""): done once its status shows.
    An account that exists already (`opens` False) only gains meters, which moves no money:
    then the first sealed block made after it shows it. `duplicate` means registered already."""
    raw = Register(op=_pk(key), account=account, meters=[[cert, source] for cert, source in meters], t=t).sign(key)
    return registered(raw, opens)


def registered(raw: bytes, opens: bool) -> Expect:
    """What shows the outcome of a signed `register` (one kept from an earlier run, too)."""
    body = open_message(raw, Register).body
    if opens:
        return Expect(topics.TX_REGISTER, raw, appears=body.account, duplicate_is_applied=True)
    return Expect(topics.TX_REGISTER, raw, decided=True, t=body.t, duplicate_is_applied=True)


def fund(key: SigningKey, account: bytes, amount: int, ref: str, t: int) -> Expect:
    raw = Fund(op=_pk(key), account=account, amount=amount, ref=ref, t=t).sign(key)
    return Expect(topics.TX_FUND, raw, moves=account)


def payout(key: SigningKey, account: bytes, amount: int, ref: str, t: int) -> Expect:
    raw = Payout(op=_pk(key), account=account, amount=amount, ref=ref, t=t).sign(key)
    return Expect(topics.TX_PAYOUT, raw, moves=account)


def retire(key: SigningKey, account: bytes, t: int) -> Expect:
    """A retire moves no money, so no status shows it: the first sealed block made after it does."""
    raw = Retire(op=_pk(key), account=account, t=t).sign(key)
    return Expect(topics.TX_RETIRE, raw, decided=True, t=t)


def rotate(key: SigningKey, account: bytes, new: bytes, t: int) -> Expect:
    """The operator replaces a household's lost key: done once the new key's status shows
    (it holds the account's money from that block on); `duplicate`: rotated so already."""
    raw = Rotate(account=account, new=new, by=_pk(key), t=t).sign(key)
    return Expect(topics.TX_ROTATE, raw, appears=new, duplicate_is_applied=True)


def block_time(validators: tuple[bytes, ...]):
    """The test of a spb/v1/ledger/blocks message for broker.outcome: a block sealed by a
    quorum of these validators gives its block time; anything else None."""

    def of(payload: bytes) -> int | None:
        try:
            block = Block.from_chain_bytes(payload)
        except BlockError:
            return None
        return block.header.t if block.valid_seals(validators) >= quorum(len(validators)) else None

    return of


def _pk(key: SigningKey) -> bytes:
    return bytes(key.verify_key)
