//! The MVCC version store: many executions, each an append-only chain of
//! versions with a Merkle node hash, plus a store-wide transaction counter.
//!
//! # Concurrency
//!
//! The store holds `RwLock<HashMap<id, Arc<RwLock<Execution>>>>`. A writer
//! takes the execution's write lock and performs *every* mutation of a version
//! (event bytes, per-version metadata, state, tree, snapshots) before it lets
//! go, so a reader, which takes the read lock, sees either all of a version or
//! none of it. The map lock is only held to look an execution up, to insert a
//! new one or to evict one; it is always taken *before* an execution lock and
//! never while holding one, so the two cannot deadlock. Transaction ids come
//! from one atomic counter, drawn while holding the execution's write lock, so
//! each execution's txs increase with its versions and no tx is handed out
//! twice.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::event::{frame_into, frames, DecodeError, Event, EventKind, EventRef};
use crate::merkle::Hash;
use crate::proof::InclusionProof;
use crate::snapshot;
use crate::state::{ExecutionState, HashedState, ReduceError, Untracked};

/// The largest version or tx the store accepts or hands out.
///
/// Durable stores keep both in signed 64-bit SQL columns, and every value
/// read back from storage, a snapshot or a proof is checked against this
/// bound before any arithmetic on it, so that arithmetic cannot overflow.
pub const MAX_SEQUENCE: u64 = i64::MAX as u64;

/// Domain-separation prefix of revision-2 node hashes.
pub const NODE_DOMAIN: &[u8] = b"itonami/node/1";

/// The hash definition an execution's chain follows (see
/// `docs/core-contract.md`, "Format history").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum HashRevision {
    /// Every version is sealed: its node covers its own state root.
    Two = 2,
    /// Versions are linked by a keyed hash of their event; the version that
    /// ends a commit (and each in-memory snapshot version) is sealed.
    Three = 3,
}

impl HashRevision {
    /// The revision new executions use.
    pub const CURRENT: HashRevision = HashRevision::Three;

    /// The revision with this number, if the core knows it.
    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            2 => Some(HashRevision::Two),
            3 => Some(HashRevision::Three),
            _ => None,
        }
    }
}

/// BLAKE3 key-derivation context of the revision-3 `node(0)`.
pub const GENESIS_CONTEXT: &str = "itonami 2026-12 chain genesis v3";

/// Tag byte of an unsealed revision-3 link.
const LINK_TAG: u8 = 0x00;
/// Tag byte of a sealed revision-3 link.
const SEAL_TAG: u8 = 0x01;

/// Revision 3's `node(0) = blake3_derive_key(GENESIS_CONTEXT, execution_id)`.
pub fn genesis_node(execution_id: &str) -> Hash {
    blake3::derive_key(GENESIS_CONTEXT, execution_id.as_bytes())
}

/// An unsealed revision-3 node:
/// `blake3_keyed(node(v-1), 0x00 || u64_le(v) || blake3(event(v)))` (one compression).
pub fn link_hash(prev: &Hash, version: u64, event_hash: &Hash) -> Hash {
    let mut buf = [0u8; 1 + 8 + 32];
    buf[0] = LINK_TAG;
    buf[1..9].copy_from_slice(&version.to_le_bytes());
    buf[9..].copy_from_slice(event_hash);
    *blake3::keyed_hash(prev, &buf).as_bytes()
}

/// A sealed revision-3 node:
/// `blake3_keyed(node(v-1), 0x01 || u64_le(v) || blake3(event(v)) || state_root(v))`.
pub fn seal_hash(prev: &Hash, version: u64, event_hash: &Hash, state_root: &Hash) -> Hash {
    let mut buf = [0u8; 1 + 8 + 64];
    buf[0] = SEAL_TAG;
    buf[1..9].copy_from_slice(&version.to_le_bytes());
    buf[9..41].copy_from_slice(event_hash);
    buf[41..].copy_from_slice(state_root);
    *blake3::keyed_hash(prev, &buf).as_bytes()
}

/// The node of version `version` in `revision`: sealed when `state_root`
/// is given (revision 2 always needs it; `None` there hashes a zero root,
/// which no stored chain has).
pub fn chain_node(
    revision: HashRevision,
    prev: &Hash,
    version: u64,
    event_hash: &Hash,
    state_root: Option<&Hash>,
) -> Hash {
    match (revision, state_root) {
        (HashRevision::Two, root) => {
            node_hash(version, prev, root.unwrap_or(&[0u8; 32]), event_hash)
        }
        (HashRevision::Three, Some(root)) => seal_hash(prev, version, event_hash, root),
        (HashRevision::Three, None) => link_hash(prev, version, event_hash),
    }
}

/// Revision 2's `node(v) = blake3("itonami/node/1" || u64_le(v) || node(v-1) || state_root(v) || blake3(event(v)))`.
pub fn node_hash(version: u64, prev: &Hash, state_root: &Hash, event_hash: &Hash) -> Hash {
    const D: usize = NODE_DOMAIN.len();
    let mut buf = [0u8; D + 8 + 96];
    buf[..D].copy_from_slice(NODE_DOMAIN);
    buf[D..D + 8].copy_from_slice(&version.to_le_bytes());
    buf[D + 8..D + 40].copy_from_slice(prev);
    buf[D + 40..D + 72].copy_from_slice(state_root);
    buf[D + 72..].copy_from_slice(event_hash);
    *blake3::hash(&buf).as_bytes()
}

