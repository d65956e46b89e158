"""edge.keyring (batches of one-time keys, which one confirms a trade, when to make the next)
and edge.coe (asking a peer for a CoE, answering one, accepting one), with real keys,
devcerts and a wire.verify.Verifier, as the ledger will check them."""

from __future__ import annotations

from hashlib import sha256

import pytest
from nacl.signing import SigningKey

from edge import coe
from edge.coe import DAY_MS, HOUR_MS, Refused, Witness, accept, request
from edge.keyring import SEED, Batch, NoKey, choose, wants_new_batch
from tests.support.wire import reason
from wire.merkle import MerkleTree, verify_inclusion
from wire.messages import Coe, CoeRequest, DevCert, Erc
from wire.reasons import Reject
from wire.verify import Verifier

NOW = 1_800_000_000_000
YEAR_MS = 365 * DAY_MS


def key(*labels: object) -> SigningKey:
    return SigningKey(sha256("/".join(map(str, ("keyring-coe tests", *labels))).encode()).digest())


def pk(k: SigningKey) -> bytes:
    return bytes(k.verify_key)


CA = key("ca")
ROGUE_CA = key("rogue ca")
DEVICE = {m: key("device", m) for m in ("m0001", "m0002", "m0003")}


def devcert(
    meter: str,
    *,
    ca: SigningKey = CA,
    nbf: int = NOW - YEAR_MS,
    exp: int = NOW + YEAR_MS,
    device: SigningKey | None = None,
) -> bytes:
    return DevCert(meter=meter, pk=pk(device or DEVICE[meter]), iss=pk(ca), nbf=nbf, exp=exp).sign(ca)


def seeds(size: int, label: str = "batch") -> bytes:
    return b"".join(sha256(f"{label}/{i}".encode()).digest() for i in range(size))


def verifier() -> Verifier:
    return Verifier([pk(CA)])


def witness(
    meter: str = "m0002", *, valid_ms: int = 30 * DAY_MS, per_hour: int = 12, cert: bytes | None = None
) -> Witness:
    return Witness(meter, cert or devcert(meter), DEVICE[meter], verifier(), valid_ms=valid_ms, per_hour=per_hour)


def req(batch: Batch, meter: str = "m0001", t: int = NOW, nonce: bytes = b"n" * 16) -> bytes:
    return request(batch, devcert(meter), DEVICE[meter], nonce, t)


@pytest.fixture(scope="module")
def batch() -> Batch:
    return Batch.new(seeds(64), NOW)


# ---- Batch -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 5, 64])
def test_batch_root_is_the_merkle_root_of_its_public_keys(size):
    """The root a CoE vouches for is RFC 9162's root over the batch's public keys, in seed
    order: the ledger checks ERC proofs against exactly that tree."""
    s = seeds(size, f"root{size}")
    batch = Batch.new(s, NOW)
    keys = [pk(SigningKey(s[i * SEED : (i + 1) * SEED])) for i in range(size)]
    assert batch.root == MerkleTree(keys).root()
    assert batch.size == size
    assert (batch.id, batch.next_idx, batch.made, batch.coe) == (None, 0, NOW, None)
    assert [pk(batch.key(i)) for i in range(size)] == keys


@pytest.mark.parametrize("size", [1, 3, 64])
def test_every_key_proof_verifies_under_the_root_and_no_other_index(size):
    """Each key's proof proves that key at its index under the root (and not at a neighbour's
    index): an ERC's `path` is what the ledger checks with verify_inclusion."""
    batch = Batch.new(seeds(size, f"proof{size}"), NOW)
    for idx in range(size):
        proof = batch.proof(idx)
        assert verify_inclusion(pk(batch.key(idx)), idx, size, proof, batch.root)
        if size > 1:
            assert not verify_inclusion(pk(batch.key(idx)), (idx + 1) % size, size, proof, batch.root)


@pytest.mark.parametrize("bad", [b"", b"x" * 31, b"x" * 33, b"x" * 65])
def test_seeds_must_be_whole_32_byte_seeds(bad):
    """A batch is made of whole seeds; a truncated or empty seed string is refused."""
    with pytest.raises(ValueError):
        Batch.new(bad, NOW)


# ---- choose ----------------------------------------------------------------------------

SIZE = 4


def ring(
    i: int,
    *,
    coe: bool = True,
    next_idx: int = 0,
    coe_t: int = NOW - HOUR_MS,
    coe_exp: int = NOW + DAY_MS,
    size: int = SIZE,
) -> Batch:
    """Batch #i as the store returns it (the root is a stand-in: choose never looks at it)."""
    return Batch(
        i,
        bytes([i]) * 32,
        bytes(32 * size),
        next_idx,
        NOW - DAY_MS + i,
        b"coe" if coe else None,
        coe_t if coe else None,
        coe_exp if coe else None,
    )


