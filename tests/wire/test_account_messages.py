"""The operator transactions' bodies (docs/PROTOCOL.md §10.1, decision 0016): their round
trips, the schema of each field, who must sign each (`not-operator` before `signature`), their
topics; and the reason codes of wire/reasons.py against the ones §4, §9 and §10 name. The
valid messages are the `accounts` vectors of tests/data/vectors-ext.json, made by its
generator; each test varies one thing."""

from __future__ import annotations

import re
from dataclasses import MISSING, fields
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.data.make_vectors_ext import (
    ALICE_NEW,
    OPERATOR,
    STRANGER,
    VALIDATOR,
    account_messages,
    devcert_m0003,
)
from tests.support.wire import ALICE, BOB, CA, NOW, body_map, pk, sign_map
from wire import topics
from wire.messages import BODY_TYPES, SELL_SOURCES, Fund, Payout, Register, Retire, Rotate, open_message
from wire.reasons import STATEFUL, STATELESS, TRANSIENT, Reject
from wire.verify import Verifier

MESSAGES = account_messages()
NEW_TYPS = ("register", "fund", "payout", "retire", "rotate")
# One vector per typ, and who signs it.
BY_TYP = {
    "register": "register_carol",
    "fund": "fund_carol",
    "payout": "payout_bob",
    "retire": "retire_carol",
    "rotate": "rotate_alice_by_alice",
}
SIGNER = {name: ALICE if name == "rotate_alice_by_alice" else OPERATOR for name in MESSAGES}
MONEY = ("fund_carol", "payout_bob")
PROTOCOL = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"


def verifier() -> Verifier:
    return Verifier([pk(CA)], validators=[pk(VALIDATOR)], operators=[pk(OPERATOR)])


def changed(name: str, key=None, **changes: object) -> bytes:
    """Vector `name` with some body keys changed (None: removed), signed by `key` (default:
    its signer)."""
    m = {**body_map(MESSAGES[name]), **changes}
    return sign_map({k: v for k, v in m.items() if v is not None}, key or SIGNER[name])


def verdict(name: str, key=None, verify_with: Verifier | None = None, **changes: object) -> str | None:
    """The reason a verifier gives vector `name` with `changes` (None if it verifies)."""
    raw = changed(name, key, **changes)
    try:
        (verify_with or verifier()).verify(raw, NOW, expect=body_map(MESSAGES[name])["typ"])
    except Reject as exc:
        return exc.reason  # Reject refuses to carry anything but a §4 code
    return None


# -- round trips ---------------------------------------------------------------------------


def test_every_new_typ_has_its_body_class_and_topic():
    assert {typ: BODY_TYPES[typ].typ for typ in NEW_TYPS} == {typ: typ for typ in NEW_TYPS}
    assert tuple(f"spb/v1/tx/{typ}" for typ in NEW_TYPS) == topics.OPERATOR_TXS
    assert {topic: topics.TX_TYPES[topic] for topic in topics.OPERATOR_TXS} == {
        f"spb/v1/tx/{typ}": typ for typ in NEW_TYPS
    }


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_each_account_message_opens_to_a_body_that_encodes_to_the_same_bytes(name):
    raw = MESSAGES[name]
    opened = open_message(raw)
    assert opened.body.encode() == opened.envelope.payload
    assert opened.body.to_map() == body_map(raw)
    assert open_message(raw, type(opened.body)).body == opened.body


KEY = st.binary(min_size=32, max_size=32)
UINT = st.integers(0, (1 << 64) - 1)
AMOUNT = st.integers(1, (1 << 63) - 1)
REF = st.text(min_size=1, max_size=64)
METERS = st.lists(st.tuples(st.binary(max_size=200), st.sampled_from(("", *SELL_SOURCES))).map(list), max_size=64)
BODIES = st.one_of(
    st.builds(Register, op=KEY, account=KEY, meters=METERS, t=UINT),
    st.builds(Fund, op=KEY, account=KEY, amount=AMOUNT, ref=REF, t=UINT),
    st.builds(Payout, op=KEY, account=KEY, amount=AMOUNT, ref=REF, t=UINT),
    st.builds(Retire, op=KEY, account=KEY, t=UINT),
    st.builds(Rotate, account=KEY, new=KEY, by=KEY, t=UINT),
)


@settings(max_examples=200, deadline=None)
@given(BODIES)
def test_any_valid_body_survives_signing_and_opening(body):
    raw = body.sign(OPERATOR)
    assert open_message(raw, body.typ).body == body


# -- schema ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, key", [(BY_TYP[typ], f.name) for typ in NEW_TYPS for f in fields(BODY_TYPES[typ]) if f.default is MISSING]
)
def test_each_missing_required_key_is_schema(name, key):
    assert verdict(name, **{key: None}) == "schema"


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_an_unknown_key_is_schema(name):
    assert verdict(name, note="hi") == "schema"