/// Lowercase hex of a hash.
pub fn hex(hash: &[u8]) -> String {
    use fmt::Write;
    let mut out = String::with_capacity(hash.len() * 2);
    for b in hash {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Errors of the store layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// Bytes that do not decode.
    Decode(DecodeError),
    /// An event the reducer rejects; `index` is its position in the batch or history.
    Reduce { index: usize, error: ReduceError },
    /// `expected_version` is stale.
    Conflict {
        execution_id: String,
        expected: u64,
        actual: u64,
    },
    /// A chain that does not verify; `version` is the first bad one.
    Integrity {
        execution_id: String,
        version: u64,
        expected: Option<String>,
        actual: Option<String>,
        message: String,
    },
    /// A payload over the configured limit.
    PayloadTooLarge {
        size: usize,
        limit: usize,
        what: &'static str,
    },
    /// No such execution.
    NotFound { execution_id: String },
    /// A tx or version outside what the execution holds.
    OutOfRange {
        execution_id: String,
        tx: u64,
        message: String,
    },
    /// A tx above [`MAX_SEQUENCE`], or a tx space used up; `execution_id`
    /// names the execution whose append needed it, when there was one.
    TxLimit {
        execution_id: Option<String>,
        tx: u64,
        message: String,
    },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Decode(e) => e.fmt(f),
            StoreError::Reduce { index, error } => write!(f, "event {index}: {error}"),
            StoreError::Conflict {
                execution_id,
                expected,
                actual,
            } => write!(
                f,
                "version conflict on execution {execution_id:?}: expected version {expected}, \
                 actual version {actual}"
            ),
            StoreError::Integrity { message, .. } => f.write_str(message),
            StoreError::PayloadTooLarge { size, limit, what } => {
                write!(
                    f,
                    "{what} of {size} bytes exceeds the limit of {limit} bytes"
                )
            }
            StoreError::NotFound { execution_id } => {
                write!(f, "no execution {execution_id:?}")
            }
            StoreError::OutOfRange { message, .. } => f.write_str(message),
            StoreError::TxLimit { message, .. } => f.write_str(message),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<DecodeError> for StoreError {
    fn from(e: DecodeError) -> Self {
        StoreError::Decode(e)
    }
}

/// Store settings.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Keep an in-memory snapshot every this many versions (0 = never).
    pub snapshot_every: u64,
    /// How many snapshots to keep per execution (0 = all).
    pub snapshot_retention: usize,
    /// Largest accepted event payload (`data`) in bytes.
    pub max_payload_bytes: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            snapshot_every: 0,
            snapshot_retention: 2,
            max_payload_bytes: 4 * 1024 * 1024,
        }
    }
}

/// Per-version metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VersionInfo {
    pub version: u64,
    pub tx: u64,
    pub timestamp: i64,
    pub kind: EventKind,
    pub hash: Hash,
    /// The state root of a sealed version (`None` for an unsealed one).
    pub state_root: Option<Hash>,
}

#[derive(Clone, Copy, Debug)]
struct Meta {
    tx: u64,
    node: Hash,
}

/// What an append created: what a durable store persists.
#[derive(Clone, Debug)]
pub struct Appended {
    pub version: u64,
    pub tx: u64,
    pub timestamp: i64,
    pub kind: EventKind,
    pub hash: Hash,
    pub encoded: Vec<u8>,
    pub status: &'static str,
}

/// Result of a successful `verify`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    pub execution_id: String,
    pub versions: u64,
    pub head_hash: Hash,
}

struct Execution {
    revision: HashRevision,
    /// Versions up to `base_version` are compacted into `base_state`.
    base_version: u64,
    base_tx: u64,
    base_node: Hash,
    /// `None` while the base is the empty state (not kept in memory then).
    base_state: Option<Arc<ExecutionState>>,
    /// Encoded events after the base, back to back; `offsets[i]..offsets[i+1]`.
    events: Vec<u8>,
    offsets: Vec<usize>,
    meta: Vec<Meta>,
    /// `(version, state root)` of the sealed versions after the base, by version.
    roots: Vec<(u64, Hash)>,
    /// Sealed after every commit and load.
    current: HashedState,
    snapshots: VecDeque<(u64, Arc<ExecutionState>)>,
}

impl Execution {
    fn empty(execution_id: &str, revision: HashRevision) -> Self {
        let current = HashedState::new(execution_id);
        Execution {
            revision,
            base_version: 0,
            base_tx: 0,
            base_node: match revision {
                HashRevision::Two => [0u8; 32],
                HashRevision::Three => genesis_node(execution_id),
            },
            base_state: None,
            events: Vec::new(),
            offsets: vec![0],
            meta: Vec::new(),
            roots: Vec::new(),
            current,
            snapshots: VecDeque::new(),
        }
    }

    fn version(&self) -> u64 {
        self.base_version + self.meta.len() as u64
    }

    /// The state at `base_version`.
    fn base(&self) -> Arc<ExecutionState> {
        match &self.base_state {
            Some(state) => Arc::clone(state),
            None => Arc::new(ExecutionState::new(
                self.current.state.execution_id.as_str(),
            )),
        }
    }

    /// Kind and timestamp of the stored event at index `i`, read from its
    /// encoding (format byte, `u16` kind, `i64` timestamp).
    fn kind_and_time(&self, i: usize) -> (EventKind, i64) {
        let bytes = self.event_bytes(i);
        let kind = bytes
            .get(1..3)
            .and_then(|b| EventKind::from_code(u16::from_le_bytes([b[0], b[1]])))
            .unwrap_or(EventKind::SnapshotTaken);
        let mut ts = [0u8; 8];
        if let Some(b) = bytes.get(3..11) {
            ts.copy_from_slice(b);
        }
        (kind, i64::from_le_bytes(ts))
    }

    /// Releases spare capacity while the execution is small: idle executions
    /// are the common case and should cost little memory. Larger ones keep
    /// amortised growth.
    fn compact(&mut self) {
        if self.meta.len() <= SMALL {
            self.events.shrink_to_fit();
            self.offsets.shrink_to_fit();
            self.meta.shrink_to_fit();
        }
        if self.current.tree.len() <= SMALL {
            self.current.shrink_to_fit();
        }
        if self.roots.len() <= SMALL {
            self.roots.shrink_to_fit();
        }
        if let Some(state) = Arc::get_mut(&mut self.current.state) {
            state.compact(SMALL);
        }
    }

    /// Makes room for a commit of `versions` versions, `bytes` encoded bytes
    /// and `roots` state roots. While the execution is small the buffers grow
    /// exactly, so [`Execution::compact`] finds no spare capacity to release:
    /// one reallocation per buffer and commit, not a doubling and a shrink.
    fn reserve(&mut self, bytes: usize, versions: usize, roots: usize) {
        if self.meta.len().saturating_add(versions) <= SMALL {
            self.events.reserve_exact(bytes);
            self.offsets.reserve_exact(versions);
            self.meta.reserve_exact(versions);
        }
        if self.roots.len().saturating_add(roots) <= SMALL {
            self.roots.reserve_exact(roots);
        }
    }

    fn head(&self) -> Hash {
        self.meta.last().map_or(self.base_node, |m| m.node)
    }

    fn event_bytes(&self, i: usize) -> &[u8] {
        match (self.offsets.get(i), self.offsets.get(i + 1)) {
            (Some(&a), Some(&b)) => self.events.get(a..b).unwrap_or(&[]),
            _ => &[],
        }
    }

    /// The state root of `version` if it is a sealed version after the base.
    fn root_at(&self, version: u64) -> Option<Hash> {
        self.roots
            .binary_search_by_key(&version, |r| r.0)
            .ok()
            .and_then(|i| self.roots.get(i))
            .map(|r| r.1)
    }

