"""Property tests for wire.merkle (RFC 9162 §2.1): inclusion proofs for trees of 1..1100
leaves, consistency proofs for every 1 <= m <= n <= 64, and tamper resistance of both."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from tests.support.wire import flip_bit
from wire.merkle import EMPTY_ROOT, MerkleTree, verify_consistency, verify_inclusion

MAX_LEAVES = 1100


def random_leaves(seed: int, size: int) -> list[bytes]:
    """`size` random leaves of 8..40 bytes (long enough that they are distinct)."""
    rng = random.Random(seed)
    return [rng.randbytes(rng.randint(8, 40)) for _ in range(size)]


def rfc_sides(index: int, size: int) -> list[bool]:
    """Oracle from RFC 9162 §2.1.3.1's recursive PATH(m, D[n]) definition: for each
    sibling, leaf side first, whether it lies to the left. The verifier derives the same
    thing with bit arithmetic (§2.1.3.2); a proof checks under (index, size) iff these match."""
    if size == 1:
        return []
    k = 1 << ((size - 1).bit_length() - 1)
    return [*rfc_sides(index, k), False] if index < k else [*rfc_sides(index - k, size - k), True]


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 8, 9, 63, 64, 65, 1023, 1024, 1025, 1100])
def test_every_leaf_of_fixed_sizes_proves_inclusion(size):
    """Every leaf of trees at and around powers of two verifies against the root."""
    leaves = random_leaves(size, size)
    tree = MerkleTree(leaves)
    root = tree.root()
    for i, leaf in enumerate(leaves):
        path = tree.inclusion_proof(i)
        assert len(path) == len(rfc_sides(i, size))
        assert verify_inclusion(leaf, i, size, path, root), i


@settings(max_examples=12, deadline=None)
@given(size=st.integers(1, MAX_LEAVES), seed=st.integers(0, 2**32))
def test_every_leaf_of_random_sizes_proves_inclusion(size, seed):
    """Every leaf of a random-sized tree verifies against the root."""
    leaves = random_leaves(seed, size)
    tree = MerkleTree(leaves)
    root = tree.root()
    assert all(verify_inclusion(leaf, i, size, tree.inclusion_proof(i), root) for i, leaf in enumerate(leaves))


def test_prefix_roots_match_smaller_trees():
    """root(m) of a big tree is the root of its first m leaves (used as old roots below)."""
    leaves = random_leaves(7, 300)
    tree = MerkleTree(leaves)
    for m in [0, 1, 2, 3, 5, 64, 100, 127, 128, 129, 256, 299, 300]:
        assert tree.root(m) == MerkleTree(leaves[:m]).root(), m


@st.composite
def tree_and_leaf(draw):
    size = draw(st.integers(1, MAX_LEAVES))
    leaves = random_leaves(draw(st.integers(0, 2**32)), size)
    assume(len(set(leaves)) == size)
    return leaves, draw(st.integers(0, size - 1))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree_and_leaf())
@example((random_leaves(1, 1100), 1099))
@example((random_leaves(2, 1025), 1024))
@example((random_leaves(3, 1024), 513))
@example((random_leaves(4, 3), 2))
@example((random_leaves(5, 1), 0))
def test_any_tampering_breaks_inclusion(case):
    """One flipped bit anywhere (leaf, any path element, root), a shortened or lengthened
    path, another index or a size with another path shape: the proof no longer verifies."""
    leaves, i = case
    n = len(leaves)
    tree = MerkleTree(leaves)
    leaf, path, root = leaves[i], tree.inclusion_proof(i), tree.root()
    assert verify_inclusion(leaf, i, n, path, root)

    for bit in range(len(leaf) * 8):
        assert not verify_inclusion(flip_bit(leaf, bit), i, n, path, root)
    for k in range(len(path)):
        for bit in range(256):
            bad = [*path[:k], flip_bit(path[k], bit), *path[k + 1 :]]
            assert not verify_inclusion(leaf, i, n, bad, root), (k, bit)
    for bit in range(256):
        assert not verify_inclusion(leaf, i, n, path, flip_bit(root, bit))

    assert not verify_inclusion(leaf, i, n, [*path, root], root)
    if path:
        assert not verify_inclusion(leaf, i, n, path[:-1], root)

    for j in [*range(n), n, n + 1, -1]:
        if j != i:
            assert not verify_inclusion(leaf, j, n, path, root), j
    for other in range(0, 2 * n + 2):
        same_shape = i < other and rfc_sides(i, other) == rfc_sides(i, n)
        assert verify_inclusion(leaf, i, other, path, root) == same_shape, other


def test_proof_for_leaf_outside_tree_is_refused():
    """inclusion_proof refuses an index outside the tree; the verifier rejects it too."""
    tree = MerkleTree(random_leaves(1, 5))
    for index in (-1, 5, 6):
        with pytest.raises(IndexError):
            tree.inclusion_proof(index)
    assert not verify_inclusion(b"x", 0, 0, [], EMPTY_ROOT)


# ---- consistency proofs ------------------------------------------------------------------

LEAVES64 = [bytes([i]) * (i % 7 + 1) + i.to_bytes(2, "big") for i in range(64)]
TREES = {n: MerkleTree(LEAVES64[:n]) for n in range(1, 65)}
ROOTS = {n: MerkleTree(LEAVES64).root(n) for n in range(0, 65)}
PAIRS = [(m, n) for n in range(1, 65) for m in range(1, n + 1)]


def test_fixed_tree_has_distinct_leaves_and_prefix_roots():
    """The 64-leaf fixture is what the consistency tests assume."""
    assert len(set(LEAVES64)) == 64
    assert all(TREES[n].root() == ROOTS[n] for n in TREES)


def test_all_consistency_proofs_verify():
    """PROOF(m, D[n]) verifies for every 1 <= m <= n <= 64 against root(m) and root(n)."""
    failed = [
        (m, n) for m, n in PAIRS if not verify_consistency(m, n, ROOTS[m], ROOTS[n], TREES[n].consistency_proof(m))
    ]
    assert failed == []
    assert TREES[5].consistency_proof(5) == []


def _breaks(m: int, n: int, proof: list[bytes], part: int, bit: int) -> bool:
    """Flip `bit` of proof element `part` (or old root at -2, new root at -1) and verify."""
    old, new = ROOTS[m], ROOTS[n]
    if part == -2:
        old = flip_bit(old, bit)
    elif part == -1:
        new = flip_bit(new, bit)
    else:
        proof = [*proof[:part], flip_bit(proof[part], bit), *proof[part + 1 :]]
    return not verify_consistency(m, n, old, new, proof)


def test_flipped_bit_breaks_every_consistency_proof():
    """For every pair, a flipped bit (8 spread positions) in each proof element or in either
    root, and a shortened or lengthened proof, fail verification."""
    failed = []
    for m, n in PAIRS:
        proof = TREES[n].consistency_proof(m)
        for part in [-2, -1, *range(len(proof))]:
            for bit in (32 * j + (m + n + part) % 32 for j in range(8)):
                if not _breaks(m, n, proof, part, bit):
                    failed.append((m, n, part, bit))
        if proof and verify_consistency(m, n, ROOTS[m], ROOTS[n], proof[:-1]):
            failed.append((m, n, "short"))
        if verify_consistency(m, n, ROOTS[m], ROOTS[n], [*proof, ROOTS[m]]):
            failed.append((m, n, "long"))
    assert failed == []


@settings(max_examples=400, deadline=None)
@given(pair=st.sampled_from(PAIRS), data=st.data())
def test_random_flipped_bit_breaks_consistency(pair, data):
    """Any bit of any element, chosen at random, breaks the proof."""
    m, n = pair
    proof = TREES[n].consistency_proof(m)
    part = data.draw(st.integers(-2, len(proof) - 1))
    assert _breaks(m, n, proof, part, data.draw(st.integers(0, 255)))


SMALL_PAIRS = [(m, n) for m, n in PAIRS if n <= 32]


def test_consistency_proof_is_bound_to_its_sizes_and_roots():
    """A proof for (m, n) does not verify another pair's true roots, nor the same roots
    under a claimed size whose proof has another length (it would need more or fewer levels)."""
    failed = []
    for m, n in SMALL_PAIRS:
        proof = TREES[n].consistency_proof(m)
        for m2, n2 in SMALL_PAIRS:
            other_pair = (m2, n2) != (m, n) and (m2 == m or n2 == n)
            if other_pair and verify_consistency(m2, n2, ROOTS[m2], ROOTS[n2], proof):
                failed.append(("roots", m, n, m2, n2))
        for n2 in range(1, 33):
            other_length = n2 < m or len(TREES[n2].consistency_proof(m)) != len(proof)
            if other_length and verify_consistency(m, n2, ROOTS[m], ROOTS[n], proof):
                failed.append(("size", m, n, n2))
    assert failed == []


@pytest.mark.parametrize("n", [1, 2, 3, 8, 33, 64])
def test_consistency_refuses_m_above_n_and_m_zero(n):
    """No proof from an empty or a larger old tree; the verifier says no to both."""
    with pytest.raises(ValueError):
        TREES[n].consistency_proof(n + 1)
    with pytest.raises(ValueError):
        TREES[n].consistency_proof(0)
    if n < 64:
        # The real proof for (n, n+1) presented as a proof from n+1 to n.
        proof = TREES[n + 1].consistency_proof(n)
        assert not verify_consistency(n + 1, n, ROOTS[n + 1], ROOTS[n], proof)
    assert not verify_consistency(0, n, EMPTY_ROOT, ROOTS[n], [])
    assert not verify_consistency(0, n, EMPTY_ROOT, ROOTS[n], [ROOTS[n]])


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32), st.integers(0, 300), st.lists(st.integers(0, 10**6), max_size=40))
def test_growing_tree_matches_a_tree_built_at_once(seed, size, updates):
    """append/update (the ledger's CTP database) give the same root and proofs as
    building the tree from the final leaves."""
    leaves = random_leaves(seed, size)
    grown = MerkleTree()
    for i, leaf in enumerate(leaves):
        assert grown.append(leaf) == i
        assert grown.root() == MerkleTree(leaves[: i + 1]).root()
    rng = random.Random(seed)
    for u in updates:
        if not leaves:
            break
        i = u % len(leaves)
        leaves[i] = rng.randbytes(12)
        grown.update(i, leaves[i])
    built = MerkleTree(leaves)
    assert grown.root() == built.root()
    assert all(grown.inclusion_proof(i) == built.inclusion_proof(i) for i in range(len(leaves)))
    keep = rng.randint(0, len(leaves))
    grown.truncate(keep)
    assert grown.root() == MerkleTree(leaves[:keep]).root()
    grown.append(b"after")
    assert grown.root() == MerkleTree([*leaves[:keep], b"after"]).root()


def test_update_outside_the_tree_is_refused():
    tree = MerkleTree([b"a"])
    with pytest.raises(IndexError):
        tree.update(1, b"b")


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32), st.integers(0, 300), st.lists(st.integers(0, 10**6), max_size=40), st.integers(0, 40))
def test_a_change_has_the_new_root_and_leaves_the_tree_as_it_was(seed, size, updates, appended):
    """The ledger computes a block's CTP root with `change` before consensus decides the
    block: the committed tree must not move, and `apply` must give the tree built at once."""
    leaves = random_leaves(seed, size)
    tree = MerkleTree(leaves)
    before = (tree.size, [list(level) for level in tree.levels], tree.root())
    rng = random.Random(seed)
    new = {u % size: rng.randbytes(12) for u in updates} if size else {}
    new.update({size + i: rng.randbytes(12) for i in range(appended)})
    change = tree.change(new)
    assert (tree.size, tree.levels, tree.root()) == before
    final = MerkleTree([new.get(i, leaf) for i, leaf in enumerate(leaves)] + [new[size + i] for i in range(appended)])
    assert (change.base, change.size, change.root) == (size, size + appended, final.root())
    tree.apply(change)
    assert tree.root() == final.root()
    assert all(tree.inclusion_proof(i) == final.inclusion_proof(i) for i in range(final.size))


def test_a_change_applies_only_to_the_tree_it_was_computed_on():
    change = MerkleTree([b"a"]).change({1: b"b"})
    with pytest.raises(ValueError):
        MerkleTree([b"a", b"x"]).apply(change)
    with pytest.raises(IndexError):
        MerkleTree([b"a"]).change({2: b"gap"})
