//! `itonami._core`: a thin PyO3 binding over `itonami-core`.
//!
//! This crate only converts types, releases the GIL (through [`detached`])
//! and maps core errors to the classes of `itonami.errors`. Payloads cross as
//! canonical JSON bytes; Python values are built with `orjson.loads`.

use std::sync::{Arc, OnceLock};

mod expr;
mod pgarray;

use itonami_core as core;
use itonami_core::merkle::Hash;
use itonami_core::{DecodeError, Event as CoreEvent, EventKind, StoreError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict};
use pyo3::IntoPyObjectExt;

/// Runs heavy work without the GIL and maps its error. Every heavy call goes
/// through here. It is safe because the closure only touches Rust data
/// (`Ungil`): store internals are guarded by their own locks, and no Python
/// object is reachable from inside, so nothing can call back into Python while
/// a store lock is held.
fn detached<T, F>(py: Python<'_>, f: F) -> PyResult<T>
where
    F: FnOnce() -> Result<T, StoreError> + Send,
    T: Send,
{
    py.detach(f).map_err(|e| store_err(py, e))
}

static ERRORS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// Instantiates `itonami.errors.<class>(message, **kwargs)` as a `PyErr`.
fn make_err(py: Python<'_>, class: &str, message: String, kwargs: &[(&str, Py<PyAny>)]) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let errors = ERRORS.get_or_try_init(py, || -> PyResult<Py<PyModule>> {
            Ok(py.import("itonami.errors")?.unbind())
        })?;
        let cls = errors.bind(py).getattr(class)?;
        let kw = PyDict::new(py);
        for (k, v) in kwargs {
            kw.set_item(k, v)?;
        }
        let instance = cls.call((message.clone(),), Some(&kw))?;
        Ok(PyErr::from_value(instance))
    };
    build().unwrap_or_else(|e| e)
}

fn opt<T: for<'py> IntoPyObject<'py>>(py: Python<'_>, value: Option<T>) -> Py<PyAny> {
    match value {
        Some(v) => v.into_py_any(py).unwrap_or_else(|_| py.None()),
        None => py.None(),
    }
}

fn obj<T: for<'py> IntoPyObject<'py>>(py: Python<'_>, value: T) -> Py<PyAny> {
    opt(py, Some(value))
}

fn decode_err(py: Python<'_>, e: DecodeError) -> PyErr {
    let message = e.to_string();
    make_err(
        py,
        "DecodeError",
        message,
        &[("offset", opt(py, e.offset)), ("index", opt(py, e.index))],
    )
}

/// Maps a store error to its `itonami.errors` class.
fn store_err(py: Python<'_>, e: StoreError) -> PyErr {
    let message = e.to_string();
    match e {
        StoreError::Decode(d) => decode_err(py, d),
        StoreError::Reduce { index, .. } => make_err(
            py,
            "DecodeError",
            message,
            &[("offset", py.None()), ("index", obj(py, index))],
        ),
        StoreError::Conflict {
            execution_id,
            expected,
            actual,
        } => make_err(
            py,
            "ConflictError",
            message,
            &[
                ("execution_id", obj(py, execution_id)),
                ("expected", obj(py, expected)),
                ("actual", obj(py, actual)),
            ],
        ),
        StoreError::Integrity {
            execution_id,
            version,
            expected,
            actual,
            ..
        } => make_err(
            py,
            "IntegrityError",
            message,
            &[
                ("execution_id", obj(py, execution_id)),
                ("version", obj(py, version)),
                ("expected", opt(py, expected)),
                ("actual", opt(py, actual)),
            ],
        ),
        StoreError::PayloadTooLarge { size, limit, what } => make_err(
            py,
            "PayloadTooLargeError",
            message,
            &[
                ("size", obj(py, size)),
                ("limit", obj(py, limit)),
                ("what", obj(py, what)),
            ],
        ),
        StoreError::NotFound { execution_id } => make_err(
            py,
            "ExecutionNotFoundError",
            message,
            &[("execution_id", obj(py, execution_id))],
        ),
        StoreError::TxLimit {
            execution_id, tx, ..
        } => make_err(
            py,
            "TxOutOfRangeError",
            message,
            &[("execution_id", opt(py, execution_id)), ("tx", obj(py, tx))],
        ),
        StoreError::OutOfRange {
            execution_id, tx, ..
        } => make_err(
            py,
            "TxOutOfRangeError",
            message,
            &[("execution_id", obj(py, execution_id)), ("tx", obj(py, tx))],
        ),
    }
}

