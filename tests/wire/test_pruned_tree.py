"""PrunedTree keeps only what leaves that can still change need, and gives the roots and
changes a full MerkleTree gives (docs/decisions/0013-bounded-memory.md)."""

from __future__ import annotations

import random

import pytest

from wire.merkle import MerkleTree, PrunedTree


@pytest.mark.parametrize("seed", range(200))
def test_a_pruned_tree_has_the_full_trees_roots_through_any_history(seed):
    """Blocks append leaves and change open ones; some become final (sealed). After every
    block the pruned tree, and one rebuilt from its stored nodes, has the full tree's root
    and computes the same change."""
    rnd = random.Random(seed)
    full, pruned, open_leaves = MerkleTree(), PrunedTree(), set()
    for _ in range(rnd.randint(1, 60)):
        appended = rnd.randint(0, 4)
        leaves = {full.size + i: rnd.randbytes(4) for i in range(appended)}
        leaves |= {i: rnd.randbytes(4) for i in rnd.sample(sorted(open_leaves), min(len(open_leaves), 3))}
        if not leaves:
            continue
        expected, change = full.change(leaves), pruned.change(leaves)
        assert (change.root, change.nodes) == (expected.root, expected.nodes)
        sealed = [i for i in leaves if rnd.random() < 0.6]
        dropped = pruned.sealing(change, sealed)
        full.apply(expected)
        pruned.apply(change)
        pruned.seal(sealed, dropped)
        open_leaves = (open_leaves | leaves.keys()) - set(sealed)
        assert pruned.open == sorted(open_leaves) and pruned.root() == full.root() and pruned.consistent()
        pruned = PrunedTree.from_nodes(pruned.size, list(pruned.nodes()), open_leaves)  # a restart
        assert pruned.root() == full.root()


def test_a_tree_of_final_leaves_keeps_a_hash_per_bit_of_its_size():
    """The frontier alone: what a validator holds once every trade it saw has ended."""
    tree = PrunedTree()
    for n in range(1, 2_000):
        change = tree.change({tree.size: n.to_bytes(4, "big")})
        dropped = tree.sealing(change, [tree.size])
        tree.apply(change)
        tree.seal([tree.size - 1], dropped)
        kept = sum(len(level) for level in tree.levels)
        assert kept == bin(n).count("1"), n
    assert tree.root() == MerkleTree([n.to_bytes(4, "big") for n in range(1, 2_000)]).root()


def test_a_sealed_leaf_cannot_change_again():
    tree = PrunedTree([b"a", b"b", b"c", b"d"])
    tree.seal([0, 1], tree.sealing(tree.change({}), [0, 1]))
    with pytest.raises(KeyError):
        tree.change({0: b"x"})
