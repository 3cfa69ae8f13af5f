//! The execution state and the one reducer that folds events into it.
//!
//! `apply` validates an event completely before it mutates anything, so a
//! rejected event leaves the state exactly as it was. Payloads the reducer
//! does not interpret are kept as raw canonical JSON (`Box<RawValue>`).
//!
//! Every entry of the state (the header, each step, timer, wait, signal name
//! and compensation) owns a *slot*, handed out in first-insertion order. The
//! header is slot 0 and is hashed on its own; slot `s >= 1` is leaf `s - 1`
//! of the Merkle tree over the other entries, and the state root combines
//! the two (see [`crate::merkle::state_root_hash`]). Entries are never removed from
//! the maps (a fired timer or a closed wait stays as a tombstone and is hidden
//! from the public JSON) so slots, and map order, are stable.

use std::fmt;
use std::sync::Arc;

use indexmap::IndexMap;
use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::event::{Event, EventKind, EventRef};
use crate::merkle::{leaf_hash_prefixed, state_root_hash, Hash, MerkleTree};
use crate::store::MAX_SEQUENCE;

/// Raw canonical JSON.
pub type Json = Box<RawValue>;

/// A key of the state's maps (step path, signal name, ...). Shared, so
/// copying a state for a snapshot or a reader copies no key bytes.
pub type Key = Arc<str>;

/// The hasher of the state's maps: aHash, keyed once per process from the
/// operating system's randomness (map keys come from outside: step paths,
/// signal names), but zero-sized, so a map does not carry its own keys;
/// states are many and mostly small. SipHash, std's default, cost a fifth of
/// a replay's time on short step paths.
#[derive(Clone, Copy, Debug, Default)]
pub struct KeyHasher;

impl std::hash::BuildHasher for KeyHasher {
    type Hasher = ahash::AHasher;

    fn build_hasher(&self) -> Self::Hasher {
        static KEYS: std::sync::OnceLock<ahash::RandomState> = std::sync::OnceLock::new();
        KEYS.get_or_init(ahash::RandomState::new).build_hasher()
    }
}

/// A map of the state: insertion-ordered, keyed by [`Key`].
pub type StateMap<V> = IndexMap<Key, V, KeyHasher>;

/// Workflow status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
    TimedOut,
    Compensated,
}

impl Status {
    /// The snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::TimedOut => "timed_out",
            Status::Compensated => "compensated",
        }
    }

    /// Whether the workflow has ended.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Status::Pending | Status::Running)
    }
}

/// Status of one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Scheduled,
    Running,
    Retrying,
    Waiting,
    Completed,
    Failed,
    Cancelled,
    Compensated,
}

impl StepStatus {
    /// Whether the step has ended.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            StepStatus::Completed
                | StepStatus::Failed
                | StepStatus::Cancelled
                | StepStatus::Compensated
        )
    }

    /// The snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            StepStatus::Scheduled => "scheduled",
            StepStatus::Running => "running",
            StepStatus::Retrying => "retrying",
            StepStatus::Waiting => "waiting",
            StepStatus::Completed => "completed",
            StepStatus::Failed => "failed",
            StepStatus::Cancelled => "cancelled",
            StepStatus::Compensated => "compensated",
        }
    }
}

/// One step of the strategy tree.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepState {
    pub status: StepStatus,
    pub attempts: u32,
    pub activity: Option<String>,
    pub input: Option<Json>,
    pub result: Option<Json>,
    pub error: Option<Json>,
    pub retry_at: Option<i64>,
    pub started_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub completed_version: Option<u64>,
    pub branch: Option<Json>,
    pub child_execution_id: Option<String>,
    #[serde(skip)]
    pub slot: u32,
}

impl StepState {
    fn new(status: StepStatus, slot: u32) -> Self {
        StepState {
            status,
            attempts: 0,
            activity: None,
            input: None,
            result: None,
            error: None,
            retry_at: None,
            started_at: None,
            completed_at: None,
            completed_version: None,
            branch: None,
            child_execution_id: None,
            slot,
        }
    }
}

/// Status of a saga's compensation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompensationStatus {
    Running,
    Completed,
    Failed,
}

/// The compensation of one saga.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Compensation {
    pub status: CompensationStatus,
    pub error: Option<Json>,
    pub compensated: Vec<String>,
    #[serde(skip)]
    pub slot: u32,
}

/// A value with its Merkle slot; `None` is a tombstone (fired timer, closed
/// wait) that keeps its slot but is hidden from the public state.
#[derive(Clone, Debug)]
pub struct Slotted<T> {
    pub value: Option<T>,
    pub slot: u32,
}

/// The payloads received under one signal name and how many were consumed.
///
/// `chain` is a running hash over the payloads, so a new signal re-hashes
/// its leaf in O(1) however many payloads the name already holds.
#[derive(Clone, Debug)]
pub struct SignalQueue {
    pub payloads: Vec<Json>,
    pub cursor: u64,
    pub chain: Hash,
    pub slot: u32,
}

impl SignalQueue {
    /// An empty queue at `slot`.
    pub fn new(slot: u32) -> Self {
        SignalQueue {
            payloads: Vec::new(),
            cursor: 0,
            chain: [0u8; 32],
            slot,
        }
    }

    /// Appends a payload and extends the running hash.
    pub fn push(&mut self, payload: Json) {
        let mut h = blake3::Hasher::new();
        h.update(&self.chain);
        h.update(&(payload.get().len() as u64).to_le_bytes());
        h.update(payload.get().as_bytes());
        self.chain = *h.finalize().as_bytes();
        self.payloads.push(payload);
    }
}

/// Which category of state entry a slot belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Category {
    Header = 0,
    Step = 1,
    Timer = 2,
    Wait = 3,
    Signal = 4,
    Compensation = 5,
}

impl Category {
    pub(crate) fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Category::Header,
            1 => Category::Step,
            2 => Category::Timer,
            3 => Category::Wait,
            4 => Category::Signal,
            5 => Category::Compensation,
            _ => return None,
        })
    }
}

