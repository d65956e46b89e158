"""Shared material for market tests (docs/PROTOCOL.md §9): a SimCommunity whose genesis has a
market, builders of its signed orders, seals, reveals, withdrawals, export records and
ERCs for fills, and a validator's database built block by block in-process.

Households 0 and 1 sell (meters registered `solar` and `grid`), household 2 has a meter
without a source (it proves export but cannot ask), every household buys. Interval k
covers [k*I, (k+1)*I) with I = INTERVAL_S s; K is the interval after the one holding NOW.
"""

from __future__ import annotations

from hashlib import sha256
from pathlib import Path

from ledger.genesis import Genesis, MarketTerms, MeterEntry
from ledger.node import LedgerNode
from ledger.validator import ValidatorIdentity
from ledger.workload import SimCommunity, pk
from tests.support.ledger import NOW
from wire.cose import message_hash
from wire.messages import Ask, Bid, Erc, Export, Reveal, Seal, Withdraw

INTERVAL_S = 10
I = INTERVAL_S * 1000  # noqa: E741 - the protocol's name for it
K = NOW // I + 1  # the next interval: its gate is K * I
SOURCES = ("solar", "grid", "")  # households 0, 1, 2 (3 and on: none)
REVEAL_S = 2
BALANCE = 1_000


def order_id(raw: bytes) -> bytes:
    return message_hash(raw)[:16]


def terms(c: SimCommunity, **overrides) -> MarketTerms:
    meters = tuple(
        MeterEntry(h.meter_id, pk(h.account), SOURCES[h.index] if h.index < len(SOURCES) else "") for h in c.households
    )
    options = {"interval_s": INTERVAL_S, "ahead": 3, "grace": 1, "reveal_s": REVEAL_S} | overrides
    return MarketTerms(meters, **options)


def market_genesis(
    c: SimCommunity, balance: int = BALANCE, validators: int = 1, block_ms: int = 50, **overrides
) -> Genesis:
    return c.genesis(balance, validators, block_ms, terms(c, **overrides))


class Market:
    """Signed market messages of a SimCommunity's households, at time `t` (default NOW)."""

    def __init__(self, c: SimCommunity):
        self.c = c

    def account(self, h: int) -> bytes:
        return pk(self.c.households[h].account)

    def ask(self, h: int, wh: int, price: int, k: int = K, src: str | None = None, meter: str | None = None) -> bytes:
        house = self.c.households[h]
        return Ask(
            seller=pk(house.account),
            meter=meter or house.meter_id,
            wh=wh,
            price=price,
            k=k,
            src=src or SOURCES[h] or "solar",
            t=NOW,
        ).sign(house.account)

    def bid(self, h: int, wh: int, price: int, k: int = K, green: bool = False, t: int = NOW) -> bytes:
        house = self.c.households[h]
        return Bid(buyer=pk(house.account), wh=wh, price=price, k=k, green=green, meter=house.batch.root, t=t).sign(
            house.account
        )

    def seal(self, h: int, bid: bytes, deposit: int, k: int = K, nonce: bytes | None = None) -> tuple[bytes, bytes]:
        """(seal message, nonce) committing to the signed `bid`."""
        house = self.c.households[h]
        nonce = nonce or sha256(bid + b"nonce").digest()
        c = sha256(bid + nonce).digest()
        return Seal(buyer=pk(house.account), k=k, c=c, deposit=deposit, t=NOW).sign(house.account), nonce

    def reveal(self, h: int, seal: bytes, bid: bytes, nonce: bytes) -> bytes:
        house = self.c.households[h]
        return Reveal(buyer=pk(house.account), seal=order_id(seal), bid=bid, nonce=nonce, t=NOW).sign(house.account)

    def withdraw(self, h: int, order: bytes) -> bytes:
        house = self.c.households[h]
        return Withdraw(by=pk(house.account), order=order_id(order), t=NOW).sign(house.account)

    def export(self, h: int, k: int, wh: int, total: int, t: int | None = None) -> bytes:
        house = self.c.households[h]
        return Export(meter=house.meter_id, cert=house.devcert, k=k, wh=wh, total=total, t=t or NOW).sign(house.device)

    def erc(self, h: int, trade_id: bytes, wh: int) -> bytes:
        """An ERC of household h's meter for trade `trade_id` (a fill or a CTP), under the key
        batch its bids name (its current one)."""
        batch = self.c.households[h].batch
        idx = batch.take()
        key = batch.keys[idx]
        return Erc(
            ctp=trade_id, wh=wh, t=NOW, pk=pk(key), idx=idx, path=batch.tree.inclusion_proof(idx), coe=batch.coe
        ).sign(key)


def market_dir(
    root: Path, c: SimCommunity, balance: int = BALANCE, validators: int = 1, operator: bool = False, **overrides
) -> Path:
    """A market chain's ledger dir (block_ms 50): its genesis (listing c.operator if
    `operator`, docs/PROTOCOL.md §10) and its validators' keys."""
    return c.ledger_dir(root, balance, 50, validators, terms(c, **overrides), operator)


class MarketChain:
    """Validator 0's database of a market chain, built block by block in-process."""

    def __init__(self, root: Path, c: SimCommunity, balance: int = BALANCE, **overrides):
        market_dir(root, c, balance, **overrides)
        self.root = root
        self.node = LedgerNode(ValidatorIdentity.load(root, 0))
        self.store, self.state = self.node.store, self.node.state
        self.outputs: list[tuple[str, bytes, bool]] = []

    def block(self, t: int, *messages: tuple[str, bytes]) -> list[str | None]:
        """Decide `messages` ((typ, raw) pairs) in one block at time t; their reject reasons."""
        assert t > self.state.t, "a test block must be later than the last"
        decision = self.node.decide(list(messages), t)
        self.outputs += [(row.topic, row.payload, row.retain) for row in decision.queued]
        return decision.reasons
