//! Inclusion proofs: event `k` is part of the chain that ends at a head hash.
//!
//! Because `node(v)` commits to `blake3(event(v))` rather than the event bytes,
//! a proof carries event `k` in full, `node(k-1)`, `state_root(k)` and, for
//! every later version `j`, only `(state_root(j), blake3(event(j)))`. The
//! checker recomputes the chain from `node(k-1)` to the head and compares.
//!
//! ```text
//! 8 bytes "ITNPROOF", u8 format (= 1), u64 version, u32 event length, event,
//! 32 prev node, 32 state root, u32 count, count x (32 root, 32 event hash)
//! ```

use crate::event::{DecodeError, Event};
use crate::merkle::Hash;
use crate::store::{node_hash, MAX_SEQUENCE};

const MAGIC: &[u8; 8] = b"ITNPROOF";
const FORMAT: u8 = 1;

/// A proof of inclusion of one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InclusionProof {
    /// Version of the proven event.
    pub version: u64,
    /// The proven event's encoded bytes.
    pub event: Vec<u8>,
    /// `node(version - 1)`.
    pub prev_node: Hash,
    /// `state_root(version)`.
    pub state_root: Hash,
    /// `(state_root(j), blake3(event(j)))` for each later version `j`.
    pub later: Vec<(Hash, Hash)>,
}

impl InclusionProof {
    /// Version of the head this proof leads to.
    pub fn head_version(&self) -> u64 {
        // A parsed proof cannot overflow here (`from_bytes` bounds both), but
        // the fields are public, so a hand-built one must not panic either.
        self.version.saturating_add(self.later.len() as u64)
    }

    /// The head hash this proof leads to.
    pub fn head(&self) -> Hash {
        let mut node = node_hash(
            self.version,
            &self.prev_node,
            &self.state_root,
            blake3::hash(&self.event).as_bytes(),
        );
        for (j, (root, event_hash)) in self.later.iter().enumerate() {
            let version = self.version.saturating_add(j as u64 + 1);
            node = node_hash(version, &node, root, event_hash);
        }
        node
    }

    /// Whether the proof leads to `head` and carries a well-formed event.
    pub fn verify(&self, head: &[u8]) -> bool {
        Event::decode(&self.event, 0, 0).is_ok() && self.head().as_slice() == head
    }

    /// The decoded proven event.
    pub fn decoded_event(&self) -> Result<Event, DecodeError> {
        Event::decode(&self.event, 0, 0)
    }

    /// Serialises the proof.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(8 + 1 + 8 + 4 + self.event.len() + 68 + 64 * self.later.len());
        out.extend_from_slice(MAGIC);
        out.push(FORMAT);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.event.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.event);
        out.extend_from_slice(&self.prev_node);
        out.extend_from_slice(&self.state_root);
        out.extend_from_slice(&(self.later.len() as u32).to_le_bytes());
        for (root, event_hash) in &self.later {
            out.extend_from_slice(root);
            out.extend_from_slice(event_hash);
        }
        out
    }

    /// Parses a serialised proof.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut pos = 0usize;
        let mut take = |n: usize, what: &str| -> Result<&[u8], DecodeError> {
            let end = pos
                .checked_add(n)
                .filter(|e| *e <= bytes.len())
                .ok_or_else(|| DecodeError {
                    message: format!("truncated inclusion proof: {what}"),
                    offset: Some(pos as u64),
                    index: None,
                })?;
            let out = &bytes[pos..end];
            pos = end;
            Ok(out)
        };
        if take(8, "magic")? != MAGIC {
            return Err(DecodeError::at("not an inclusion proof (bad magic)", 0, 0));
        }
        let format = take(1, "format")?[0];
        if format != FORMAT {
            return Err(DecodeError::at(
                format!("unknown proof format {format}"),
                8,
                0,
            ));
        }
        let version = u64::from_le_bytes(fixed(take(8, "version")?));
        if version == 0 || version > MAX_SEQUENCE {
            return Err(DecodeError::at(
                format!("proof version {version} is not in 1..={MAX_SEQUENCE}"),
                9,
                0,
            ));
        }
        let len = u32::from_le_bytes(fixed(take(4, "event length")?)) as usize;
        let event = take(len, "event")?.to_vec();
        let prev_node = fixed(take(32, "previous node")?);
        let state_root = fixed(take(32, "state root")?);
        // magic, format, version, event length, event, two hashes
        let count_at = 8 + 1 + 8 + 4 + len + 64;
        let count = u32::from_le_bytes(fixed(take(4, "count")?)) as usize;
        if version.saturating_add(count as u64) > MAX_SEQUENCE {
            return Err(DecodeError {
                message: format!("proof head version is above {MAX_SEQUENCE}"),
                offset: Some(count_at as u64),
                index: None,
            });
        }
        let mut later = Vec::with_capacity(count.min(bytes.len() / 64));
        for _ in 0..count {
            let root = fixed(take(32, "later state root")?);
            let event_hash = fixed(take(32, "later event hash")?);
            later.push((root, event_hash));
        }
        if pos != bytes.len() {
            return Err(DecodeError {
                message: "trailing bytes after inclusion proof".into(),
                offset: Some(pos as u64),
                index: None,
            });
        }
        Ok(InclusionProof {
            version,
            event,
            prev_node,
            state_root,
            later,
        })
    }
}

fn fixed<const N: usize>(slice: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = slice.len().min(N);
    out[..n].copy_from_slice(&slice[..n]);
    out
}
