"""Every reject code of docs/PROTOCOL.md §4 and the status rules of §7, seen where a household
sees them: on a real Mosquitto, published by a real LedgerService. The market's codes (§9.2)
on a chain whose genesis has a market (`market_bus`), the others on a v1 chain (`bus`).

Each test runs its own broker and ledger. The ledger reads only the test's `Clock`, so
expiry is decided by block time the test sets, never by how fast the machine is.
Everything the ledger publishes is read through `Bus`, which checks the validator's
signature on every status and reject it hands to a test.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import replace
from hashlib import sha256
from typing import NamedTuple

import paho.mqtt.client as mqtt
import pytest
from nacl.signing import SigningKey
from paho.mqtt.enums import CallbackAPIVersion

from ledger.block import Block, input_hash, merkle_root, parse_trade
from ledger.door import decided_by_bytes
from ledger.store import LedgerStore
from ledger.validator import ValidatorIdentity
from ledger.workload import YEAR_MS, SimCommunity, pk
from tests.support.bus import Inbox, connected, wait_for
from tests.support.ledger import NOW, RunningLedger, ctp_id, ledger_dir, wait_online
from tests.support.market import I, K, Market, market_dir, order_id
from tests.support.wire import canonical_items, flip_bit, raw_map, sign_map, sign_payload
from wire import topics
from wire.cose import encode, message_hash
from wire.messages import Ask, Cancel, Coe, Ctp, DevCert, Erc, Order, Rejection, Status, Withdraw, open_message
from wire.reasons import BUSY, REASONS, Reject
from wire.verify import Verifier

BALANCE = 1_000
EXP = NOW + 600_000
ROGUE_CA = SigningKey(sha256(b"test_ledger_bus: a CA nobody trusts").digest())
STRANGER = SigningKey(sha256(b"test_ledger_bus: not an account").digest())


class Clock:
    """The ledger's one clock, moved only by the test. While it stands still, each block's
    time is the tip's + 1 ms, so a CTP with exp = NOW held in the first block is past its
    expiry in the next block, and only a message can make that block: how a test puts an
    ERC or a cancel into the first block after an expiry, ahead of the refund at expiry."""

    def __init__(self, now: int):
        self.now = now

    def __call__(self) -> int:
        return self.now


class Bus:
    """A broker, a ledger on a test clock, a household client and a watcher of all the
    ledger publishes; statuses and rejects come back decoded and signature-checked."""

    def __init__(self, tmp_path, port: int, make_client, read_retained, households: int = 4, market: bool = False):
        """`market`: a genesis with tests.support.market's terms (households 0 and 1 sell
        `solar` and `grid`), so a chain with the market and proof of delivery (§9)."""
        self.port, self.read_retained = port, read_retained
        self.community = SimCommunity(households, NOW)
        self.market = Market(self.community)
        if market:  # with an operator: §10's refusals are cases too
            self.root = market_dir(tmp_path / "ledger", self.community, balance=BALANCE, operator=True)
        else:
            self.root = ledger_dir(tmp_path / "ledger", self.community, balance=BALANCE)
        self.genesis = ValidatorIdentity.load(self.root, 0, with_key=False).genesis
        self.validator = pk(self.community.validator_keys[0])
        self.verifier = Verifier(cas=[pk(self.community.ca)], validators=[self.validator])
        self.clock = Clock(NOW)
        self.inbox = Inbox()
        watcher = make_client(port, "watcher")
        watched = (topics.STATUS_ALL, topics.REJECTS, topics.LEDGER_BLOCKS, topics.ledger_state(0), topics.MARKET_ALL)
        for topic_filter in watched:
            watcher.subscribe(topic_filter, self.inbox)
        connected(watcher)
        self.ledger = self.start_ledger()
        self.sender = connected(make_client(port, "household"))
        self._readers = itertools.count()
        self._barriers = itertools.count()

    def start_ledger(self) -> RunningLedger:
        """A ledger on this root, returned once it is subscribed (it says `online` only then)."""
        seen = len(self.inbox.messages)
        ledger = RunningLedger(self.root, self.port, clock=self.clock)
        wait_online(self.inbox, seen)
        return ledger

    @property
    def state(self):
        return self.ledger.service.node.state

    # -- sending --

    def send(self, topic: str, raw: bytes) -> bytes:
        self.sender.publish(topic, raw)
        return message_hash(raw)

    def barrier(self) -> Block:
        """Return once everything the ledger published for earlier messages has arrived: the
        ledger publishes in order on one connection, and this is a later message's reject
        and the block that decided it (returned: a message rejected for what the ledger
        holds is decided in a block too; junk, refused at the door, would overtake the
        blocks of earlier messages). (The barrier's own block time is tip + 1, so it may
        refund what expired by then.)"""
        unknown = self.community.ctp(0, 1, amount=1, wh=1, exp=EXP)  # never sent
        rejection = self.wait_reject(self.send(topics.TX_CANCEL, self.community.cancel(unknown)))
        assert rejection.reason == "unknown-ctp"
        return wait_for(
            lambda: next((b for b in self.blocks() if b.header.t == rejection.t), None),
            10,
            lambda: f"the barrier's block at {rejection.t}",
        )

    def hold(self, payer: int = 0, payee: int = 1, amount: int = 40, wh: int = 5, exp: int = EXP) -> bytes:
        ctp = self.community.ctp(payer, payee, amount=amount, wh=wh, exp=exp)
        self.send(topics.TX_CTP, ctp)
        self.wait_block(self.wait_status(ctp_id(ctp), "held").h)
        return ctp

    def settle(self, ctp: bytes) -> bytes:
        erc = self.community.erc(ctp)
        self.send(topics.TX_ERC, erc)
        self.wait_block(self.wait_status(ctp_id(ctp), "settled").h)
        return erc

    def place(self, topic: str, raw: bytes, state: str, order: bytes | None = None) -> bytes:
        """Send a market message and return once the order it moves (its own, or `order`'s
        id) has an `order` status in `state` and that status's block arrived."""
        order = order or order_id(raw)
        self.send(topic, raw)
        status = wait_for(
            lambda: next((o for o in self.orders() if (o.id, o.state) == (order, state)), None),
            10,
            lambda: f"{state} for order {order.hex()}; saw {[(o.id.hex()[:8], o.state) for o in self.orders()]}",
        )
        self.wait_block(status.h)
        return raw

    def prove(self, raw: bytes) -> None:
        """Send an export record and return once a block accepted it: an export gets no status."""
        msg = self.send(topics.TX_EXPORT, raw)
        self.barrier()
        assert self.rejects(msg) == [], f"the export was rejected: {self.rejects(msg)}"

    # -- what the ledger published --

    def mark(self) -> int:
        return len(self.inbox.messages)

    def statuses(self, ctp: bytes | None = None, since: int = 0) -> list[Status]:
        found = []
        for topic, payload, _ in self.inbox.messages[since:]:
            if topic.startswith(f"{topics.ROOT}/status/"):
                status = self.verifier.verify(payload, self.clock.now, expect="status").body
                assert topic == topics.status(status.ctp), "a status on another CTP's topic"
                if ctp is None or status.ctp == ctp:
                    found.append(status)
        return found

    def rejects(self, msg: bytes | None = None, since: int = 0) -> list[Rejection]:
        return [
            r
            for r in (
                self.verifier.verify(p, self.clock.now, expect="reject").body
                for t, p, _ in self.inbox.messages[since:]
                if t == topics.REJECTS
            )
            if msg is None or r.msg == msg
        ]

    def orders(self, since: int = 0) -> list[Order]:
        """Every `order` status on spb/v1/market/{k}/order/{id} (signature-checked)."""
        found = []
        for topic, payload, _ in self.inbox.messages[since:]:
            if topics.expected_type(topic) == "order":
                order = self.verifier.verify(payload, self.clock.now, expect="order").body
                assert topic == topics.market_order(order.k, order.id), "an order status on another order's topic"
                found.append(order)
        return found

    def market_published(self, since: int = 0) -> list[str]:
        return [t for t, _, _ in self.inbox.messages[since:] if t.startswith(f"{topics.MARKET}/")]

    def blocks(self, since: int = 0) -> list[Block]:
        return [Block.from_chain_bytes(p) for t, p, _ in self.inbox.messages[since:] if t == topics.LEDGER_BLOCKS]

    def wait_block(self, height: int) -> Block:
        """Block `height` from the bus: it is published after the statuses of its step."""
        return wait_for(
            lambda: next((b for b in self.blocks() if b.header.height == height), None),
            10,
            lambda: f"block {height}; saw {[b.header.height for b in self.blocks()]}",
        )

    def wait_reject(self, msg: bytes, since: int = 0) -> Rejection:
        return wait_for(
            lambda: next(iter(self.rejects(msg, since)), None),
            10,
            lambda: f"a reject of {msg.hex()[:16]}; saw {[(r.msg.hex()[:8], r.reason) for r in self.rejects()]}",
        )

    def wait_status(self, ctp: bytes, state: str) -> Status:
        return wait_for(
            lambda: next((s for s in self.statuses(ctp) if s.state == state), None),
            10,
            lambda: f"{state} for {ctp.hex()}; saw {[(s.ctp.hex()[:8], s.state) for s in self.statuses()]}",
        )

    def retained(self, ctp: bytes | str) -> bytes:
        """The retained message a newcomer on a CTP's status topic (or on the topic given, an
        order's) gets first (signature-checked)."""
        want = topics.status(ctp) if isinstance(ctp, bytes) else ctp
        topic, payload, retained = self.read_retained(self.port, want, f"reader-{next(self._readers)}")
        assert retained and topic == want
        self.verifier.verify(payload, self.clock.now, expect=topics.expected_type(want))
        return payload


