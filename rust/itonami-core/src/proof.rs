//! Inclusion proofs: event `k` is part of the chain that ends at a head hash.
//!
//! Because `node(v)` commits to `blake3(event(v))` rather than the event bytes,
//! a proof carries event `k` in full, `node(k-1)` and, for every later version
//! `j`, only `blake3(event(j))` and, for a sealed version, its state root. The
//! checker recomputes the chain from `node(k-1)` to the head and compares.
//!
//! Format 1 (hash revision 2, where every version is sealed):
//!
//! ```text
//! 8 bytes "ITNPROOF", u8 format (= 1), u64 version, u32 event length, event,
//! 32 prev node, 32 state root, u32 count, count x (32 root, 32 event hash)
//! ```
//!
//! Format 2 (hash revision 3), where a flag says whether a version is sealed
//! and only sealed versions carry a state root:
//!
//! ```text
//! 8 bytes "ITNPROOF", u8 format (= 2), u64 version, u32 event length, event,
//! 32 prev node, u8 sealed (0 or 1), [32 state root if sealed],
//! u32 count, count x (u8 sealed, 32 event hash, [32 state root if sealed])
//! ```

use crate::event::{DecodeError, Event};
use crate::merkle::Hash;
use crate::store::{chain_node, HashRevision, MAX_SEQUENCE};

const MAGIC: &[u8; 8] = b"ITNPROOF";
/// The proof format of hash revision 2.
const FORMAT_REV2: u8 = 1;
/// The proof format of hash revision 3.
const FORMAT_REV3: u8 = 2;

