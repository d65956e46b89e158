"""The door (ledger/door.py, decision 0008) and the market's message types (docs/PROTOCOL.md
§9.2): on a chain without a market every market type is refused `type` on arrival, before
it is decoded; on a market chain an order, a reveal or a withdrawal that its bytes reject is
refused at the door, and an export, whose devcert is checked at a time like an ERC's CoE,
waits for its block when it fails a check (its sender unverified). Pure: replicas are driven
directly, as ledger.sim drives them."""

from __future__ import annotations

from dataclasses import replace

import pytest
from nacl.signing import SigningKey

from ledger import door
from ledger.accounts import ACCOUNT_TYPES
from ledger.genesis import Genesis
from ledger.market import MARKET_TYPES
from ledger.replica import Decided, Refused, Replica, Timing
from ledger.state import LedgerState
from ledger.workload import YEAR_MS, SimCommunity, pk
from tests.support.ledger import NOW
from tests.support.market import Market, market_genesis
from wire.cose import MAX_MESSAGE, message_hash
from wire.messages import DevCert, Fund, Payout, Register, Retire, Rotate
from wire.verify import Verifier

N = 4
LATER = NOW + 2 * YEAR_MS  # every devcert of the community has expired


@pytest.fixture(scope="module")
def m() -> Market:
    return Market(SimCommunity(4, NOW, seed=b"door"))


def messages(m: Market) -> dict[str, tuple[bytes, bytes]]:
    """One valid message of each market type, and the sender the door names for it."""
    bid = m.bid(3, 8, 7)
    seal, nonce = m.seal(3, bid, deposit=56)
    ask = m.ask(0, 10, 5)
    device = m.c.households[1].device
    return {
        "ask": (ask, m.account(0)),
        "bid": (m.bid(2, 1, 1), m.account(2)),
        "seal": (seal, m.account(3)),
        "reveal": (m.reveal(3, seal, bid, nonce), m.account(3)),
        "withdraw": (m.withdraw(0, ask), m.account(0)),
        "export": (m.export(1, 5, 10, 10), pk(device)),  # the meter's device key, as for a birth
    }


def group(genesis: Genesis, m: Market) -> list[Replica]:
    out = []
    for i in range(N):
        verifier = genesis.verifier()
        r = Replica(LedgerState(genesis), verifier, i, m.c.validator_keys[i], lambda h: None, Timing(), now=NOW)
        r.last_proposal = NOW  # as if it had just proposed: nothing is decided, only pools move
        out.append(r)
    return out


def refused(actions: list) -> list[Refused]:
    return [a for a in actions if isinstance(a, Refused)]


def test_the_messages_cover_every_market_type(m):
    assert set(messages(m)) == MARKET_TYPES


@pytest.mark.parametrize("typ", sorted(MARKET_TYPES))
def test_on_a_chain_without_a_market_every_market_type_is_refused_type_on_arrival(m, typ):
    raw, _ = messages(m)[typ]
    verifier = Verifier(cas=[pk(m.c.ca)], validators=[])
    assert door.claim(verifier, typ, raw) == ("type", door.UNVERIFIED)
    assert door.claim(verifier, typ, b"\x00junk") == ("type", door.UNVERIFIED), "before a byte is decoded"
    v1 = group(m.c.genesis(1_000, validators=N), m)
    answers = [refused(r.submit(typ, raw, NOW)) for r in v1]
    assert all(len(a) == 1 and a[0].reason == "type" for a in answers), answers
    assert [i for i, a in enumerate(answers) if a[0].announce] == [door.announcer(message_hash(raw), N)]
    assert not any(r.pool for r in v1)


@pytest.mark.parametrize("typ", sorted(MARKET_TYPES))
def test_on_a_market_chain_each_market_type_is_pooled_under_its_sender(m, typ):
    raw, sender = messages(m)[typ]
    genesis = market_genesis(m.c, validators=N)
    verifier = Verifier(cas=genesis.cas, validators=genesis.validators)
    assert door.claim(verifier, typ, raw, market=True) == (None, sender)
    assert door.check(verifier, typ, raw, NOW) == (None, sender)
    r = group(genesis, m)[0]
    assert refused(r.submit(typ, raw, NOW)) == [] and r.pooled_by == {sender: 1}


def forged(raw: bytes) -> bytes:
    return raw[:-1] + bytes([raw[-1] ^ 1])


@pytest.mark.parametrize("typ", sorted(MARKET_TYPES - {"export"}))
def test_an_order_its_bytes_reject_is_refused_at_the_door(m, typ):
    raw, _ = messages(m)[typ]
    cases = {
        "decode": b"\x00not cbor",
        "type": messages(m)["export" if typ != "export" else "ask"][0],  # another type's message on this topic
        "signature": forged(raw),
    }
    genesis = market_genesis(m.c, validators=N)
    for reason, bad in cases.items():
        replicas = group(genesis, m)
        answers = [refused(r.submit(typ, bad, NOW)) for r in replicas]
        assert all(len(a) == 1 and a[0].reason == reason for a in answers), (reason, answers)
        assert [i for i, a in enumerate(answers) if a[0].announce] == [door.announcer(message_hash(bad), N)]
        assert not any(r.pool for r in replicas)
    too_big = b"\xa0" * (MAX_MESSAGE + 1)
    assert door.claim(Verifier(cas=genesis.cas), typ, too_big, market=True).reason == "decode"