/// Declares an integer argument type whose conversion failure is an
/// `itonami.errors.InvalidArgumentError` (PyO3 adds a note naming the
/// argument). PyO3's own conversion raises `OverflowError` for a negative or
/// huge int, which is not an itonami error.
macro_rules! int_arg {
    ($name:ident, $ty:ty, $range:literal) => {
        #[derive(Clone, Copy)]
        struct $name($ty);

        impl<'a, 'py> FromPyObject<'a, 'py> for $name {
            type Error = PyErr;

            fn extract(value: pyo3::Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
                value.extract::<$ty>().map($name).map_err(|_| {
                    let py = value.py();
                    let shown: String = value
                        .repr()
                        .map(|r| r.to_string())
                        .unwrap_or_else(|_| "?".into())
                        .chars()
                        .take(60)
                        .collect();
                    make_err(
                        py,
                        "InvalidArgumentError",
                        format!(concat!("an int in ", $range, " is needed, got {}"), shown),
                        &[],
                    )
                })
            }
        }
    };
}

int_arg!(U64, u64, "0..=2**64-1");
int_arg!(U32, u32, "0..=2**32-1");
int_arg!(I64, i64, "-2**63..=2**63-1");
int_arg!(USize, usize, "0..=2**64-1");

static ORJSON_LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `orjson.loads(bytes)`.
fn loads(py: Python<'_>, json: &[u8]) -> PyResult<Py<PyAny>> {
    let f = ORJSON_LOADS.get_or_try_init(py, || -> PyResult<Py<PyAny>> {
        Ok(py.import("orjson")?.getattr("loads")?.unbind())
    })?;
    Ok(f.bind(py).call1((PyBytes::new(py, json),))?.unbind())
}

fn loads_opt(py: Python<'_>, json: Option<&str>) -> PyResult<Py<PyAny>> {
    match json {
        Some(j) => loads(py, j.as_bytes()),
        None => Ok(py.None()),
    }
}

fn kind_of(name: &str, index: usize) -> Result<EventKind, StoreError> {
    EventKind::from_name(name).ok_or_else(|| {
        StoreError::Decode(DecodeError {
            message: format!("unknown event kind {name:?}"),
            offset: None,
            index: Some(index as u64),
        })
    })
}

fn build_event(
    limit: usize,
    index: usize,
    kind: &str,
    step: &str,
    attempt: u32,
    data: &[u8],
    timestamp: i64,
) -> Result<CoreEvent, StoreError> {
    if data.len() > limit {
        return Err(StoreError::PayloadTooLarge {
            size: data.len(),
            limit,
            what: "event data",
        });
    }
    let kind = kind_of(kind, index)?;
    CoreEvent::new(kind, step, attempt, data, timestamp)
        .map_err(|e| StoreError::Decode(e.with_index(index)))
}

/// What an append created; what a durable store persists.
///
/// Fields are plain Rust values: creating one allocates no Python object
/// besides itself, and `hash` / `encoded` become `bytes` only when read.
#[pyclass(frozen, module = "itonami._core")]
struct Appended {
    #[pyo3(get)]
    version: u64,
    #[pyo3(get)]
    tx: u64,
    #[pyo3(get)]
    timestamp: i64,
    #[pyo3(get)]
    kind: &'static str,
    hash: Hash,
    encoded: Vec<u8>,
    #[pyo3(get)]
    status: &'static str,
}

#[pymethods]
impl Appended {
    /// The 32-byte node hash of this version.
    #[getter]
    fn hash<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.hash)
    }
    /// The canonical encoding of the event (without the length prefix).
    #[getter]
    fn encoded<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.encoded)
    }
    fn __repr__(&self) -> String {
        format!(
            "Appended(version={}, tx={}, kind={:?}, status={:?})",
            self.version, self.tx, self.kind, self.status
        )
    }
}

impl From<core::Appended> for Appended {
    fn from(a: core::Appended) -> Self {
        Appended {
            version: a.version,
            tx: a.tx,
            timestamp: a.timestamp,
            kind: a.kind.name(),
            hash: a.hash,
            encoded: a.encoded,
            status: a.status,
        }
    }
}

/// A state of one execution (immutable view).
#[pyclass(frozen, module = "itonami._core")]
struct ExecutionState {
    inner: Arc<core::ExecutionState>,
    root: OnceLock<Hash>,
}