    /// Records one version (with its state root when sealed); `snap` is the
    /// state of exactly this version when the snapshot policy keeps one.
    fn push(
        &mut self,
        encoded: &[u8],
        meta: Meta,
        root: Option<Hash>,
        snap: Option<Arc<ExecutionState>>,
        config: &StoreConfig,
    ) {
        self.events.extend_from_slice(encoded);
        self.offsets.push(self.events.len());
        self.meta.push(meta);
        let version = self.version();
        if let Some(root) = root {
            self.roots.push((version, root));
        }
        if let Some(mut state) = snap {
            if state.tx != meta.tx {
                Arc::make_mut(&mut state).tx = meta.tx;
            }
            self.snapshots.push_back((version, state));
            if config.snapshot_retention > 0 {
                while self.snapshots.len() > config.snapshot_retention {
                    self.snapshots.pop_front();
                }
            }
        }
    }

    /// Recomputes `current` from the stored events (after a rejected batch).
    fn rebuild_current(&mut self, id: &str) -> Result<(), StoreError> {
        let version = self.version();
        let state = if version == self.base_version {
            self.base()
        } else {
            let mut state = self.fold_from_snapshot(version)?;
            Arc::make_mut(&mut state).tx = self.meta.last().map_or(self.base_tx, |m| m.tx);
            state
        };
        debug_assert_eq!(state.execution_id, id);
        self.current = HashedState::from_state(state);
        Ok(())
    }

    /// Folds the stored events up to `version` from the nearest snapshot.
    fn fold_from_snapshot(&self, version: u64) -> Result<Arc<ExecutionState>, StoreError> {
        // Snapshots are kept in version order: the newest at or below
        // `version` is found by bisection, not by a scan from the newest.
        let k = self.snapshots.partition_point(|(v, _)| *v <= version);
        let (from, start) = k
            .checked_sub(1)
            .and_then(|k| self.snapshots.get(k))
            .filter(|(v, _)| *v >= self.base_version)
            .map_or_else(
                || (self.base_version, self.base()),
                |(v, s)| (*v, Arc::clone(s)),
            );
        if from == version {
            return Ok(start);
        }
        let mut state = Arc::try_unwrap(start).unwrap_or_else(|shared| (*shared).clone());
        for v in from..version {
            let i = (v - self.base_version) as usize;
            let event = EventRef::decode_trusted(self.event_bytes(i), 0, v as usize)?;
            state
                .apply_tracked(event, &mut Untracked)
                .map_err(|error| StoreError::Reduce {
                    index: v as usize,
                    error,
                })?;
        }
        // The tx of the newest version folded (`version - 1` is its index).
        let last = (version - 1 - self.base_version) as usize;
        state.tx = self.meta.get(last).map_or(0, |m| m.tx);
        Ok(Arc::new(state))
    }

    /// The state at `version`, folded from the nearest snapshot at or below it.
    fn state_at(&self, id: &str, version: u64) -> Result<Arc<ExecutionState>, StoreError> {
        if version > self.version() || version < self.base_version {
            return Err(StoreError::OutOfRange {
                execution_id: id.to_owned(),
                tx: version,
                message: format!(
                    "version {version} of execution {id:?} is out of range {}..={}",
                    self.base_version,
                    self.version()
                ),
            });
        }
        if version == self.version() {
            return Ok(Arc::clone(&self.current.state));
        }
        self.fold_from_snapshot(version)
    }
}