@pytest.fixture
def bus(tmp_path, mosquitto, make_client, read_retained):
    b = Bus(tmp_path, mosquitto.port, make_client, read_retained)
    yield b
    b.ledger.stop()


@pytest.fixture
def market_bus(tmp_path, mosquitto, make_client, read_retained):
    b = Bus(tmp_path, mosquitto.port, make_client, read_retained, market=True)
    yield b
    b.ledger.stop()


def forge_erc(
    bus: Bus,
    ctp: bytes,
    *,
    household: int = 0,
    idx: int | None = None,
    coe: bytes | None = None,
    path: list[bytes] | None = None,
    signer: SigningKey | None = None,
) -> bytes:
    """An ERC for `ctp` from `household`'s meter (the payer's, by default), valid unless a
    part is replaced: the next one-time key of its batch, or key `idx` of its first batch."""
    body = open_message(ctp, "ctp").body
    batch = bus.community.households[household].batch if idx is None else bus.community.households[household].batches[0]
    idx = batch.take() if idx is None else idx
    key = batch.keys[idx]
    return Erc(
        ctp=body.id,
        wh=body.wh,
        t=NOW,
        pk=pk(key),
        idx=idx,
        path=batch.tree.inclusion_proof(idx) if path is None else path,
        coe=batch.coe if coe is None else coe,
    ).sign(signer or key)


def forge_coe(
    bus: Bus,
    *,
    ca: SigningKey | None = None,
    cert_exp: int = NOW + YEAR_MS,
    exp: int = NOW + YEAR_MS,
    signer: SigningKey | None = None,
) -> bytes:
    """A CoE for household 0's current batch by its usual witness (household 1), with parts replaced."""
    ca = ca or bus.community.ca
    batch, witness = bus.community.households[0].batch, bus.community.households[1]
    cert = DevCert(meter=witness.meter_id, pk=pk(witness.device), iss=pk(ca), nbf=NOW - YEAR_MS, exp=cert_exp).sign(ca)
    coe = Coe(root=batch.root, size=len(batch.keys), t=NOW - YEAR_MS, exp=exp, cert=cert)
    return coe.sign(signer or witness.device)


def account(bus: Bus, i: int) -> SigningKey:
    return bus.community.households[i].account


# ---- one reject per case ------------------------------------------------------------------

KEPT, REJECTED, NONE = "kept", "rejected", "none"


class Case(NamedTuple):
    """A message to send; what must happen to statuses: the named CTP keeps its retained
    status byte for byte (KEPT), the new CTP gets a retained `rejected` status (REJECTED), or
    no status at all is published (NONE). `again`: the very bytes were decided already, so
    they are sent to a restarted ledger (one that has run since would take them for a broker
    copy and acknowledge them silently, issue 6). `order`: on a market chain, the retained
    status topic of an order that must stay byte for byte (no market topic moves at all)."""

    topic: str
    raw: bytes
    after: str = NONE
    ctp: bytes | None = None
    again: bool = False
    order: str | None = None


