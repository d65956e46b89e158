"""The `accounts` section of tests/data/vectors-ext.json (docs/PROTOCOL.md §10, decision
0016): a genesis with an operator, and the operator transactions of a short story.

tests/wire/test_extension_vectors.py holds the whole file to what its generator writes; here
each vector is checked from the outside: it verifies under the key its table row names (or
is rejected with its reason) by a verifier that trusts the genesis's operator, the genesis
is recomputed with cbor2 and hashlib, and a ledger on that genesis takes the story block by
block and ends with the money the section says. tests/data/vectors.json stays the shared
spec's copy, byte for byte.
"""

from __future__ import annotations

from hashlib import sha256
from pathlib import Path

import cbor2
import pytest
from nacl.signing import SigningKey

from broker.keys import write_file
from ledger.genesis import Genesis, write_genesis
from ledger.node import LedgerNode
from ledger.validator import ValidatorIdentity, secret_validator_dir
from tests.support.ext import EXT, EXT_PATH, EXT_VALIDATOR
from tests.support.wire import ALICE, BOB, CA, NOW, VECTORS_PATH, body_map, pk, reason
from wire.reasons import STATELESS
from wire.verify import Verifier

ACCOUNTS = EXT["accounts"]
KEYS = {name: SigningKey(bytes.fromhex(k["seed"])) for name, k in ACCOUNTS["keys"].items()}
OPERATOR = KEYS["operator"]
VALID = {name: bytes.fromhex(h) for name, h in ACCOUNTS["valid"].items()}
INVALID = ACCOUNTS["invalid"]
GENESIS = bytes.fromhex(ACCOUNTS["genesis"]["hex"])
# Who signs each valid vector (§10.1's table): `op`, or a rotate's `by`.
SIGNER = {
    "register_carol": OPERATOR,
    "fund_carol": OPERATOR,
    "payout_bob": OPERATOR,
    "rotate_alice_by_alice": ALICE,
    "rotate_bob_by_operator": OPERATOR,
    "retire_carol": OPERATOR,
    "payout_carol": OPERATOR,
}
# The shared spec's copy of the v1 vectors (the project's first commit): never regenerated.
V1_SHA256 = "2e9bb6b71a7347dee59d4f5e0b4b599ea59535877d097c3b70699599b19ec55f"


def operator_verifier() -> Verifier:
    return Verifier([pk(CA)], validators=[pk(EXT_VALIDATOR)], operators=[pk(OPERATOR)])


def test_the_v1_vectors_are_untouched():
    assert sha256(VECTORS_PATH.read_bytes()).hexdigest() == V1_SHA256


def test_the_extension_file_beside_them_holds_the_accounts_section():
    assert EXT_PATH.parent == VECTORS_PATH.parent and "accounts" in EXT


@pytest.mark.parametrize("name", sorted(ACCOUNTS["keys"]))
def test_each_seed_gives_its_published_key(name):
    assert pk(KEYS[name]).hex() == ACCOUNTS["keys"][name]["pk"]


def test_every_valid_vector_is_named_with_its_signer():
    assert list(VALID) == list(SIGNER)  # in the story's order


@pytest.mark.parametrize("name", list(SIGNER))
def test_each_valid_vector_verifies_as_its_typ_under_its_signers_key(name):
    raw = VALID[name]
    typ = body_map(raw)["typ"]
    opened = operator_verifier().verify(raw, NOW, expect=typ)
    assert opened.raw == raw and opened.envelope.verifies(pk(SIGNER[name]))
    assert typ in ("register", "fund", "payout", "retire", "rotate")


@pytest.mark.parametrize("name", [n for n in SIGNER if SIGNER[n] is OPERATOR])
def test_without_the_operator_the_operators_vectors_are_not_operator(name):
    raw = VALID[name]
    verifier = Verifier([pk(CA)], validators=[pk(EXT_VALIDATOR)])
    assert reason(verifier.verify, raw, NOW, expect=body_map(raw)["typ"]) == "not-operator"


def test_a_rotation_by_its_old_key_needs_no_operator():
    raw = VALID["rotate_alice_by_alice"]
    assert Verifier([pk(CA)]).verify(raw, NOW, expect="rotate").body.by == pk(ALICE)


def test_the_invalid_vectors_cover_schema_not_operator_and_signature():
    assert sorted({v["reason"] for v in INVALID}) == ["not-operator", "schema", "signature"]
    assert {v["typ"] for v in INVALID} == {"register", "fund", "payout", "retire", "rotate"}


@pytest.mark.parametrize("vector", INVALID, ids=[v["name"] for v in INVALID])
def test_each_invalid_vector_is_rejected_with_its_reason(vector):
    raw = bytes.fromhex(vector["hex"])
    assert reason(operator_verifier().verify, raw, NOW, expect=vector["typ"]) == vector["reason"]


