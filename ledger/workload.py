"""A simulated community that trades: households with accounts, meters and one-time key
batches vouched for by CoEs, making signed CTPs, ERCs and cancels, and on a market chain
(docs/PROTOCOL.md §9) asks, bids, sealed bids and their reveals, withdrawals, the meters'
export records and the ERCs of fills; with an operator (§10), households added after the
genesis, their `register`, `fund`, `payout`, `retire`, and key rotations.

Deterministic from a seed, so tests, benchmarks and the demo can make the same valid
traffic a real community would, without Pi hardware. Keys are derived from the seed and
never written anywhere: nothing here is for a real deployment.
"""

from __future__ import annotations

from collections.abc import Sequence
from hashlib import sha256
from pathlib import Path

from nacl.signing import SigningKey

from broker.keys import write_file
from ledger.genesis import DEFAULT_INTERVAL_S, Genesis, MarketTerms, MeterEntry, default_reveal_s, write_genesis
from ledger.validator import secret_validator_dir
from wire.market import commitment, order_id_of
from wire.merkle import MerkleTree
from wire.messages import (
    Ask,
    Bid,
    Cancel,
    Coe,
    Ctp,
    DevCert,
    Erc,
    Export,
    Fund,
    Payout,
    Register,
    Retire,
    Reveal,
    Rotate,
    Seal,
    Withdraw,
    open_message,
)

YEAR_MS = 365 * 86_400_000
BATCH = 64  # docs/PROTOCOL.md §3's default batch of one-time keys


def _key(seed: bytes, *labels: object) -> SigningKey:
    return SigningKey(sha256(b"/".join([seed, *(str(x).encode() for x in labels)])).digest())


def pk(key: SigningKey) -> bytes:
    return bytes(key.verify_key)


class KeyBatch:
    """One meter's batch of one-time ERC keys and the CoE a witness signed for its root."""

    def __init__(self, keys: list[SigningKey], coe: bytes):
        self.keys, self.coe = keys, coe
        self.tree = MerkleTree([pk(k) for k in keys])
        self.used = 0

    @property
    def root(self) -> bytes:
        return self.tree.root()

    def take(self) -> int:
        """The index of the next unused one-time key."""
        self.used += 1
        return self.used - 1


class Household:
    """An account and the meter that confirms what it buys (and, with a source, proves what
    it sells: its export records, signed by the device key)."""

    def __init__(
        self,
        community: SimCommunity,
        index: int,
        meter_id: str,
        account: SigningKey,
        device: SigningKey,
        devcert: bytes,
        source: str = "",
    ):
        self.community, self.index, self.meter_id = community, index, meter_id
        self.account, self.device, self.devcert, self.source = account, device, devcert, source
        self.batches: list[KeyBatch] = []

    @property
    def batch(self) -> KeyBatch:
        """The batch in use, with a fresh one (and CoE) once it runs out."""
        if not self.batches or self.batches[-1].used == BATCH:
            self.batches.append(self.community.new_batch(self, len(self.batches)))
        return self.batches[-1]