CASES: list[tuple[str, str, Callable[[Bus], Case], bool]] = []  # (id, reason, make, on a market chain)


def case(reason: str, name: str, market: bool = False):
    def register(make: Callable[[Bus], Case]) -> Callable[[Bus], Case]:
        CASES.append((f"{reason}/{name}", reason, make, market))
        return make

    return register


@case("decode", "not-cbor")
def _(bus):
    return Case(topics.TX_CTP, b"\xff\xfe not CBOR")


@case("decode", "over-64-KiB")
def _(bus):
    return Case(topics.TX_CTP, bytes(64 * 1024 + 1))


@case("decode", "3-element-array-on-erc")
def _(bus):
    return Case(topics.TX_ERC, encode([b"\xa1\x01\x27", {}, b""]))


@case("noncanonical", "tag-18-around-a-ctp")
def _(bus):
    """A valid CTP in a COSE tag: one signed content must have one byte form. Its id is not
    read from bytes that failed step 2, so no status for it."""
    return Case(topics.TX_CTP, b"\xd2" + bus.community.ctp(0, 1, amount=10, wh=1, exp=EXP))


@case("noncanonical", "cancel-keys-out-of-order")
def _(bus):
    ctp = bus.hold()
    body = Cancel(ctp=ctp_id(ctp), payer=pk(account(bus, 0)), t=NOW).to_map()
    raw = sign_payload(raw_map(list(reversed(canonical_items(body)))), account(bus, 0))
    return Case(topics.TX_CANCEL, raw, KEPT, ctp_id(ctp))


@case("type", "erc-on-the-ctp-topic")
def _(bus):
    ctp = bus.hold()
    return Case(topics.TX_CTP, bus.community.erc(ctp), KEPT, ctp_id(ctp))


@case("type", "cancel-with-v2")
def _(bus):
    ctp = bus.hold()
    body = {**Cancel(ctp=ctp_id(ctp), payer=pk(account(bus, 0)), t=NOW).to_map(), "v": 2}
    return Case(topics.TX_CANCEL, sign_map(body, account(bus, 0)), KEPT, ctp_id(ctp))


@case("schema", "ctp-without-meter")
def _(bus):
    body = open_message(bus.community.ctp(0, 1, amount=10, wh=1, exp=EXP), "ctp").body.to_map()
    del body["meter"]
    return Case(topics.TX_CTP, sign_map(body, account(bus, 0)))


@case("schema", "erc-path-item-31-bytes")
def _(bus):
    ctp = bus.hold()
    erc = open_message(forge_erc(bus, ctp), "erc").body
    body = erc.to_map()
    body["path"] = [body["path"][0][:31], *body["path"][1:]]
    key = bus.community.households[0].batch.keys[erc.idx]
    return Case(topics.TX_ERC, sign_map(body, key), KEPT, ctp_id(ctp))


@case("cert", "witness-devcert-from-untrusted-ca")
def _(bus):
    ctp = bus.hold()
    return Case(topics.TX_ERC, forge_erc(bus, ctp, coe=forge_coe(bus, ca=ROGUE_CA)), KEPT, ctp_id(ctp))


@case("cert", "witness-devcert-expired")
def _(bus):
    ctp = bus.hold()
    return Case(topics.TX_ERC, forge_erc(bus, ctp, coe=forge_coe(bus, cert_exp=NOW - 1)), KEPT, ctp_id(ctp))


@case("coe", "expired")
def _(bus):
    ctp = bus.hold()
    return Case(topics.TX_ERC, forge_erc(bus, ctp, coe=forge_coe(bus, exp=NOW - 1)), KEPT, ctp_id(ctp))


@case("coe", "bad-witness-signature")
def _(bus):
    ctp = bus.hold()
    coe = forge_coe(bus, signer=bus.community.households[2].device)  # cert names household 1's device
    return Case(topics.TX_ERC, forge_erc(bus, ctp, coe=coe), KEPT, ctp_id(ctp))


@case("proof", "path-of-another-leaf")
def _(bus):
    ctp = bus.hold()
    batch = bus.community.households[0].batch
    return Case(topics.TX_ERC, forge_erc(bus, ctp, path=batch.tree.inclusion_proof(batch.used + 1)), KEPT, ctp_id(ctp))


@case("signature", "ctp-signed-by-the-payee")
def _(bus):
    """A forged CTP whose id no one holds: a reject only, since a status on that id would be
    the forger writing on the real payer's topic (decision 0002)."""
    good = open_message(bus.community.ctp(0, 1, amount=10, wh=1, exp=EXP), "ctp").body
    return Case(topics.TX_CTP, good.sign(account(bus, 1)), NONE, good.id)


@case("signature", "ctp-forged-with-a-held-id")
def _(bus):
    """The forger cannot touch the status of the CTP whose id it copied."""
    ctp = bus.hold()
    forged = replace(open_message(ctp, "ctp").body, amount=1).sign(account(bus, 1))
    return Case(topics.TX_CTP, forged, KEPT, ctp_id(ctp))


@case("signature", "erc-not-signed-by-its-pk")
def _(bus):
    ctp = bus.hold()
    return Case(topics.TX_ERC, forge_erc(bus, ctp, signer=STRANGER), KEPT, ctp_id(ctp))


@case("signature", "cancel-flipped-bit")
def _(bus):
    ctp = bus.hold()
    raw = bus.community.cancel(ctp)
    return Case(topics.TX_CANCEL, flip_bit(raw, 8 * len(raw) - 1), KEPT, ctp_id(ctp))


@case("unknown-ctp", "erc")
def _(bus):
    return Case(topics.TX_ERC, bus.community.erc(bus.community.ctp(0, 1, amount=10, wh=1, exp=EXP)))


@case("unknown-ctp", "cancel")
def _(bus):
    return Case(topics.TX_CANCEL, bus.community.cancel(bus.community.ctp(0, 1, amount=10, wh=1, exp=EXP)))


@case("duplicate", "ctp-sent-again")
def _(bus):
    ctp = bus.hold()
    return Case(topics.TX_CTP, ctp, KEPT, ctp_id(ctp), again=True)


