//! The state's Merkle tree: the RFC 6962 shape with BLAKE3 domain separation.
//!
//! Leaves are `blake3(0x00 || content)`. Internal nodes are
//! `blake3_keyed(NODE_KEY, left || right)`: BLAKE3's keyed mode separates them
//! from leaves (a different key and mode flag) the way RFC 6962's `0x01`
//! prefix does, but the input is exactly one 64-byte block, so a node costs
//! one compression instead of two (a 65-byte input needs two).
//! The tree of `n` leaves is the RFC 6962 `MTH`: the left subtree is the
//! perfect tree over the largest power of two strictly below `n`. Every
//! perfect subtree is cached, so updating one leaf re-hashes only its path
//! and the root is a fold over at most `log2(n)` cached subtrees.
//!
//! A state root combines the header leaf (which changes with every event)
//! with the root of the tree over the other entries:
//! `blake3_keyed(ROOT_KEY, header_leaf || entries_root)`, so the header has
//! no path of its own to re-hash.

/// A 32-byte blake3 digest.
pub type Hash = [u8; 32];

/// BLAKE3 key-derivation context of [`NODE_KEY`].
pub const NODE_KEY_CONTEXT: &str = "itonami 2025-11 state tree internal node v2";

/// `blake3::derive_key(NODE_KEY_CONTEXT, b"")`: the key of internal nodes
/// (spelled out so the hot path needs no lazy initialisation; a test checks it).
pub const NODE_KEY: Hash = [
    0x3e, 0xc7, 0x69, 0x60, 0x52, 0xdf, 0xe8, 0x57, 0x72, 0x7d, 0x41, 0xbc, 0x7d, 0x43, 0xdc, 0x29,
    0xae, 0x56, 0x69, 0xe4, 0xb0, 0x7f, 0x4a, 0x17, 0xaa, 0xc7, 0x73, 0x32, 0xe9, 0x51, 0x09, 0x07,
];

/// BLAKE3 key-derivation context of [`ROOT_KEY`].
pub const ROOT_KEY_CONTEXT: &str = "itonami 2025-11 state root v2";

/// `blake3::derive_key(ROOT_KEY_CONTEXT, b"")`: the key of state roots.
pub const ROOT_KEY: Hash = [
    0x50, 0x7d, 0x25, 0xbb, 0xd2, 0xf4, 0xac, 0x09, 0x41, 0x25, 0xce, 0xfd, 0x3c, 0x6a, 0x3f, 0xed,
    0xc9, 0x7a, 0xd6, 0x91, 0x9e, 0x6e, 0x68, 0xbd, 0x00, 0xef, 0x7e, 0x64, 0x29, 0xdd, 0x2e, 0x66,
];

/// The hash of a leaf with this content.
pub fn leaf_hash(content: &[u8]) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(&[0x00]);
    h.update(content);
    *h.finalize().as_bytes()
}

/// The hash of a leaf whose content is `prefixed[1..]`; `prefixed[0]` must
/// be the leaf tag `0x00` (one contiguous input hashes faster).
pub fn leaf_hash_prefixed(prefixed: &[u8]) -> Hash {
    debug_assert_eq!(prefixed.first(), Some(&0x00));
    *blake3::hash(prefixed).as_bytes()
}

/// Keyed BLAKE3 of two hashes (one 64-byte block).
#[inline]
fn keyed_pair(key: &Hash, left: &Hash, right: &Hash) -> Hash {
    let mut buf = [0u8; 64];
    buf[..32].copy_from_slice(left);
    buf[32..].copy_from_slice(right);
    *blake3::keyed_hash(key, &buf).as_bytes()
}

/// The hash of an internal node: `blake3_keyed(NODE_KEY, left || right)`.
#[inline]
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    keyed_pair(&NODE_KEY, left, right)
}