def test_an_export_the_door_cannot_verify_at_its_clock_waits_for_its_block(m):
    """An export's devcert is valid or not at a time, so like an ERC it is decided by its
    block's time: at the door a failed `cert` or `signature` leaves it pooled, unverified;
    only what its bytes alone reject is refused there."""
    raw, _ = messages(m)["export"]
    genesis = market_genesis(m.c, validators=N)
    verifier = Verifier(cas=genesis.cas, validators=genesis.validators)
    assert door.check(verifier, "export", raw, LATER) == (None, door.UNVERIFIED)
    assert door.check(verifier, "export", forged(raw), NOW) == (None, door.UNVERIFIED)
    r = group(genesis, m)[0]
    assert refused(r.submit("export", raw, LATER)) == [] and refused(r.submit("export", forged(raw), NOW)) == []
    assert r.pooled_by == {door.UNVERIFIED: 2}
    assert [a.reason for a in refused(group(genesis, m)[0].submit("export", b"\x00not cbor", NOW))] == ["decode"]


def account_messages(m: Market, operator) -> dict[str, tuple[bytes, bytes]]:
    """One message of each §10 type and the sender the door names: the operator, or a
    rotation's signer."""
    account, op = m.account(0), pk(operator)
    newcomer = m.c._household(4)
    household = m.c.households[0].account
    return {
        "register": (
            Register(op=op, account=pk(newcomer.account), meters=[[newcomer.devcert, ""]], t=NOW).sign(operator),
            op,
        ),
        "fund": (Fund(op=op, account=account, amount=5, ref="pay-1", t=NOW).sign(operator), op),
        "payout": (Payout(op=op, account=account, amount=5, ref="out-1", t=NOW).sign(operator), op),
        "retire": (Retire(op=op, account=account, t=NOW).sign(operator), op),
        "rotate": (Rotate(account=account, new=b"\x09" * 32, by=account, t=NOW).sign(household), account),
    }


@pytest.mark.parametrize("typ", sorted(ACCOUNT_TYPES))
def test_operator_messages_are_type_without_operators_and_pooled_under_their_signer_with(m, typ):
    """Decision 0016: a chain whose genesis lists no operator refuses them on arrival, as its
    blocks would (`type`); with operators each is pooled under the key that signed it."""
    operator = SigningKey(b"\x0d" * 32)
    raw, sender = account_messages(m, operator)[typ]
    genesis = market_genesis(m.c, validators=N)
    assert door.claim(genesis.verifier(), typ, raw, market=True) == ("type", door.UNVERIFIED)
    with_operators = replace(genesis, operators=(pk(operator),))
    verifier = with_operators.verifier()
    assert door.claim(verifier, typ, raw, market=True) == (None, sender)
    assert door.check(verifier, typ, raw, NOW) == (None, sender)
    r = group(with_operators, m)[0]
    assert refused(r.submit(typ, raw, NOW)) == [] and r.pooled_by == {sender: 1}


@pytest.mark.parametrize("devcert", ["another CA's", "expired"])
def test_a_register_whose_devcert_fails_is_decided_by_its_block_not_refused_as_junk(m, devcert):
    """A `register`'s devcerts are checked at its block's time and against the revocations
    (docs/PROTOCOL.md §10.2), not at the door: the block that rejects it `cert` is a valid
    block. Found by the consensus simulation (ledger.sim_accounts): every validator refused
    such a block as holding junk, and the proposers kept proposing it, so the chain stopped."""
    operator = SigningKey(b"\x0d" * 32)
    genesis = replace(market_genesis(m.c, validators=1), operators=(pk(operator),))
    issuer = SigningKey(b"\x0e" * 32) if devcert == "another CA's" else m.c.ca
    nbf, exp = (NOW - YEAR_MS, NOW + YEAR_MS) if devcert == "another CA's" else (NOW - YEAR_MS, NOW - 1)
    cert = DevCert(meter="m0099", pk=b"\x07" * 32, iss=pk(issuer), nbf=nbf, exp=exp).sign(issuer)
    raw = Register(op=pk(operator), account=b"\x08" * 32, meters=[[cert, ""]], t=NOW).sign(operator)
    assert door.check(genesis.verifier(), "register", raw, NOW) == (None, pk(operator))
    r = Replica(LedgerState(genesis), genesis.verifier(), 0, m.c.validator_keys[0], lambda h: None, Timing(), now=NOW)
    actions = r.submit("register", raw, NOW)
    for tick in range(NOW, NOW + 5_000, 100):
        decided = [a for a in actions if isinstance(a, Decided)]
        if decided:
            assert [(list(d.block.inputs), d.draft.reasons) for d in decided] == [([("register", raw)], ["cert"])]
            return
        actions = r.tick(tick)
    pytest.fail("no block decided the register within 5 s")