/// The state of one execution: a pure fold of its events.
#[derive(Clone, Debug)]
pub struct ExecutionState {
    pub execution_id: String,
    pub workflow_id: Option<String>,
    pub workflow_version: Option<Json>,
    pub definition_hash: Option<String>,
    pub inputs: Option<Json>,
    pub parent: Option<Json>,
    pub created_at: Option<i64>,
    pub updated_at: Option<i64>,
    pub version: u64,
    /// Tx of the newest version; set by the store, not by the reducer, and
    /// not part of the state root.
    pub tx: u64,
    pub status: Status,
    pub outputs: Option<Json>,
    pub error: Option<Json>,
    /// Step records are shared between versions (snapshots, readers) and
    /// copied only when an event changes them.
    pub steps: StateMap<Arc<StepState>>,
    pub timers: StateMap<Slotted<i64>>,
    pub waits: StateMap<Slotted<Json>>,
    pub signals: StateMap<SignalQueue>,
    pub compensations: StateMap<Compensation>,
    /// Number of Merkle slots handed out (slot 0 is the header).
    pub(crate) next_slot: u32,
    /// Hash of the header fields fixed by `workflow_started`.
    pub(crate) header_static: Hash,
}

/// A reducer rule violation; the state was not changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReduceError {
    pub kind: EventKind,
    pub step: String,
    pub message: String,
}

impl fmt::Display for ReduceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.step.is_empty() {
            write!(f, "{} rejected: {}", self.kind, self.message)
        } else {
            write!(
                f,
                "{} at step {:?} rejected: {}",
                self.kind, self.step, self.message
            )
        }
    }
}

impl std::error::Error for ReduceError {}

/// Entries of the state changed by one event, as `(category, map index)`.
///
/// An event touches at most a handful of entries, so they are kept inline.
#[derive(Clone, Debug)]
pub struct Touched {
    inline: [(Category, usize); 6],
    len: usize,
    more: Vec<(Category, usize)>,
}

impl Default for Touched {
    fn default() -> Self {
        Self::new()
    }
}

impl Touched {
    /// No entries.
    pub fn new() -> Self {
        Touched {
            inline: [(Category::Header, 0); 6],
            len: 0,
            more: Vec::new(),
        }
    }

    /// Records one entry.
    pub fn push(&mut self, entry: (Category, usize)) {
        if self.len < self.inline.len() {
            self.inline[self.len] = entry;
            self.len += 1;
        } else {
            self.more.push(entry);
        }
    }

    /// Number of entries recorded.
    pub fn len(&self) -> usize {
        self.len + self.more.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets the entries, so one `Touched` serves a whole fold.
    pub fn clear(&mut self) {
        self.len = 0;
        self.more.clear();
    }

    /// The entries, in the order recorded.
    pub fn iter(&self) -> impl Iterator<Item = &(Category, usize)> {
        self.inline[..self.len].iter().chain(self.more.iter())
    }
}

/// Where the reducer reports the entries an event changes: a [`Touched`]
/// when the changed leaves are hashed, [`Untracked`] for a fold that needs
/// only the state (replay, a state as of a tx), whose reports compile away.
pub trait Track {
    /// Records one changed entry.
    fn push(&mut self, entry: (Category, usize));
}

impl Track for Touched {
    #[inline]
    fn push(&mut self, entry: (Category, usize)) {
        Touched::push(self, entry);
    }
}

/// Records nothing (see [`Track`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct Untracked;

impl Track for Untracked {
    #[inline]
    fn push(&mut self, _: (Category, usize)) {}
}

thread_local! {
    /// Scratch buffer of leaf contents, so hashing a leaf allocates nothing.
    static LEAF_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Hashes the leaf whose content `fill` writes (after the `0x00` leaf tag).
fn hash_leaf_with(fill: impl FnOnce(&mut Vec<u8>)) -> Hash {
    let run = |buf: &mut Vec<u8>| {
        buf.clear();
        buf.push(0x00);
        fill(buf);
        let hash = leaf_hash_prefixed(buf);
        if buf.capacity() > 1 << 16 {
            *buf = Vec::new();
        }
        hash
    };
    LEAF_BUF.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => run(&mut buf),
        Err(_) => run(&mut Vec::new()),
    })
}

fn raw(value: &RawValue) -> Json {
    value.to_owned()
}

fn is_null(value: Option<&RawValue>) -> bool {
    value.is_none_or(|v| v.get() == "null")
}

fn opt_raw(value: Option<&RawValue>) -> Option<Json> {
    match value {
        Some(v) if v.get() != "null" => Some(raw(v)),
        _ => None,
    }
}

#[derive(Deserialize)]
struct Started<'a> {
    workflow_id: String,
    #[serde(borrow, default)]
    workflow_version: Option<&'a RawValue>,
    #[serde(default)]
    definition_hash: Option<String>,
    #[serde(borrow, default)]
    inputs: Option<&'a RawValue>,
    #[serde(borrow, default)]
    parent: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Outputs<'a> {
    #[serde(borrow, default)]
    outputs: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ErrorData<'a> {
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Reason<'a> {
    #[serde(borrow, default)]
    reason: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Scheduled<'a> {
    activity: String,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ResultData<'a> {
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Retry<'a> {
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
    retry_at: i64,
}

#[derive(Deserialize)]
struct Decision<'a> {
    #[serde(borrow, default)]
    branch: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct FireAt {
    fire_at: i64,
}

#[derive(Deserialize)]
struct Signal<'a> {
    name: String,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ChildStarted {
    child_execution_id: String,
}

#[derive(Deserialize)]
struct ChildEnded<'a> {
    child_execution_id: String,
    #[serde(borrow, default)]
    outputs: Option<&'a RawValue>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct CompStep<'a> {
    saga: String,
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct EngineErrorData {
    error: serde_json::Value,
}

#[derive(Deserialize)]
struct SnapshotData {
    version: u64,
}

#[derive(Deserialize)]
struct StepDone<'a> {
    #[serde(borrow, default)]
    output: Option<&'a RawValue>,
    #[serde(default)]
    consume_signal: Option<String>,
}

#[derive(Deserialize)]
struct WaitData {
    kind: String,
}

const NULL_JSON: &str = "null";

impl ExecutionState {
    /// The empty (`pending`) state of an execution.
    pub fn new(execution_id: impl Into<String>) -> Self {
        ExecutionState {
            execution_id: execution_id.into(),
            workflow_id: None,
            workflow_version: None,
            definition_hash: None,
            inputs: None,
            parent: None,
            created_at: None,
            updated_at: None,
            version: 0,
            tx: 0,
            status: Status::Pending,
            outputs: None,
            error: None,
            steps: StateMap::default(),
            timers: StateMap::default(),
            waits: StateMap::default(),
            signals: StateMap::default(),
            compensations: StateMap::default(),
            next_slot: 1,
            header_static: [0u8; 32],
        }
    }