@case("duplicate", "another-payers-ctp-with-a-held-id")
def _(bus):
    ctp = bus.hold()
    body = open_message(ctp, "ctp").body
    theirs = replace(body, payer=pk(account(bus, 2)), meter=bus.community.households[2].batch.root)
    return Case(topics.TX_CTP, theirs.sign(account(bus, 2)), KEPT, body.id)


@case("duplicate", "erc-sent-again")
def _(bus):
    ctp = bus.hold()
    return Case(topics.TX_ERC, bus.settle(ctp), KEPT, ctp_id(ctp), again=True)


@case("replay", "one-time-key-of-a-settled-ctp")
def _(bus):
    first = bus.hold()
    used = open_message(bus.settle(first), "erc").body.idx
    second = bus.hold()
    return Case(topics.TX_ERC, forge_erc(bus, second, idx=used), KEPT, ctp_id(second))


@case("insufficient-funds", "more-than-the-balance")
def _(bus):
    ctp = bus.community.ctp(0, 1, amount=BALANCE + 1, wh=1, exp=EXP)
    return Case(topics.TX_CTP, ctp, REJECTED, ctp_id(ctp))


@case("insufficient-funds", "held-money-is-not-free")
def _(bus):
    bus.hold(amount=600)
    ctp = bus.community.ctp(0, 1, amount=BALANCE - 600 + 1, wh=1, exp=EXP)
    return Case(topics.TX_CTP, ctp, REJECTED, ctp_id(ctp))


@case("not-held", "second-erc-after-settlement")
def _(bus):
    ctp = bus.hold()
    bus.settle(ctp)
    return Case(topics.TX_ERC, bus.community.erc(ctp), KEPT, ctp_id(ctp))


@case("not-held", "cancel-after-settlement")
def _(bus):
    ctp = bus.hold()
    bus.settle(ctp)
    return Case(topics.TX_CANCEL, bus.community.cancel(ctp), KEPT, ctp_id(ctp))


@case("meter-mismatch", "erc-from-another-meter")
def _(bus):
    ctp = bus.hold()
    return Case(topics.TX_ERC, bus.community.erc(ctp, by=2), KEPT, ctp_id(ctp))


@case("not-payer", "cancel-by-the-payee")
def _(bus):
    ctp = bus.hold()
    return Case(topics.TX_CANCEL, bus.community.cancel(ctp, by=1), KEPT, ctp_id(ctp))


@case("energy-short", "one-wh-short")
def _(bus):
    ctp = bus.hold(wh=5)
    return Case(topics.TX_ERC, bus.community.erc(ctp, wh=4), KEPT, ctp_id(ctp))


@case("expired", "ctp-expired-on-arrival")
def _(bus):
    ctp = bus.community.ctp(0, 1, amount=10, wh=1, exp=NOW - 1)
    return Case(topics.TX_CTP, ctp, REJECTED, ctp_id(ctp))


@case("far-expiry", "ctp-holding-money-for-more-than-a-day")
def _(bus):
    ctp = bus.community.ctp(0, 1, amount=10, wh=1, exp=NOW + 2 * 86_400_000)
    return Case(topics.TX_CTP, ctp, NONE, ctp_id(ctp))  # not final: no retained `rejected`


@case("too-early", "cancel-before-expiry")
def _(bus):
    ctp = bus.hold()
    return Case(topics.TX_CANCEL, bus.community.cancel(ctp), KEPT, ctp_id(ctp))


@case("unknown-account", "payee")
def _(bus):
    ctp = Ctp(
        id=sha256(b"to a stranger").digest()[:16],
        payer=pk(account(bus, 0)),
        payee=pk(STRANGER),
        amount=10,
        wh=1,
        exp=EXP,
        meter=bus.community.households[0].batch.root,
        t=NOW,
    ).sign(account(bus, 0))
    return Case(topics.TX_CTP, ctp, REJECTED, ctp_id(ctp))


@case("unknown-account", "payer")
def _(bus):
    ctp = Ctp(
        id=sha256(b"from a stranger").digest()[:16],
        payer=pk(STRANGER),
        payee=pk(account(bus, 1)),
        amount=10,
        wh=1,
        exp=EXP,
        meter=bus.community.households[0].batch.root,
        t=NOW,
    ).sign(STRANGER)
    # No status: anyone can make a key, and a stranger must not fill the broker with
    # retained statuses or write on an id before its payer uses it (decision 0002).
    return Case(topics.TX_CTP, ctp, NONE, ctp_id(ctp))


@case("type", "ask-on-a-chain-without-market")
def _(bus):
    """A v1 chain keeps v1's rules: a market message is of no type it knows (§9)."""
    return Case(topics.TX_ASK, bus.market.ask(0, wh=5, price=3))


# ---- the market's codes (docs/PROTOCOL.md §9.2), on a chain whose genesis has a market -------
# Interval K-1 holds NOW, so K's gate is K*I, later than NOW: the clock stands at NOW unless a
# case moves it to K's gate for a reveal (clearing waits for the reveal window after it). A
# reveal after that window has no case here: its block is one that clears K, which voids the
# seal (tests/system/test_market_processes.py sends one over the bus).


def order_topic(raw: bytes, k: int = K) -> str:
    return topics.market_order(k, order_id(raw))


def sealed_bid(bus: Bus, h: int = 0) -> tuple[bytes, bytes, bytes]:
    """(seal, its bid, nonce) of household h for K, the seal accepted (its deposit held)."""
    bid = bus.market.bid(h, wh=5, price=4)
    seal, nonce = bus.market.seal(h, bid, deposit=20)
    bus.place(topics.TX_SEAL, seal, "sealed")
    return seal, bid, nonce


@case("unknown-account", "ask-by-a-stranger", market=True)
def _(bus):
    ask = Ask(seller=pk(STRANGER), meter="m0001", wh=5, price=3, k=K, src="solar", t=NOW).sign(STRANGER)
    return Case(topics.TX_ASK, ask)


@case("duplicate", "bid-refused-before-is-refused-until-its-gate", market=True)
def _(bus):
    """A rejected order's bytes are final until its gate: a copy must not hold money later."""
    bid = bus.market.bid(3, wh=BALANCE, price=2)
    assert bus.wait_reject(bus.send(topics.TX_BID, bid)).reason == "insufficient-funds"
    return Case(topics.TX_BID, bid, again=True)


