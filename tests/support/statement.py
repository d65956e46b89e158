"""A market chain with an operator whose first blocks give household 0 every kind of
statement line (decision 0017): a fund, a market fill it bought (solar), a CTP it bought
(grid), a CTP it sold, a CTP refunded to it, and a payout. Shared by the statement tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from broker.keys import write_file
from ledger.genesis import Genesis, write_genesis
from ledger.node import LedgerNode
from ledger.validator import ValidatorIdentity, secret_validator_dir
from ledger.workload import SimCommunity, _key, pk
from wire.cose import message_hash
from wire.market import fill_id
from wire.messages import Fund, Payout, Rotate, open_message

NOW = 1_800_000_000_000
INTERVAL_S = 10
I = INTERVAL_S * 1000  # noqa: E741 - the protocol's name for it
K = NOW // I + 2  # the interval household 0's fill is in
BALANCE = 1_000
SOURCES = ("grid", "solar", "wind", "grid")  # household 0 sells grid; it buys solar (1) and grid (3)


def operator_genesis(c: SimCommunity, operator: bytes, validators: int = 1, block_ms: int = 50) -> Genesis:
    accounts = {pk(h.account): BALANCE for h in c.households}
    terms = c.market_terms(interval_s=INTERVAL_S, ahead=3, reveal_s=5)
    keys = [pk(k) for k in c.validator_keys[:validators]]
    return Genesis.build([pk(c.ca)], accounts, keys, block_ms, terms, operators=[operator])


def write_ledger_dir(root: Path, c: SimCommunity, genesis: Genesis) -> Path:
    write_genesis(root, genesis)
    for i in range(len(genesis.validators)):
        key = (bytes(c.validator_keys[i]).hex() + "\n").encode()
        write_file(secret_validator_dir(root, i) / "validator.key", key, 0o600, replace=True)
    return root


@dataclass
class Ids:
    fund: bytes  # message hashes (32 bytes) and trade ids (16 bytes) of household 0's lines
    payout: bytes
    fill: bytes
    bought: bytes
    sold: bytes
    refunded: bytes


class StatementChain:
    """Validator 0's database of such a chain, built in-process block by block."""

    def __init__(self, root: Path):
        self.c = SimCommunity(4, NOW, seed=b"statements", sources=SOURCES)
        self.op = _key(b"statements", "operator")
        write_ledger_dir(root, self.c, operator_genesis(self.c, pk(self.op)))
        self.node = LedgerNode(ValidatorIdentity.load(root, 0))
        self.store = self.node.store
        self.root = root

    def account(self, i: int) -> bytes:
        return pk(self.c.households[i].account)

    def block(self, t: int, *messages: tuple[str, bytes]) -> None:
        reasons = self.node.decide(list(messages), t).reasons
        assert reasons == [None] * len(messages), reasons

    def fund(self, i: int, amount: int, ref: str, t: int) -> bytes:
        return Fund(op=pk(self.op), account=self.account(i), amount=amount, ref=ref, t=t).sign(self.op)

    def payout(self, i: int, amount: int, ref: str, t: int) -> bytes:
        return Payout(op=pk(self.op), account=self.account(i), amount=amount, ref=ref, t=t).sign(self.op)

    def rotate(self, i: int, t: int) -> tuple[bytes, bytes]:
        """(the rotate of household i's key to a new one, signed by the old key; the new key)."""
        old, new = self.c.households[i].account, _key(b"statements", "rotated", i)
        return Rotate(account=pk(old), new=pk(new), by=pk(old), t=t).sign(old), pk(new)

    def trade(self) -> Ids:
        """Blocks at K·I - 15 s (interval K-2), K·I + 0.1 s and (K+1)·I + 0.1 s: see the module."""
        c, t_a, t_b, t_c = self.c, K * I - 15_000, K * I + 100, (K + 1) * I + 100
        fund = self.fund(0, 500, "bank-1", t_a)
        ask, bid = c.ask(1, 10, 3, K, t=t_a), c.bid(0, 10, 5, K, t=t_a)
        bought = c.ctp(0, 3, amount=40, wh=8, exp=t_c + 60_000, t=t_a)
        sold = c.ctp(2, 0, amount=24, wh=6, exp=t_c + 60_000, t=t_a)
        refunded = c.ctp(0, 1, amount=7, wh=2, exp=t_a + 1_000, t=t_a)
        self.block(t_a, ("fund", fund), ("ask", ask), ("bid", bid), ("ctp", bought), ("ctp", sold), ("ctp", refunded))
        exports = (c.export(3, K - 2, 8, 8, t=t_b), c.export(0, K - 2, 6, 6, t=t_b))
        self.block(t_b, *(("export", e) for e in exports))  # clears K: the fill; refunds `refunded`
        fill = fill_id(message_hash(bid), message_hash(ask), 0)
        payout = self.payout(0, 100, "bank-2", t_c)
        self.block(
            t_c,
            ("export", c.export(1, K, 10, 10, t=t_c)),
            ("erc", c.fill_erc(bid, fill, 10, t=t_c)),
            ("erc", c.erc(bought, t=t_c)),
            ("erc", c.erc(sold, t=t_c)),
            ("payout", payout),
        )
        ctp_id = lambda raw: open_message(raw, "ctp").body.id  # noqa: E731
        return Ids(message_hash(fund), message_hash(payout), fill, ctp_id(bought), ctp_id(sold), ctp_id(refunded))