    /// Releases the spare capacity of every map holding at most `small`
    /// entries (idle executions are many and mostly small).
    pub fn compact(&mut self, small: usize) {
        if self.steps.len() <= small {
            self.steps.shrink_to_fit();
        }
        if self.timers.len() <= small {
            self.timers.shrink_to_fit();
        }
        if self.waits.len() <= small {
            self.waits.shrink_to_fit();
        }
        if self.signals.len() <= small {
            self.signals.shrink_to_fit();
        }
        if self.compensations.len() <= small {
            self.compensations.shrink_to_fit();
        }
    }

    /// Applies one event (see [`apply`]).
    pub fn apply(&mut self, event: &Event) -> Result<(), ReduceError> {
        self.apply_ref(event.view())
    }

    /// Applies one borrowed event (see [`apply`]).
    pub fn apply_ref(&mut self, event: EventRef<'_>) -> Result<(), ReduceError> {
        self.apply_tracked(event, &mut Untracked)
    }

    /// Applies one event and records which entries changed (the header
    /// always changes and is not listed).
    pub fn apply_tracked<T: Track>(
        &mut self,
        event: EventRef<'_>,
        touched: &mut T,
    ) -> Result<(), ReduceError> {
        let reject = |message: String| ReduceError {
            kind: event.kind,
            step: event.step.to_owned(),
            message,
        };
        let kind = event.kind;
        // A state restored from a snapshot carries a version from outside;
        // refusing here keeps every `version + 1` below from overflowing.
        if self.version >= MAX_SEQUENCE {
            return Err(reject(format!(
                "the execution is at version {}, the largest there can be",
                self.version
            )));
        }
        if self.status == Status::Pending && kind != EventKind::WorkflowStarted {
            return Err(reject("the first event must be workflow_started".into()));
        }
        if kind == EventKind::WorkflowStarted && self.status != Status::Pending {
            return Err(reject("workflow_started may appear only once".into()));
        }
        if self.status.is_terminal() && kind != EventKind::SnapshotTaken {
            return Err(reject(format!(
                "the workflow already ended ({}); only snapshot_taken may follow",
                self.status.name()
            )));
        }
        let workflow_level = matches!(
            kind,
            EventKind::WorkflowStarted
                | EventKind::WorkflowCompleted
                | EventKind::WorkflowFailed
                | EventKind::WorkflowCancelled
                | EventKind::WorkflowTimedOut
                | EventKind::WorkflowCompensated
                | EventKind::SignalReceived
                | EventKind::SnapshotTaken
                | EventKind::EngineError
        );
        if workflow_level {
            if !event.step.is_empty() {
                return Err(reject(
                    "step must be \"\" for a workflow-level event".into(),
                ));
            }
        } else {
            check_path(event.step).map_err(reject)?;
        }
        self.reduce(event, touched).map_err(reject)?;
        self.version += 1;
        self.updated_at = Some(event.timestamp);
        Ok(())
    }

    fn parse<'a, T: Deserialize<'a>>(event: EventRef<'a>) -> Result<T, String> {
        serde_json::from_str(event.data)
            .map_err(|e| format!("invalid data for {}: {e}", event.kind))
    }

    fn alloc_slot(&mut self) -> u32 {
        let slot = self.next_slot;
        self.next_slot += 1;
        slot
    }

    /// Index of the step at `path`, creating it (with `status`) if absent.
    fn step_entry<T: Track>(&mut self, path: &str, status: StepStatus, touched: &mut T) -> usize {
        let index = match self.steps.get_index_of(path) {
            Some(i) => i,
            None => {
                let slot = self.alloc_slot();
                self.steps
                    .insert_full(Key::from(path), Arc::new(StepState::new(status, slot)))
                    .0
            }
        };
        touched.push((Category::Step, index));
        index
    }

    fn open_step(&self, path: &str) -> Result<Option<&StepState>, String> {
        match self.steps.get(path) {
            Some(s) if s.status.is_terminal() => {
                Err(format!("step is already {}", s.status.name()))
            }
            other => Ok(other.map(|s| &**s)),
        }
    }

    fn expect_step(&self, path: &str, allowed: &[StepStatus]) -> Result<&StepState, String> {
        let step = self
            .steps
            .get(path)
            .ok_or_else(|| "no such step".to_owned())?;
        if !allowed.contains(&step.status) {
            let names: Vec<&str> = allowed.iter().map(|s| s.name()).collect();
            return Err(format!(
                "step is {}, expected {}",
                step.status.name(),
                names.join(" or ")
            ));
        }
        Ok(step)
    }

    fn close_wait<T: Track>(&mut self, path: &str, touched: &mut T) {
        if let Some((i, _, wait)) = self.waits.get_full_mut(path) {
            if wait.value.is_some() {
                wait.value = None;
                touched.push((Category::Wait, i));
            }
        }
    }

