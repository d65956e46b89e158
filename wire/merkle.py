"""RFC 9162 §2.1 Merkle tree hash, inclusion and consistency proofs.

Used for Certificates of Existence (root over one-time keys), block transaction roots and
CTP-database roots. Pure functions over bytes; no padding of the last node, as the RFC says.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from hashlib import sha256

EMPTY_ROOT = sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    return sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def _subtree(lo: int, hi: int, node: Callable[[int, int], bytes]) -> bytes:
    """MTH(D[lo:hi]) for the ranges the RFC 9162 recursions produce, from node(k, j): the hash
    of the perfect subtree of 2**k leaves starting at leaf j * 2**k."""
    n = hi - lo
    if n == 0:
        return EMPTY_ROOT
    if n & (n - 1) == 0 and lo % n == 0:
        return node(n.bit_length() - 1, lo // n)
    k = _split(n)
    return node_hash(_subtree(lo, lo + k, node), _subtree(lo + k, hi, node))


@dataclass(frozen=True, slots=True)
class TreeChange:
    """Leaves replaced or appended on a tree of `base` leaves, hashed together with every inner
    node they change, and the root the tree will have, but written into no tree yet.

    The ledger computes a block's CTP-database root this way before consensus decides the
    block: the committed tree is not touched, so a block that is never decided is dropped
    with nothing to undo, and one that is decided is written by `MerkleTree.apply` without
    hashing anything again.
    """

    base: int  # the size of the tree it was computed on
    size: int  # the size it gives that tree
    nodes: tuple[dict[int, bytes], ...]  # per level k, index j -> hash: as MerkleTree.levels, in index order
    root: bytes


class MerkleTree:
    """A tree over fixed leaves that answers root and proof queries in O(log n) hashes.

    `levels[k][j]` is the hash of the perfect subtree of 2**k leaves starting at j * 2**k;
    every subtree the RFC's recursions ask for is a composition of these.
    """

    def __init__(self, leaves: Sequence[bytes] = ()):
        self.size = 0
        self.levels: list[list[bytes]] = [[]]
        self.set_leaves(dict(enumerate(leaves)))

    def append(self, data: bytes) -> int:
        """Add a leaf at the end in O(log n) hashes; returns its index."""
        index = self.size
        self.set_leaves({index: data})
        return index

    def update(self, index: int, data: bytes) -> None:
        """Replace leaf `index` in O(log n) hashes."""
        if not 0 <= index < self.size:
            raise IndexError(f"leaf {index} not in a tree of {self.size}")
        self.set_leaves({index: data})

    def set_leaves(self, leaves: dict[int, bytes]) -> None:
        """Replace and append leaves at once (see `change`)."""
        self.apply(self.change(leaves))

    def change(self, leaves: dict[int, bytes]) -> TreeChange:
        """What replacing and appending `leaves` would do, without doing it; each changed
        inner node is hashed once.

        The ledger's CTP database changes many leaves per block and grows by one leaf per
        new CTP; it must not rehash every CTP ever held to compute each block's root.
        Indices from `size` on are appended and must follow on without a gap.
        """
        size = max(self.size, max(leaves, default=-1) + 1)
        if min(leaves, default=0) < 0 or not set(range(self.size, size)) <= leaves.keys():
            raise IndexError(f"leaves must be existing or follow on from {self.size}")
        dirty = sorted(leaves)
        nodes = [{i: leaf_hash(leaves[i]) for i in dirty}]
        while dirty:  # hash each complete parent of a changed node, level by level
            k = len(nodes) - 1
            changed, kept = nodes[k].get, self.levels[k] if k < len(self.levels) else []
            dirty = sorted({j >> 1 for j in dirty if (j | 1) < size >> k})
            above = {}
            for p in dirty:
                left = p << 1
                above[p] = node_hash(changed(left) or kept[left], changed(left + 1) or kept[left + 1])
            nodes.append(above)

        def node(k: int, j: int) -> bytes:  # the changed tree's: a changed node, else a kept one
            changed = nodes[k].get(j) if k < len(nodes) else None
            return changed or self.levels[k][j]

        return TreeChange(self.size, size, tuple(nodes), _subtree(0, size, node))

    def apply(self, change: TreeChange) -> None:
        """Write a change computed on this tree as it is now."""
        if change.base != self.size:
            raise ValueError(f"a change of a tree of {change.base} leaves, not of {self.size}")
        for k, nodes in enumerate(change.nodes):
            if not nodes:
                break  # the levels above changed nothing either
            if k == len(self.levels):
                self.levels.append([])
            level = self.levels[k]
            kept, append = len(level), level.append
            for j, digest in nodes.items():  # in index order: appended nodes follow on
                if j < kept:
                    level[j] = digest
                else:
                    append(digest)
        self.size = change.size

    def truncate(self, size: int) -> None:
        """Keep the first `size` leaves."""
        if not 0 <= size <= self.size:
            raise ValueError(f"cannot truncate a tree of {self.size} to {size}")
        self.size = size
        self.levels = [level[: size >> k] for k, level in enumerate(self.levels)]

    def _subtree(self, lo: int, hi: int) -> bytes:
        return _subtree(lo, hi, lambda k, j: self.levels[k][j])

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first `size` leaves (default: all)."""
        if size is None:
            size = self.size
        if not 0 <= size <= self.size:
            raise ValueError(f"no root of {size} leaves in a tree of {self.size}")
        return self._subtree(0, size)

    def inclusion_proof(self, index: int) -> list[bytes]:
        """PATH(m, D[n]) of RFC 9162 §2.1.3.1, leaf-side first."""
        if not 0 <= index < self.size:
            raise IndexError(f"leaf {index} not in a tree of {self.size}")
        path: list[bytes] = []
        lo, hi = 0, self.size
        while hi - lo > 1:
            k = _split(hi - lo)
            if index < lo + k:
                path.append(self._subtree(lo + k, hi))
                hi = lo + k
            else:
                path.append(self._subtree(lo, lo + k))
                lo += k
        path.reverse()
        return path

    def consistency_proof(self, old_size: int) -> list[bytes]:
        """PROOF(m, D[n]) of RFC 9162 §2.1.4.1 for 0 < m <= n."""
        if not 0 < old_size <= self.size:
            raise ValueError(f"no consistency proof from {old_size} to {self.size}")
        return self._subproof(old_size, 0, self.size, True)

    def _subproof(self, m: int, lo: int, hi: int, complete: bool) -> list[bytes]:
        n = hi - lo
        if m == n:
            return [] if complete else [self._subtree(lo, hi)]
        k = _split(n)
        if m <= k:
            return [*self._subproof(m, lo, lo + k, complete), self._subtree(lo + k, hi)]
        return [*self._subproof(m - k, lo + k, hi, False), self._subtree(lo, lo + k)]