impl ExecutionState {
    fn new(inner: Arc<core::ExecutionState>, root: Option<Hash>) -> Self {
        let cell = OnceLock::new();
        if let Some(r) = root {
            let _ = cell.set(r);
        }
        ExecutionState { inner, root: cell }
    }
}

#[pymethods]
impl ExecutionState {
    #[getter]
    fn execution_id(&self) -> &str {
        &self.inner.execution_id
    }
    #[getter]
    fn workflow_id(&self) -> Option<&str> {
        self.inner.workflow_id.as_deref()
    }
    #[getter]
    fn workflow_version(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        loads_opt(py, self.inner.workflow_version.as_deref().map(|r| r.get()))
    }
    #[getter]
    fn definition_hash(&self) -> Option<&str> {
        self.inner.definition_hash.as_deref()
    }
    #[getter]
    fn status(&self) -> &'static str {
        self.inner.status.name()
    }
    #[getter]
    fn version(&self) -> u64 {
        self.inner.version
    }
    #[getter]
    fn tx(&self) -> u64 {
        self.inner.tx
    }
    #[getter]
    fn created_at(&self) -> Option<i64> {
        self.inner.created_at
    }
    #[getter]
    fn updated_at(&self) -> Option<i64> {
        self.inner.updated_at
    }
    #[getter]
    fn inputs(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        loads_opt(py, self.inner.inputs.as_deref().map(|r| r.get()))
    }
    #[getter]
    fn parent(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        loads_opt(py, self.inner.parent.as_deref().map(|r| r.get()))
    }
    #[getter]
    fn outputs(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        loads_opt(py, self.inner.outputs.as_deref().map(|r| r.get()))
    }
    #[getter]
    fn error(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        loads_opt(py, self.inner.error.as_deref().map(|r| r.get()))
    }
    /// The Merkle root of this state (computed on first access for past versions).
    #[getter]
    fn root_hash<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let root = self.root.get_or_init(|| self.inner.state_root());
        PyBytes::new(py, root)
    }
    /// Paths of the steps, in first-insertion order.
    #[getter]
    fn step_paths(&self) -> Vec<String> {
        self.inner.steps.keys().map(|k| k.to_string()).collect()
    }
    /// Status of the step at `path`, or None.
    fn step_status(&self, path: &str) -> Option<&'static str> {
        self.inner.steps.get(path).map(|s| s.status.name())
    }
    /// The step at `path` as a dict, or None.
    fn step(&self, py: Python<'_>, path: &str) -> PyResult<Py<PyAny>> {
        match self.inner.step_json(path) {
            Some(json) => loads(py, &json),
            None => Ok(py.None()),
        }
    }
    /// The pending timers as `(step path, fire_at µs)` pairs (`to_dict()["timers"]`).
    fn pending_timers(&self) -> Vec<(&str, i64)> {
        self.inner.pending_timers()
    }
    /// The event types the open event waits expect, sorted, without repeats.
    fn open_event_types(&self) -> Vec<String> {
        self.inner.open_event_types()
    }
    /// The newest payload of every signal name received, as a dict.
    fn latest_signals(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let out = PyDict::new(py);
        for (name, payload) in self.inner.latest_signals() {
            out.set_item(name, loads(py, payload.get().as_bytes())?)?;
        }
        Ok(out.into_any().unbind())
    }
    /// The whole state as a dict.
    fn to_dict(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        loads(py, &self.inner.to_json())
    }
    /// The whole state as deterministic JSON bytes.
    fn to_json<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.to_json())
    }
    fn __repr__(&self) -> String {
        format!(
            "ExecutionState(execution_id={:?}, status={:?}, version={})",
            self.inner.execution_id,
            self.inner.status.name(),
            self.inner.version
        )
    }
}

/// One decoded event.
#[pyclass(frozen, module = "itonami._core")]
struct Event {
    inner: CoreEvent,
    encoded: OnceLock<Vec<u8>>,
}

impl Event {
    fn wrap(inner: CoreEvent) -> Self {
        Event {
            inner,
            encoded: OnceLock::new(),
        }
    }
}