    fn reduce<T: Track>(&mut self, ev: EventRef<'_>, touched: &mut T) -> Result<(), String> {
        use StepStatus as S;
        let path = ev.step;
        let ts = ev.timestamp;
        match ev.kind {
            EventKind::WorkflowStarted => {
                let d: Started = Self::parse(ev)?;
                self.workflow_id = Some(d.workflow_id);
                self.workflow_version = opt_raw(d.workflow_version);
                self.definition_hash = d.definition_hash;
                self.inputs = opt_raw(d.inputs);
                self.parent = opt_raw(d.parent);
                self.created_at = Some(ts);
                self.status = Status::Running;
                self.header_static = self.compute_header_static();
            }
            EventKind::WorkflowCompleted => {
                let d: Outputs = Self::parse(ev)?;
                self.outputs = opt_raw(d.outputs);
                self.status = Status::Completed;
            }
            EventKind::WorkflowFailed
            | EventKind::WorkflowTimedOut
            | EventKind::WorkflowCompensated => {
                let d: ErrorData = Self::parse(ev)?;
                self.error = opt_raw(d.error);
                self.status = match ev.kind {
                    EventKind::WorkflowFailed => Status::Failed,
                    EventKind::WorkflowTimedOut => Status::TimedOut,
                    _ => Status::Compensated,
                };
            }
            EventKind::WorkflowCancelled => {
                let d: Reason = Self::parse(ev)?;
                let reason = d.reason.map_or(NULL_JSON, RawValue::get);
                let text = format!(r#"{{"reason":{reason},"type":"cancelled"}}"#);
                self.error = RawValue::from_string(text).ok();
                self.status = Status::Cancelled;
            }
            EventKind::ActivityScheduled => {
                let d: Scheduled = Self::parse(ev)?;
                if ev.attempt == 0 {
                    return Err("attempt must be at least 1".into());
                }
                if let Some(step) = self.steps.get(path) {
                    if step.status != S::Retrying {
                        return Err(format!(
                            "step is {}, an activity may be scheduled again only when retrying",
                            step.status.name()
                        ));
                    }
                    if ev.attempt <= step.attempts {
                        return Err(format!(
                            "attempt {} does not follow attempt {}",
                            ev.attempt, step.attempts
                        ));
                    }
                }
                let i = self.step_entry(path, S::Scheduled, touched);
                let step = Arc::make_mut(&mut self.steps[i]);
                step.status = S::Scheduled;
                step.attempts = ev.attempt;
                step.activity = Some(d.activity);
                step.input = opt_raw(d.input);
                step.retry_at = None;
                step.started_at.get_or_insert(ts);
            }
            EventKind::ActivityStarted => {
                let step = self.expect_step(path, &[S::Scheduled])?;
                if ev.attempt != 0 && ev.attempt != step.attempts {
                    return Err(format!(
                        "attempt {} is not the scheduled attempt {}",
                        ev.attempt, step.attempts
                    ));
                }
                let i = self.step_entry(path, S::Running, touched);
                Arc::make_mut(&mut self.steps[i]).status = S::Running;
            }
            EventKind::ActivityCompleted => {
                let d: ResultData = Self::parse(ev)?;
                self.expect_step(path, &[S::Scheduled, S::Running])?;
                let version = self.version + 1;
                let i = self.step_entry(path, S::Completed, touched);
                let step = Arc::make_mut(&mut self.steps[i]);
                step.status = S::Completed;
                step.result = opt_raw(d.result);
                step.completed_at = Some(ts);
                step.completed_version = Some(version);
            }
            EventKind::ActivityFailed => {
                let d: ErrorData = Self::parse(ev)?;
                self.expect_step(path, &[S::Scheduled, S::Running, S::Retrying])?;
                let version = self.version + 1;
                let i = self.step_entry(path, S::Failed, touched);
                let step = Arc::make_mut(&mut self.steps[i]);
                step.status = S::Failed;
                step.error = opt_raw(d.error);
                step.completed_at = Some(ts);
                step.completed_version = Some(version);
            }
            EventKind::ActivityRetryScheduled => {
                let d: Retry = Self::parse(ev)?;
                self.expect_step(path, &[S::Scheduled, S::Running])?;
                let i = self.step_entry(path, S::Retrying, touched);
                let step = Arc::make_mut(&mut self.steps[i]);
                step.status = S::Retrying;
                step.error = opt_raw(d.error);
                step.retry_at = Some(d.retry_at);
            }
            EventKind::DecisionMade => {
                let d: Decision = Self::parse(ev)?;
                if let Some(step) = self.open_step(path)? {
                    if step.branch.is_some() {
                        return Err("a branch was already decided".into());
                    }
                }
                let branch = d.branch.map_or_else(
                    || RawValue::from_string(NULL_JSON.to_owned()).ok(),
                    |b| Some(raw(b)),
                );
                let i = self.step_entry(path, S::Running, touched);
                let step = Arc::make_mut(&mut self.steps[i]);
                step.branch = branch;
                step.started_at.get_or_insert(ts);
            }
            EventKind::TimerScheduled => {
                let d: FireAt = Self::parse(ev)?;
                let existing = self.timers.get_index_of(path);
                if existing.is_some_and(|i| self.timers[i].value.is_some()) {
                    return Err("a timer is already pending for this step".into());
                }
                let index = match existing {
                    Some(i) => i,
                    None => {
                        let slot = self.alloc_slot();
                        let entry = Slotted { value: None, slot };
                        self.timers.insert_full(Key::from(path), entry).0
                    }
                };
                self.timers[index].value = Some(d.fire_at);
                touched.push((Category::Timer, index));
            }
            EventKind::TimerFired | EventKind::TimerCancelled => {
                let (i, _, timer) = self
                    .timers
                    .get_full_mut(path)
                    .filter(|(_, _, t)| t.value.is_some())
                    .ok_or_else(|| "no pending timer for this step".to_owned())?;
                timer.value = None;
                touched.push((Category::Timer, i));
            }
            EventKind::SignalReceived => {
                let d: Signal = Self::parse(ev)?;
                let payload = d
                    .payload
                    .map_or_else(
                        || RawValue::from_string(NULL_JSON.to_owned()),
                        |p| Ok(raw(p)),
                    )
                    .map_err(|e| e.to_string())?;
                let index = match self.signals.get_index_of(d.name.as_str()) {
                    Some(i) => i,
                    None => {
                        let slot = self.alloc_slot();
                        self.signals
                            .insert_full(Key::from(d.name), SignalQueue::new(slot))
                            .0
                    }
                };
                self.signals[index].push(payload);
                touched.push((Category::Signal, index));
            }
            EventKind::ExternalEventReceived => {
                let open = self.waits.get(path).is_some_and(|w| w.value.is_some());
                if !open {
                    return Err("no open wait for this step".into());
                }
                self.close_wait(path, touched);
            }
            EventKind::WaitStarted => {
                let d: WaitData = Self::parse(ev)?;
                let wait_data: &RawValue = Self::parse(ev)?;
                if !matches!(d.kind.as_str(), "signal" | "event" | "timer") {
                    return Err(format!(
                        "wait kind must be signal, event or timer, not {:?}",
                        d.kind
                    ));
                }
                self.open_step(path)?;
                if self.waits.get(path).is_some_and(|w| w.value.is_some()) {
                    return Err("a wait is already open for this step".into());
                }
                let index = match self.waits.get_index_of(path) {
                    Some(i) => i,
                    None => {
                        let slot = self.alloc_slot();
                        let entry = Slotted { value: None, slot };
                        self.waits.insert_full(Key::from(path), entry).0
                    }
                };
                self.waits[index].value = Some(raw(wait_data));
                touched.push((Category::Wait, index));
                let i = self.step_entry(path, S::Waiting, touched);
                let step = Arc::make_mut(&mut self.steps[i]);
                step.status = S::Waiting;
                step.started_at.get_or_insert(ts);
            }
            EventKind::ChildWorkflowStarted => {
                let d: ChildStarted = Self::parse(ev)?;
                if let Some(step) = self.open_step(path)? {
                    if step.child_execution_id.is_some() {
                        return Err("a child workflow was already started here".into());
                    }
                }
                let i = self.step_entry(path, S::Running, touched);
                let step = Arc::make_mut(&mut self.steps[i]);
                step.status = S::Running;
                step.child_execution_id = Some(d.child_execution_id);
                step.started_at.get_or_insert(ts);
            }
            EventKind::ChildWorkflowCompleted | EventKind::ChildWorkflowFailed => {
                let d: ChildEnded = Self::parse(ev)?;
                let step = self.expect_step(path, &[S::Running])?;
                if step.child_execution_id.as_deref() != Some(d.child_execution_id.as_str()) {
                    return Err(format!(
                        "child execution {:?} was not started at this step",
                        d.child_execution_id
                    ));
                }
                let version = self.version + 1;
                let i = self.step_entry(path, S::Running, touched);
                let step = Arc::make_mut(&mut self.steps[i]);
                if ev.kind == EventKind::ChildWorkflowCompleted {
                    step.status = S::Completed;
                    step.result = opt_raw(d.outputs);
                } else {
                    step.status = S::Failed;
                    step.error = opt_raw(d.error);
                }
                step.completed_at = Some(ts);
                step.completed_version = Some(version);
            }
            EventKind::CompensationStarted => {
                let d: ErrorData = Self::parse(ev)?;
                if self.compensations.contains_key(path) {
                    return Err("compensation already started for this saga".into());
                }
                let slot = self.alloc_slot();
                let comp = Compensation {
                    status: CompensationStatus::Running,
                    error: opt_raw(d.error),
                    compensated: Vec::new(),
                    slot,
                };
                let i = self.compensations.insert_full(Key::from(path), comp).0;
                touched.push((Category::Compensation, i));
            }
            EventKind::CompensationStepCompleted => {
                let d: CompStep = Self::parse(ev)?;
                let saga_running = self
                    .compensations
                    .get(d.saga.as_str())
                    .is_some_and(|c| c.status == CompensationStatus::Running);
                if !saga_running {
                    return Err(format!("saga {:?} is not compensating", d.saga));
                }
                self.expect_step(path, &[S::Completed])?;
                let Some((ci, _, comp)) = self.compensations.get_full_mut(d.saga.as_str()) else {
                    return Err(format!("saga {:?} is not compensating", d.saga));
                };
                comp.compensated.push(path.to_owned());
                touched.push((Category::Compensation, ci));
                let i = self.step_entry(path, S::Compensated, touched);
                let step = Arc::make_mut(&mut self.steps[i]);
                step.status = S::Compensated;
                if !is_null(d.result) {
                    step.result = opt_raw(d.result);
                }
            }
            EventKind::CompensationCompleted | EventKind::CompensationFailed => {
                let error = if ev.kind == EventKind::CompensationFailed {
                    let d: ErrorData = Self::parse(ev)?;
                    opt_raw(d.error)
                } else {
                    None
                };
                let (i, _, comp) = self
                    .compensations
                    .get_full_mut(path)
                    .filter(|(_, _, c)| c.status == CompensationStatus::Running)
                    .ok_or_else(|| "no running compensation for this saga".to_owned())?;
                if ev.kind == EventKind::CompensationFailed {
                    comp.status = CompensationStatus::Failed;
                    comp.error = error;
                } else {
                    comp.status = CompensationStatus::Completed;
                }
                touched.push((Category::Compensation, i));
            }
            EventKind::EngineError => {
                // A record for people and for the engine's retry policy; the
                // state itself does not change (the version does).
                let d: EngineErrorData = Self::parse(ev)?;
                if !d.error.is_object() {
                    return Err("engine_error needs an error object".into());
                }
            }
            EventKind::SnapshotTaken => {
                let d: SnapshotData = Self::parse(ev)?;
                if d.version > self.version {
                    return Err(format!(
                        "snapshot of version {} is ahead of version {}",
                        d.version, self.version
                    ));
                }
            }
            EventKind::StepStarted => {
                if self.steps.contains_key(path) {
                    return Err("step already started".into());
                }
                let i = self.step_entry(path, S::Running, touched);
                Arc::make_mut(&mut self.steps[i]).started_at = Some(ts);
            }
            EventKind::StepCompleted => {
                let d: StepDone = Self::parse(ev)?;
                self.open_step(path)?;
                if let Some(name) = &d.consume_signal {
                    let available = self
                        .signals
                        .get(name.as_str())
                        .is_some_and(|q| q.cursor < q.payloads.len() as u64);
                    if !available {
                        return Err(format!("no unconsumed signal {name:?} to consume"));
                    }
                }
                if let Some(name) = &d.consume_signal {
                    if let Some((si, _, q)) = self.signals.get_full_mut(name.as_str()) {
                        q.cursor += 1;
                        touched.push((Category::Signal, si));
                    }
                }
                self.close_wait(path, touched);
                let version = self.version + 1;
                let i = self.step_entry(path, S::Completed, touched);
                let step = Arc::make_mut(&mut self.steps[i]);
                step.status = S::Completed;
                step.result = opt_raw(d.output);
                step.completed_at = Some(ts);
                step.completed_version = Some(version);
            }
            EventKind::StepFailed | EventKind::StepCancelled => {
                let error = if ev.kind == EventKind::StepFailed {
                    let d: ErrorData = Self::parse(ev)?;
                    opt_raw(d.error)
                } else {
                    let d: Reason = Self::parse(ev)?;
                    let reason = d.reason.map_or(NULL_JSON, RawValue::get);
                    RawValue::from_string(format!(r#"{{"reason":{reason},"type":"cancelled"}}"#))
                        .ok()
                };
                self.open_step(path)?;
                self.close_wait(path, touched);
                let version = self.version + 1;
                let status = if ev.kind == EventKind::StepFailed {
                    S::Failed
                } else {
                    S::Cancelled
                };
                let i = self.step_entry(path, status, touched);
                let step = Arc::make_mut(&mut self.steps[i]);
                step.status = status;
                step.error = error;
                step.completed_at = Some(ts);
                step.completed_version = Some(version);
            }
        }
        Ok(())
    }

    pub(crate) fn compute_header_static(&self) -> Hash {
        #[derive(Serialize)]
        struct Static<'a> {
            execution_id: &'a str,
            workflow_id: &'a Option<String>,
            workflow_version: &'a Option<Json>,
            definition_hash: &'a Option<String>,
            inputs: &'a Option<Json>,
            parent: &'a Option<Json>,
            created_at: Option<i64>,
        }
        let mut h = blake3::Hasher::new();
        let fields = Static {
            execution_id: &self.execution_id,
            workflow_id: &self.workflow_id,
            workflow_version: &self.workflow_version,
            definition_hash: &self.definition_hash,
            inputs: &self.inputs,
            parent: &self.parent,
            created_at: self.created_at,
        };
        // Serialising plain strings, integers and raw JSON into a hasher
        // cannot fail; a failure would only weaken the hash, never panic.
        let _ = serde_json::to_writer(&mut h, &fields);
        *h.finalize().as_bytes()
    }

    /// The leaf hash of the header entry (slot 0).
    pub fn header_leaf(&self) -> Hash {
        hash_leaf_with(|buf| {
            buf.push(Category::Header as u8);
            buf.extend_from_slice(&self.header_static);
            buf.push(self.status as u8);
            buf.extend_from_slice(&self.version.to_le_bytes());
            buf.extend_from_slice(&self.updated_at.unwrap_or(i64::MIN).to_le_bytes());
            for part in [&self.outputs, &self.error] {
                let text = part.as_ref().map_or(NULL_JSON, |j| j.get());
                buf.extend_from_slice(&(text.len() as u64).to_le_bytes());
                buf.extend_from_slice(text.as_bytes());
            }
        })
    }

    /// `(slot, leaf hash)` of the entry at `index` of `category`.
    pub fn entry_leaf(&self, category: Category, index: usize) -> Option<(u32, Hash)> {
        fn leaf<T: Serialize + ?Sized>(category: Category, key: &str, value: &T) -> Hash {
            hash_leaf_with(|content| {
                content.push(category as u8);
                content.extend_from_slice(&(key.len() as u64).to_le_bytes());
                content.extend_from_slice(key.as_bytes());
                // Serialising the state's own types into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut *content, value);
            })
        }
        Some(match category {
            Category::Header => (0, self.header_leaf()),
            Category::Step => {
                let (k, v) = self.steps.get_index(index)?;
                (v.slot, leaf(category, k, v))
            }
            Category::Timer => {
                let (k, v) = self.timers.get_index(index)?;
                (v.slot, leaf(category, k, &v.value))
            }
            Category::Wait => {
                let (k, v) = self.waits.get_index(index)?;
                (v.slot, leaf(category, k, &v.value))
            }
            Category::Signal => {
                let (k, v) = self.signals.get_index(index)?;
                let hash = hash_leaf_with(|content| {
                    content.push(category as u8);
                    content.extend_from_slice(&(k.len() as u64).to_le_bytes());
                    content.extend_from_slice(k.as_bytes());
                    content.extend_from_slice(&v.chain);
                    content.extend_from_slice(&(v.payloads.len() as u64).to_le_bytes());
                    content.extend_from_slice(&v.cursor.to_le_bytes());
                });
                (v.slot, hash)
            }
            Category::Compensation => {
                let (k, v) = self.compensations.get_index(index)?;
                (v.slot, leaf(category, k, v))
            }
        })
    }

    /// Every entry but the header as `(slot, category, map index)`, in slot order.
    pub(crate) fn entries(&self) -> Vec<(u32, Category, usize)> {
        let mut out = Vec::with_capacity(self.next_slot as usize);
        out.extend(
            self.steps
                .values()
                .enumerate()
                .map(|(i, v)| (v.slot, Category::Step, i)),
        );
        out.extend(
            self.timers
                .values()
                .enumerate()
                .map(|(i, v)| (v.slot, Category::Timer, i)),
        );
        out.extend(
            self.waits
                .values()
                .enumerate()
                .map(|(i, v)| (v.slot, Category::Wait, i)),
        );
        out.extend(
            self.signals
                .values()
                .enumerate()
                .map(|(i, v)| (v.slot, Category::Signal, i)),
        );
        out.extend(
            self.compensations
                .values()
                .enumerate()
                .map(|(i, v)| (v.slot, Category::Compensation, i)),
        );
        out.sort_unstable_by_key(|e| e.0);
        out
    }

    /// Builds the Merkle tree of the entries other than the header (slot
    /// `s` is leaf `s - 1`) from scratch.
    pub fn merkle_tree(&self) -> MerkleTree {
        let leaves = self
            .entries()
            .into_iter()
            .filter_map(|(_, cat, i)| self.entry_leaf(cat, i).map(|(_, h)| h))
            .collect();
        MerkleTree::from_leaves(leaves)
    }

    /// The state root, computed from scratch:
    /// `state_root_hash(header_leaf, entries_root)`.
    pub fn state_root(&self) -> Hash {
        state_root_hash(&self.header_leaf(), &self.merkle_tree().root())
    }

    /// Deterministic JSON of the public state.
    pub fn to_json(&self) -> Vec<u8> {
        // Every field is a string, integer, enum or raw JSON: serialisation
        // into a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Deterministic JSON of one step.
    pub fn step_json(&self, path: &str) -> Option<Vec<u8>> {
        self.steps
            .get(path)
            .and_then(|s| serde_json::to_vec(s).ok())
    }

    /// The pending timers as `(step path, fire_at µs)`, in first-insertion
    /// order: what `to_json()["timers"]` holds, without building the rest.
    pub fn pending_timers(&self) -> Vec<(&str, i64)> {
        self.timers
            .iter()
            .filter_map(|(k, t)| t.value.map(|at| (&**k, at)))
            .collect()
    }

    /// The event types of the open waits of kind `event`, sorted and
    /// without repeats (the store's event-wait index of this execution).
    pub fn open_event_types(&self) -> Vec<String> {
        #[derive(Deserialize)]
        struct EventWait {
            kind: String,
            #[serde(default)]
            event_type: Option<String>,
        }
        let mut out: Vec<String> = self
            .waits
            .values()
            .filter_map(|w| w.value.as_deref())
            .filter_map(|raw| serde_json::from_str::<EventWait>(raw.get()).ok())
            .filter(|w| w.kind == "event")
            .filter_map(|w| w.event_type)
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The newest payload of each signal name that has one, in
    /// first-insertion order (the `signals` variable of expressions).
    pub fn latest_signals(&self) -> Vec<(&str, &RawValue)> {
        self.signals
            .iter()
            .filter_map(|(k, q)| q.payloads.last().map(|p| (&**k, &**p)))
            .collect()
    }
}

/// Applies `event` to `state`: the one reducer. On error the state is unchanged.
pub fn apply(state: &mut ExecutionState, event: &Event) -> Result<(), ReduceError> {
    state.apply(event)
}

/// The bytes a step path's segments may hold: `[A-Za-z0-9_-]`.
const SEGMENT_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || c == b'_' || c == b'-';
        b += 1;
    }
    table
};

/// Checks a step path: `/`-separated non-empty segments of `[A-Za-z0-9_-]`.
#[inline]
fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("a step-level event needs a step path".into());
    }
    // One pass over the bytes (every event of a replay comes through here),
    // a table lookup per byte.
    let mut ok = true;
    let mut segment_empty = true;
    for &b in path.as_bytes() {
        if b == b'/' {
            ok &= !segment_empty;
            segment_empty = true;
        } else {
            ok &= SEGMENT_BYTE[usize::from(b)];
            segment_empty = false;
        }
    }
    if !ok || segment_empty {
        return Err(format!(
            "invalid step path {path:?}: segments are non-empty [A-Za-z0-9_-]"
        ));
    }
    Ok(())
}

