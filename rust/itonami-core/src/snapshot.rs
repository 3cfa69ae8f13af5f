//! Self-checking snapshot encoding of a state.
//!
//! ```text
//! 8 bytes  magic "ITNSNAP\0"
//! u8       format version (1: hash revision 2; 2: followed by the revision)
//! [u8      hash revision (= 3), format 2 only]
//! u64      version, u64 tx
//! 32       head node hash, 32 state root
//! u32 len  state JSON (the public `to_json` form)
//! u32 len  slot order JSON: [[category, key], ...] for slots 1.. (tombstones included)
//! 32       blake3 of every byte before it
//! ```
//! Restoring rebuilds the maps in slot order, so the restored state, its
//! Merkle tree, its JSON and every later hash equal those of a full replay.

use std::sync::Arc;

use indexmap::IndexMap;
use serde::Deserialize;

use crate::event::DecodeError;
use crate::merkle::Hash;
use crate::state::{
    Category, Compensation, ExecutionState, Json, Key, SignalQueue, Slotted, Status, StepState,
};
use crate::store::{HashRevision, MAX_SEQUENCE};

const MAGIC: &[u8; 8] = b"ITNSNAP\0";
/// The format of snapshots of revision-2 chains (no revision byte).
const FORMAT_REV2: u8 = 1;
/// The format that names the hash revision in the byte after it.
const FORMAT_WITH_REVISION: u8 = 2;

/// A decoded snapshot.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub state: ExecutionState,
    pub version: u64,
    pub tx: u64,
    pub head: Hash,
    pub root: Hash,
    /// The hash definition of the chain the snapshot belongs to.
    pub revision: HashRevision,
}

#[derive(Deserialize)]
struct StateRepr {
    execution_id: String,
    workflow_id: Option<String>,
    workflow_version: Option<Json>,
    definition_hash: Option<String>,
    inputs: Option<Json>,
    parent: Option<Json>,
    created_at: Option<i64>,
    updated_at: Option<i64>,
    version: u64,
    tx: u64,
    status: Status,
    outputs: Option<Json>,
    error: Option<Json>,
    steps: IndexMap<String, StepState>,
    timers: IndexMap<String, i64>,
    waits: IndexMap<String, Json>,
    signals: IndexMap<String, Vec<Json>>,
    signal_cursor: IndexMap<String, u64>,
    compensations: IndexMap<String, Compensation>,
}

/// Encodes a snapshot of `state` at `head` of a chain of `revision`
/// (format 1 for revision 2, byte for byte what earlier builds wrote).
pub fn encode(
    state: &ExecutionState,
    head: &Hash,
    root: &Hash,
    revision: HashRevision,
) -> Result<Vec<u8>, DecodeError> {
    let json = state.to_json();
    let order: Vec<(u8, &str)> = state
        .entries()
        .into_iter()
        .filter_map(|(_, cat, i)| {
            let key = match cat {
                Category::Header => return None,
                Category::Step => state.steps.get_index(i)?.0,
                Category::Timer => state.timers.get_index(i)?.0,
                Category::Wait => state.waits.get_index(i)?.0,
                Category::Signal => state.signals.get_index(i)?.0,
                Category::Compensation => state.compensations.get_index(i)?.0,
            };
            Some((cat as u8, &**key))
        })
        .collect();
    let order = serde_json::to_vec(&order)
        .map_err(|e| DecodeError::msg(format!("cannot encode snapshot: {e}")))?;
    let json_len = u32::try_from(json.len()).map_err(|_| DecodeError::msg("state over 4 GiB"))?;
    let order_len = u32::try_from(order.len()).map_err(|_| DecodeError::msg("state over 4 GiB"))?;
    let mut out = Vec::with_capacity(json.len() + order.len() + 128);
    out.extend_from_slice(MAGIC);
    match revision {
        HashRevision::Two => out.push(FORMAT_REV2),
        revision => {
            out.push(FORMAT_WITH_REVISION);
            out.push(revision as u8);
        }
    }
    out.extend_from_slice(&state.version.to_le_bytes());
    out.extend_from_slice(&state.tx.to_le_bytes());
    out.extend_from_slice(head);
    out.extend_from_slice(root);
    out.extend_from_slice(&json_len.to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&order_len.to_le_bytes());
    out.extend_from_slice(&order);
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    Ok(out)
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or_else(|| err(format!("truncated snapshot: {what}"), self.pos))?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn hash(&mut self, what: &str) -> Result<Hash, DecodeError> {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.take(32, what)?);
        Ok(out)
    }

    fn u64(&mut self, what: &str) -> Result<u64, DecodeError> {
        let mut out = [0u8; 8];
        out.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_le_bytes(out))
    }

    fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        let mut out = [0u8; 4];
        out.copy_from_slice(self.take(4, what)?);
        Ok(u32::from_le_bytes(out))
    }
}

fn err(message: impl Into<String>, offset: usize) -> DecodeError {
    DecodeError {
        message: message.into(),
        offset: Some(offset as u64),
        index: None,
    }
}