#[pymethods]
impl Event {
    #[getter]
    fn kind(&self) -> &'static str {
        self.inner.kind.name()
    }
    #[getter]
    fn code(&self) -> u16 {
        self.inner.kind.code()
    }
    #[getter]
    fn step(&self) -> &str {
        &self.inner.step
    }
    #[getter]
    fn attempt(&self) -> u32 {
        self.inner.attempt
    }
    #[getter]
    fn timestamp(&self) -> i64 {
        self.inner.timestamp
    }
    /// The payload as a Python value.
    #[getter]
    fn data(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        loads(py, self.inner.data_bytes())
    }
    /// The canonical JSON payload.
    #[getter]
    fn data_json<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.inner.data_bytes())
    }
    /// The canonical encoding.
    #[getter]
    fn encoded<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        if self.encoded.get().is_none() {
            let bytes = self.inner.encode().map_err(|e| decode_err(py, e))?;
            let _ = self.encoded.set(bytes);
        }
        Ok(PyBytes::new(
            py,
            self.encoded.get().map_or(&[][..], Vec::as_slice),
        ))
    }
    fn __repr__(&self) -> String {
        format!(
            "Event(kind={:?}, step={:?}, attempt={}, timestamp={}, data={})",
            self.inner.kind.name(),
            self.inner.step,
            self.inner.attempt,
            self.inner.timestamp,
            self.inner.data
        )
    }
    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<Event>()
            .is_ok_and(|o| o.get().inner == self.inner)
    }
}

/// Metadata of one stored version.
#[pyclass(frozen, module = "itonami._core")]
struct VersionInfo {
    #[pyo3(get)]
    version: u64,
    #[pyo3(get)]
    tx: u64,
    #[pyo3(get)]
    timestamp: i64,
    #[pyo3(get)]
    kind: &'static str,
    #[pyo3(get)]
    hash: Py<PyBytes>,
    /// `None` for a version that is not sealed (hash revision 3).
    #[pyo3(get)]
    state_root: Option<Py<PyBytes>>,
}

#[pymethods]
impl VersionInfo {
    fn __repr__(&self) -> String {
        format!(
            "VersionInfo(version={}, tx={}, kind={:?})",
            self.version, self.tx, self.kind
        )
    }
}

/// Result of a successful `verify`.
#[pyclass(frozen, module = "itonami._core")]
struct VerifyReport {
    #[pyo3(get)]
    execution_id: String,
    #[pyo3(get)]
    versions: u64,
    #[pyo3(get)]
    head_hash: Py<PyBytes>,
}

#[pymethods]
impl VerifyReport {
    fn __repr__(&self) -> String {
        format!(
            "VerifyReport(execution_id={:?}, versions={})",
            self.execution_id, self.versions
        )
    }
}

/// Proof that one event belongs to the chain ending at a head hash.
#[pyclass(frozen, module = "itonami._core")]
struct InclusionProof {
    inner: core::InclusionProof,
}

#[pymethods]
impl InclusionProof {
    #[getter]
    fn version(&self) -> u64 {
        self.inner.version
    }
    #[getter]
    fn head_version(&self) -> u64 {
        self.inner.head_version()
    }
    /// The proven event.
    #[getter]
    fn event(&self, py: Python<'_>) -> PyResult<Event> {
        self.inner
            .decoded_event()
            .map(Event::wrap)
            .map_err(|e| decode_err(py, e))
    }
    /// The head hash this proof leads to.
    fn head_hash<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.head())
    }
    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.to_bytes())
    }
    #[staticmethod]
    fn from_bytes(py: Python<'_>, data: &[u8]) -> PyResult<InclusionProof> {
        core::InclusionProof::from_bytes(data)
            .map(|inner| InclusionProof { inner })
            .map_err(|e| decode_err(py, e))
    }
    fn __repr__(&self) -> String {
        format!(
            "InclusionProof(version={}, head_version={})",
            self.inner.version,
            self.inner.head_version()
        )
    }
}

/// The in-memory MVCC store of executions.
#[pyclass(frozen, module = "itonami._core")]
struct VersionStore {
    inner: core::VersionStore,
}

type BatchItem = (String, String, U32, Vec<u8>, I64);
type StepItem = (String, String, U32, Vec<u8>);
type StepOut<'py> = (
    u64,
    u64,
    i64,
    &'static str,
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
);