def verify_inclusion(
    leaf: bytes,
    index: int,
    size: int,
    path: Sequence[bytes],
    root: bytes,
    node: Callable[[bytes, bytes], bytes] = node_hash,
) -> bool:
    """RFC 9162 §2.1.3.2, given the leaf's data (not its hash).

    `node` may be a memoised node_hash (see NodeMemo): proofs under one root share nodes.
    """
    if not 0 <= index < size:
        return False
    fn, sn = index, size - 1
    r = leaf_hash(leaf)
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node(p, r)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = node(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> bool:
    """RFC 9162 §2.1.4.2."""
    if not 0 < old_size <= new_size:
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    if not proof:
        return False
    if old_size & (old_size - 1) == 0:
        proof = [old_root, *proof]
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == old_root and sr == new_root and sn == 0


class NodeMemo:
    """A bounded memo of node_hash: a pure function, so results never depend on its state.

    Every ERC of one key batch proves a leaf under the same root, so after a few proofs
    almost every inner node is a dictionary hit instead of a SHA-256.
    """

    def __init__(self, limit: int):
        self._memo: dict[tuple[bytes, bytes], bytes] = {}
        self._limit = limit

    def __call__(self, left: bytes, right: bytes) -> bytes:
        key = (left, right)
        digest = self._memo.get(key)
        if digest is None:
            digest = node_hash(left, right)
            if len(self._memo) < self._limit:
                self._memo[key] = digest
        return digest


class PrunedTree(MerkleTree):
    """A MerkleTree that forgets the inside of subtrees whose leaves will never change.

    The ledger's CTP database grows by a leaf per CTP forever, but a settled or refunded
    CTP's leaf is final. A complete subtree of final leaves is kept as its hash alone, the
    way an RFC 9162 log keeps its frontier: what stays is the paths of the leaves that may
    still change (`open` ones) and the hashes beside them, O(open x log n) nodes however
    long the history. Roots and changes are byte-identical to MerkleTree's for the same
    leaves; changing a leaf that was sealed is an error (its siblings may be gone), and so
    is an inclusion proof through a pruned node (rebuild a MerkleTree from stored leaves).

    `levels[k]` is a dict here (index -> hash); `open` lists the open leaves in order, so
    sealing a leaf finds in O(log n) bisections which subtrees became final.
    """

    def __init__(self, leaves: Sequence[bytes] = ()):
        self.open: list[int] = []
        self.levels: list[dict[int, bytes]] = [{}]  # type: ignore[assignment]
        self.size = 0
        self.set_leaves(dict(enumerate(leaves)))

    @classmethod
    def from_nodes(cls, size: int, nodes: Iterable[tuple[int, int, bytes]], open_leaves: Iterable[int]) -> PrunedTree:
        """A pruned tree from its stored nodes (level, index, hash) and its open leaves."""
        tree = cls()
        tree.size = size
        for k, j, digest in nodes:
            while len(tree.levels) <= k:
                tree.levels.append({})
            tree.levels[k][j] = digest
        tree.open = sorted(open_leaves)
        return tree

    def apply(self, change: TreeChange) -> None:
        if change.base != self.size:
            raise ValueError(f"a change of a tree of {change.base} leaves, not of {self.size}")
        for k, nodes in enumerate(change.nodes):
            if not nodes:
                break
            if k == len(self.levels):
                self.levels.append({})
            self.levels[k].update(nodes)
        self.open.extend(range(self.size, change.size))  # a new leaf is open until sealed
        self.size = change.size

    def sealing(self, change: TreeChange, indices: Iterable[int]) -> tuple[tuple[int, int], ...]:
        """The nodes (level, index) to drop once `change` is applied and the leaves `indices`
        are final: the children of every complete subtree whose leaves are then all final.
        Pure, so a block's draft computes it and a store drops the same nodes as the state."""
        gone = set(indices)
        size = change.size

        def open_under(k: int, j: int) -> bool:
            lo, hi = j << k, (j + 1) << k
            at = bisect.bisect_left(self.open, lo)
            while at < len(self.open) and self.open[at] < hi:
                if self.open[at] not in gone:
                    return True
                at += 1
            return any(i not in gone for i in range(max(lo, change.base), min(hi, size)))

        def exists(k: int, j: int) -> bool:
            return (k < len(change.nodes) and j in change.nodes[k]) or (k < len(self.levels) and j in self.levels[k])

        dropped: dict[tuple[int, int], None] = {}
        for index in sorted(gone):
            k = 1
            while size >> k > index >> k and not open_under(k, index >> k):
                j = index >> k
                dropped |= {(k - 1, c): None for c in (2 * j, 2 * j + 1) if exists(k - 1, c)}
                k += 1
        return tuple(dropped)

    def seal(self, indices: Iterable[int], dropped: Iterable[tuple[int, int]]) -> None:
        """Mark leaves final and drop the nodes `sealing` named for them."""
        gone = set(indices)
        self.open = [i for i in self.open if i not in gone] if gone else self.open
        for k, j in dropped:
            del self.levels[k][j]

    def consistent(self) -> bool:
        """Whether every kept node is the hash of its children where they are kept: with the
        root, what makes a stored snapshot the tree of its leaves (O(kept) hashes)."""
        for k in range(1, len(self.levels)):
            below = self.levels[k - 1]
            for j, digest in self.levels[k].items():
                left, right = below.get(2 * j), below.get(2 * j + 1)
                if left is not None and right is not None and node_hash(left, right) != digest:
                    return False
        return True

    def nodes(self) -> Iterator[tuple[int, int, bytes]]:
        """Every node kept, as (level, index, hash): what a store writes as a snapshot."""
        for k, level in enumerate(self.levels):
            for j, digest in level.items():
                yield k, j, digest

    def truncate(self, size: int) -> None:
        raise ValueError("a pruned tree cannot be truncated: its sealed leaves are gone")