/// The state root: `blake3_keyed(ROOT_KEY, header_leaf || entries_root)`.
#[inline]
pub fn state_root_hash(header_leaf: &Hash, entries_root: &Hash) -> Hash {
    keyed_pair(&ROOT_KEY, header_leaf, entries_root)
}

/// The root of the empty tree: `blake3("")`.
pub fn empty_root() -> Hash {
    *blake3::hash(b"").as_bytes()
}

/// A Merkle tree whose perfect subtrees are cached level by level:
/// `levels[h][i]` covers leaves `i * 2^h .. (i + 1) * 2^h`.
///
/// `rest` caches the fold of every perfect subtree but the largest (the right
/// child of the root), so a change confined to the largest subtree (such as
/// the header in slot 0) costs one hash at the root instead of a full fold.
#[derive(Clone, Debug, Default)]
pub struct MerkleTree {
    levels: Vec<Vec<Hash>>,
    rest: Option<Hash>,
}

impl MerkleTree {
    /// An empty tree.
    pub fn new() -> Self {
        MerkleTree {
            levels: Vec::new(),
            rest: None,
        }
    }

    /// Builds a tree over `leaves`.
    pub fn from_leaves(leaves: Vec<Hash>) -> Self {
        let mut levels = vec![leaves];
        while let Some(below) = levels.last().filter(|b| b.len() >= 2) {
            let above: Vec<Hash> = below
                .chunks_exact(2)
                .map(|pair| node_hash(&pair[0], &pair[1]))
                .collect();
            levels.push(above);
        }
        let mut tree = MerkleTree { levels, rest: None };
        tree.refresh_rest();
        tree
    }

    /// Number of leaves.
    pub fn len(&self) -> usize {
        self.levels.first().map_or(0, Vec::len)
    }