@case("duplicate", "ask-sent-again", market=True)
def _(bus):
    ask = bus.place(topics.TX_ASK, bus.market.ask(0, wh=5, price=3), "open")
    return Case(topics.TX_ASK, ask, again=True, order=order_topic(ask))


@case("insufficient-funds", "bid-escrow-over-the-free-balance", market=True)
def _(bus):
    bus.place(topics.TX_BID, bus.market.bid(3, wh=100, price=9), "open")  # 900 of 1000 held
    return Case(topics.TX_BID, bus.market.bid(3, wh=101, price=1))


@case("insufficient-funds", "seal-deposit-over-the-balance", market=True)
def _(bus):
    seal, _ = bus.market.seal(3, bus.market.bid(3, wh=1, price=1), deposit=BALANCE + 1)
    return Case(topics.TX_SEAL, seal)


@case("gate-closed", "ask-for-the-interval-under-way", market=True)
def _(bus):
    return Case(topics.TX_ASK, bus.market.ask(0, wh=5, price=3, k=K - 1))


@case("gate-closed", "seal-for-a-past-interval", market=True)
def _(bus):
    seal, _ = bus.market.seal(2, bus.market.bid(2, wh=1, price=1, k=K - 2), deposit=1, k=K - 2)
    return Case(topics.TX_SEAL, seal)


@case("too-far", "bid-beyond-the-intervals-ahead", market=True)
def _(bus):
    return Case(topics.TX_BID, bus.market.bid(2, wh=1, price=1, k=K + 3))  # ahead = 3 from K - 1


@case("not-source", "ask-from-a-meter-without-a-source", market=True)
def _(bus):
    return Case(topics.TX_ASK, bus.market.ask(2, wh=5, price=3, src="solar"))


@case("not-source", "ask-naming-another-source", market=True)
def _(bus):
    return Case(topics.TX_ASK, bus.market.ask(0, wh=5, price=3, src="grid"))


@case("not-source", "ask-for-another-accounts-meter", market=True)
def _(bus):
    return Case(topics.TX_ASK, bus.market.ask(1, wh=5, price=3, src="solar", meter="m0001"))


@case("unknown-order", "withdraw-of-an-order-never-placed", market=True)
def _(bus):
    return Case(topics.TX_WITHDRAW, bus.market.withdraw(0, bus.market.bid(0, wh=1, price=1)))


@case("unknown-order", "reveal-of-a-seal-never-placed", market=True)
def _(bus):
    bid = bus.market.bid(0, wh=1, price=1)
    seal, nonce = bus.market.seal(0, bid, deposit=1)
    return Case(topics.TX_REVEAL, bus.market.reveal(0, seal, bid, nonce))


@case("not-owner", "withdraw-of-anothers-bid", market=True)
def _(bus):
    bid = bus.place(topics.TX_BID, bus.market.bid(0, wh=5, price=3), "open")
    return Case(topics.TX_WITHDRAW, bus.market.withdraw(1, bid), order=order_topic(bid))


@case("not-owner", "reveal-of-anothers-seal", market=True)
def _(bus):
    seal, bid, nonce = sealed_bid(bus, 0)
    bus.clock.now = K * I
    return Case(topics.TX_REVEAL, bus.market.reveal(1, seal, bid, nonce), order=order_topic(seal))


@case("not-open", "withdraw-of-a-withdrawn-ask", market=True)
def _(bus):
    ask = bus.place(topics.TX_ASK, bus.market.ask(1, wh=5, price=3), "open")
    bus.place(topics.TX_WITHDRAW, bus.market.withdraw(1, ask), "withdrawn", order_id(ask))
    again = Withdraw(by=bus.market.account(1), order=order_id(ask), t=NOW + 1).sign(account(bus, 1))
    return Case(topics.TX_WITHDRAW, again, order=order_topic(ask))


@case("not-open", "reveal-of-a-withdrawn-seal", market=True)
def _(bus):
    seal, bid, nonce = sealed_bid(bus)
    bus.place(topics.TX_WITHDRAW, bus.market.withdraw(0, seal), "withdrawn", order_id(seal))
    bus.clock.now = K * I
    return Case(topics.TX_REVEAL, bus.market.reveal(0, seal, bid, nonce), order=order_topic(seal))


@case("too-early", "reveal-before-the-gate", market=True)
def _(bus):
    seal, bid, nonce = sealed_bid(bus)
    return Case(topics.TX_REVEAL, bus.market.reveal(0, seal, bid, nonce), order=order_topic(seal))


@case("too-early", "export-before-its-interval-ends", market=True)
def _(bus):
    return Case(topics.TX_EXPORT, bus.market.export(0, K - 1, wh=5, total=5))


@case("reveal-mismatch", "wrong-nonce", market=True)
def _(bus):
    seal, bid, _ = sealed_bid(bus)
    bus.clock.now = K * I
    return Case(topics.TX_REVEAL, bus.market.reveal(0, seal, bid, bytes(32)), order=order_topic(seal))


@case("reveal-mismatch", "bid-costs-more-than-the-deposit", market=True)
def _(bus):
    bid = bus.market.bid(0, wh=5, price=5)  # 25 > the deposit of 20
    seal, nonce = bus.market.seal(0, bid, deposit=20)
    bus.place(topics.TX_SEAL, seal, "sealed")
    bus.clock.now = K * I
    return Case(topics.TX_REVEAL, bus.market.reveal(0, seal, bid, nonce), order=order_topic(seal))


@case("unknown-meter", "export-of-a-meter-the-genesis-does-not-register", market=True)
def _(bus):
    outsider = Market(SimCommunity(5, NOW))  # the same CA: household 4's meter m0005 is in no genesis here
    return Case(topics.TX_EXPORT, outsider.export(4, K - 2, wh=1, total=1))


@case("counter", "cumulative-total-goes-back", market=True)
def _(bus):
    bus.prove(bus.market.export(0, K - 3, wh=5, total=5))
    return Case(topics.TX_EXPORT, bus.market.export(0, K - 2, wh=5, total=7))


@case("counter", "interval-goes-back", market=True)
def _(bus):
    bus.prove(bus.market.export(0, K - 2, wh=5, total=5))
    return Case(topics.TX_EXPORT, bus.market.export(0, K - 3, wh=1, total=6))