struct LiveTimers<'a>(&'a StateMap<Slotted<i64>>);

impl Serialize for LiveTimers<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for (k, v) in self.0 {
            if let Some(at) = v.value {
                map.serialize_entry(k, &at)?;
            }
        }
        map.end()
    }
}

struct LiveWaits<'a>(&'a StateMap<Slotted<Json>>);

impl Serialize for LiveWaits<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for (k, v) in self.0 {
            if let Some(data) = &v.value {
                map.serialize_entry(k, data)?;
            }
        }
        map.end()
    }
}

struct SignalPayloads<'a>(&'a StateMap<SignalQueue>);

impl Serialize for SignalPayloads<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, &v.payloads)))
    }
}

struct SignalCursors<'a>(&'a StateMap<SignalQueue>);

impl Serialize for SignalCursors<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v.cursor)))
    }
}

impl Serialize for ExecutionState {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("ExecutionState", 20)?;
        st.serialize_field("execution_id", &self.execution_id)?;
        st.serialize_field("workflow_id", &self.workflow_id)?;
        st.serialize_field("workflow_version", &self.workflow_version)?;
        st.serialize_field("definition_hash", &self.definition_hash)?;
        st.serialize_field("inputs", &self.inputs)?;
        st.serialize_field("parent", &self.parent)?;
        st.serialize_field("created_at", &self.created_at)?;
        st.serialize_field("updated_at", &self.updated_at)?;
        st.serialize_field("version", &self.version)?;
        st.serialize_field("tx", &self.tx)?;
        st.serialize_field("status", &self.status)?;
        st.serialize_field("outputs", &self.outputs)?;
        st.serialize_field("error", &self.error)?;
        st.serialize_field("steps", &self.steps)?;
        st.serialize_field("timers", &LiveTimers(&self.timers))?;
        st.serialize_field("waits", &LiveWaits(&self.waits))?;
        st.serialize_field("signals", &SignalPayloads(&self.signals))?;
        st.serialize_field("signal_cursor", &SignalCursors(&self.signals))?;
        st.serialize_field("compensations", &self.compensations)?;
        st.end()
    }
}