    /// Whether the tree has no leaves.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        self.push_leaf(leaf);
        self.refresh_rest();
    }

    /// Size of the largest perfect subtree (the root's left part when the
    /// leaf count is not a power of two); 0 for the empty tree.
    fn top_size(&self) -> usize {
        let n = self.len();
        if n == 0 {
            0
        } else {
            1usize << (usize::BITS - 1 - n.leading_zeros())
        }
    }

    /// Recomputes the cached fold of the perfect subtrees right of the largest.
    fn refresh_rest(&mut self) {
        let n = self.len();
        let top = self.top_size();
        let mut acc: Option<Hash> = None;
        for h in 0..self.levels.len() {
            if (1usize << h) >= top {
                break;
            }
            if n & (1usize << h) == 0 {
                continue;
            }
            let part = self.levels[h][(n >> (h + 1)) << 1];
            acc = Some(match acc {
                None => part,
                Some(right) => node_hash(&part, &right),
            });
        }
        self.rest = acc;
    }

    fn push_leaf(&mut self, leaf: Hash) {
        if self.levels.is_empty() {
            self.levels.push(Vec::new());
        }
        self.levels[0].push(leaf);
        let mut h = 0;
        while self.levels[h].len() % 2 == 0 {
            let below = &self.levels[h];
            let n = below.len();
            let parent = node_hash(&below[n - 2], &below[n - 1]);
            if self.levels.len() == h + 1 {
                self.levels.push(Vec::new());
            }
            self.levels[h + 1].push(parent);
            h += 1;
        }
    }

    /// Replaces the leaf at `index` (which must exist) and re-hashes its path.
    /// Returns false (changing nothing) when `index` is out of range.
    pub fn set(&mut self, index: usize, leaf: Hash) -> bool {
        if index >= self.len() {
            return false;
        }
        self.levels[0][index] = leaf;
        let outside_top = index >= self.top_size();
        let mut i = index;
        for h in 1..self.levels.len() {
            i >>= 1;
            let below = &self.levels[h - 1];
            if 2 * i + 1 >= below.len() {
                break;
            }
            let parent = node_hash(&below[2 * i], &below[2 * i + 1]);
            self.levels[h][i] = parent;
        }
        if outside_top {
            self.refresh_rest();
        }
        true
    }

    /// Applies `(index, leaf)` updates sorted by index, re-hashing each
    /// internal node on their paths once (paths share their upper nodes).
    /// Indices at or beyond the end append (gaps get the empty leaf).
    pub fn put_sorted(&mut self, updates: &[(u32, Hash)]) {
        let len = self.len();
        let split = updates.partition_point(|u| (u.0 as usize) < len);
        let (sets, appends) = updates.split_at(split);
        let top = self.top_size();
        let outside_top = sets.last().is_some_and(|u| u.0 as usize >= top);
        if !sets.is_empty() {
            let mut dirty: [usize; 16] = [0; 16];
            let mut n = 0usize;
            let mut overflow: Vec<usize> = Vec::new();
            for &(i, leaf) in sets {
                let i = i as usize;
                self.levels[0][i] = leaf;
                if n < dirty.len() {
                    dirty[n] = i;
                    n += 1;
                } else {
                    overflow.push(i);
                }
            }
            if overflow.is_empty() {
                self.rehash_paths(&mut dirty[..n]);
            } else {
                overflow.extend_from_slice(&dirty[..n]);
                overflow.sort_unstable();
                self.rehash_paths(&mut overflow);
            }
        }
        for &(i, leaf) in appends {
            while self.len() < i as usize {
                self.push_leaf(leaf_hash(b""));
            }
            self.push_leaf(leaf);
        }
        if outside_top || !appends.is_empty() {
            self.refresh_rest();
        }
    }

    /// Re-hashes the parents of the sorted leaf indices in `dirty`, level by level.
    fn rehash_paths(&mut self, dirty: &mut [usize]) {
        let mut n = dirty.len();
        for h in 1..self.levels.len() {
            let mut m = 0usize;
            for k in 0..n {
                let parent = dirty[k] >> 1;
                if m > 0 && dirty[m - 1] == parent {
                    continue;
                }
                let (lower, upper) = self.levels.split_at_mut(h);
                let below = &lower[h - 1];
                if 2 * parent + 1 >= below.len() {
                    continue;
                }
                upper[0][parent] = node_hash(&below[2 * parent], &below[2 * parent + 1]);
                dirty[m] = parent;
                m += 1;
            }
            n = m;
            if n == 0 {
                break;
            }
        }
    }

    /// Releases spare capacity.
    pub fn shrink_to_fit(&mut self) {
        for level in &mut self.levels {
            level.shrink_to_fit();
        }
        self.levels.shrink_to_fit();
    }

    /// Sets leaf `index`, appending it when `index == len()`. Leaves beyond
    /// the end are filled with the hash of the empty leaf.
    pub fn put(&mut self, index: usize, leaf: Hash) {
        while self.len() < index {
            self.push(leaf_hash(b""));
        }
        if index == self.len() {
            self.push(leaf);
        } else {
            self.set(index, leaf);
        }
    }

    /// The RFC 6962 root: the right fold of the perfect subtrees that make up
    /// the leaf count, largest first. The empty tree hashes the empty string.
    pub fn root(&self) -> Hash {
        let top = self.top_size();
        if top == 0 {
            return empty_root();
        }
        let h = top.trailing_zeros() as usize;
        let left = self.levels[h][0];
        match &self.rest {
            Some(rest) => node_hash(&left, rest),
            None => left,
        }
    }
}