/// A proof of inclusion of one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InclusionProof {
    /// The hash definition of the chain.
    pub revision: HashRevision,
    /// Version of the proven event.
    pub version: u64,
    /// The proven event's encoded bytes.
    pub event: Vec<u8>,
    /// `node(version - 1)`.
    pub prev_node: Hash,
    /// `state_root(version)` when that version is sealed (always, in revision 2).
    pub state_root: Option<Hash>,
    /// `(state_root(j) if sealed, blake3(event(j)))` for each later version `j`.
    pub later: Vec<(Option<Hash>, Hash)>,
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
        let event_hash = *blake3::hash(&self.event).as_bytes();
        let mut node = chain_node(
            self.revision,
            &self.prev_node,
            self.version,
            &event_hash,
            self.state_root.as_ref(),
        );
        for (j, (root, event_hash)) in self.later.iter().enumerate() {
            let version = self.version.saturating_add(j as u64 + 1);
            node = chain_node(self.revision, &node, version, event_hash, root.as_ref());
        }
        node
    }

    /// Whether the proof leads to `head` and carries a well-formed event.
    pub fn verify(&self, head: &[u8]) -> bool {
        let complete = self.revision == HashRevision::Three
            || (self.state_root.is_some() && self.later.iter().all(|l| l.0.is_some()));
        complete && Event::decode(&self.event, 0, 0).is_ok() && self.head().as_slice() == head
    }

    /// The decoded proven event.
    pub fn decoded_event(&self) -> Result<Event, DecodeError> {
        Event::decode(&self.event, 0, 0)
    }

    /// Serialises the proof (format 1 for revision 2, format 2 for revision 3).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(8 + 1 + 8 + 4 + self.event.len() + 69 + 65 * self.later.len());
        out.extend_from_slice(MAGIC);
        let rev3 = self.revision == HashRevision::Three;
        out.push(if rev3 { FORMAT_REV3 } else { FORMAT_REV2 });
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.event.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.event);
        out.extend_from_slice(&self.prev_node);
        let zero = [0u8; 32];
        if rev3 {
            put_sealed(&mut out, self.state_root.as_ref());
        } else {
            out.extend_from_slice(self.state_root.as_ref().unwrap_or(&zero));
        }
        out.extend_from_slice(&(self.later.len() as u32).to_le_bytes());
        for (root, event_hash) in &self.later {
            if rev3 {
                out.push(u8::from(root.is_some()));
                out.extend_from_slice(event_hash);
                if let Some(root) = root {
                    out.extend_from_slice(root);
                }
            } else {
                out.extend_from_slice(root.as_ref().unwrap_or(&zero));
                out.extend_from_slice(event_hash);
            }
        }
        out
    }

    /// Parses a serialised proof.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader { bytes, pos: 0 };
        if r.take(8, "magic")? != MAGIC {
            return Err(DecodeError::at("not an inclusion proof (bad magic)", 0, 0));
        }
        let format = r.take(1, "format")?[0];
        let revision = match format {
            FORMAT_REV2 => HashRevision::Two,
            FORMAT_REV3 => HashRevision::Three,
            _ => {
                return Err(DecodeError::at(
                    format!("unknown proof format {format}"),
                    8,
                    0,
                ))
            }
        };
        let version = u64::from_le_bytes(r.fixed("version")?);
        if version == 0 || version > MAX_SEQUENCE {
            return Err(DecodeError::at(
                format!("proof version {version} is not in 1..={MAX_SEQUENCE}"),
                9,
                0,
            ));
        }
        let len = u32::from_le_bytes(r.fixed("event length")?) as usize;
        let event = r.take(len, "event")?.to_vec();
        let prev_node = r.fixed("previous node")?;
        let state_root = match revision {
            HashRevision::Two => Some(r.fixed("state root")?),
            HashRevision::Three => r.sealed_root("state root")?,
        };
        let count_at = r.pos;
        let count = u32::from_le_bytes(r.fixed("count")?) as usize;
        if version.saturating_add(count as u64) > MAX_SEQUENCE {
            return Err(DecodeError {
                message: format!("proof head version is above {MAX_SEQUENCE}"),
                offset: Some(count_at as u64),
                index: None,
            });
        }
        let mut later = Vec::with_capacity(count.min(bytes.len() / 33));
        for _ in 0..count {
            later.push(match revision {
                HashRevision::Two => {
                    let root = r.fixed("later state root")?;
                    (Some(root), r.fixed("later event hash")?)
                }
                HashRevision::Three => {
                    let flag_at = r.pos;
                    let sealed = r.take(1, "sealed flag")?[0];
                    let event_hash = r.fixed("later event hash")?;
                    let root = match sealed {
                        0 => None,
                        1 => Some(r.fixed("later state root")?),
                        other => return Err(bad_flag(other, flag_at)),
                    };
                    (root, event_hash)
                }
            });
        }
        if r.pos != bytes.len() {
            return Err(DecodeError {
                message: "trailing bytes after inclusion proof".into(),
                offset: Some(r.pos as u64),
                index: None,
            });
        }
        Ok(InclusionProof {
            revision,
            version,
            event,
            prev_node,
            state_root,
            later,
        })
    }
}

/// Writes a format-2 sealed flag and, when sealed, the root.
fn put_sealed(out: &mut Vec<u8>, root: Option<&Hash>) {
    out.push(u8::from(root.is_some()));
    if let Some(root) = root {
        out.extend_from_slice(root);
    }
}

fn bad_flag(flag: u8, at: usize) -> DecodeError {
    DecodeError {
        message: format!("sealed flag {flag} is not 0 or 1"),
        offset: Some(at as u64),
        index: None,
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or_else(|| DecodeError {
                message: format!("truncated inclusion proof: {what}"),
                offset: Some(self.pos as u64),
                index: None,
            })?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn fixed<const N: usize>(&mut self, what: &str) -> Result<[u8; N], DecodeError> {
        Ok(fixed(self.take(N, what)?))
    }

    /// A format-2 sealed flag and, when it is 1, the root after it.
    fn sealed_root(&mut self, what: &str) -> Result<Option<Hash>, DecodeError> {
        let at = self.pos;
        match self.take(1, "sealed flag")?[0] {
            0 => Ok(None),
            1 => Ok(Some(self.fixed(what)?)),
            other => Err(bad_flag(other, at)),
        }
    }
}

fn fixed<const N: usize>(slice: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = slice.len().min(N);
    out[..n].copy_from_slice(&slice[..n]);
    out
}