/// Decodes and checks a snapshot. The state root is *not* checked here (the
/// store recomputes it and reports a mismatch as an integrity error).
pub fn decode(bytes: &[u8]) -> Result<Snapshot, DecodeError> {
    if bytes.len() < MAGIC.len() + 1 + 32 || &bytes[..MAGIC.len()] != MAGIC {
        return Err(err("not an itonami snapshot (bad magic)", 0));
    }
    let body_len = bytes.len() - 32;
    let (body, sum) = bytes.split_at(body_len);
    if blake3::hash(body).as_bytes() != sum {
        return Err(err("snapshot checksum mismatch", body_len));
    }
    let mut c = Cursor {
        bytes: body,
        pos: MAGIC.len(),
    };
    let format = c.take(1, "format")?[0];
    let revision = match format {
        FORMAT_REV2 => HashRevision::Two,
        FORMAT_WITH_REVISION => {
            let at = c.pos;
            let n = c.take(1, "hash revision")?[0];
            match HashRevision::from_number(n) {
                Some(HashRevision::Two) | None => {
                    return Err(err(format!("unknown hash revision {n} in snapshot"), at))
                }
                Some(revision) => revision,
            }
        }
        _ => {
            return Err(err(
                format!("unknown snapshot format {format}"),
                MAGIC.len(),
            ))
        }
    };
    let version_at = c.pos;
    let version = c.u64("version")?;
    let tx = c.u64("tx")?;
    if version > MAX_SEQUENCE || tx > MAX_SEQUENCE {
        return Err(err(
            format!("snapshot version {version} or tx {tx} is above {MAX_SEQUENCE}"),
            version_at,
        ));
    }
    let head = c.hash("head hash")?;
    let root = c.hash("state root")?;
    let json_len = c.u32("state length")? as usize;
    let json_at = c.pos;
    let json = c.take(json_len, "state")?;
    let order_len = c.u32("order length")? as usize;
    let order_at = c.pos;
    let order = c.take(order_len, "order")?;
    if c.pos != body.len() {
        return Err(err("trailing bytes in snapshot", c.pos));
    }
    let repr: StateRepr = serde_json::from_slice(json)
        .map_err(|e| err(format!("invalid snapshot state: {e}"), json_at))?;
    let order: Vec<(u8, String)> = serde_json::from_slice(order)
        .map_err(|e| err(format!("invalid snapshot slot order: {e}"), order_at))?;
    if repr.version != version || repr.tx != tx {
        return Err(err("snapshot header and state disagree", json_at));
    }
    let state = rebuild(repr, order).map_err(|m| err(m, order_at))?;
    Ok(Snapshot {
        state,
        version,
        tx,
        head,
        root,
        revision,
    })
}

fn rebuild(mut r: StateRepr, order: Vec<(u8, String)>) -> Result<ExecutionState, String> {
    let mut s = ExecutionState::new(r.execution_id);
    s.workflow_id = r.workflow_id;
    s.workflow_version = r.workflow_version;
    s.definition_hash = r.definition_hash;
    s.inputs = r.inputs;
    s.parent = r.parent;
    s.created_at = r.created_at;
    s.updated_at = r.updated_at;
    s.version = r.version;
    s.tx = r.tx;
    s.status = r.status;
    s.outputs = r.outputs;
    s.error = r.error;
    for (i, (code, key)) in order.into_iter().enumerate() {
        let slot = u32::try_from(i + 1).map_err(|_| "too many entries".to_owned())?;
        let cat = Category::from_code(code).ok_or_else(|| format!("unknown category {code}"))?;
        let missing = || format!("slot {slot} names a missing entry {key:?}");
        let fresh = match cat {
            Category::Header => return Err("header in slot order".into()),
            Category::Step => {
                let mut step = r.steps.swap_remove(&key).ok_or_else(missing)?;
                step.slot = slot;
                s.steps.insert(Key::from(key), Arc::new(step)).is_none()
            }
            Category::Timer => {
                let value = r.timers.swap_remove(&key);
                s.timers
                    .insert(Key::from(key), Slotted { value, slot })
                    .is_none()
            }
            Category::Wait => {
                let value = r.waits.swap_remove(&key);
                s.waits
                    .insert(Key::from(key), Slotted { value, slot })
                    .is_none()
            }
            Category::Signal => {
                let payloads = r.signals.swap_remove(&key).ok_or_else(missing)?;
                let cursor = r.signal_cursor.swap_remove(&key).unwrap_or(0);
                if cursor > payloads.len() as u64 {
                    return Err(format!("signal {key:?} consumed more than received"));
                }
                let mut queue = SignalQueue::new(slot);
                for payload in payloads {
                    queue.push(payload);
                }
                queue.cursor = cursor;
                s.signals.insert(Key::from(key), queue).is_none()
            }
            Category::Compensation => {
                let mut comp = r.compensations.swap_remove(&key).ok_or_else(missing)?;
                comp.slot = slot;
                s.compensations.insert(Key::from(key), comp).is_none()
            }
        };
        if !fresh {
            return Err(format!("slot {slot} repeats an entry"));
        }
        s.next_slot = slot + 1;
    }
    let leftovers = r.steps.len()
        + r.timers.len()
        + r.waits.len()
        + r.signals.len()
        + r.signal_cursor.len()
        + r.compensations.len();
    if leftovers != 0 {
        return Err(format!("{leftovers} entries have no slot"));
    }
    if s.status != Status::Pending {
        s.header_static = s.compute_header_static();
    }
    Ok(s)
}