/// The RFC 6962 root computed directly from leaves (reference for tests).
pub fn root_of(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let mut k = 1usize;
            while k * 2 < n {
                k *= 2;
            }
            node_hash(&root_of(&leaves[..k]), &root_of(&leaves[k..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(i: u32) -> Hash {
        leaf_hash(&i.to_le_bytes())
    }

    #[test]
    fn keys_are_derived_from_their_contexts() {
        assert_eq!(NODE_KEY, blake3::derive_key(NODE_KEY_CONTEXT, b""));
        assert_eq!(ROOT_KEY, blake3::derive_key(ROOT_KEY_CONTEXT, b""));
    }

    #[test]
    fn hashes_follow_the_definition() {
        let (a, b) = (leaf(1), leaf(2));
        let mut content = vec![0x00];
        content.extend_from_slice(&1u32.to_le_bytes());
        assert_eq!(a, *blake3::hash(&content).as_bytes());
        let mut pair = a.to_vec();
        pair.extend_from_slice(&b);
        let node = node_hash(&a, &b);
        assert_eq!(node, *blake3::keyed_hash(&NODE_KEY, &pair).as_bytes());
        assert_eq!(
            state_root_hash(&a, &b),
            *blake3::keyed_hash(&ROOT_KEY, &pair).as_bytes()
        );
        // Nodes, roots and leaves are three different functions.
        assert_ne!(node, state_root_hash(&a, &b));
        assert_ne!(node, *blake3::hash(&pair).as_bytes());
        let mut prefixed = vec![0x01];
        prefixed.extend_from_slice(&pair);
        assert_ne!(node, *blake3::hash(&prefixed).as_bytes());
        assert_eq!(MerkleTree::new().root(), *blake3::hash(b"").as_bytes());
    }

    #[test]
    fn incremental_matches_reference_for_every_size() {
        let mut tree = MerkleTree::new();
        let mut leaves = Vec::new();
        for i in 0..70u32 {
            tree.push(leaf(i));
            leaves.push(leaf(i));
            assert_eq!(tree.root(), root_of(&leaves), "size {}", i + 1);
            assert_eq!(
                MerkleTree::from_leaves(leaves.clone()).root(),
                root_of(&leaves)
            );
        }
    }

    #[test]
    fn update_rehashes_path() {
        let mut leaves: Vec<Hash> = (0..37).map(leaf).collect();
        let mut tree = MerkleTree::from_leaves(leaves.clone());
        for i in 0..37usize {
            leaves[i] = leaf(1000 + i as u32);
            assert!(tree.set(i, leaves[i]));
            assert_eq!(tree.root(), root_of(&leaves));
        }
        assert!(!tree.set(37, leaf(0)));
    }

    #[test]
    fn batched_updates_match_reference() {
        for size in 1..40u32 {
            let mut leaves: Vec<Hash> = (0..size).map(leaf).collect();
            let mut tree = MerkleTree::from_leaves(leaves.clone());
            for round in 0..size {
                // A few sets (some sharing paths) and up to two appends.
                let mut updates: Vec<(u32, Hash)> = Vec::new();
                for i in [0, round / 2, round, round + 1] {
                    if (i as usize) < leaves.len() && updates.iter().all(|u| u.0 != i) {
                        updates.push((i, leaf(5000 + 7 * round + i)));
                    }
                }
                let n = leaves.len() as u32;
                updates.push((n, leaf(9000 + round)));
                if round % 3 == 0 {
                    updates.push((n + 1, leaf(9500 + round)));
                }
                updates.sort_unstable_by_key(|u| u.0);
                for &(i, h) in &updates {
                    if (i as usize) < leaves.len() {
                        leaves[i as usize] = h;
                    } else {
                        leaves.push(h);
                    }
                }
                tree.put_sorted(&updates);
                assert_eq!(tree.root(), root_of(&leaves), "size {size} round {round}");
            }
        }
        // Many dirty leaves at once (more than the inline buffer).
        let mut leaves: Vec<Hash> = (0..100).map(leaf).collect();
        let mut tree = MerkleTree::from_leaves(leaves.clone());
        let updates: Vec<(u32, Hash)> = (0..40).map(|i| (i * 2, leaf(7000 + i))).collect();
        for &(i, h) in &updates {
            leaves[i as usize] = h;
        }
        tree.put_sorted(&updates);
        assert_eq!(tree.root(), root_of(&leaves));
    }
}
