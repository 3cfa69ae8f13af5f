//! An append-and-update Merkle tree in the RFC 6962 shape.
//!
//! Leaves and internal nodes are domain-separated (`0x00` / `0x01` prefix).
//! The tree of `n` leaves is the RFC 6962 `MTH`: the left subtree is the
//! perfect tree over the largest power of two strictly below `n`. Every
//! perfect subtree is cached, so updating one leaf re-hashes only its path
//! and the root is a fold over at most `log2(n)` cached subtrees.

/// A 32-byte blake3 digest.
pub type Hash = [u8; 32];

/// The hash of a leaf with this content.
pub fn leaf_hash(content: &[u8]) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(&[0x00]);
    h.update(content);
    *h.finalize().as_bytes()
}

/// The hash of an internal node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(&[0x01]);
    h.update(left);
    h.update(right);
    *h.finalize().as_bytes()
}

/// A Merkle tree whose perfect subtrees are cached level by level:
/// `levels[h][i]` covers leaves `i * 2^h .. (i + 1) * 2^h`.
#[derive(Clone, Debug, Default)]
pub struct MerkleTree {
    levels: Vec<Vec<Hash>>,
}

impl MerkleTree {
    /// An empty tree.
    pub fn new() -> Self {
        MerkleTree { levels: Vec::new() }
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
        MerkleTree { levels }
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
        true
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
        let n = self.len();
        if n == 0 {
            return *blake3::hash(b"").as_bytes();
        }
        let mut parts: Vec<Hash> = Vec::with_capacity(usize::BITS as usize);
        let mut start = 0usize;
        for h in (0..self.levels.len()).rev() {
            let size = 1usize << h;
            if n & size != 0 {
                parts.push(self.levels[h][start >> h]);
                start += size;
            }
        }
        let mut acc = match parts.pop() {
            Some(last) => last,
            None => return *blake3::hash(b"").as_bytes(),
        };
        while let Some(left) = parts.pop() {
            acc = node_hash(&left, &acc);
        }
        acc
    }
}

/// The RFC 6962 root computed directly from leaves (reference for tests).
pub fn root_of(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => *blake3::hash(b"").as_bytes(),
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
}