def test_not_operator_comes_after_proof_and_before_signature_in_section_4s_order():
    assert STATELESS.index("proof") < STATELESS.index("not-operator") == STATELESS.index("signature") - 1


def test_the_bodies_say_what_the_story_says():
    """Read with cbor2 alone: who is funded, paid out, rotated and retired, and for how much."""
    b = {name: body_map(raw) for name, raw in VALID.items()}
    op, carol = pk(OPERATOR), pk(KEYS["account_carol"])
    assert all(b[n]["op"] == op for n in SIGNER if "op" in b[n])
    assert b["register_carol"]["account"] == carol and len(b["register_carol"]["meters"]) == 1
    cert, source = b["register_carol"]["meters"][0]
    assert (body_map(cert)["meter"], body_map(cert)["pk"], source) == ("m0003", pk(KEYS["meter_m0003_device"]), "wind")
    assert (b["fund_carol"]["account"], b["fund_carol"]["amount"]) == (carol, ACCOUNTS["after"]["funded"])
    assert b["payout_bob"]["amount"] + b["payout_carol"]["amount"] == ACCOUNTS["after"]["withdrawn"]
    assert b["fund_carol"]["ref"] != b["payout_carol"]["ref"] != b["payout_bob"]["ref"]
    alice = b["rotate_alice_by_alice"]
    assert (alice["account"], alice["new"], alice["by"]) == (pk(ALICE), pk(KEYS["account_alice_new"]), pk(ALICE))
    assert b["rotate_bob_by_operator"]["by"] == op != b["rotate_bob_by_operator"]["account"]
    times = [body["t"] for body in b.values()]
    assert times == sorted(times)


# -- the genesis ------------------------------------------------------------------------


def test_the_genesis_lists_the_operator_in_deterministic_cbor():
    m = cbor2.loads(GENESIS)
    assert cbor2.dumps(m, canonical=True) == GENESIS
    assert sha256(GENESIS).hexdigest() == ACCOUNTS["genesis"]["hash"]
    assert m["operators"] == [pk(OPERATOR)] and m["validators"] == [pk(EXT_VALIDATOR)] and m["cas"] == [pk(CA)]
    assert "market" in m


def test_the_same_genesis_without_operators_has_no_operators_key_and_the_old_hash():
    """Absent, not empty: a genesis made before §10 keeps its hash."""
    m = cbor2.loads(GENESIS)
    del m["operators"]
    old = cbor2.dumps(m, canonical=True)
    assert sha256(old).hexdigest() == ACCOUNTS["genesis"]["hash_without_operators"]
    assert Genesis.decode(old).operators == ()


def test_the_ledger_reads_the_genesis_and_its_verifier_trusts_the_operator():
    genesis = Genesis.decode(GENESIS)
    assert genesis.encode() == GENESIS and genesis.operators == (pk(OPERATOR),)
    for name, raw in VALID.items():
        assert genesis.verifier().verify(raw, NOW, expect=body_map(raw)["typ"]).raw == raw, name


# -- the story, applied --------------------------------------------------------------------


def _ledger(root: Path) -> LedgerNode:
    write_genesis(root, Genesis.decode(GENESIS))
    seed = EXT["keys"]["validator_v0"]["seed"]
    write_file(secret_validator_dir(root, 0) / "validator.key", (seed + "\n").encode(), 0o600, replace=True)
    return LedgerNode(ValidatorIdentity.load(root, 0))


def test_a_ledger_on_the_genesis_takes_the_story_and_ends_with_the_money_it_says(tmp_path):
    """One vector a block, each accepted; then every invalid vector in one block, each
    rejected with its reason; the money after is the section's `after`."""
    node = _ledger(tmp_path)
    t = NOW + 10_000
    for name, raw in VALID.items():
        t += 1_000
        assert node.decide([(body_map(raw)["typ"], raw)], t).reasons == [None], name
    invalid = [(v["typ"], bytes.fromhex(v["hex"])) for v in INVALID]
    assert node.decide(invalid, t + 1_000).reasons == [v["reason"] for v in INVALID]
    state, after = node.state, ACCOUNTS["after"]
    keys = {**{name: pk(key) for name, key in KEYS.items()}, "account_alice": pk(ALICE), "account_bob": pk(BOB)}
    money = {name: [state.balances[keys[name]], state.held[keys[name]]] for name in after["accounts"]}
    assert money == after["accounts"]
    assert (state.funded, state.withdrawn) == (after["funded"], after["withdrawn"])
    assert state.total() == state.genesis.total + state.funded - state.withdrawn
    assert state.retired.keys() == {pk(KEYS["account_carol"])}