@case("oversold", "erc-before-the-payee-proved-any-export", market=True)
def _(bus):
    """Rule 7: a direct CTP settles only against export its payee proved (§9.4)."""
    ctp = bus.hold()
    return Case(topics.TX_ERC, bus.community.erc(ctp), KEPT, ctp_id(ctp))


@case("oversold", "erc-beyond-the-payees-export-in-the-window", market=True)
def _(bus):
    """Household 1's export of K - 1 proves 4 Wh; the CTP, held in K - 1, is for 5."""
    ctp = bus.hold(wh=5)
    bus.clock.now = K * I
    bus.prove(bus.market.export(1, K - 1, wh=4, total=4))
    return Case(topics.TX_ERC, bus.community.erc(ctp), KEPT, ctp_id(ctp))


# ---- the operator's transactions (docs/PROTOCOL.md §10) ----


@case("not-operator", "fund-signed-by-a-household", market=True)
def _(bus):
    household = account(bus, 0)
    return Case(topics.TX_FUND, bus.community.fund(pk(household), 5, "bank-1", op=household))


@case("over-limit", "fund-past-2-to-the-63-units", market=True)
def _(bus):
    return Case(topics.TX_FUND, bus.community.fund(pk(account(bus, 0)), (1 << 63) - 1, "bank-2"))


@case("meter-taken", "register-of-another-accounts-meter", market=True)
def _(bus):
    newcomer, meter = bus.community.account_key("newcomer"), bus.community.households[0].devcert
    return Case(topics.TX_REGISTER, bus.community.register(pk(newcomer), [(meter, "solar")]))


@case("key-taken", "rotation-to-another-accounts-key", market=True)
def _(bus):
    return Case(topics.TX_ROTATE, bus.community.rotation(pk(account(bus, 0)), pk(account(bus, 1)), account(bus, 0)))


@case("retired", "fund-of-a-retired-account", market=True)
def _(bus):
    retired = pk(account(bus, 2))
    bus.send(topics.TX_RETIRE, bus.community.retire(retired))
    bus.barrier()
    return Case(topics.TX_FUND, bus.community.fund(retired, 5, "bank-3"))


@case("rotated", "fund-of-a-replaced-key", market=True)
def _(bus):
    old = pk(account(bus, 3))
    bus.send(topics.TX_ROTATE, bus.community.rotate(3, bus.community.account_key("new key of 3")))
    bus.barrier()
    return Case(topics.TX_FUND, bus.community.fund(old, 5, "bank-4"))


def test_forged_erc_and_coe_settle_when_nothing_is_replaced(bus):
    """The control for the cert/coe/proof/signature cases: each differs from a valid ERC in
    the one part it replaces."""
    ctp = bus.hold()
    bus.send(topics.TX_ERC, forge_erc(bus, ctp, coe=forge_coe(bus)))
    assert bus.wait_status(ctp_id(ctp), "settled").h == 2


def test_the_cases_cover_every_reason_code():
    """A reason code added to §4 (or §9.2) needs a case here; `busy`, which needs a full
    pool, has its own (tests/system/test_flood.py)."""
    assert {reason for _, reason, _, _ in CASES} == REASONS - {BUSY}


@pytest.mark.parametrize(
    "reason, make, market", [pytest.param(reason, make, market, id=name) for name, reason, make, market in CASES]
)
def test_each_reject_reaches_the_bus_with_its_reason_and_message_hash(request, reason, make, market):
    """One signed reject per bad message on spb/v1/rejects, matched by H(m); a block that
    decides it alone and changes nothing (rejected messages are block inputs, issue 6), or,
    if its bytes alone reject it, no block at all: it is refused at the door (decision
    0008); and statuses as §7 says: a rejected CTP with a new id gets `rejected`, nothing
    else moves (on a market chain, no order or result either)."""
    bus = request.getfixturevalue("market_bus" if market else "bus")
    c = make(bus)
    if c.again:
        bus.ledger.stop()
        bus.ledger = bus.start_ledger()
    before = bus.retained(c.ctp) if c.after == KEPT else None
    kept_order = bus.retained(c.order) if c.order is not None else None
    height, block_time, mark = bus.state.height, max(bus.clock.now, bus.state.t + 1), bus.mark()
    root = bus.state.root()
    at_door = decided_by_bytes(topics.TX_TYPES[c.topic], reason)
    msg = bus.send(c.topic, c.raw)
    rejection = bus.wait_reject(msg, since=mark)
    assert (rejection.reason, rejection.t) == (reason, bus.clock.now if at_door else block_time)
    barrier = bus.barrier()
    assert [r.reason for r in bus.rejects(msg, since=mark)] == [reason], "one reject per message"
    new = bus.statuses(since=mark)
    if c.after == REJECTED:
        assert [(s.ctp, s.state, s.reason, s.msg) for s in new] == [(c.ctp, "rejected", reason, msg)]
        assert open_message(bus.retained(c.ctp), "status").body == new[0]
    else:
        assert new == [], "only an applied message, or a CTP rejected under a new id, makes a status"
    if c.after == KEPT:
        assert bus.retained(c.ctp) == before, "a rejected message changed someone else's status"
    assert bus.market_published(since=mark) == [], "a rejected message moved the market"
    if c.order is not None:
        assert bus.retained(c.order) == kept_order, "a rejected message changed an order's status"
    blocks = bus.blocks(since=mark)
    if at_door:
        assert blocks == [barrier] and bus.state.height == height + 1, "junk went into a block"
        return
    assert [b.header.height for b in blocks] == [height + 1, height + 2] and blocks[1] == barrier
    assert bus.state.height == height + 2
    assert blocks[0].header.t == block_time
    assert blocks[0].header.inputs == merkle_root([input_hash(topics.TX_TYPES[c.topic], c.raw)]), (
        "the block decides the rejected message, on its topic, and nothing else"
    )
    assert all(b.trades == () and b.header.ctps == root for b in blocks), "a rejected message changed the ledger"


# ---- life cycle over the bus ----------------------------------------------------------------


