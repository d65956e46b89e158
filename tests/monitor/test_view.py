"""monitor.view: what a monitoring subscriber believes, from signed messages made in-process.

Each refusal is checked for its reason and for leaving the view as it was: a monitor shows
only what verified.
"""

from __future__ import annotations

import copy
from dataclasses import replace

from nacl.signing import SigningKey

from ledger.block import Block, Header
from ledger.workload import SimCommunity, pk
from monitor.records import record
from monitor.view import RECENT_TRADES, CommunityView, Unverified, Verified, retained_topic
from tests.support.ledger import NOW
from tests.support.market import terms
from wire import topics
from wire.messages import AccountStatus, Birth, Cleared, CtpState, Reading, Register, Rotate, Status

C = SimCommunity(3, NOW, sources=("solar", "grid"))
GENESIS = C.genesis(1_000, validators=4, market=terms(C))
V0 = C.validator_keys[0]
STRANGER = SigningKey(b"\x07" * 32)


def view() -> CommunityView:
    return CommunityView(GENESIS)


def status(trade: bytes, state: CtpState, h: int, key: SigningKey = V0, **extra) -> bytes:
    return Status(ctp=trade, state=state, t=NOW + h, h=h, **extra).sign(key)


def birth(i: int = 0) -> bytes:
    h = C.households[i]
    return Birth(meter=h.meter_id, cert=h.devcert, fw="test", boot=1, t=NOW).sign(h.device)


def reading(i: int, seq: int, key: SigningKey | None = None) -> bytes:
    h = C.households[i]
    body = Reading(meter=h.meter_id, seq=seq, t=NOW + seq, wh_in=10 * seq, wh_out=seq, w=-120)
    return body.sign(key or h.device)


TRADE = b"\x01" * 16


def test_a_validator_signed_status_is_kept_and_named_in_json():
    v = view()
    payer, payee = C.households[0].account, C.households[1].account
    raw = status(TRADE, CtpState.HELD, 3, payer=pk(payer), payee=pk(payee), wh=5, exp=NOW + 9)
    seen = v.apply(topics.status(TRADE), raw, NOW)
    assert isinstance(seen, Verified) and seen.retained
    assert seen.record == {
        "typ": "status",
        "ctp": TRADE.hex(),
        "state": "held",
        "t_ms": NOW + 3,
        "h": 3,
        "payer": pk(payer).hex(),
        "payee": pk(payee).hex(),
        "wh": 5,
        "exp_ms": NOW + 9,
    }
    trade = v.snapshot()["trades"][0]
    assert (trade["payer_meter"], trade["payee_meter"], trade["trade_wh"]) == ("m0001", "m0002", 5)
    assert v.meter_summary("m0001")["open_trades"] == 1 and v.meter_summary("m0001")["last_trade_state"] == "held"


def test_a_status_signed_by_anyone_else_is_refused_and_changes_nothing():
    v = view()
    before = copy.deepcopy(v.snapshot())
    seen = v.apply(topics.status(TRADE), status(TRADE, CtpState.SETTLED, 3, key=STRANGER), NOW)
    assert isinstance(seen, Unverified) and seen.reason == "signature"
    after = v.snapshot()
    assert after["unverified"] == {"signature": 1}
    assert [(r["topic"], r["reason"]) for r in after["recent_unverified"]] == [(topics.status(TRADE), "signature")]
    told = ("unverified", "recent_unverified")
    assert {k: x for k, x in after.items() if k not in told} == {k: x for k, x in before.items() if k not in told}


def test_an_older_status_delivered_late_changes_nothing():
    v = view()
    v.apply(topics.status(TRADE), status(TRADE, CtpState.SETTLED, 7), NOW)
    assert v.apply(topics.status(TRADE), status(TRADE, CtpState.HELD, 3), NOW) is None
    assert v.trades[TRADE.hex()]["state"] == "settled"
    assert v.trade_states == {"settled": 1}


def test_a_reading_verifies_against_its_meters_birth_only():
    v = view()
    early = v.apply(topics.meter("m0001", "reading"), reading(0, 1), NOW)
    assert isinstance(early, Unverified) and early.reason == "signature"  # no birth yet: no device key
    assert isinstance(v.apply(topics.meter("m0001", "birth"), birth(0), NOW), Verified)
    seen = v.apply(topics.meter("m0001", "reading"), reading(0, 2), NOW)
    assert isinstance(seen, Verified) and not seen.retained
    assert seen.record == {"typ": "reading", "meter": "m0001", "seq": 2, "t_ms": NOW + 2, "wh_in": 20, "wh_out": 2,
                           "w": -120}  # fmt: skip
    forged = v.apply(topics.meter("m0001", "reading"), reading(0, 3, key=STRANGER), NOW)
    assert isinstance(forged, Unverified) and forged.reason == "signature"
    replayed = v.apply(topics.meter("m0001", "reading"), reading(0, 2), NOW)
    assert isinstance(replayed, Unverified) and replayed.reason == "replay"
    assert v.meters["m0001"]["reading"]["seq"] == 2 and v.meters["m0001"]["readings"] == 1
    assert v.meter_summary("m0001")["wh_in"] == 20


def test_a_birth_on_another_meters_topic_is_refused():
    seen = view().apply(topics.meter("m0002", "birth"), birth(0), NOW)
    assert isinstance(seen, Unverified) and seen.reason == "cert"