UNTIL = NOW + HOUR_MS


def test_choose_takes_the_oldest_usable_batch():
    """Batches are used up in order: of two usable batches the older one confirms."""
    assert choose([ring(1), ring(2)], NOW, UNTIL).id == 1


@pytest.mark.parametrize(
    "first, why",
    [
        (ring(1, coe=False), "no CoE"),
        (ring(1, next_idx=SIZE), "every key reserved"),
        (ring(1, coe_exp=UNTIL - 1), "CoE expires before the trade does"),
        (ring(1, coe_t=NOW + 1), "CoE valid only from a later time"),
    ],
)
def test_choose_skips_an_older_batch_that_cannot_confirm(first, why):
    """An older batch without CoE, exhausted, whose CoE lapses before `until`, or whose CoE
    is not valid yet is passed over for the next one that can confirm."""
    assert choose([first, ring(2)], NOW, UNTIL).id == 2, why


def test_choose_boundaries_are_inclusive():
    """A CoE expiring exactly at `until`, valid from exactly `now`, with its last key free
    can confirm: the ledger accepts an ERC at t == exp and t == coe.t."""
    assert choose([ring(1, coe_exp=UNTIL, coe_t=NOW, next_idx=SIZE - 1), ring(2)], NOW, UNTIL).id == 1


@pytest.mark.parametrize("batches", [[], [ring(1, coe=False)], [ring(1, coe=False), ring(2, coe=False)]])
def test_no_key_without_any_coe_says_no_coe_yet(batches):
    """Without any CoE the message says so (the user must get a peer online)."""
    with pytest.raises(NoKey, match="no key batch has a CoE yet"):
        choose(batches, NOW, UNTIL)


@pytest.mark.parametrize(
    "batches",
    [
        [ring(1, next_idx=SIZE)],
        [ring(1, coe_exp=UNTIL - 1), ring(2, coe=False)],
        [ring(1, coe_t=NOW + 1)],
    ],
)
def test_no_key_with_coes_that_cannot_serve_says_none_valid(batches):
    """With CoEs that cannot confirm this trade the message is the other one: none with a
    free key and a CoE valid until the trade's expiry."""
    with pytest.raises(NoKey, match="no key batch with a free key and a CoE valid until") as info:
        choose(batches, NOW, UNTIL)
    assert "has a CoE yet" not in str(info.value)


# ---- wants_new_batch ------------------------------------------------------------------


def test_first_batch_is_wanted():
    """A meter with no batch makes one."""
    assert wants_new_batch(None, NOW)


@pytest.mark.parametrize("size, below, at", [(64, 47, 48), (4, 2, 3), (8, 5, 6), (1, 0, 1)])
def test_new_batch_at_exactly_75_percent_of_keys(size, below, at):
    """The next batch is made once 75% of the newest batch's keys are reserved, not one key before."""
    fresh = {"coe_t": NOW - HOUR_MS, "coe_exp": NOW + 30 * DAY_MS, "size": size}
    assert not wants_new_batch(ring(1, next_idx=below, **fresh), NOW)
    assert wants_new_batch(ring(1, next_idx=at, **fresh), NOW)


