"""broker.outcome's reading of the bus, without a broker: which validator-signed reject,
account status or block decides each transaction, and which it ignores. The real bus:
tests/system/test_grow_community.py."""

from __future__ import annotations

import time

import pytest
from nacl.signing import SigningKey

from broker.outcome import Expect, NoOutcome, _Watch
from wire import topics
from wire.cose import message_hash
from wire.messages import AccountStatus, Rejection
from wire.verify import Verifier

NOW = 1_800_000_000_000
VALIDATOR, STRANGER = SigningKey(b"v" * 32), SigningKey(b"s" * 32)
A, B = b"a" * 32, b"b" * 32
VERIFIER = Verifier(cas=[b"c" * 32], validators=[bytes(VALIDATOR.verify_key)])


def status(account: bytes, h: int, balance: int = 0, key: SigningKey = VALIDATOR) -> tuple[str, bytes, bool]:
    raw = AccountStatus(account=account, balance=balance, held=0, t=NOW, h=h).sign(key)
    return topics.account(account), raw, True


def reject(message: bytes, reason: str, key: SigningKey = VALIDATOR) -> tuple[str, bytes, bool]:
    return topics.REJECTS, Rejection(msg=message_hash(message), reason=reason, t=NOW).sign(key), False


def watch(*expects: Expect) -> _Watch:
    return _Watch(VERIFIER, expects, lambda: NOW)


def decided(w: _Watch) -> list:
    with w.cond:
        return [w._outcome(e) for e in w.expects]


def test_a_moves_expectation_waits_for_a_status_newer_than_at_sending():
    fund = Expect(topics.TX_FUND, b"fund bytes", moves=A)
    w = watch(fund)
    w.on_status(*status(A, 7, 100))
    w.wait_baselines(time.monotonic() + 1, 1)
    assert decided(w) == [None]  # the retained status from before: not ours
    w.on_status(*status(A, 6, 999))  # an older copy arriving late changes nothing
    assert decided(w) == [None]
    w.on_status(*status(A, 8, 150))
    [outcome] = decided(w)
    assert outcome.applied and outcome.status.balance == 150 and outcome.hash == message_hash(b"fund bytes")


def test_a_reject_naming_the_hash_wins_and_others_are_ignored():
    fund = Expect(topics.TX_FUND, b"fund bytes", moves=A)
    w = watch(fund)
    w.on_status(*status(A, 7))
    w.wait_baselines(time.monotonic() + 1, 1)
    w.on_reject(*reject(b"someone else's", "duplicate"))
    w.on_reject(*reject(b"fund bytes", "over-limit", key=STRANGER))  # not a validator's: ignored
    w.on_status(*status(A, 9, key=STRANGER))
    assert decided(w) == [None]
    w.on_reject(*reject(b"fund bytes", "duplicate"))
    w.on_status(*status(A, 9))  # a later block moving the account does not undo the reject
    [outcome] = decided(w)
    assert not outcome.applied and outcome.reason == "duplicate"


def test_a_status_on_the_wrong_topic_is_ignored():
    w = watch(Expect(topics.TX_REGISTER, b"register", appears=A))
    _, raw, _ = status(B, 3)
    w.on_status(topics.account(A), raw, True)  # B's status where A's belongs
    assert decided(w) == [None]


def test_appears_and_duplicate_meaning_done():
    register = Expect(topics.TX_REGISTER, b"register", appears=A, duplicate_is_applied=True)
    rotate = Expect(topics.TX_ROTATE, b"rotate", appears=B, moves=A, duplicate_is_applied=True)
    w = watch(register, rotate)
    w.on_status(*status(A, 4, 10))
    w.wait_baselines(time.monotonic() + 1, 1)
    first, second = decided(w)
    assert first.applied and first.status.h == 4 and second is None
    w.on_reject(*reject(b"rotate", "duplicate"))  # rotated already: done
    assert decided(w)[1].applied
    w.on_reject(*reject(b"register", "meter-taken"))  # a real refusal is one whatever else showed
    assert decided(w)[0].reason == "meter-taken"


def test_a_decided_expectation_waits_for_a_block_made_after_the_message():
    retire = Expect(topics.TX_RETIRE, b"retire", decided=True, t=NOW)
    w = watch(retire)
    w.on_block(None)  # not a sealed block
    w.on_block(NOW - 1)
    assert decided(w) == [None]
    w.on_block(NOW)
    assert decided(w)[0].applied


def test_no_baseline_and_no_outcome_say_what_is_missing():
    w = watch(Expect(topics.TX_FUND, b"fund", moves=A))
    with pytest.raises(NoOutcome, match=f"no account status for {A.hex()}"):
        w.wait_baselines(time.monotonic(), 0.5)
    w = watch(Expect(topics.TX_REGISTER, b"register", appears=A))
    with pytest.raises(NoOutcome, match=f"register {message_hash(b'register').hex()}.*may operator publish"):
        w.wait_outcomes(time.monotonic(), 0.5, "operator")


def test_emptied_waits_for_the_status_that_shows_nothing_left():
    """A rotation moves all of the old key's money: a trade that only moved some is not it."""
    rotate = Expect(topics.TX_ROTATE, b"rotate", moves=A, emptied=True)
    w = watch(rotate)
    w.on_status(*status(A, 4, 100))
    w.wait_baselines(time.monotonic() + 1, 1)
    w.on_status(*status(A, 5, 60))
    assert decided(w) == [None]
    w.on_status(*status(A, 6, 0))
    assert decided(w)[0].applied