/// Applies `event` to `hs` on top of node `prev` and links it; the version
/// is sealed when `seal` holds (every version is, in revision 2). Returns
/// (state root if sealed, node).
fn chain(
    revision: HashRevision,
    hs: &mut HashedState,
    prev: &Hash,
    (event, tx): (EventRef<'_>, Option<u64>),
    encoded: &[u8],
    seal: bool,
) -> Result<(Option<Hash>, Hash), ReduceError> {
    let root = if seal || revision == HashRevision::Two {
        Some(hs.apply_sealed_at(event, tx)?)
    } else {
        hs.apply_unsealed_at(event, tx)?;
        None
    };
    let version = hs.state.version;
    let event_hash = blake3::hash(encoded);
    let node = chain_node(
        revision,
        prev,
        version,
        event_hash.as_bytes(),
        root.as_ref(),
    );
    Ok((root, node))
}

/// Like [`chain`], but seals exactly when the stored node says the version
/// was sealed: in revision 3 the unsealed link is tried first (one hash)
/// and the version is sealed only when that is not the stored node. The
/// caller compares the returned node with `stored`.
fn chain_stored(
    revision: HashRevision,
    hs: &mut HashedState,
    prev: &Hash,
    (event, tx): (EventRef<'_>, Option<u64>),
    encoded: &[u8],
    stored: &[u8],
) -> Result<(Option<Hash>, Hash), ReduceError> {
    if revision == HashRevision::Two {
        return chain(revision, hs, prev, (event, tx), encoded, true);
    }
    hs.apply_unsealed_at(event, tx)?;
    let version = hs.state.version;
    let event_hash = blake3::hash(encoded);
    let link = link_hash(prev, version, event_hash.as_bytes());
    if stored == link {
        return Ok((None, link));
    }
    let root = hs.seal();
    Ok((
        Some(root),
        seal_hash(prev, version, event_hash.as_bytes(), &root),
    ))
}

/// Whether a commit seals the version at position `index` of `count` events:
/// the last one, and each version the snapshot policy keeps a snapshot of.
fn seals_at(index: usize, count: usize, version: u64, snapshot_every: u64) -> bool {
    index + 1 == count || (snapshot_every > 0 && version % snapshot_every == 0)
}

/// Per event: (state root if sealed, node hash, status, snapshot of the
/// state if the snapshot policy takes one at this version).
type Chained = Vec<(
    Option<Hash>,
    Hash,
    &'static str,
    Option<Arc<ExecutionState>>,
)>;

fn chain_all(
    revision: HashRevision,
    hs: &mut HashedState,
    mut prev: Hash,
    events: &[Event],
    encoded: &[Vec<u8>],
    snapshot_every: u64,
) -> Result<Chained, StoreError> {
    let mut out = Vec::with_capacity(events.len());
    let count = events.len();
    for (index, (event, bytes)) in events.iter().zip(encoded).enumerate() {
        let version = hs.state.version.saturating_add(1);
        let seal = seals_at(index, count, version, snapshot_every);
        let (root, node) = chain(revision, hs, &prev, (event.view(), None), bytes, seal)
            .map_err(|error| StoreError::Reduce { index, error })?;
        let version = hs.state.version;
        // Taken here, not after the batch, so it holds exactly this version.
        let snap =
            (snapshot_every > 0 && version % snapshot_every == 0).then(|| Arc::clone(&hs.state));
        out.push((root, node, hs.state.status.name(), snap));
        prev = node;
    }
    Ok(out)
}

/// Chains shorter than twice this are verified on one thread.
const PARALLEL_VERIFY_MIN: usize = 4096;
/// Most threads one `verify` uses.
const MAX_VERIFY_THREADS: usize = 8;
/// Executions with at most this many versions (or state entries) give back
/// their spare capacity after each commit: idle ones are the common case.
const SMALL: usize = 16;

fn tx_exhausted(id: Option<&str>, last: u64) -> StoreError {
    StoreError::TxLimit {
        execution_id: id.map(str::to_owned),
        tx: last,
        message: format!("no tx is left after tx {last} (the largest is {MAX_SEQUENCE})"),
    }
}

fn integrity_error(id: &str, version: u64, what: impl fmt::Display) -> StoreError {
    StoreError::Integrity {
        execution_id: id.to_owned(),
        version,
        expected: None,
        actual: None,
        message: format!("execution {id:?}, version {version}: {what}"),
    }
}

/// Verifies the stored versions at indices `a..b`; returns the state root
/// and node hash after them. Version `base + a` must be sealed (or the base).
fn verify_range(ex: &Execution, id: &str, a: usize, b: usize) -> Result<(Hash, Hash), StoreError> {
    let bad = |version: u64, expected: &Hash, actual: &Hash, what: &str| StoreError::Integrity {
        execution_id: id.to_owned(),
        version,
        expected: Some(hex(expected)),
        actual: Some(hex(actual)),
        message: format!("execution {id:?}, version {version}: {what}"),
    };
    let (mut hs, mut prev) = if a == 0 {
        (HashedState::from_state(ex.base()), ex.base_node)
    } else {
        let version = ex.base_version + a as u64;
        let start = ex
            .fold_from_snapshot(version)
            .map_err(|e| integrity_error(id, version, e))?;
        let hs = HashedState::from_state(start);
        let stored_root = ex
            .root_at(version)
            .ok_or_else(|| integrity_error(id, version, "internal: range starts unsealed"))?;
        if hs.root() != stored_root {
            return Err(bad(
                version,
                &stored_root,
                &hs.root(),
                "state root mismatch",
            ));
        }
        (hs, ex.meta[a - 1].node)
    };
    // The sealed versions, walked alongside the range.
    let first = ex.base_version + a as u64 + 1;
    let mut r = ex.roots.partition_point(|(v, _)| *v < first);
    for i in a..b {
        let m = &ex.meta[i];
        let version = ex.base_version + i as u64 + 1;
        let stored_root = match ex.roots.get(r) {
            Some(&(v, root)) if v == version => {
                r += 1;
                Some(root)
            }
            _ => None,
        };
        let bytes = ex.event_bytes(i);
        let event = EventRef::decode(bytes, 0, i).map_err(|e| integrity_error(id, version, e))?;
        let (root, node) = chain(
            ex.revision,
            &mut hs,
            &prev,
            (event, None),
            bytes,
            stored_root.is_some(),
        )
        .map_err(|e| integrity_error(id, version, e))?;
        if let (Some(stored), Some(root)) = (stored_root, root) {
            if root != stored {
                return Err(bad(version, &stored, &root, "state root mismatch"));
            }
        }
        if node != m.node {
            return Err(bad(version, &m.node, &node, "node hash mismatch"));
        }
        prev = node;
    }
    Ok((hs.seal(), prev))
}

/// The in-memory MVCC store.
pub struct VersionStore {
    config: StoreConfig,
    tx: AtomicU64,
    execs: RwLock<HashMap<String, Arc<RwLock<Execution>>>>,
}

impl Default for VersionStore {
    fn default() -> Self {
        Self::new(StoreConfig::default())
    }
}

impl VersionStore {
    /// A new empty store.
    pub fn new(config: StoreConfig) -> Self {
        VersionStore {
            config,
            tx: AtomicU64::new(0),
            execs: RwLock::new(HashMap::new()),
        }
    }

    /// The store's settings.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    fn get(&self, id: &str) -> Result<Arc<RwLock<Execution>>, StoreError> {
        self.execs
            .read()
            .get(id)
            .cloned()
            .ok_or_else(|| StoreError::NotFound {
                execution_id: id.to_owned(),
            })
    }

    /// Checks a payload against the size limit.
    pub fn check_payload(&self, size: usize) -> Result<(), StoreError> {
        if size > self.config.max_payload_bytes {
            return Err(StoreError::PayloadTooLarge {
                size,
                limit: self.config.max_payload_bytes,
                what: "event data",
            });
        }
        Ok(())
    }

    /// Appends one event at `expected_version`.
    pub fn append(
        &self,
        id: &str,
        expected_version: u64,
        event: Event,
    ) -> Result<Appended, StoreError> {
        let mut out = self.append_batch(id, expected_version, std::slice::from_ref(&event))?;
        out.pop().ok_or_else(|| {
            StoreError::Decode(DecodeError::msg("internal: append produced no version"))
        })
    }

    /// Appends events atomically: all of them, or (on any error) none.
    pub fn append_batch(
        &self,
        id: &str,
        expected_version: u64,
        events: &[Event],
    ) -> Result<Vec<Appended>, StoreError> {
        for event in events {
            self.check_payload(event.data.len())?;
        }
        let existing = self.execs.read().get(id).cloned();
        if let Some(exec) = existing {
            let mut ex = exec.write();
            return self.commit(&mut ex, id, expected_version, events);
        }
        // A new execution: hold the map lock so two first appends cannot race,
        // and insert only once the events were accepted.
        let mut map = self.execs.write();
        if let Some(exec) = map.get(id).cloned() {
            drop(map);
            let mut ex = exec.write();
            return self.commit(&mut ex, id, expected_version, events);
        }
        let mut ex = Execution::empty(id, HashRevision::CURRENT);
        let out = self.commit(&mut ex, id, expected_version, events)?;
        map.insert(id.to_owned(), Arc::new(RwLock::new(ex)));
        Ok(out)
    }

    fn commit(
        &self,
        ex: &mut Execution,
        id: &str,
        expected: u64,
        events: &[Event],
    ) -> Result<Vec<Appended>, StoreError> {
        let actual = ex.version();
        if expected != actual {
            return Err(StoreError::Conflict {
                execution_id: id.to_owned(),
                expected,
                actual,
            });
        }
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut encoded: Vec<Vec<u8>> = Vec::with_capacity(events.len());
        for event in events {
            encoded.push(event.encode()?);
        }
        let prev = ex.meta.last().map_or(ex.base_node, |m| m.node);
        // The reducer validates before it mutates, so a rejected first event
        // leaves `current` untouched. When a later event of a batch is
        // rejected, the earlier ones already changed `current`: rebuild it from
        // the stored events (a rare path; copying the state up front for every
        // batch would cost O(state) on the common path instead).
        let n = events.len() as u64;
        if self.last_tx().saturating_add(n) > MAX_SEQUENCE {
            return Err(tx_exhausted(Some(id), self.last_tx()));
        }
        let every = self.config.snapshot_every;
        let revision = ex.revision;
        let chained = match chain_all(revision, &mut ex.current, prev, events, &encoded, every) {
            Ok(chained) => chained,
            Err(e) => {
                if matches!(e, StoreError::Reduce { index, .. } if index > 0) {
                    ex.rebuild_current(id)?;
                }
                return Err(e);
            }
        };
        // Checked again while drawing: another execution may have drawn txs
        // since the check above.
        let first_tx = match self.draw_txs(n) {
            Some(first) => first,
            None => {
                ex.rebuild_current(id)?;
                return Err(tx_exhausted(Some(id), self.last_tx()));
            }
        };
        let bytes = encoded.iter().map(Vec::len).fold(0, usize::saturating_add);
        let roots = chained.iter().filter(|c| c.0.is_some()).count();
        ex.reserve(bytes, events.len(), roots);
        let mut out = Vec::with_capacity(events.len());
        for (i, ((event, bytes), (root, node, status, snap))) in
            events.iter().zip(encoded).zip(chained).enumerate()
        {
            let meta = Meta {
                tx: first_tx + i as u64,
                node,
            };
            ex.push(&bytes, meta, root, snap, &self.config);
            out.push(Appended {
                version: ex.version(),
                tx: meta.tx,
                timestamp: event.timestamp,
                kind: event.kind,
                hash: node,
                encoded: bytes,
                status,
            });
        }
        if let Some(m) = ex.meta.last() {
            Arc::make_mut(&mut ex.current.state).tx = m.tx;
        }
        ex.compact();
        Ok(out)
    }

    /// Replaces (or creates) an execution from stored bytes, verifying as it goes.
    ///
    /// `history` holds the framed events after the snapshot (or all of them),
    /// `hashes` their concatenated 32-byte node hashes, `txs` their txs.
    pub fn load(
        &self,
        id: &str,
        history: &[u8],
        hashes: Option<&[u8]>,
        txs: Option<&[u64]>,
        snapshot: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let ex = self.build(id, history, hashes, txs, snapshot)?;
        let max_tx = ex.meta.last().map_or(ex.base_tx, |m| m.tx);
        // `build` accepted only txs up to MAX_SEQUENCE, so this cannot fail.
        self.advance_tx(max_tx)?;
        self.execs
            .write()
            .insert(id.to_owned(), Arc::new(RwLock::new(ex)));
        Ok(())
    }

    /// Loads into a fresh execution without registering it; returns its state.
    pub fn load_detached(
        &self,
        id: &str,
        history: &[u8],
        hashes: Option<&[u8]>,
    ) -> Result<Arc<ExecutionState>, StoreError> {
        let ex = self.build(id, history, hashes, None, None)?;
        Ok(ex.current.state)
    }

    fn build(
        &self,
        id: &str,
        history: &[u8],
        hashes: Option<&[u8]>,
        txs: Option<&[u64]>,
        snapshot: Option<&[u8]>,
    ) -> Result<Execution, StoreError> {
        let integrity =
            |version: u64, expected: Option<&[u8]>, actual: Option<&[u8]>, msg: &str| {
                StoreError::Integrity {
                    execution_id: id.to_owned(),
                    version,
                    expected: expected.map(hex),
                    actual: actual.map(hex),
                    message: format!("execution {id:?}, version {version}: {msg}"),
                }
            };
        let mut ex = Execution::empty(id, HashRevision::CURRENT);
        if let Some(bytes) = snapshot {
            let snap = snapshot::decode(bytes)?;
            if snap.state.execution_id != id {
                return Err(integrity(
                    snap.version,
                    None,
                    None,
                    &format!(
                        "snapshot belongs to execution {:?}",
                        snap.state.execution_id
                    ),
                ));
            }
            let state = Arc::new(snap.state);
            let hs = HashedState::from_state(Arc::clone(&state));
            if hs.root() != snap.root {
                return Err(integrity(
                    snap.version,
                    Some(&snap.root),
                    Some(&hs.root()),
                    "snapshot state root does not match its state",
                ));
            }
            ex.revision = snap.revision;
            ex.base_version = snap.version;
            ex.base_tx = snap.tx;
            ex.base_node = snap.head;
            ex.base_state = Some(state);
            ex.current = hs;
        }
        let count = frames(history).count();
        if let Some(h) = hashes {
            if h.len() != count * 32 {
                let have = h.len() / 32;
                return Err(integrity(
                    ex.base_version + have.min(count) as u64 + 1,
                    None,
                    None,
                    &format!(
                        "{} bytes of hashes for {count} events (need 32 per event)",
                        h.len()
                    ),
                ));
            }
        }
        if let Some(t) = txs {
            if t.len() != count {
                return Err(integrity(
                    ex.base_version + t.len().min(count) as u64 + 1,
                    None,
                    None,
                    &format!("{} txs for {count} events", t.len()),
                ));
            }
        }
        ex.events.reserve(history.len().saturating_sub(4 * count));
        ex.offsets.reserve(count);
        ex.meta.reserve(count);
        let mut prev = ex.base_node;
        let mut last_tx = ex.base_tx;
        let every = self.config.snapshot_every;
        // Without stored txs, the load's versions take consecutive fresh ones.
        let drawn = match (txs, count) {
            (Some(_), _) | (None, 0) => 0,
            (None, n) => self
                .draw_txs(n as u64)
                .ok_or_else(|| tx_exhausted(Some(id), self.last_tx()))?,
        };
        for (index, frame) in frames(history).enumerate() {
            let (offset, body) = frame?;
            let version = ex.base_version + index as u64 + 1;
            let event = EventRef::decode(body, offset + 4, index)?;
            let tx = match txs {
                Some(t) => {
                    let tx = t.get(index).copied().unwrap_or(0);
                    if tx > MAX_SEQUENCE {
                        return Err(integrity(
                            version,
                            None,
                            None,
                            &format!("tx {tx} is above the largest tx {MAX_SEQUENCE}"),
                        ));
                    }
                    if tx <= last_tx {
                        return Err(integrity(
                            version,
                            None,
                            None,
                            &format!("tx {tx} does not follow tx {last_tx}"),
                        ));
                    }
                    tx
                }
                None => drawn + index as u64,
            };
            let reduce = |error| StoreError::Reduce { index, error };
            let stored = hashes.map(|h| h.get(index * 32..index * 32 + 32).unwrap_or(&[]));
            let (root, node) = match stored {
                // The first version of a chain without a snapshot tells its
                // revision: the stored node is revision 3's (unsealed or
                // sealed from `genesis_node`) or revision 2's (from zeros).
                Some(stored) if version == 1 => {
                    ex.current
                        .apply_unsealed_at(event, Some(tx))
                        .map_err(reduce)?;
                    let event_hash = *blake3::hash(body).as_bytes();
                    let genesis = genesis_node(id);
                    let link = link_hash(&genesis, 1, &event_hash);
                    if stored == link {
                        (None, link)
                    } else {
                        let root = ex.current.seal();
                        let old = node_hash(1, &[0u8; 32], &root, &event_hash);
                        if stored == old {
                            ex.revision = HashRevision::Two;
                            ex.base_node = [0u8; 32];
                            (Some(root), old)
                        } else {
                            (Some(root), seal_hash(&genesis, 1, &event_hash, &root))
                        }
                    }
                }
                Some(stored) => {
                    let at = (event, Some(tx));
                    chain_stored(ex.revision, &mut ex.current, &prev, at, body, stored)
                        .map_err(reduce)?
                }
                None => {
                    let seal = seals_at(index, count, version, every);
                    let at = (event, Some(tx));
                    chain(ex.revision, &mut ex.current, &prev, at, body, seal).map_err(reduce)?
                }
            };
            if let Some(stored) = stored {
                if stored != node {
                    return Err(integrity(
                        version,
                        Some(stored),
                        Some(&node),
                        "node hash does not match the stored hash",
                    ));
                }
            }
            last_tx = tx;
            let meta = Meta { tx, node };
            let version = ex.current.state.version;
            let snap = (every > 0 && version % every == 0).then(|| Arc::clone(&ex.current.state));
            ex.push(body, meta, root, snap, &self.config);
            prev = node;
        }
        // A stored chain cut inside a commit ends unsealed; the current
        // state is still hashed, so `verify` and snapshots can check it.
        ex.current.seal();
        ex.compact();
        Ok(ex)
    }

    /// The current state.
    pub fn state(&self, id: &str) -> Result<Arc<ExecutionState>, StoreError> {
        Ok(Arc::clone(&self.get(id)?.read().current.state))
    }

    /// The current state with its root hash.
    pub fn state_with_root(&self, id: &str) -> Result<(Arc<ExecutionState>, Hash), StoreError> {
        let exec = self.get(id)?;
        let ex = exec.read();
        Ok((Arc::clone(&ex.current.state), ex.current.root()))
    }

    /// The state after `version` events.
    pub fn state_at_version(
        &self,
        id: &str,
        version: u64,
    ) -> Result<Arc<ExecutionState>, StoreError> {
        self.get(id)?.read().state_at(id, version)
    }

    /// The state as of transaction `tx`: the newest version with tx <= `tx`.
    pub fn state_at_tx(&self, id: &str, tx: u64) -> Result<Arc<ExecutionState>, StoreError> {
        let exec = self.get(id)?;
        let ex = exec.read();
        let out_of_range = |why: &str| StoreError::OutOfRange {
            execution_id: id.to_owned(),
            tx,
            message: format!("tx {tx} is {why} of execution {id:?}"),
        };
        if tx > self.last_tx() {
            return Err(out_of_range("after the newest tx"));
        }
        let k = ex.meta.partition_point(|m| m.tx <= tx);
        if k == 0 && (ex.base_version == 0 || tx < ex.base_tx) {
            return Err(out_of_range("before the first version"));
        }
        ex.state_at(id, ex.base_version + k as u64)
    }

    /// Current version (0 when unknown).
    pub fn version(&self, id: &str) -> u64 {
        self.execs.read().get(id).map_or(0, |e| e.read().version())
    }

    /// Current version and head node hash (zeros when unknown).
    pub fn head(&self, id: &str) -> (u64, Hash) {
        self.execs.read().get(id).map_or((0, [0u8; 32]), |e| {
            let ex = e.read();
            (ex.version(), ex.head())
        })
    }

    /// Per-version metadata of the stored versions.
    pub fn history(&self, id: &str) -> Result<Vec<VersionInfo>, StoreError> {
        let exec = self.get(id)?;
        let ex = exec.read();
        let mut roots = ex.roots.iter().peekable();
        Ok(ex
            .meta
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let version = ex.base_version + i as u64 + 1;
                let (kind, timestamp) = ex.kind_and_time(i);
                let state_root = roots.next_if(|r| r.0 == version).map(|r| r.1);
                VersionInfo {
                    version,
                    tx: m.tx,
                    timestamp,
                    kind,
                    hash: m.node,
                    state_root,
                }
            })
            .collect())
    }

    fn from_index(ex: &Execution, id: &str, from_version: u64) -> Result<usize, StoreError> {
        if from_version < ex.base_version || from_version > ex.version() {
            return Err(StoreError::OutOfRange {
                execution_id: id.to_owned(),
                tx: from_version,
                message: format!(
                    "version {from_version} of execution {id:?} is out of range {}..={}",
                    ex.base_version,
                    ex.version()
                ),
            });
        }
        Ok((from_version - ex.base_version) as usize)
    }

    /// Events after `from_version`.
    pub fn events(&self, id: &str, from_version: u64) -> Result<Vec<Event>, StoreError> {
        let exec = self.get(id)?;
        let ex = exec.read();
        let start = Self::from_index(&ex, id, from_version)?;
        (start..ex.meta.len())
            .map(|i| Event::decode(ex.event_bytes(i), 0, i).map_err(StoreError::from))
            .collect()
    }

    /// Framed history of the events after `from_version`.
    pub fn encoded_history(&self, id: &str, from_version: u64) -> Result<Vec<u8>, StoreError> {
        let exec = self.get(id)?;
        let ex = exec.read();
        let start = Self::from_index(&ex, id, from_version)?;
        let begin = ex.offsets.get(start).copied().unwrap_or(0);
        let n = ex.meta.len() - start;
        let mut out = Vec::with_capacity(ex.events.len() - begin + 4 * n);
        for i in start..ex.meta.len() {
            frame_into(ex.event_bytes(i), &mut out)?;
        }
        Ok(out)
    }

    /// Self-checking snapshot of the current state.
    pub fn snapshot(&self, id: &str) -> Result<Vec<u8>, StoreError> {
        let exec = self.get(id)?;
        let ex = exec.read();
        Ok(snapshot::encode(
            &ex.current.state,
            &ex.head(),
            &ex.current.root(),
            ex.revision,
        )?)
    }

    /// Recomputes every state root and node hash from the events.
    ///
    /// Long chains are split into ranges checked on separate threads. A range
    /// after the first starts from the state folded (without hashing) from
    /// the nearest in-memory snapshot, checks that state's root against the
    /// stored root of the version before the range, and chains from that
    /// version's stored node; the range before it checks that very root and
    /// node, so every link is still recomputed from the events. The first
    /// error in version order is reported, as a sequential check would.
    pub fn verify(&self, id: &str) -> Result<VerifyReport, StoreError> {
        let exec = self.get(id)?;
        let ex = exec.read();
        let ex: &Execution = &ex;
        let n = ex.meta.len();
        let threads = std::thread::available_parallelism().map_or(1, |p| p.get());
        let parts = threads
            .min(MAX_VERIFY_THREADS)
            .min(n / PARALLEL_VERIFY_MIN)
            .max(1);
        // A range starts at the base or at a sealed version (whose stored
        // root checks the state folded there): the newest sealed version at
        // or below each even split.
        let mut bounds: Vec<usize> = vec![0];
        for p in 1..parts {
            let target = ex.base_version + (n * p / parts) as u64;
            let k = ex.roots.partition_point(|(v, _)| *v <= target);
            if let Some(&(v, _)) = k.checked_sub(1).and_then(|k| ex.roots.get(k)) {
                let index = (v - ex.base_version) as usize;
                if bounds.last().is_some_and(|&last| index > last) {
                    bounds.push(index);
                }
            }
        }
        bounds.push(n);
        let results: Vec<Result<(Hash, Hash), StoreError>> = if bounds.len() <= 2 {
            vec![verify_range(ex, id, 0, n)]
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = bounds
                    .windows(2)
                    .map(|w| {
                        let (a, b) = (w[0], w[1]);
                        scope.spawn(move || verify_range(ex, id, a, b))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(integrity_error(id, 0, "verification thread panicked"))
                        })
                    })
                    .collect()
            })
        };
        let mut last = (HashedState::from_state(ex.base()).root(), ex.base_node);
        for result in results {
            last = result?;
        }
        let (root, head) = last;
        if root != ex.current.root() {
            return Err(StoreError::Integrity {
                execution_id: id.to_owned(),
                version: ex.version(),
                expected: Some(hex(&ex.current.root())),
                actual: Some(hex(&root)),
                message: format!("execution {id:?}: current state differs from the replay"),
            });
        }
        Ok(VerifyReport {
            execution_id: id.to_owned(),
            versions: ex.version(),
            head_hash: head,
        })
    }

    /// A proof that the event at `version` is part of the chain ending at the head.
    pub fn inclusion_proof(&self, id: &str, version: u64) -> Result<InclusionProof, StoreError> {
        let exec = self.get(id)?;
        let ex = exec.read();
        if version <= ex.base_version || version > ex.version() {
            return Err(StoreError::OutOfRange {
                execution_id: id.to_owned(),
                tx: version,
                message: format!(
                    "version {version} of execution {id:?} is not stored (stored: {}..={})",
                    ex.base_version + 1,
                    ex.version()
                ),
            });
        }
        let k = (version - ex.base_version - 1) as usize;
        let prev = if k == 0 {
            ex.base_node
        } else {
            ex.meta.get(k - 1).map_or([0u8; 32], |m| m.node)
        };
        let mut roots = ex.roots[ex.roots.partition_point(|r| r.0 < version)..]
            .iter()
            .peekable();
        let mut root_of = |v: u64| roots.next_if(|r| r.0 == v).map(|r| r.1);
        let state_root = root_of(version);
        let later = (k + 1..ex.meta.len())
            .map(|j| {
                let root = root_of(ex.base_version + j as u64 + 1);
                (root, *blake3::hash(ex.event_bytes(j)).as_bytes())
            })
            .collect();
        Ok(InclusionProof {
            revision: ex.revision,
            version,
            event: ex.event_bytes(k).to_vec(),
            prev_node: prev,
            state_root,
            later,
        })
    }

    /// Forgets an execution (its durable copy is the storage layer's business).
    pub fn evict(&self, id: &str) {
        self.execs.write().remove(id);
    }

    /// Whether the execution is held.
    pub fn contains(&self, id: &str) -> bool {
        self.execs.read().contains_key(id)
    }

    /// Ids of the executions held, sorted.
    pub fn execution_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.execs.read().keys().cloned().collect();
        ids.sort_unstable();
        ids
    }

    /// The newest tx handed out (or the floor set by `advance_tx`).
    pub fn last_tx(&self) -> u64 {
        self.tx.load(Ordering::SeqCst)
    }

    /// Raises the tx floor: later txs are above `tx`.
    ///
    /// A `tx` above [`MAX_SEQUENCE`] is refused (and the floor left alone):
    /// no tx could ever follow it.
    pub fn advance_tx(&self, tx: u64) -> Result<(), StoreError> {
        if tx > MAX_SEQUENCE {
            return Err(StoreError::TxLimit {
                execution_id: None,
                tx,
                message: format!("tx {tx} is above the largest tx {MAX_SEQUENCE}"),
            });
        }
        self.tx.fetch_max(tx, Ordering::SeqCst);
        Ok(())
    }

    /// Hands out `n` consecutive txs and returns the first, or `None` (and
    /// hands out nothing) when they would pass [`MAX_SEQUENCE`].
    fn draw_txs(&self, n: u64) -> Option<u64> {
        self.tx
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                t.checked_add(n).filter(|last| *last <= MAX_SEQUENCE)
            })
            .ok()
            .map(|before| before + 1)
    }

    /// Records the txs a durable store allocated when it committed versions
    /// `first_version ..= first_version + txs.len() - 1` of execution `id`.
    ///
    /// The txs must be strictly increasing and above the tx of the version
    /// before `first_version`. Versions after the range that are still
    /// provisional (applied here, not yet committed) and whose tx would no
    /// longer be above the assigned ones are renumbered from the store-wide
    /// counter, which is raised to the largest assigned tx first, so an
    /// execution's txs keep increasing with its versions. Node hashes do not
    /// cover txs, so nothing else changes. On error nothing changes.
    pub fn assign_txs(&self, id: &str, first_version: u64, txs: &[u64]) -> Result<(), StoreError> {
        let Some(&last_assigned) = txs.last() else {
            return Ok(());
        };
        let exec = self.get(id)?;
        let mut ex = exec.write();
        let refuse = |message: String| StoreError::OutOfRange {
            execution_id: id.to_owned(),
            tx: first_version,
            message,
        };
        let held = ex.version();
        let count = u64::try_from(txs.len()).map_err(|_| refuse("too many txs".to_owned()))?;
        let last_version = first_version
            .checked_add(count - 1)
            .ok_or_else(|| refuse(format!("version {first_version} + {count} txs overflows")))?;
        if first_version <= ex.base_version || last_version > held {
            return Err(refuse(format!(
                "versions {first_version}..={last_version} of execution {id:?} are not held \
                 (held: {}..={held})",
                ex.base_version.saturating_add(1)
            )));
        }
        let start = usize::try_from(first_version - ex.base_version - 1)
            .map_err(|_| refuse(format!("version {first_version} is out of reach")))?;
        let mut prev = match start.checked_sub(1) {
            None => ex.base_tx,
            Some(i) => ex.meta.get(i).map_or(ex.base_tx, |m| m.tx),
        };
        for &tx in txs {
            if tx <= prev {
                return Err(refuse(format!(
                    "tx {tx} does not follow tx {prev} in execution {id:?}"
                )));
            }
            prev = tx;
        }
        self.advance_tx(last_assigned)?;
        let end = start + txs.len();
        // Provisional versions after the range: renumber those that would
        // break the order, drawing fresh txs above everything assigned.
        let mut renumbered = Vec::new();
        let mut floor = last_assigned;
        for m in ex.meta.get(end..).unwrap_or(&[]) {
            if m.tx > floor {
                break;
            }
            let fresh = self.next_tx()?;
            renumbered.push(fresh);
            floor = fresh;
        }
        let ranges = ex.meta.get_mut(start..).unwrap_or(&mut []);
        for (m, &tx) in ranges.iter_mut().zip(txs.iter().chain(renumbered.iter())) {
            m.tx = tx;
        }
        let base_version = ex.base_version;
        let meta = std::mem::take(&mut ex.meta);
        for (version, state) in ex.snapshots.iter_mut() {
            let i = version
                .checked_sub(base_version)
                .and_then(|d| d.checked_sub(1))
                .and_then(|i| usize::try_from(i).ok());
            if let Some(m) = i.and_then(|i| meta.get(i)) {
                if state.tx != m.tx {
                    Arc::make_mut(state).tx = m.tx;
                }
            }
        }
        ex.meta = meta;
        if let Some(tx) = ex.meta.last().map(|m| m.tx) {
            if ex.current.state.tx != tx {
                Arc::make_mut(&mut ex.current.state).tx = tx;
            }
        }
        Ok(())
    }

    /// Draws the next tx from the counter, refusing to wrap around.
    fn next_tx(&self) -> Result<u64, StoreError> {
        let prev = self
            .tx
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| t.checked_add(1))
            .map_err(|t| StoreError::OutOfRange {
                execution_id: String::new(),
                tx: t,
                message: "the tx counter is exhausted".to_owned(),
            })?;
        Ok(prev + 1)
    }
}