def test_new_batch_at_exactly_75_percent_of_coe_lifetime():
    """The next batch is made once 75% of the newest CoE's lifetime has passed, not a ms before."""
    t, life = NOW - HOUR_MS, 4_000_000
    newest = ring(1, coe_t=t, coe_exp=t + life)
    assert not wants_new_batch(newest, t + 3 * life // 4 - 1)
    assert wants_new_batch(newest, t + 3 * life // 4)
    assert wants_new_batch(newest, t + life + 1)


def test_no_new_batch_while_the_newest_waits_for_its_coe():
    """A newest batch without CoE is already being fetched: no second one, even when every
    older batch is used up or expired."""
    assert not wants_new_batch(ring(2, coe=False), NOW)
    assert not wants_new_batch(ring(1, coe=False), NOW + YEAR_MS)


# ---- request / answer / accept ---------------------------------------------------------


def test_answered_coe_is_accepted_and_verifies_an_erc(batch):
    """The whole exchange: m0001 asks, m0002 answers, m0001 accepts; the CoE verifies on its
    own and inside an ERC signed by one of the batch's keys (what the ledger checks)."""
    requester, raw = witness().answer(req(batch), set(), NOW)
    assert requester == "m0001"
    got = accept(verifier(), raw, batch, "m0001", NOW)
    assert (got.root, got.size, got.cert) == (batch.root, batch.size, devcert("m0002"))
    assert got.t <= NOW < NOW + HOUR_MS <= got.exp
    assert verifier().verify(raw, NOW, expect="coe").body == got
    for idx in (0, 17, 63):
        k = batch.key(idx)
        erc = Erc(ctp=b"c" * 16, wh=5, t=NOW, pk=pk(k), idx=idx, path=batch.proof(idx), coe=raw).sign(k)
        body = verifier().verify(erc, NOW + DAY_MS, expect="erc").body
        assert (body.idx, body.pk) == (idx, pk(k))
    # and the same ERC under another index's proof does not
    k = batch.key(3)
    wrong = Erc(ctp=b"c" * 16, wh=5, t=NOW, pk=pk(k), idx=3, path=batch.proof(4), coe=raw).sign(k)
    assert reason(verifier().verify, wrong, NOW, expect="erc") == "proof"


def test_coe_is_valid_from_an_hour_back_for_valid_ms():
    """The CoE's window is [now - 1 h (clock skew), now + valid_ms]."""
    b = Batch.new(seeds(4, "window"), NOW)
    _, raw = witness(valid_ms=5 * DAY_MS).answer(req(b), set(), NOW)
    got = accept(verifier(), raw, b, "m0001", NOW)
    assert (got.t, got.exp) == (NOW - coe.CLOCK_SKEW_MS, NOW + 5 * DAY_MS)


def test_coe_exp_is_capped_at_the_witness_devcert_exp():
    """A witness never vouches beyond its own certificate: exp = min(now + valid_ms, devcert exp)."""
    b = Batch.new(seeds(4, "cap"), NOW)
    cert_exp = NOW + 10 * DAY_MS
    w = witness(valid_ms=30 * DAY_MS, cert=devcert("m0002", exp=cert_exp))
    _, raw = w.answer(req(b), set(), NOW)
    got = accept(verifier(), raw, b, "m0001", NOW)
    assert got.exp == cert_exp


def test_witness_refuses_its_own_meters_request(batch):
    """A meter never vouches for itself (a CoE is a second device's attestation)."""
    with pytest.raises(Refused):
        witness("m0001").answer(req(batch, "m0001"), set(), NOW)


def test_witness_refuses_a_root_of_its_own(batch):
    """Someone replaying our own batch root under their devcert gets no CoE for it."""
    with pytest.raises(Refused):
        witness().answer(req(batch, "m0001"), {b"\0" * 32, batch.root}, NOW)


@pytest.mark.parametrize("size", [0, 1025])
def test_witness_rejects_a_size_outside_1_to_1024_as_schema(batch, size):
    """A batch size the ledger would refuse in a CoE (§4: 1..1024) is a `schema` reject."""
    raw = CoeRequest(cert=devcert("m0001"), root=batch.root, size=size, nonce=b"n" * 16, t=NOW).sign(DEVICE["m0001"])
    assert reason(witness().answer, raw, set(), NOW) == "schema"


@pytest.mark.parametrize("size", [1, 1024])
def test_witness_answers_sizes_1_and_1024(batch, size):
    """The bounds themselves are fine."""
    raw = CoeRequest(cert=devcert("m0001"), root=batch.root, size=size, nonce=b"n" * 16, t=NOW).sign(DEVICE["m0001"])
    _, answer = witness().answer(raw, set(), NOW)
    assert verifier().verify(answer, NOW, expect="coe").body.size == size


@pytest.mark.parametrize(
    "age_ms, ok", [(10 * 60_000, True), (10 * 60_000 + 1, False), (-10 * 60_000, True), (-10 * 60_000 - 1, False)]
)
def test_witness_refuses_a_request_more_than_10_minutes_off(batch, age_ms, ok):
    """Only a request made within 10 minutes (either way) of the witness's clock is answered:
    an old request replayed from the bus does not get a fresh CoE."""
    raw = req(batch, t=NOW - age_ms)
    if ok:
        assert witness().answer(raw, set(), NOW)[0] == "m0001"
    else:
        with pytest.raises(Refused):
            witness().answer(raw, set(), NOW)


def test_witness_rejects_an_untrusted_devcert(batch):
    """A requester whose devcert no trusted CA signed gets a `cert` reject."""
    raw = request(batch, devcert("m0001", ca=ROGUE_CA), DEVICE["m0001"], b"n" * 16, NOW)
    assert reason(witness().answer, raw, set(), NOW) == "cert"


def test_witness_rejects_an_expired_devcert(batch):
    """...as is one outside its nbf..exp."""
    raw = request(batch, devcert("m0001", exp=NOW - 1), DEVICE["m0001"], b"n" * 16, NOW)
    assert reason(witness().answer, raw, set(), NOW) == "cert"


def test_witness_rejects_a_request_not_signed_by_the_devcerts_key(batch):
    """A request signed by any key but the one its devcert certifies is a `signature` reject:
    nobody can ask in another meter's name."""
    raw = request(batch, devcert("m0001"), DEVICE["m0003"], b"n" * 16, NOW)
    assert reason(witness().answer, raw, set(), NOW) == "signature"


def test_rate_limit_burst_of_three_then_per_hour():
    """Per requester: 3 at once, then one each HOUR/per_hour (not a ms earlier); another
    requester has its own bucket."""
    w = witness(per_hour=12)
    step = HOUR_MS // 12
    b = Batch.new(seeds(2, "rate"), NOW)
    for _ in range(3):
        w.answer(req(b), set(), NOW)
    with pytest.raises(Refused):
        w.answer(req(b), set(), NOW)
    assert w.answer(req(b, "m0003"), set(), NOW)[0] == "m0003"
    later = NOW + step - 1
    with pytest.raises(Refused):
        w.answer(req(b, t=later), set(), later)
    later = NOW + step
    assert w.answer(req(b, t=later), set(), later)[0] == "m0001"
    with pytest.raises(Refused):
        w.answer(req(b, t=later), set(), later)
    much_later = later + 10 * HOUR_MS  # the bucket refills to the burst, no further
    for _ in range(3):
        w.answer(req(b, t=much_later), set(), much_later)
    with pytest.raises(Refused):
        w.answer(req(b, t=much_later), set(), much_later)


def test_refused_and_rejected_requests_spend_no_tokens(batch):
    """Only answered requests count against the rate: stale or forged requests (which anyone
    could send in a meter's name) do not use up its burst."""
    w = witness()
    for _ in range(5):
        with pytest.raises(Refused):
            w.answer(req(batch, t=NOW - HOUR_MS), set(), NOW)
        with pytest.raises(Reject):
            w.answer(request(batch, devcert("m0001"), DEVICE["m0003"], b"n" * 16, NOW), set(), NOW)
    for _ in range(3):
        w.answer(req(batch), set(), NOW)


def test_accept_refuses_a_coe_for_another_root_or_size(batch):
    """accept() takes only a CoE for the exact (root, size) of the batch we wait on."""
    other = Batch.new(seeds(64, "other"), NOW)
    _, raw = witness().answer(req(other), set(), NOW)
    with pytest.raises(Refused):
        accept(verifier(), raw, batch, "m0001", NOW)
    same_root_other_size = CoeRequest(
        cert=devcert("m0001"), root=batch.root, size=batch.size - 1, nonce=b"n" * 16, t=NOW
    ).sign(DEVICE["m0001"])
    _, raw = witness().answer(same_root_other_size, set(), NOW)
    with pytest.raises(Refused):
        accept(verifier(), raw, batch, "m0001", NOW)


def test_accept_refuses_a_coe_signed_by_this_meter(batch):
    """A CoE this meter signed for itself is worthless and refused."""
    raw = Coe(root=batch.root, size=batch.size, t=NOW - HOUR_MS, exp=NOW + DAY_MS, cert=devcert("m0001")).sign(
        DEVICE["m0001"]
    )
    assert verifier().verify(raw, NOW, expect="coe")  # well-formed and signed: only policy refuses it
    with pytest.raises(Refused):
        accept(verifier(), raw, batch, "m0001", NOW)


@pytest.mark.parametrize("valid_ms, ok", [(HOUR_MS - 1, False), (HOUR_MS, True)])
def test_accept_refuses_a_coe_expiring_within_the_hour(batch, valid_ms, ok):
    """A CoE with less than an hour left cannot back a trade: refused; an hour exactly is fine."""
    _, raw = witness(valid_ms=valid_ms).answer(req(batch), set(), NOW)
    if ok:
        assert accept(verifier(), raw, batch, "m0001", NOW).exp == NOW + HOUR_MS
    else:
        with pytest.raises(Refused):
            accept(verifier(), raw, batch, "m0001", NOW)


def test_accept_rejects_a_forged_or_untrusted_coe(batch):
    """A CoE not signed by its witness devcert's key, or from a devcert no trusted CA signed, is a Reject."""
    forged = Coe(root=batch.root, size=batch.size, t=NOW - HOUR_MS, exp=NOW + DAY_MS, cert=devcert("m0002")).sign(
        DEVICE["m0003"]
    )
    assert reason(accept, verifier(), forged, batch, "m0001", NOW) == "signature"
    rogue = Coe(
        root=batch.root, size=batch.size, t=NOW - HOUR_MS, exp=NOW + DAY_MS, cert=devcert("m0002", ca=ROGUE_CA)
    ).sign(DEVICE["m0002"])
    assert reason(accept, verifier(), rogue, batch, "m0001", NOW) == "cert"
