"""Shared material for tests of accounts after launch (docs/PROTOCOL.md §10): a market chain
whose genesis lists an operator and holds only the first households of a SimCommunity (the
others are registered later), and the operator's and households' signed register, fund,
payout, retire and rotate.

Households 0 (solar), 1 (grid), 2 (no source) and 3 are in the genesis, as in
tests/support/market.py; households 4 and up exist (keys, devcerts, CoE batches: their
witness needs no account) but have no account until a `register`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from hashlib import sha256
from pathlib import Path

from nacl.signing import SigningKey

from broker.keys import write_file
from ledger.genesis import Genesis, write_genesis
from ledger.node import LedgerNode
from ledger.validator import ValidatorIdentity, secret_validator_dir
from ledger.workload import YEAR_MS, SimCommunity, pk
from tests.support.ledger import NOW
from tests.support.market import BALANCE, MarketChain, terms
from wire.messages import DevCert, Fund, Payout, Register, Retire, Rotate

OPERATOR = SigningKey(sha256(b"spb-energy test operator").digest())
IN_GENESIS = 4  # households 0..3


def key(label: str) -> SigningKey:
    """A fresh key for a test (a rotation's new key, a stranger)."""
    return SigningKey(sha256(b"spb-energy test key/" + label.encode()).digest())


def accounts_genesis(c: SimCommunity, balance: int = BALANCE, households: int = IN_GENESIS) -> Genesis:
    """A one-validator market genesis (block_ms 50) of the first `households` households,
    with OPERATOR as its operator."""
    market = terms(c)
    market = replace(market, meters=market.meters[:households])
    accounts = {pk(h.account): balance for h in c.households[:households]}
    return Genesis.build([pk(c.ca)], accounts, [pk(c.validator_keys[0])], 50, market, [pk(OPERATOR)])


class AccountsChain(MarketChain):
    """Validator 0's database of a chain with an operator, built block by block in-process."""

    def __init__(self, root: Path, c: SimCommunity, balance: int = BALANCE, households: int = IN_GENESIS):
        write_genesis(root, accounts_genesis(c, balance, households))
        secret = (bytes(c.validator_keys[0]).hex() + "\n").encode()
        write_file(secret_validator_dir(root, 0) / "validator.key", secret, 0o600, replace=True)
        self.root = root
        self.node = LedgerNode(ValidatorIdentity.load(root, 0))
        self.store, self.state = self.node.store, self.node.state
        self.outputs: list[tuple[str, bytes, bool]] = []

    def restart(self) -> None:
        """Close the validator and start it again from its database, as after a crash."""
        self.node.close()
        self.node = LedgerNode(ValidatorIdentity.load(self.root, 0))
        self.store, self.state = self.node.store, self.node.state

    def money(self, account: bytes) -> tuple[int, int]:
        """(balance, held) of an account key."""
        return self.state.balances[account], self.state.held[account]


class Operator:
    """The operator's signed messages (and a household's rotation), at time t (default NOW)."""

    def __init__(self, c: SimCommunity, signer: SigningKey = OPERATOR):
        self.c, self.signer = c, signer

    @property
    def op(self) -> bytes:
        return pk(self.signer)

    def register(self, account: bytes, *meters: tuple[int | bytes, str], t: int = NOW) -> bytes:
        """Open `account` or add meters to it: (household whose devcert, or a devcert, source)."""
        certs = [[self.c.households[m].devcert if isinstance(m, int) else m, src] for m, src in meters]
        return Register(op=self.op, account=account, meters=certs, t=t).sign(self.signer)

    def fund(self, account: bytes, amount: int, ref: str, t: int = NOW) -> bytes:
        return Fund(op=self.op, account=account, amount=amount, ref=ref, t=t).sign(self.signer)

    def payout(self, account: bytes, amount: int, ref: str, t: int = NOW) -> bytes:
        return Payout(op=self.op, account=account, amount=amount, ref=ref, t=t).sign(self.signer)

    def retire(self, account: bytes, t: int = NOW) -> bytes:
        return Retire(op=self.op, account=account, t=t).sign(self.signer)

    def rotate(self, old: bytes, new: bytes, by: SigningKey | None = None, t: int = NOW) -> bytes:
        """The rotation of account key `old` to `new`, signed by `by` (default: this operator)."""
        signer = by or self.signer
        return Rotate(account=old, new=new, by=pk(signer), t=t).sign(signer)


def devcert(c: SimCommunity, meter: str, device: SigningKey, issuer: SigningKey | None = None) -> bytes:
    """A devcert for `meter` and `device`, valid a year either side of NOW, by the CA (or `issuer`)."""
    iss = issuer or c.ca
    return DevCert(meter=meter, pk=pk(device), iss=pk(iss), nbf=NOW - YEAR_MS, exp=NOW + YEAR_MS).sign(iss)


@contextmanager
def signing_as(c: SimCommunity, household: int, account: SigningKey) -> Iterator[None]:
    """Household messages built inside sign with `account` (an old or new key of a rotation)."""
    house = c.households[household]
    kept, house.account = house.account, account
    try:
        yield
    finally:
        house.account = kept