def test_an_applied_message_changes_the_retained_status(bus):
    """held, then settled by the ERC: the retained status follows, naming the message and block."""
    ctp = bus.hold()
    held = open_message(bus.retained(ctp_id(ctp)), "status").body
    assert (held.state, held.msg, held.reason) == ("held", message_hash(ctp), None)
    erc = bus.settle(ctp)
    settled = open_message(bus.retained(ctp_id(ctp)), "status").body
    assert (settled.state, settled.msg, settled.h) == ("settled", message_hash(erc), held.h + 1)
    payer, payee = pk(account(bus, 0)), pk(account(bus, 1))
    assert (bus.state.balances[payer], bus.state.held[payer], bus.state.balances[payee]) == (960, 0, 1040)


def test_refund_at_expiry_needs_no_message(bus):
    """Once the clock passes exp the idle ledger makes a block by itself that refunds the CTP,
    at that block time, with no `msg` (no message caused it)."""
    exp = NOW + 10
    ctp = bus.hold(exp=exp)
    held = bus.wait_status(ctp_id(ctp), "held")
    bus.clock.now = exp + 1
    refunded = bus.wait_status(ctp_id(ctp), "refunded")
    assert (refunded.msg, refunded.h, refunded.t) == (None, held.h + 1, exp + 1)
    assert open_message(bus.retained(ctp_id(ctp)), "status").body == refunded
    payer = pk(account(bus, 0))
    assert (bus.state.balances[payer], bus.state.held[payer]) == (BALANCE, 0)


def test_erc_after_expiry_is_rejected_expired_in_the_block_that_refunds(bus):
    """An ERC decided at a block time past exp: `expired`, never settled, and the same block
    refunds the payer (refunded, no msg)."""
    ctp = bus.hold(exp=NOW)  # held in block 1 at t = NOW; block 2 is at NOW + 1
    held = bus.wait_status(ctp_id(ctp), "held")
    msg = bus.send(topics.TX_ERC, bus.community.erc(ctp))
    assert bus.wait_reject(msg).reason == "expired"
    refunded = bus.wait_status(ctp_id(ctp), "refunded")
    assert (refunded.msg, refunded.h, refunded.t) == (None, held.h + 1, NOW + 1)
    bus.barrier()
    assert [s.state for s in bus.statuses(ctp_id(ctp))] == ["held", "refunded"]
    payer, payee = pk(account(bus, 0)), pk(account(bus, 1))
    assert (bus.state.balances[payer], bus.state.held[payer], bus.state.balances[payee]) == (BALANCE, 0, BALANCE)


def test_cancel_after_expiry_refunds_naming_the_cancel_and_a_resend_is_a_duplicate(bus):
    """A cancel in the first block past exp refunds with msg = H(cancel); the same cancel
    again soon after is a broker copy, acknowledged silently with no block (issue 6); sent
    again after a restart it is decided anew: `duplicate`. Neither moves the retained status."""
    ctp = bus.hold(exp=NOW)
    held = bus.wait_status(ctp_id(ctp), "held")
    cancel = bus.community.cancel(ctp, t=NOW + 1)
    msg = bus.send(topics.TX_CANCEL, cancel)
    refunded = bus.wait_status(ctp_id(ctp), "refunded")
    assert (refunded.msg, refunded.h, refunded.t) == (msg, held.h + 1, NOW + 1)
    retained = bus.retained(ctp_id(ctp))
    assert open_message(retained, "status").body == refunded
    mark, height = bus.mark(), bus.state.height
    bus.send(topics.TX_CANCEL, cancel)
    barrier = bus.barrier()
    assert bus.rejects(msg, since=mark) == [] and bus.statuses(since=mark) == []
    assert bus.blocks(since=mark) == [barrier] and barrier.header.height == height + 1, "a block for the copy"
    # acknowledged, not just ignored: a restarted ledger does not get the copy again
    bus.ledger.stop()
    bus.ledger = bus.start_ledger()
    bus.barrier()
    # a reconnect may publish the status again, byte for byte (decision 0002)
    assert bus.rejects(msg, since=mark) == [] and set(bus.statuses(since=mark)) <= {refunded}
    bus.send(topics.TX_CANCEL, cancel)
    assert bus.wait_reject(msg).reason == "duplicate"
    bus.barrier()
    assert set(bus.statuses(since=mark)) <= {refunded} and bus.retained(ctp_id(ctp)) == retained
    assert bus.rejects(msg) == bus.rejects(msg, since=mark), "the applied cancel itself was rejected"
    assert [r.reason for r in bus.rejects(msg)] == ["duplicate"]
    payer = pk(account(bus, 0))
    assert (bus.state.balances[payer], bus.state.held[payer]) == (BALANCE, 0)


def test_exp_itself_is_still_in_time(bus):
    """At block time == exp a CTP is accepted, an ERC settles, a cancel is too early and no
    refund happens; one ms later the CTP is refundable (docs/PROTOCOL.md §5: "exp passed").
    Each message waits for the block before it, so each makes its own block at tip + 1
    (a rejected one too: issue 6)."""
    first = bus.hold(exp=NOW + 1)  # block 1, t = NOW
    bus.settle(first)  # block 2, t = NOW + 1 = exp
    second = bus.hold(exp=NOW + 3)  # block 3, t = NOW + 2
    early = bus.send(topics.TX_CANCEL, bus.community.cancel(second, t=NOW + 3))
    assert bus.wait_reject(early).reason == "too-early"  # block 4, t = NOW + 3 = exp
    assert bus.wait_block(4).header.t == NOW + 3
    # block 4 was published after all its statuses: second was not refunded at its exp
    assert [s.state for s in bus.statuses(ctp_id(second))] == ["held"]
    late = bus.send(topics.TX_CANCEL, bus.community.cancel(second, t=NOW + 4))  # block 5, t = NOW + 4
    assert bus.wait_status(ctp_id(second), "refunded").msg == late
    third = bus.hold(payer=1, exp=NOW + 5)  # block 6, t = NOW + 5 = exp: accepted
    assert [s.state for s in bus.statuses(ctp_id(third))] == ["held"]  # and not refunded in it
    bus.clock.now = NOW + 6  # block 7, made by the clock alone
    refunded = bus.wait_status(ctp_id(third), "refunded")
    assert (refunded.msg, refunded.h, refunded.t) == (None, 7, NOW + 6)
    assert bus.state.height == 7