/// A state together with its incrementally maintained Merkle tree.
///
/// The state sits behind an `Arc` so readers can hold a version for free;
/// applying an event copies it only when a reader still holds the previous
/// one. Applying marks the entries it changed dirty and hashes nothing;
/// [`HashedState::seal`] hashes each dirty entry's leaf, their paths and the
/// header once, however many events touched them since the last seal.
#[derive(Clone, Debug)]
pub struct HashedState {
    pub state: Arc<ExecutionState>,
    /// The tree over the entries other than the header.
    pub tree: MerkleTree,
    /// `tree.root()`, kept so a seal that changes only the header costs
    /// two hashes (header leaf, state root).
    entries_root: Hash,
    /// The state root as of the last seal.
    root: Hash,
    /// Entries changed since the last seal (boxed: most states are sealed
    /// most of the time, and there are many of them).
    dirty: Option<Box<Dirty>>,
    /// Whether any event was applied since the last seal.
    unsealed: bool,
}

/// Entries changed since the last seal, once each.
#[derive(Clone, Debug, Default)]
struct Dirty {
    /// `(slot, category, map index)`.
    entries: Vec<(u32, Category, usize)>,
    /// `marked[slot]`: whether the slot is listed in `entries`.
    marked: Vec<bool>,
}

impl HashedState {
    /// The hashed empty state of an execution.
    pub fn new(execution_id: impl Into<String>) -> Self {
        Self::from_state(Arc::new(ExecutionState::new(execution_id)))
    }