@pytest.mark.parametrize(
    "name, changes",
    [
        ("fund_carol", {"op": "operator"}),
        ("fund_carol", {"account": bytes(31)}),
        ("fund_carol", {"account": bytes(33)}),
        ("fund_carol", {"amount": "5"}),
        ("fund_carol", {"amount": True}),
        ("fund_carol", {"amount": -1}),
        ("payout_bob", {"ref": b"payout-2026-12-0001"}),
        ("payout_bob", {"ref": 1}),
        ("register_carol", {"meters": {}}),
        ("register_carol", {"meters": "m0003"}),
        ("register_carol", {"meters": [["m0003", "wind"]]}),
        ("register_carol", {"meters": [[devcert_m0003(), None]]}),
        ("register_carol", {"meters": [[devcert_m0003(), "wind", "extra"]]}),
        ("register_carol", {"meters": [devcert_m0003()]}),
        ("retire_carol", {"t": -1}),
        ("rotate_alice_by_alice", {"new": pk(ALICE_NEW).hex()}),
        ("rotate_alice_by_alice", {"by": bytes(16)}),
    ],
    ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={str(x)[:12]}" for k, x in v.items()),
)
def test_a_field_of_the_wrong_type_or_size_is_schema(name, changes):
    assert verdict(name, **changes) == "schema"


@pytest.mark.parametrize("name", MONEY)
@pytest.mark.parametrize("amount, ok", [(0, False), (1, True), ((1 << 63) - 1, True), (1 << 63, False)])
def test_an_amount_is_above_0_and_below_2_pow_63(name, amount, ok):
    assert verdict(name, amount=amount) == (None if ok else "schema")


@pytest.mark.parametrize("name", MONEY)
@pytest.mark.parametrize(
    "ref, ok",
    [("", False), ("r", True), ("r" * 64, True), ("r" * 65, False), ("é" * 64, True), ("é" * 65, False)],
    ids=["empty", "one", "64", "65", "64-code-points-128-bytes", "65-code-points"],
)
def test_a_ref_is_1_to_64_characters(name, ref, ok):
    """Characters are code points: 64 of them may be more than 64 bytes of UTF-8."""
    assert verdict(name, ref=ref) == (None if ok else "schema")


@pytest.mark.parametrize("count, ok", [(0, True), (64, True), (65, False)])
def test_a_register_names_at_most_64_meters(count, ok):
    assert verdict("register_carol", meters=[[devcert_m0003(), "wind"]] * count) == (None if ok else "schema")


@pytest.mark.parametrize("source", ["", *SELL_SOURCES, "nuclear", "Solar", "any"])
def test_a_meters_source_is_one_of_section_9_1s_or_none(source):
    ok = source in ("", *SELL_SOURCES)
    assert verdict("register_carol", meters=[[devcert_m0003(), source]]) == (None if ok else "schema")


def test_the_devcerts_of_a_register_are_the_ledgers_to_check_not_the_verifiers():
    """Stateless checks see bytes: a devcert no CA signed is refused by the ledger at the
    block time (`cert`, §10.2), not here."""
    assert verdict("register_carol", meters=[[b"not a devcert", "wind"]]) is None


def test_the_classes_refuse_to_build_what_receivers_reject():
    with pytest.raises(ValueError, match="amount"):
        Fund(op=pk(OPERATOR), account=pk(ALICE), amount=0, ref="r", t=NOW).encode()
    with pytest.raises(ValueError, match="ref"):
        Payout(op=pk(OPERATOR), account=pk(ALICE), amount=1, ref="r" * 65, t=NOW).encode()
    with pytest.raises(ValueError, match="meters"):
        Register(op=pk(OPERATOR), account=pk(ALICE), meters=[[b"", "coal"]], t=NOW).encode()


# -- who signs ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [BY_TYP[typ] for typ in ("register", "fund", "payout", "retire")])
def test_an_operator_message_with_a_strangers_op_key_is_not_operator(name):
    """Whoever signs it: `not-operator` comes before `signature` (§4 steps 6 and 7)."""
    assert verdict(name, STRANGER, op=pk(STRANGER)) == "not-operator"
    assert verdict(name, OPERATOR, op=pk(STRANGER)) == "not-operator"
    assert verdict(name, STRANGER) == "signature"  # the operator's op key, a stranger's signature
    assert verdict(name, ALICE, op=pk(ALICE)) == "not-operator"  # an account is no operator