class SimCommunity:
    """`households` households; household i's meter is witnessed by household i+1's, and
    registered in a market genesis with `sources[i]` (none beyond the list: it proves
    export but cannot sell)."""

    def __init__(self, households: int, now: int, seed: bytes = b"spb-energy simulation", sources: Sequence[str] = ()):
        if households < 2:
            raise ValueError("a community needs two households: a CoE is signed by another meter")
        self.seed, self.now, self.ca = seed, now, _key(seed, "ca")
        self.sources = tuple(sources)
        self.validator_keys = [_key(seed, "validator", i) for i in range(4)]
        self.operator = _key(seed, "operator")  # listed in a genesis made with operator=True
        self._former: dict[bytes, int] = {}  # an account key a rotation replaced -> its household
        self._ctps = 0
        self._reserved: dict[bytes, tuple[KeyBatch, int]] = {}  # CTP id -> the key its ERC will use
        self.households = [self._household(i) for i in range(households)]

    def _household(self, i: int, source: str | None = None) -> Household:
        meter_id, device = f"m{i + 1:04d}", _key(self.seed, "device", i)
        devcert = DevCert(
            meter=meter_id, pk=pk(device), iss=pk(self.ca), nbf=self.now - YEAR_MS, exp=self.now + YEAR_MS
        ).sign(self.ca)
        if source is None:
            source = self.sources[i] if i < len(self.sources) else ""
        return Household(self, i, meter_id, _key(self.seed, "account", i), device, devcert, source)

    def market_terms(
        self, interval_s: int = DEFAULT_INTERVAL_S, ahead: int = 288, grace: int = 1, reveal_s: int | None = None
    ) -> MarketTerms:
        """A genesis' market section: every household's meter under its account, with its source."""
        meters = tuple(MeterEntry(h.meter_id, pk(h.account), h.source) for h in self.households)
        reveal_s = default_reveal_s(interval_s) if reveal_s is None else reveal_s
        return MarketTerms(meters, interval_s, ahead, grace, reveal_s)

    def genesis(
        self,
        balance: int,
        validators: int = 1,
        block_ms: int = 200,
        market: MarketTerms | None = None,
        operator: bool = False,
    ) -> Genesis:
        """A v1 genesis, or with `market` (self.market_terms()) a market chain's, listing
        self.operator among its operators if `operator`."""
        accounts = {pk(h.account): balance for h in self.households}
        validator_keys = [pk(k) for k in self.validator_keys[:validators]]
        operators = [pk(self.operator)] if operator else []
        return Genesis.build([pk(self.ca)], accounts, validator_keys, block_ms, market, operators)

    def add_household(self, source: str = "") -> Household:
        """A household that joins after the genesis: keys and a devcert from the same CA, an
        account only once the operator registers it (self.register)."""
        self.households.append(self._household(len(self.households), source))
        return self.households[-1]

    def ledger_dir(
        self,
        root: Path,
        balance: int,
        block_ms: int = 200,
        validators: int = 1,
        market: MarketTerms | None = None,
        operator: bool = False,
    ) -> Path:
        """A ledger dir for `spb-ledger run`: this community's genesis and its validators' keys."""
        write_genesis(root, self.genesis(balance, validators, block_ms, market, operator))
        for i in range(validators):
            key = (bytes(self.validator_keys[i]).hex() + "\n").encode()
            write_file(secret_validator_dir(root, i) / "validator.key", key, 0o600, replace=True)
        return root

    def new_batch(self, household: Household, number: int) -> KeyBatch:
        keys = [_key(self.seed, "otk", household.index, number, i) for i in range(BATCH)]
        witness = self.households[(household.index + 1) % len(self.households)]
        tree = MerkleTree([pk(k) for k in keys])
        coe = Coe(
            root=tree.root(), size=BATCH, t=self.now - YEAR_MS, exp=self.now + YEAR_MS, cert=witness.devcert
        ).sign(witness.device)
        return KeyBatch(keys, coe)

    def ctp(
        self, payer: int, payee: int, amount: int, wh: int, exp: int, t: int | None = None, ctp_id: bytes | None = None
    ) -> bytes:
        """payer pays payee for `wh` delivered to the payer's meter, which will confirm it with
        a one-time key reserved now (so the CTP names the CoE root that key is under)."""
        self._ctps += 1
        buyer = self.households[payer]
        batch = buyer.batch
        ctp_id = ctp_id or sha256(self.seed + b"ctp%d" % self._ctps).digest()[:16]
        self._reserved[ctp_id] = (batch, batch.take())
        return Ctp(
            id=ctp_id,
            payer=pk(buyer.account),
            payee=pk(self.households[payee].account),
            amount=amount,
            wh=wh,
            exp=exp,
            meter=batch.root,
            t=self.now if t is None else t,
        ).sign(buyer.account)

    def erc(self, ctp_raw: bytes, wh: int | None = None, t: int | None = None, by: int | None = None) -> bytes:
        """The ERC for a CTP, signed with the key reserved for it; a second ERC for the same
        CTP, or one by household `by`'s meter, uses that meter's next key instead."""
        ctp: Ctp = open_message(ctp_raw, Ctp).body
        reserved = self._reserved.pop(ctp.id, None) if by is None else None
        if reserved is None:
            batch = self.households[by if by is not None else self._owner(ctp.payer)].batch
            reserved = (batch, batch.take())
        batch, idx = reserved
        return self._erc(batch, idx, ctp.id, ctp.wh if wh is None else wh, t)

    def fill_erc(self, bid_raw: bytes, fill_id: bytes, wh: int, t: int | None = None) -> bytes:
        """The ERC of a fill of `bid_raw` (a fill's trade id: wire.market.fill_id), signed with
        the next key of the batch the bid names, as the buyer's meter confirms a fill."""
        bid: Bid = open_message(bid_raw, Bid).body
        batch = next(b for h in self.households for b in h.batches if b.root == bid.meter)
        return self._erc(batch, batch.take(), fill_id, wh, t)

    def _erc(self, batch: KeyBatch, idx: int, trade_id: bytes, wh: int, t: int | None) -> bytes:
        key = batch.keys[idx]
        return Erc(
            ctp=trade_id,
            wh=wh,
            t=self.now if t is None else t,
            pk=pk(key),
            idx=idx,
            path=batch.tree.inclusion_proof(idx),
            coe=batch.coe,
        ).sign(key)

    def cancel(self, ctp_raw: bytes, t: int | None = None, by: int | None = None) -> bytes:
        ctp: Ctp = open_message(ctp_raw, Ctp).body
        signer = self.households[by].account if by is not None else self.households[self._owner(ctp.payer)].account
        return Cancel(ctp=ctp.id, payer=pk(signer), t=self.now if t is None else t).sign(signer)

    def _owner(self, account: bytes) -> int:
        """The household of an account key, current or replaced by a rotation (whose
        messages its current key signs now)."""
        if account in self._former:
            return self._former[account]
        return next(h.index for h in self.households if pk(h.account) == account)

    # -- the market (docs/PROTOCOL.md §9) --

    def ask(self, seller: int, wh: int, price: int, k: int, src: str | None = None, t: int | None = None) -> bytes:
        """An ask from the seller's meter, of its registered source unless `src` says otherwise."""
        house = self.households[seller]
        src = house.source if src is None else src
        return Ask(seller=pk(house.account), meter=house.meter_id, wh=wh, price=price, k=k, src=src, t=self._t(t)).sign(
            house.account
        )

    def bid(self, buyer: int, wh: int, price: int, k: int, green: bool = False, t: int | None = None) -> bytes:
        """A bid naming the CoE root of the buyer meter's batch in use: its ERCs come from it."""
        house = self.households[buyer]
        return Bid(
            buyer=pk(house.account), wh=wh, price=price, k=k, green=green, meter=house.batch.root, t=self._t(t)
        ).sign(house.account)

    def seal(self, bid_raw: bytes, deposit: int, t: int | None = None) -> tuple[bytes, bytes]:
        """(the seal committing to a signed bid, its nonce): the nonce is derived from the seed
        and the bid, so the same seed seals the same way."""
        bid: Bid = open_message(bid_raw, Bid).body
        account = self.households[self._owner(bid.buyer)].account
        nonce = sha256(self.seed + b"/nonce/" + bid_raw).digest()
        seal = Seal(buyer=pk(account), k=bid.k, c=commitment(bid_raw, nonce), deposit=deposit, t=self._t(t))
        return seal.sign(account), nonce

    def reveal(self, seal_raw: bytes, bid_raw: bytes, nonce: bytes, t: int | None = None) -> bytes:
        seal: Seal = open_message(seal_raw, Seal).body
        account = self.households[self._owner(seal.buyer)].account
        return self._reveal(account, order_id_of(seal_raw), bid_raw, nonce, t)

    def reveal_again(self, reveal_raw: bytes, t: int | None = None) -> bytes:
        """The same reveal, signed by the key holding its buyer's account now: after a rotation,
        the new key reveals what the old one sealed (docs/PROTOCOL.md §10.3)."""
        body: Reveal = open_message(reveal_raw, Reveal).body
        account = self.households[self._owner(body.buyer)].account
        return self._reveal(account, body.seal, body.bid, body.nonce, t)

    def _reveal(self, account: SigningKey, seal_id: bytes, bid_raw: bytes, nonce: bytes, t: int | None) -> bytes:
        return Reveal(buyer=pk(account), seal=seal_id, bid=bid_raw, nonce=nonce, t=self._t(t)).sign(account)

    def withdraw(self, order_raw: bytes, t: int | None = None, by: int | None = None) -> bytes:
        """The withdrawal of an ask, bid or seal by its owner (or by household `by`)."""
        body = open_message(order_raw).body
        assert isinstance(body, (Ask, Bid, Seal)), "only orders are withdrawn"
        owner = body.seller if isinstance(body, Ask) else body.buyer
        account = self.households[self._owner(owner) if by is None else by].account
        return Withdraw(by=pk(account), order=order_id_of(order_raw), t=self._t(t)).sign(account)

    def export(self, meter: int, k: int, wh: int, total: int, t: int | None = None) -> bytes:
        """Household `meter`'s export record of interval k, signed by its device key."""
        house = self.households[meter]
        return Export(meter=house.meter_id, cert=house.devcert, k=k, wh=wh, total=total, t=self._t(t)).sign(
            house.device
        )

    def _t(self, t: int | None) -> int:
        return self.now if t is None else t

    # -- the operator (docs/PROTOCOL.md §10) --

    def register(self, account: bytes, meters: Sequence[tuple[bytes, str]], t: int | None = None) -> bytes:
        """Open `account` and/or add meters to it: (devcert, source) pairs."""
        op = self.operator
        certs = [[cert, source] for cert, source in meters]
        return Register(op=pk(op), account=account, meters=certs, t=self._t(t)).sign(op)

    def register_household(self, house: Household, t: int | None = None) -> bytes:
        """The register of a household added after the genesis: its account and its meter."""
        return self.register(pk(house.account), [(house.devcert, house.source)], t)

    def fund(self, account: bytes, amount: int, ref: str, t: int | None = None, op: SigningKey | None = None) -> bytes:
        """A fund of `account`, by self.operator (or by `op`, who may be no operator)."""
        op = op or self.operator
        return Fund(op=pk(op), account=account, amount=amount, ref=ref, t=self._t(t)).sign(op)

    def payout(self, account: bytes, amount: int, ref: str, t: int | None = None) -> bytes:
        op = self.operator
        return Payout(op=pk(op), account=account, amount=amount, ref=ref, t=self._t(t)).sign(op)

    def retire(self, account: bytes, t: int | None = None) -> bytes:
        op = self.operator
        return Retire(op=pk(op), account=account, t=self._t(t)).sign(op)

    def rotate(self, household: int, new: SigningKey, by_operator: bool = False, t: int | None = None) -> bytes:
        """Household `household`'s account key replaced by `new`, signed by its current key
        (or by the operator, as when the household lost it). From now on the household signs
        with `new`, and messages about its old key's orders and trades are signed by `new`."""
        house = self.households[household]
        old = house.account
        signer = self.operator if by_operator else old
        raw = Rotate(account=pk(old), new=pk(new), by=pk(signer), t=self._t(t)).sign(signer)
        self._former[pk(old)] = household
        house.account = new
        return raw

    def rotation(self, old: bytes, new: bytes, by: SigningKey, t: int | None = None) -> bytes:
        """A rotation of any key to any key signed by `by`, changing no household: one the
        ledger refuses (`key-taken`, `duplicate`, `retired`, ...)."""
        return Rotate(account=old, new=new, by=pk(by), t=self._t(t)).sign(by)

    def account_key(self, label: str) -> SigningKey:
        """A fresh account key, derived from the seed: a rotation's new key, or a stranger's."""
        return _key(self.seed, "account key", label)