/// Folds a history into a state without hashing.
pub fn replay(id: &str, history: &[u8]) -> Result<ExecutionState, StoreError> {
    let mut state = ExecutionState::new(id);
    for (index, frame) in frames(history).enumerate() {
        let (offset, body) = frame?;
        let event = EventRef::decode(body, offset + 4, index)?;
        state
            .apply_tracked(event, &mut Untracked)
            .map_err(|error| StoreError::Reduce { index, error })?;
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Timer `k` scheduled (`fired` false) or fired.
    fn timer(k: u64, fired: bool) -> Event {
        let (kind, data) = if fired {
            (EventKind::TimerFired, "{}".to_owned())
        } else {
            (EventKind::TimerScheduled, format!(r#"{{"fire_at":{k}}}"#))
        };
        Event::new(kind, format!("0/{k}"), 0, data.as_bytes(), k as i64).unwrap()
    }

    fn started(store: &VersionStore) {
        let start = Event::new(
            EventKind::WorkflowStarted,
            "",
            0,
            br#"{"workflow_id":"wf","workflow_version":"1","inputs":{}}"#,
            0,
        )
        .unwrap();
        store.append_batch("x", 0, &[start]).unwrap();
    }

    /// `(len, capacity)` of the execution's events, offsets, meta and roots.
    fn buffers(store: &VersionStore, id: &str) -> [(usize, usize); 4] {
        let execs = store.execs.read();
        let ex = execs.get(id).unwrap().read();
        [
            (ex.events.len(), ex.events.capacity()),
            (ex.offsets.len(), ex.offsets.capacity()),
            (ex.meta.len(), ex.meta.capacity()),
            (ex.roots.len(), ex.roots.capacity()),
        ]
    }

    #[test]
    fn a_small_execution_keeps_no_spare_capacity_after_any_commit() {
        let store = VersionStore::default();
        started(&store);
        let mut v = 1;
        // Commits of two events and of one, as a running workflow makes them.
        for k in 0.. {
            let batches = if k % 2 == 0 {
                vec![vec![timer(k, false), timer(k, true)]]
            } else {
                vec![vec![timer(k, false)], vec![timer(k, true)]]
            };
            for batch in batches {
                if v + batch.len() > SMALL {
                    return;
                }
                store.append_batch("x", v as u64, &batch).unwrap();
                v += batch.len();
                for (len, cap) in buffers(&store, "x") {
                    assert_eq!(len, cap, "at version {v}: {:?}", buffers(&store, "x"));
                }
            }
        }
    }

    #[test]
    fn a_large_execution_grows_its_buffers_by_doubling() {
        let store = VersionStore::default();
        started(&store);
        let mut grew = 0;
        let mut last = buffers(&store, "x")[2].1;
        for k in 0..1_000u64 {
            for fired in [false, true] {
                store
                    .append_batch("x", 1 + 2 * k + u64::from(fired), &[timer(k, fired)])
                    .unwrap();
                let cap = buffers(&store, "x")[2].1;
                grew += usize::from(cap != last);
                last = cap;
            }
        }
        // Exact while small (SMALL steps), then doubling: a few more. Exact
        // growth all along would reallocate at every one of the 2,000 commits.
        assert!(
            grew < SMALL + 12,
            "meta reallocated {grew} times in 2,000 commits"
        );
    }
}