    /// Wraps a state, building its tree from scratch (sealed).
    pub fn from_state(state: Arc<ExecutionState>) -> Self {
        let tree = state.merkle_tree();
        let entries_root = tree.root();
        let root = state_root_hash(&state.header_leaf(), &entries_root);
        HashedState {
            state,
            tree,
            entries_root,
            root,
            dirty: None,
            unsealed: false,
        }
    }

    /// Applies an event and returns the new state root (applies and seals).
    /// On error nothing changed.
    pub fn apply(&mut self, event: &Event) -> Result<Hash, ReduceError> {
        self.apply_ref(event.view())
    }

    /// Applies a borrowed event and seals: returns the new state root.
    pub fn apply_ref(&mut self, event: EventRef<'_>) -> Result<Hash, ReduceError> {
        self.apply_sealed_at(event, None)
    }

    /// Applies an event (setting `tx` when given) and seals. From a sealed
    /// state (one event per commit, and every version of revision 2) the
    /// entries the event changed are hashed straight away, with no dirty
    /// buffers to allocate; otherwise as [`HashedState::apply_unsealed_at`]
    /// followed by [`HashedState::seal`].
    pub fn apply_sealed_at(
        &mut self,
        event: EventRef<'_>,
        tx: Option<u64>,
    ) -> Result<Hash, ReduceError> {
        if self.unsealed {
            self.apply_unsealed_at(event, tx)?;
            return Ok(self.seal());
        }
        let mut touched = Touched::new();
        let state = Arc::make_mut(&mut self.state);
        state.apply_tracked(event, &mut touched)?;
        if let Some(tx) = tx {
            state.tx = tx;
        }
        let mut inline: [(u32, Hash); 8] = [(0, [0u8; 32]); 8];
        let mut n = 0usize;
        let mut more: Vec<(u32, Hash)> = Vec::new();
        for &(cat, i) in touched.iter() {
            if cat == Category::Header {
                continue;
            }
            if let Some((slot, leaf)) = state.entry_leaf(cat, i) {
                // Entry slots start at 1; the tree's leaves at 0.
                let update = (slot.saturating_sub(1), leaf);
                if n < inline.len() {
                    inline[n] = update;
                    n += 1;
                } else {
                    more.push(update);
                }
            }
        }
        let updates: &mut [(u32, Hash)] = if more.is_empty() {
            &mut inline[..n]
        } else {
            more.extend_from_slice(&inline[..n]);
            &mut more
        };
        updates.sort_unstable_by_key(|u| u.0);
        // An entry touched twice by one event: keep one update per slot.
        let mut m = 0usize;
        for k in 0..updates.len() {
            if m > 0 && updates[m - 1].0 == updates[k].0 {
                updates[m - 1] = updates[k];
            } else {
                updates[m] = updates[k];
                m += 1;
            }
        }
        if m > 0 {
            self.tree.put_sorted(&updates[..m]);
            self.entries_root = self.tree.root();
        }
        self.root = state_root_hash(&state.header_leaf(), &self.entries_root);
        Ok(self.root)
    }