def _applied_once(bus: Bus, ctp: bytes) -> None:
    bus.wait_status(ctp_id(ctp), "held")
    bus.barrier()
    # One status; a reconnect may publish it again, byte for byte (decision 0002).
    seen = set(bus.statuses(ctp_id(ctp)))
    assert len(seen) == 1 and seen.pop().state == "held"
    assert {r.reason for r in bus.rejects(message_hash(ctp))} <= {"duplicate"}
    payer, payee = pk(account(bus, 0)), pk(account(bus, 1))
    assert (bus.state.balances[payer], bus.state.held[payer], bus.state.balances[payee]) == (BALANCE - 40, 40, BALANCE)


def test_the_same_ctp_delivered_twice_is_applied_once_and_a_later_resend_is_a_duplicate(bus):
    """QoS 1 may deliver a message twice: one `held`, money moved once (whether the copies
    share a block or not); a resend soon after it was applied is a broker copy, acknowledged
    with no block and no reject; after a restart a resend is decided again: `duplicate`."""
    ctp = bus.community.ctp(0, 1, amount=40, wh=5, exp=EXP)
    bus.send(topics.TX_CTP, ctp)
    bus.send(topics.TX_CTP, ctp)
    _applied_once(bus, ctp)
    before, height = len(bus.rejects(message_hash(ctp))), bus.state.height
    bus.send(topics.TX_CTP, ctp)
    _applied_once(bus, ctp)  # its barrier is the only block
    assert len(bus.rejects(message_hash(ctp))) == before and bus.state.height == height + 1
    bus.ledger.stop()
    bus.ledger = bus.start_ledger()
    height = bus.state.height
    bus.send(topics.TX_CTP, ctp)
    wait_for(lambda: len(bus.rejects(message_hash(ctp))) == before + 1, message="a reject of the resend")
    assert bus.rejects(message_hash(ctp))[-1].reason == "duplicate"
    _applied_once(bus, ctp)
    assert bus.state.height == height + 2  # the duplicate's block and the barrier's


def test_copies_queued_while_the_ledger_was_away_are_applied_once(bus):
    """Both copies wait in the ledger's broker session and arrive back to back on reconnect."""
    bus.ledger.stop()
    ctp = bus.community.ctp(0, 1, amount=40, wh=5, exp=EXP)
    for _ in range(2):
        assert bus.sender.wait_acked(bus.sender.publish(topics.TX_CTP, ctp), 10)
    bus.ledger = bus.start_ledger()
    _applied_once(bus, ctp)


def test_a_qos0_message_on_a_tx_topic_does_not_knock_the_ledger_off_the_bus(bus):
    """§7 asks senders for QoS 1, but the ledger must survive one that does not: a PUBACK for
    a QoS 0 delivery (mid 0) is a protocol error, for which Mosquitto drops the ledger and
    publishes its will."""
    sender = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="qos0-sender")
    sender.connect("127.0.0.1", bus.port)
    sender.loop_start()
    try:
        mark = bus.mark()
        ctp = bus.community.ctp(0, 1, amount=40, wh=5, exp=EXP)
        sender.publish(topics.TX_CTP, ctp, qos=0).wait_for_publish(10)
        bus.wait_status(ctp_id(ctp), "held")
        bus.barrier()
        states = [p for t, p, _ in bus.inbox.messages[mark:] if t == topics.ledger_state(0)]
        assert topics.OFFLINE not in states, f"the ledger went offline: {states}"
    finally:
        sender.disconnect()
        sender.loop_stop()


def test_statuses_and_rejects_are_signed_by_the_validator(bus):
    """Each verifies under the genesis validator key, and under no other key."""
    ctp = bus.hold()
    bus.send(topics.TX_CTP, bus.community.ctp(0, 1, amount=BALANCE, wh=1, exp=EXP))  # insufficient-funds
    bus.send(topics.TX_ERC, bus.community.erc(ctp, wh=1))  # energy-short
    bus.settle(ctp)
    bus.barrier()
    published = [
        (t, p) for t, p, _ in bus.inbox.messages if t == topics.REJECTS or t.startswith(f"{topics.ROOT}/status/")
    ]
    typs = [topics.expected_type(t) for t, _ in published]
    assert typs.count("status") == 3 and typs.count("reject") == 3
    other = Verifier(cas=[pk(bus.community.ca)], validators=[pk(bus.community.validator_keys[1])])
    for (_, payload), typ in zip(published, typs, strict=True):
        bus.verifier.verify(payload, NOW, expect=typ)
        with pytest.raises(Reject) as wrong_key:
            other.verify(payload, NOW, expect=typ)
        with pytest.raises(Reject) as tampered:
            bus.verifier.verify(flip_bit(payload, 8 * len(payload) - 1), NOW, expect=typ)
        assert wrong_key.value.reason == tampered.value.reason == "signature"


def test_every_published_block_decodes_and_chains_from_genesis(bus):
    """Blocks on spb/v1/ledger/blocks: heights 1..n, each `prev` the previous header's hash
    (block 1's the genesis hash), sealed by the validator, the same as on disk."""
    first = bus.hold()
    erc = bus.settle(first)
    second = bus.hold(exp=NOW + 10)
    bus.clock.now = NOW + 11
    bus.wait_status(ctp_id(second), "refunded")  # block 4, made by the clock alone
    bus.hold(payer=1, payee=2)
    wait_for(lambda: len(bus.blocks()) == 5, message=lambda: f"5 blocks; got {len(bus.blocks())}")
    blocks = bus.blocks()
    assert bus.state.height == 5 and [b.header.height for b in blocks] == [1, 2, 3, 4, 5]
    prev, t = bus.genesis.hash, 0
    for block in blocks:
        assert block.header.prev == prev and block.header.t > t
        assert block.valid_seals(bus.genesis.validators) == 1
        prev, t = block.hash, block.header.t
    assert [parse_trade(trade) for b in blocks for trade in b.trades] == [(first, message_hash(erc))]
    wait_for(lambda: (topics.ledger_state(0), b"online 5") in [m[:2] for m in bus.inbox.messages], message="online 5")
    bus.ledger.stop()
    store = LedgerStore(ValidatorIdentity.load(bus.root, 0, with_key=False).db_path, bus.genesis, readonly=True)
    try:
        assert [b.hash for _, b in store.blocks()] == [b.hash for b in blocks]
    finally:
        store.close()