#[pymethods]
impl VersionStore {
    #[new]
    // The defaults are spelled out in `text_signature` so `__text_signature__` shows them.
    #[pyo3(
        signature = (*, snapshot_every = U64(0), snapshot_retention = USize(2), max_payload_bytes = USize(4194304)),
        text_signature = "(*, snapshot_every=0, snapshot_retention=2, max_payload_bytes=4194304)"
    )]
    fn py_new(snapshot_every: U64, snapshot_retention: USize, max_payload_bytes: USize) -> Self {
        VersionStore {
            inner: core::VersionStore::new(core::StoreConfig {
                snapshot_every: snapshot_every.0,
                snapshot_retention: snapshot_retention.0,
                max_payload_bytes: max_payload_bytes.0,
            }),
        }
    }

    /// Appends one event at `expected_version`.
    #[allow(clippy::too_many_arguments)]
    fn append(
        &self,
        py: Python<'_>,
        execution_id: &str,
        expected_version: U64,
        kind: &str,
        step: &str,
        attempt: U32,
        data: &[u8],
        timestamp: I64,
    ) -> PyResult<Appended> {
        // Cheap enough (about a microsecond) that releasing the GIL would cost more.
        let limit = self.inner.config().max_payload_bytes;
        let result = build_event(limit, 0, kind, step, attempt.0, data, timestamp.0)
            .and_then(|event| self.inner.append(execution_id, expected_version.0, event));
        result.map(Appended::from).map_err(|e| store_err(py, e))
    }

    /// The coarse step call: appends `(kind, step, attempt, data)` events at
    /// `timestamp` atomically and returns, in one crossing, what the engine
    /// keeps of each — `(version, tx, timestamp, kind, hash, encoded)`, the
    /// fields of a stored event — and the status after the last one.
    ///
    /// The same core call as `append` and `append_batch` (the one reducer),
    /// without an `Appended` object and a getter per field for each event.
    fn append_step<'py>(
        &self,
        py: Python<'py>,
        execution_id: &str,
        expected_version: U64,
        events: Vec<StepItem>,
        timestamp: I64,
    ) -> PyResult<(Vec<StepOut<'py>>, &'static str)> {
        // A step is a few small events (a few µs in all): holding the GIL is
        // cheaper than releasing and taking it back.
        let limit = self.inner.config().max_payload_bytes;
        let built = events
            .iter()
            .enumerate()
            .map(|(i, (kind, step, attempt, data))| {
                build_event(limit, i, kind, step, attempt.0, data, timestamp.0)
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| store_err(py, e))?;
        let out = self
            .inner
            .append_batch(execution_id, expected_version.0, &built)
            .map_err(|e| store_err(py, e))?;
        let status = out.last().map_or("pending", |a| a.status);
        let rows = out
            .into_iter()
            .map(|a| {
                (
                    a.version,
                    a.tx,
                    a.timestamp,
                    a.kind.name(),
                    PyBytes::new(py, &a.hash),
                    PyBytes::new(py, &a.encoded),
                )
            })
            .collect();
        Ok((rows, status))
    }

    /// Appends `(kind, step, attempt, data, timestamp)` events atomically.
    fn append_batch(
        &self,
        py: Python<'_>,
        execution_id: &str,
        expected_version: U64,
        events: Vec<BatchItem>,
    ) -> PyResult<Vec<Appended>> {
        let limit = self.inner.config().max_payload_bytes;
        let out = detached(py, || {
            let built = events
                .iter()
                .enumerate()
                .map(|(i, (kind, step, attempt, data, ts))| {
                    build_event(limit, i, kind, step, attempt.0, data, ts.0)
                })
                .collect::<Result<Vec<_>, _>>()?;
            self.inner
                .append_batch(execution_id, expected_version.0, &built)
        })?;
        Ok(out.into_iter().map(Appended::from).collect())
    }

    /// Replaces (or creates) an execution from stored bytes, verifying hashes.
    #[pyo3(signature = (execution_id, history, hashes = None, txs = None, snapshot = None))]
    fn load(
        &self,
        py: Python<'_>,
        execution_id: &str,
        history: &[u8],
        hashes: Option<&[u8]>,
        txs: Option<Vec<U64>>,
        snapshot: Option<&[u8]>,
    ) -> PyResult<()> {
        let txs: Option<Vec<u64>> = txs.map(|t| t.into_iter().map(|x| x.0).collect());
        detached(py, || {
            self.inner
                .load(execution_id, history, hashes, txs.as_deref(), snapshot)
        })
    }

    fn state(&self, py: Python<'_>, execution_id: &str) -> PyResult<ExecutionState> {
        let (state, root) = self
            .inner
            .state_with_root(execution_id)
            .map_err(|e| store_err(py, e))?;
        Ok(ExecutionState::new(state, Some(root)))
    }

    fn state_at_tx(&self, py: Python<'_>, execution_id: &str, tx: U64) -> PyResult<ExecutionState> {
        let state = detached(py, || self.inner.state_at_tx(execution_id, tx.0))?;
        Ok(ExecutionState::new(state, None))
    }

    fn state_at_version(
        &self,
        py: Python<'_>,
        execution_id: &str,
        version: U64,
    ) -> PyResult<ExecutionState> {
        let state = detached(py, || self.inner.state_at_version(execution_id, version.0))?;
        Ok(ExecutionState::new(state, None))
    }

    fn version(&self, execution_id: &str) -> u64 {
        self.inner.version(execution_id)
    }

    fn head<'py>(&self, py: Python<'py>, execution_id: &str) -> (u64, Bound<'py, PyBytes>) {
        let (v, h) = self.inner.head(execution_id);
        (v, PyBytes::new(py, &h))
    }

    fn history(&self, py: Python<'_>, execution_id: &str) -> PyResult<Vec<VersionInfo>> {
        let infos = self
            .inner
            .history(execution_id)
            .map_err(|e| store_err(py, e))?;
        Ok(infos
            .into_iter()
            .map(|i| VersionInfo {
                version: i.version,
                tx: i.tx,
                timestamp: i.timestamp,
                kind: i.kind.name(),
                hash: PyBytes::new(py, &i.hash).unbind(),
                state_root: i.state_root.map(|r| PyBytes::new(py, &r).unbind()),
            })
            .collect())
    }

    #[pyo3(signature = (execution_id, from_version = U64(0)), text_signature = "($self, execution_id, from_version=0)")]
    fn events(
        &self,
        py: Python<'_>,
        execution_id: &str,
        from_version: U64,
    ) -> PyResult<Vec<Event>> {
        let events = detached(py, || self.inner.events(execution_id, from_version.0))?;
        Ok(events.into_iter().map(Event::wrap).collect())
    }

    #[pyo3(signature = (execution_id, from_version = U64(0)), text_signature = "($self, execution_id, from_version=0)")]
    fn encoded_history<'py>(
        &self,
        py: Python<'py>,
        execution_id: &str,
        from_version: U64,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let bytes = detached(py, || {
            self.inner.encoded_history(execution_id, from_version.0)
        })?;
        Ok(PyBytes::new(py, &bytes))
    }

    fn snapshot<'py>(&self, py: Python<'py>, execution_id: &str) -> PyResult<Bound<'py, PyBytes>> {
        let bytes = detached(py, || self.inner.snapshot(execution_id))?;
        Ok(PyBytes::new(py, &bytes))
    }

    fn verify(&self, py: Python<'_>, execution_id: &str) -> PyResult<VerifyReport> {
        let report = detached(py, || self.inner.verify(execution_id))?;
        Ok(VerifyReport {
            execution_id: report.execution_id,
            versions: report.versions,
            head_hash: PyBytes::new(py, &report.head_hash).unbind(),
        })
    }

    fn inclusion_proof(
        &self,
        py: Python<'_>,
        execution_id: &str,
        version: U64,
    ) -> PyResult<InclusionProof> {
        let inner = detached(py, || self.inner.inclusion_proof(execution_id, version.0))?;
        Ok(InclusionProof { inner })
    }

    fn evict(&self, execution_id: &str) {
        self.inner.evict(execution_id);
    }

    fn contains(&self, execution_id: &str) -> bool {
        self.inner.contains(execution_id)
    }

    fn __contains__(&self, execution_id: &str) -> bool {
        self.inner.contains(execution_id)
    }

    fn execution_ids(&self) -> Vec<String> {
        self.inner.execution_ids()
    }

    #[getter]
    fn last_tx(&self) -> u64 {
        self.inner.last_tx()
    }

    fn advance_tx(&self, py: Python<'_>, tx: U64) -> PyResult<()> {
        self.inner.advance_tx(tx.0).map_err(|e| store_err(py, e))
    }

    fn assign_txs(
        &self,
        py: Python<'_>,
        execution_id: &str,
        first_version: u64,
        txs: Vec<u64>,
    ) -> PyResult<()> {
        detached(py, || {
            self.inner.assign_txs(execution_id, first_version, &txs)
        })?;
        Ok(())
    }

    #[getter]
    fn snapshot_every(&self) -> u64 {
        self.inner.config().snapshot_every
    }

    #[getter]
    fn snapshot_retention(&self) -> usize {
        self.inner.config().snapshot_retention
    }

    #[getter]
    fn max_payload_bytes(&self) -> usize {
        self.inner.config().max_payload_bytes
    }
}