    /// Applies a borrowed event without hashing: the entries it changed are
    /// marked dirty for the next [`HashedState::seal`]. On error nothing
    /// changed (the marks of earlier events stay).
    pub fn apply_unsealed(&mut self, event: EventRef<'_>) -> Result<(), ReduceError> {
        self.apply_unsealed_at(event, None)
    }

    /// [`HashedState::apply_unsealed`], also setting the state's `tx` when
    /// given (one copy-on-write check instead of two).
    pub fn apply_unsealed_at(
        &mut self,
        event: EventRef<'_>,
        tx: Option<u64>,
    ) -> Result<(), ReduceError> {
        let mut touched = Touched::new();
        let state = Arc::make_mut(&mut self.state);
        state.apply_tracked(event, &mut touched)?;
        if let Some(tx) = tx {
            state.tx = tx;
        }
        self.unsealed = true;
        let dirty = self.dirty.get_or_insert_with(Box::default);
        for &(cat, i) in touched.iter() {
            let slot = match cat {
                Category::Header => continue,
                Category::Step => state.steps.get_index(i).map(|(_, v)| v.slot),
                Category::Timer => state.timers.get_index(i).map(|(_, v)| v.slot),
                Category::Wait => state.waits.get_index(i).map(|(_, v)| v.slot),
                Category::Signal => state.signals.get_index(i).map(|(_, v)| v.slot),
                Category::Compensation => state.compensations.get_index(i).map(|(_, v)| v.slot),
            };
            let Some(slot) = slot else { continue };
            let s = slot as usize;
            if dirty.marked.len() <= s {
                dirty.marked.resize(s + 1, false);
            }
            if !dirty.marked[s] {
                dirty.marked[s] = true;
                dirty.entries.push((slot, cat, i));
            }
        }
        Ok(())
    }

    /// Whether events were applied since the last seal.
    pub fn is_sealed(&self) -> bool {
        !self.unsealed
    }

    /// Hashes what changed since the last seal and returns the state root:
    /// each dirty entry's leaf, each internal node on their paths once, the
    /// header leaf and the root. Without changes it returns the last root.
    pub fn seal(&mut self) -> Hash {
        if !self.unsealed {
            return self.root;
        }
        self.unsealed = false;
        let dirty = self.dirty.as_deref_mut().filter(|d| !d.entries.is_empty());
        if let Some(dirty) = dirty {
            let state = &*self.state;
            let mut updates: Vec<(u32, Hash)> = Vec::with_capacity(dirty.entries.len());
            for &(slot, cat, i) in &dirty.entries {
                if let Some(m) = dirty.marked.get_mut(slot as usize) {
                    *m = false;
                }
                if let Some((slot, leaf)) = state.entry_leaf(cat, i) {
                    // Entry slots start at 1; the tree's leaves at 0.
                    updates.push((slot.saturating_sub(1), leaf));
                }
            }
            dirty.entries.clear();
            updates.sort_unstable_by_key(|u| u.0);
            self.tree.put_sorted(&updates);
            self.entries_root = self.tree.root();
        }
        self.root = state_root_hash(&self.state.header_leaf(), &self.entries_root);
        self.root
    }

    /// The state root as of the last seal (the current one when sealed).
    pub fn root(&self) -> Hash {
        self.root
    }

    /// Releases spare capacity, and the dirty-tracking buffers when sealed
    /// (every mark is clear then, so no buffer means the same).
    pub fn shrink_to_fit(&mut self) {
        self.tree.shrink_to_fit();
        if !self.unsealed {
            self.dirty = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::check_path;
    use proptest::prelude::*;

    proptest! {
        /// The one-pass check accepts exactly the paths whose `/`-separated
        /// segments are non-empty runs of `[A-Za-z0-9_-]`.
        #[test]
        fn step_paths_are_checked_segment_by_segment(path in "[a0Z_/\\-. é]{0,8}") {
            let expected = !path.is_empty()
                && path.split('/').all(|s| {
                    !s.is_empty()
                        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                });
            prop_assert_eq!(check_path(&path).is_ok(), expected, "{:?}", path);
        }
    }
}