@pytest.mark.parametrize("name", [BY_TYP[typ] for typ in ("register", "fund", "payout", "retire")])
def test_without_operators_every_operator_message_is_not_operator(name):
    assert verdict(name, verify_with=Verifier([pk(CA)])) == "not-operator"


def test_a_rotation_signed_by_its_old_key_verifies():
    assert verdict("rotate_alice_by_alice") is None
    assert verdict("rotate_alice_by_alice", verify_with=Verifier([pk(CA)])) is None  # no operator needed


def test_a_rotation_signed_by_an_operator_verifies():
    assert verdict("rotate_alice_by_alice", OPERATOR, by=pk(OPERATOR)) is None


def test_a_rotation_by_anyone_else_is_not_operator():
    """A stranger, the new key itself, another account: none is the old key or an operator."""
    for key in (STRANGER, ALICE_NEW, BOB):
        assert verdict("rotate_alice_by_alice", key, by=pk(key)) == "not-operator"


def test_a_rotation_signed_by_other_than_its_by_is_signature():
    assert verdict("rotate_alice_by_alice", OPERATOR) == "signature"  # by = alice, signed by the operator
    assert verdict("rotate_alice_by_alice", ALICE, by=pk(OPERATOR)) == "signature"  # by = operator, signed by alice


# -- the reason codes: wire/reasons.py is what PROTOCOL.md names -----------------------------


def _sections(text: str, numbers: tuple[str, ...]) -> str:
    parts = re.split(r"^## ", text, flags=re.M)
    return "\n".join(p for p in parts if p.split(".", 1)[0] in numbers)


def _top_level(text: str, sep: str) -> list[str]:
    """`text` split at `sep` outside parentheses."""
    out, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch == "("
        depth -= ch == ")"
        if ch == sep and depth == 0:
            out.append(text[start:i])
            start = i + 1
    return [*out, text[start:]]


def _leading(clauses: list[str]) -> list[str]:
    """The code each clause starts with, for clauses that start with one."""
    return [m.group(1) for c in clauses if (m := re.match(r"\s*`([a-z-]+)`", c))]


def _items(text: str, start: str) -> list[str]:
    """The list items (one string each, continuation lines joined) that start with `start`."""
    items: list[list[str]] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if re.match(start, line):
            current = [line]
            items.append(current)
        elif current is not None and line.startswith("  "):
            current.append(line.strip())
        else:
            current = None
    return [" ".join(item) for item in items]


def documented_stateless(text: str) -> list[str]:
    """§4's numbered steps: each code followed by ` –`, in order."""
    section = _sections(text, ("4",))
    steps = section.split("Stateless checks, in this order", 1)[1].split("\n\n", 2)[1]
    return re.findall(r"`([a-z-]+)` –", " ".join(_items(steps, r"\d+\. ")))


def documented_other(text: str) -> set[str]:
    """§4's stateful sentence, the `- \\`code\\` –` bullets of §4's extensions, and every
    "first failure wins" list of §9 and §10 (`- \\`typ\\`: \\`code\\` (...); \\`code\\`...`)."""
    section4, later = _sections(text, ("4",)), _sections(text, ("9", "10"))
    sentence = section4.split("Stateful checks by the ledger, after those:", 1)[1]
    sentence = re.split(r"\.\s", sentence, maxsplit=1)[0]
    codes = set(_leading(_top_level(sentence, ",")))
    codes |= set(re.findall(r"^- `([a-z-]+)` –", section4, flags=re.M))
    for item in _items(later, r"- `[a-z]+`(, `[a-z]+`)*: "):
        checks = item.split(": ", 1)[1].split("Accepted:", 1)[0]
        codes |= set(_leading(_top_level(checks, ";")))
    return codes


def test_section_4s_stateless_steps_are_the_stateless_reasons_in_their_order():
    assert documented_stateless(PROTOCOL.read_text()) == list(STATELESS)


def test_the_stateful_and_transient_reasons_are_exactly_those_sections_4_9_and_10_name():
    """Besides §4's steps: a stateless code the ledger also gives statefully (`cert`: a
    revoked device key, a `register`'s devcert at the block time) is no new code."""
    documented = documented_other(PROTOCOL.read_text())
    assert documented - set(STATELESS) == set(STATEFUL) | set(TRANSIENT)


def test_the_reason_parsers_see_a_reason_added_to_the_text():
    """The two tests above fail when the document names a code the code lacks."""
    text = PROTOCOL.read_text()
    extra = text.replace("- `retire`: `rotated`;", "- `retire`: `rotated`; `made-up`;")
    assert extra != text and "made-up" in documented_other(extra)
    step = text.replace("2. `noncanonical` – see §1.", "2. `noncanonical` – see §1; `made-up` – no.")
    assert documented_stateless(step)[:3] == ["decode", "noncanonical", "made-up"]