/// The canonical encoding of one event (payload canonicalised).
#[pyfunction]
fn encode_event<'py>(
    py: Python<'py>,
    kind: &str,
    step: &str,
    attempt: U32,
    data: &[u8],
    timestamp: I64,
) -> PyResult<Bound<'py, PyBytes>> {
    let encoded = build_event(usize::MAX, 0, kind, step, attempt.0, data, timestamp.0)
        .and_then(|e| e.encode().map_err(StoreError::from))
        .map_err(|e| store_err(py, e))?;
    Ok(PyBytes::new(py, &encoded))
}

/// Frames encoded events into a history (`u32` length prefix each).
#[pyfunction]
fn frame_history<'py>(py: Python<'py>, events: Vec<Vec<u8>>) -> PyResult<Bound<'py, PyBytes>> {
    let mut out = Vec::with_capacity(events.iter().map(|e| e.len() + 4).sum());
    for e in &events {
        core::event::frame_into(e, &mut out).map_err(|e| decode_err(py, e))?;
    }
    Ok(PyBytes::new(py, &out))
}

/// Decodes a whole history.
#[pyfunction]
fn decode_history(py: Python<'_>, history: &[u8]) -> PyResult<Vec<Event>> {
    let events = detached(py, || {
        core::decode_history(history).map_err(StoreError::from)
    })?;
    Ok(events.into_iter().map(Event::wrap).collect())
}

