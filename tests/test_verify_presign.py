"""Verifier.presign (signatures checked ahead, on another thread) never changes an answer."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.messages import open_message
from broker.reasons import Reject
from tests.wire_fixtures import INVALID, NOW, OTKS, VALID, ctp, erc, flip_bit, verifier


def outcome(v, raw: bytes, expect: str | None):
    try:
        return ("ok", v.verify(raw, NOW, expect=expect).body)
    except Reject as exc:
        return ("reject", exc.reason)


CASES = ([(VALID[name], None) for name in ("ctp", "erc", "cancel")]
         + [(bytes.fromhex(v["hex"]), v["typ"]) for v in INVALID])


@pytest.mark.parametrize("raw, expect", CASES)
def test_presigned_or_not_the_answer_is_the_same(raw, expect):
    ahead = verifier()
    ahead.presign(raw)
    assert outcome(ahead, raw, expect) == outcome(verifier(), raw, expect)


def test_only_good_signatures_of_the_exact_bytes_are_remembered():
    v = verifier()
    good = ctp()
    v.presign(good)
    assert len(v._presigned) == 1
    v.presign(flip_bit(good, len(good) * 8 - 1))  # signature damaged: nothing remembered
    v.presign(b"\xff not cbor")
    v.presign(open_message(erc(), "erc").body.sign(OTKS[7]))  # signed by a key other than the one it names
    assert len(v._presigned) == 1
    assert outcome(v, good, "ctp")[0] == "ok" and not v._presigned  # used once, then forgotten


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**6), st.sampled_from(["ctp", "erc", "cancel"]))
def test_damaged_messages_get_the_same_answer_with_presign(bit, name):
    raw = VALID[name]
    damaged = flip_bit(raw, bit % (len(raw) * 8))
    ahead = verifier()
    ahead.presign(damaged)
    assert outcome(ahead, damaged, name) == outcome(verifier(), damaged, name)


def test_presign_on_another_thread_while_verifying():
    """The service's arrangement: one thread presigns, another verifies, concurrently."""
    v = verifier(presigned_size=8)
    messages = [ctp(amount=i) for i in range(200)]
    worker = threading.Thread(target=lambda: [v.presign(m) for m in messages])
    worker.start()
    answers = [outcome(v, m, "ctp")[0] for m in messages]
    worker.join()
    assert answers == ["ok"] * len(messages)
    assert len(v._presigned) <= 8
