"""A simulated community that trades: households with accounts, meters and one-time key
batches vouched for by CoEs, making signed CTPs, ERCs and cancels.

Deterministic from a seed, so tests, benchmarks and the demo can make the same valid
traffic a real community would, without Pi hardware. Keys are derived from the seed and
never written anywhere: nothing here is for a real deployment.
"""

from __future__ import annotations

from hashlib import sha256
from pathlib import Path

from nacl.signing import SigningKey

from broker.keys import write_file
from ledger.genesis import Genesis, MarketTerms, write_genesis
from ledger.validator import secret_validator_dir
from wire.merkle import MerkleTree
from wire.messages import Cancel, Coe, Ctp, DevCert, Erc, open_message

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
    """An account and the meter that confirms what it buys."""

    def __init__(
        self,
        community: SimCommunity,
        index: int,
        meter_id: str,
        account: SigningKey,
        device: SigningKey,
        devcert: bytes,
    ):
        self.community, self.index, self.meter_id = community, index, meter_id
        self.account, self.device, self.devcert = account, device, devcert
        self.batches: list[KeyBatch] = []

    @property
    def batch(self) -> KeyBatch:
        """The batch in use, with a fresh one (and CoE) once it runs out."""
        if not self.batches or self.batches[-1].used == BATCH:
            self.batches.append(self.community.new_batch(self, len(self.batches)))
        return self.batches[-1]


class SimCommunity:
    """`households` households; household i's meter is witnessed by household i+1's."""

    def __init__(self, households: int, now: int, seed: bytes = b"spb-energy simulation"):
        if households < 2:
            raise ValueError("a community needs two households: a CoE is signed by another meter")
        self.seed, self.now, self.ca = seed, now, _key(seed, "ca")
        self.validator_keys = [_key(seed, "validator", i) for i in range(4)]
        self._ctps = 0
        self._reserved: dict[bytes, tuple[KeyBatch, int]] = {}  # CTP id -> the key its ERC will use
        self.households = [self._household(i) for i in range(households)]

    def _household(self, i: int) -> Household:
        meter_id, device = f"m{i + 1:04d}", _key(self.seed, "device", i)
        devcert = DevCert(
            meter=meter_id, pk=pk(device), iss=pk(self.ca), nbf=self.now - YEAR_MS, exp=self.now + YEAR_MS
        ).sign(self.ca)
        return Household(self, i, meter_id, _key(self.seed, "account", i), device, devcert)

    def genesis(
        self, balance: int, validators: int = 1, block_ms: int = 200, market: MarketTerms | None = None
    ) -> Genesis:
        """Its genesis: every household an account with `balance`; a market chain with `market`."""
        accounts = {pk(h.account): balance for h in self.households}
        keys = [pk(k) for k in self.validator_keys[:validators]]
        return Genesis.build([pk(self.ca)], accounts, keys, block_ms, market)

    def ledger_dir(
        self, root: Path, balance: int, block_ms: int = 200, validators: int = 1, market: MarketTerms | None = None
    ) -> Path:
        """A ledger dir for `spb-ledger run`: this community's genesis and its validators' keys."""
        write_genesis(root, self.genesis(balance, validators, block_ms, market))
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
        key = batch.keys[idx]
        return Erc(
            ctp=ctp.id,
            wh=ctp.wh if wh is None else wh,
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
        return next(h.index for h in self.households if pk(h.account) == account)