/// Folds a history into a state (no hashing).
#[pyfunction]
fn replay(py: Python<'_>, execution_id: &str, history: &[u8]) -> PyResult<ExecutionState> {
    let state = detached(py, || core::replay(execution_id, history))?;
    Ok(ExecutionState::new(Arc::new(state), None))
}

/// Folds a history, checking every node hash against `hashes`.
#[pyfunction]
fn replay_verified(
    py: Python<'_>,
    execution_id: &str,
    history: &[u8],
    hashes: &[u8],
) -> PyResult<ExecutionState> {
    let state = detached(py, || {
        core::VersionStore::default().load_detached(execution_id, history, Some(hashes))
    })?;
    Ok(ExecutionState::new(state, None))
}

/// Whether `proof` leads to `head_hash`.
#[pyfunction]
fn verify_proof(proof: &InclusionProof, head_hash: &[u8]) -> bool {
    proof.inner.verify(head_hash)
}

/// `[(code, name)]` of every event kind.
#[pyfunction]
fn event_kinds() -> Vec<(u16, &'static str)> {
    EventKind::ALL
        .iter()
        .map(|k| (k.code(), k.name()))
        .collect()
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<VersionStore>()?;
    m.add_class::<Appended>()?;
    m.add_class::<ExecutionState>()?;
    m.add_class::<Event>()?;
    m.add_class::<VersionInfo>()?;
    m.add_class::<VerifyReport>()?;
    m.add_class::<InclusionProof>()?;
    m.add_class::<expr::JsonPath>()?;
    m.add_class::<expr::Condition>()?;
    m.add_function(wrap_pyfunction!(encode_event, m)?)?;
    m.add_function(wrap_pyfunction!(frame_history, m)?)?;
    m.add_function(wrap_pyfunction!(decode_history, m)?)?;
    m.add_function(wrap_pyfunction!(replay, m)?)?;
    m.add_function(wrap_pyfunction!(replay_verified, m)?)?;
    m.add_function(wrap_pyfunction!(verify_proof, m)?)?;
    m.add_function(wrap_pyfunction!(event_kinds, m)?)?;
    m.add_function(wrap_pyfunction!(pgarray::pg_array_int8, m)?)?;
    m.add_function(wrap_pyfunction!(pgarray::pg_array_text, m)?)?;
    m.add_function(wrap_pyfunction!(pgarray::pg_array_bytea, m)?)?;
    m.add_function(wrap_pyfunction!(pgarray::pg_array_bool, m)?)?;
    m.add("FORMAT_VERSION", core::event::FORMAT_VERSION)?;
    Ok(())
}