def test_results_and_accounts_are_kept_with_units_in_their_names():
    v = view()
    cleared = Cleared(k=5, green=[3, 40], open=[None, 0], fills=2, t=NOW, h=4).sign(V0)
    seen = v.apply(topics.market_result(5), cleared, NOW)
    assert isinstance(seen, Verified)
    assert seen.record["green"] == {"price_units_per_wh": 3, "wh": 40}
    assert seen.record["open"] == {"price_units_per_wh": None, "wh": 0}
    account = pk(C.households[2].account)
    raw = AccountStatus(account=account, balance=900, held=100, t=NOW, h=4).sign(V0)
    v.apply(topics.account(account), raw, NOW)
    assert v.meter_summary("m0003")["balance_units"] == 900 and v.meter_summary("m0003")["held_units"] == 100
    assert v.fills == 2 and v.cleared_wh == {"green": 40, "open": 0}


def test_a_block_needs_a_quorum_of_seals():
    v = view()
    header = Header(height=1, prev=GENESIS.hash, t=NOW, txs=b"\0" * 32, ctps=b"\0" * 32, inputs=b"\0" * 32)
    block = Block(header, (), ())
    for i in range(2):
        block = block.sealed(i, C.validator_keys[i])
    seen = v.apply(topics.LEDGER_BLOCKS, block.chain_bytes(), NOW)
    assert isinstance(seen, Unverified) and seen.reason == "signature"
    seen = v.apply(topics.LEDGER_BLOCKS, block.sealed(2, C.validator_keys[2]).chain_bytes(), NOW)
    assert isinstance(seen, Verified) and seen.record["height"] == 1 and seen.record["seals"] == 3


def test_validator_states_are_their_words_only():
    v = view()
    seen = v.apply(topics.ledger_state(2), b"online 17", NOW)
    assert isinstance(seen, Verified) and seen.record == {"validator": "v2", "online": True, "height": 17}
    v.apply(topics.ledger_state(2), b"offline", NOW)
    assert (v.validators[2].online, v.validators[2].height) == (False, 17)
    assert isinstance(v.apply(topics.ledger_state(9), b"online 1", NOW), Unverified)  # no such validator
    assert isinstance(v.apply(topics.ledger_state(1), b"hello", NOW), Unverified)


def test_finished_trades_are_forgotten_past_a_bound_open_ones_never():
    v = view()
    v.apply(topics.status(TRADE), status(TRADE, CtpState.HELD, 1), NOW)
    for n in range(RECENT_TRADES + 10):
        trade = n.to_bytes(16, "big")
        v.apply(topics.status(trade), status(trade, CtpState.REFUNDED, 2 + n), NOW)
    assert len(v.trades) == RECENT_TRADES + 1 and TRADE.hex() in v.trades
    assert v.trade_states["refunded"] == RECENT_TRADES + 10


def test_which_topics_hold_current_values():
    assert retained_topic(topics.status(TRADE)) and retained_topic(topics.meter("m0001", "birth"))
    assert retained_topic(topics.ledger_state(0)) and retained_topic(topics.market_result(3))
    assert not retained_topic(topics.meter("m0001", "reading")) and not retained_topic(topics.TX_CTP)
    assert not retained_topic(topics.REJECTS) and not retained_topic(topics.LEDGER_BLOCKS)


def test_a_record_drops_proofs_and_certificates():
    assert record(Birth(meter="m0001", cert=b"x" * 40, fw="1", boot=2, t=3)) == {
        "typ": "birth",
        "meter": "m0001",
        "fw": "1",
        "boot": 2,
        "t_ms": 3,
    }


def test_households_registered_and_keys_rotated_later_are_named_by_their_meters():
    """A household the operator added after the genesis, and a key a household replaced, get
    their meter's name; a register forged by someone who is not an operator names nothing."""
    operator = SigningKey(b"\x0e" * 32)
    v = CommunityView(replace(GENESIS, operators=(pk(operator),)))
    newcomer = C._household(3)
    forged = Register(op=pk(STRANGER), account=pk(STRANGER), meters=[[newcomer.devcert, "solar"]], t=NOW)
    assert isinstance(v.apply(topics.TX_REGISTER, forged.sign(STRANGER), NOW), Unverified)
    register = Register(op=pk(operator), account=pk(newcomer.account), meters=[[newcomer.devcert, "solar"]], t=NOW)
    assert isinstance(v.apply(topics.TX_REGISTER, register.sign(operator), NOW), Verified)
    again = Register(op=pk(operator), account=pk(STRANGER), meters=[[newcomer.devcert, "solar"]], t=NOW)
    v.apply(topics.TX_REGISTER, again.sign(operator), NOW)
    assert v.meter_of[pk(newcomer.account).hex()] == newcomer.meter_id
    assert pk(STRANGER).hex() not in v.meter_of, "a meter named already is not taken by a later register"
    new_key, old = SigningKey(b"\x0f" * 32), C.households[0]
    rotate = Rotate(account=pk(old.account), new=pk(new_key), by=pk(old.account), t=NOW).sign(old.account)
    assert isinstance(v.apply(topics.TX_ROTATE, rotate, NOW), Verified)
    v.apply(
        topics.account(pk(new_key)), AccountStatus(account=pk(new_key), balance=77, held=0, t=NOW, h=2).sign(V0), NOW
    )
    assert v.meter_of[pk(new_key).hex()] == old.meter_id
    assert v.accounts[pk(new_key).hex()]["meter"] == old.meter_id
    emptied = AccountStatus(account=pk(old.account), balance=0, held=0, t=NOW, h=2).sign(V0)
    v.apply(topics.account(pk(old.account)), emptied, NOW)
    assert v.meter_summary(old.meter_id)["balance_units"] == 77, "the meter's money is the new key's"
